// SPDX-License-Identifier: GPL-2.0

//! Strict parsers for table-line and message tokens.
//!
//! Stricter than `kstrtoull`/`sscanf`: decimal digits only (no sign, no whitespace, no base
//! prefix, no trailing garbage) and overflow is an error, so a typo never becomes a surprising
//! value.

use core::fmt;

/// Why a number was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumError {
    /// The token is empty.
    Empty,
    /// The token has a character that is not a decimal digit.
    NotDecimal,
    /// The value does not fit the type.
    Overflow,
}

/// Parses an unsigned decimal `u64`.
pub fn parse_u64(s: &str) -> Result<u64, NumError> {
    if s.is_empty() {
        return Err(NumError::Empty);
    }
    let mut v: u64 = 0;
    for c in s.bytes() {
        if !c.is_ascii_digit() {
            return Err(NumError::NotDecimal);
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(c - b'0')))
            .ok_or(NumError::Overflow)?;
    }
    Ok(v)
}

/// Parses an unsigned decimal `u32`.
pub fn parse_u32(s: &str) -> Result<u32, NumError> {
    u32::try_from(parse_u64(s)?).map_err(|_| NumError::Overflow)
}

/// An IPv4 socket address (the kernel guest has no IPv6; names are not resolved in the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketAddrV4 {
    /// Address octets, most significant first.
    pub ip: [u8; 4],
    /// TCP port, 1..=65535.
    pub port: u16,
}

/// Why an address was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrError {
    /// No `:port` part.
    MissingPort,
    /// The host is not a dotted-quad IPv4 address.
    BadHost,
    /// The port is not a number in 1..=65535.
    BadPort,
}

/// Parses `a.b.c.d:port`.
///
/// Octets are 0..=255 without leading zeros (`010` is octal to `inet_aton` and decimal to
/// others, so it is refused rather than guessed).
pub fn parse_ipv4_port(s: &str) -> Result<SocketAddrV4, AddrError> {
    let (host, port) = s.rsplit_once(':').ok_or(AddrError::MissingPort)?;
    let port = match parse_u32(port) {
        Ok(p) if (1..=65535).contains(&p) && !(port.len() > 1 && port.starts_with('0')) => p as u16,
        _ => return Err(AddrError::BadPort),
    };
    let mut ip = [0u8; 4];
    let mut n = 0;
    for part in host.split('.') {
        if n == 4 || part.is_empty() || part.len() > 3 || (part.len() > 1 && part.starts_with('0')) {
            return Err(AddrError::BadHost);
        }
        ip[n] = match parse_u32(part) {
            Ok(v) if v <= 255 => v as u8,
            _ => return Err(AddrError::BadHost),
        };
        n += 1;
    }
    if n != 4 {
        return Err(AddrError::BadHost);
    }
    Ok(SocketAddrV4 { ip, port })
}

impl fmt::Display for SocketAddrV4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.ip;
        write!(f, "{a}.{b}.{c}.{d}:{}", self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::string::ToString;

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("0"), Ok(0));
        assert_eq!(parse_u64("0042"), Ok(42));
        assert_eq!(parse_u64("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_u64("18446744073709551616"), Err(NumError::Overflow));
        assert_eq!(parse_u64("99999999999999999999999"), Err(NumError::Overflow));
        assert_eq!(parse_u64(""), Err(NumError::Empty));
        for bad in ["-1", "+1", " 1", "1 ", "0x10", "1e3", "1.0", "１"] {
            assert_eq!(parse_u64(bad), Err(NumError::NotDecimal), "{bad:?}");
        }
        assert_eq!(parse_u32("4294967295"), Ok(u32::MAX));
        assert_eq!(parse_u32("4294967296"), Err(NumError::Overflow));
    }

    #[test]
    fn addresses() {
        let a = parse_ipv4_port("10.0.0.2:7789").unwrap();
        assert_eq!(a, SocketAddrV4 { ip: [10, 0, 0, 2], port: 7789 });
        assert_eq!(a.to_string(), "10.0.0.2:7789");
        assert_eq!(parse_ipv4_port("0.0.0.0:1").unwrap().ip, [0, 0, 0, 0]);
        assert_eq!(parse_ipv4_port("255.255.255.255:65535").unwrap().port, 65535);
        let cases = [
            ("10.0.0.2", AddrError::MissingPort),
            ("10.0.0.2:", AddrError::BadPort),
            ("10.0.0.2:0", AddrError::BadPort),
            ("10.0.0.2:65536", AddrError::BadPort),
            ("10.0.0.2:080", AddrError::BadPort),
            ("10.0.0.2:x", AddrError::BadPort),
            ("10.0.0:1", AddrError::BadHost),
            ("10.0.0.2.5:1", AddrError::BadHost),
            ("10.0.0.256:1", AddrError::BadHost),
            ("10.0.0.010:1", AddrError::BadHost),
            ("10..0.2:1", AddrError::BadHost),
            ("host.example:1", AddrError::BadHost),
            ("[::1]:1", AddrError::BadHost),
            (":1", AddrError::BadHost),
        ];
        for (s, e) in cases {
            assert_eq!(parse_ipv4_port(s), Err(e), "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn u64_round_trips(v: u64) {
            prop_assert_eq!(parse_u64(&v.to_string()), Ok(v));
        }

        #[test]
        fn u64_agrees_with_std(s in "[0-9+ -]{0,22}") {
            let ours = parse_u64(&s).ok();
            let std_ok = s.bytes().all(|c| c.is_ascii_digit()) && !s.is_empty();
            prop_assert_eq!(ours, if std_ok { s.parse::<u64>().ok() } else { None });
        }

        #[test]
        fn addr_round_trips(ip: [u8; 4], port in 1u16..) {
            let a = SocketAddrV4 { ip, port };
            prop_assert_eq!(parse_ipv4_port(&a.to_string()), Ok(a));
        }

        #[test]
        fn addr_never_panics(s in "\\PC{0,30}") {
            let _ = parse_ipv4_port(&s);
        }
    }
}
