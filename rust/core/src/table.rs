// SPDX-License-Identifier: GPL-2.0

//! Table-line grammars of the two targets, shared by the kernel constructors and the CLI.
//!
//! Both follow the device-mapper convention `<fixed args> <#opt_args> [opt_args...]`, where
//! `#opt_args` counts words, not options (`2 mode writeback` is one option of two words).
//! Parsing never allocates: device paths are borrowed from the argument list. Formatting prints
//! the line back in a canonical order with only the options that were given, so
//! `parse(format(t)) == t`.

use crate::error::Error;
use crate::parse::{parse_ipv4_port, parse_u32, SocketAddrV4};
use core::fmt;

/// Upper bound on optional-argument words (a sanity bound, far above what any line needs).
pub const MAX_OPT_ARGS: u32 = 32;

fn opt_count<'a>(args: &mut impl Iterator<Item = &'a str>) -> Result<u32, Error> {
    let n = args.next().ok_or(err!("Missing optional argument count"))?;
    match parse_u32(n) {
        Ok(n) if n <= MAX_OPT_ARGS => Ok(n),
        _ => Err(err!("Invalid optional argument count")),
    }
}

/// Reads the value word of an option, counting it against the remaining optional words.
fn opt_value<'a>(
    args: &mut impl Iterator<Item = &'a str>,
    left: &mut u32,
) -> Result<&'a str, Error> {
    if *left == 0 {
        return Err(err!("Missing value for optional argument"));
    }
    *left -= 1;
    args.next().ok_or(err!("Optional argument count exceeds the arguments given"))
}

fn set_once<T>(slot: &mut Option<T>, v: T) -> Result<(), Error> {
    if slot.is_some() {
        return Err(err!("Duplicate optional argument"));
    }
    *slot = Some(v);
    Ok(())
}

fn no_more<'a>(args: &mut impl Iterator<Item = &'a str>) -> Result<(), Error> {
    match args.next() {
        Some(_) => Err(err!("Too many arguments (check the optional argument count)")),
        None => Ok(()),
    }
}

fn ranged(s: &str, lo: u32, hi: u32, e: Error) -> Result<u32, Error> {
    match parse_u32(s) {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(e),
    }
}

// ------------------------------------------------------------------------------------------------
// wbcache

/// Cache block size bounds in bytes.
pub const WBCACHE_MIN_BLOCK: u32 = 512;
/// Largest cache block.
pub const WBCACHE_MAX_BLOCK: u32 = 65536;

/// Write policy of dm-wbcache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// Acknowledge from the cache, write back in the background.
    Writeback,
    /// Write to cache and origin before acknowledging.
    Writethrough,
    /// Write back epoch by epoch, so the origin is crash-consistent at an epoch boundary.
    Ordered,
}

impl CacheMode {
    /// Parses a mode word.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "writeback" => Ok(Self::Writeback),
            "writethrough" => Ok(Self::Writethrough),
            "ordered" => Ok(Self::Ordered),
            _ => Err(err!("Invalid mode: must be writeback, writethrough or ordered")),
        }
    }

    /// The mode word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Writeback => "writeback",
            Self::Writethrough => "writethrough",
            Self::Ordered => "ordered",
        }
    }
}

/// Optional arguments of dm-wbcache, as given (`None` = not given, the default applies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WbcacheOptions {
    /// Start writeback above this percentage of dirty blocks (default 50).
    pub high_watermark: Option<u32>,
    /// Stop writeback below this percentage (default 45).
    pub low_watermark: Option<u32>,
    /// Concurrent writeback I/Os (default 64).
    pub writeback_jobs: Option<u32>,
    /// Write back blocks dirty for longer than this many milliseconds (default: no limit).
    pub max_age_ms: Option<u32>,
    /// Write policy (default writeback).
    pub mode: Option<CacheMode>,
    /// Write back everything on suspend.
    pub flush_on_suspend: bool,
}

impl WbcacheOptions {
    /// Default high watermark, percent.
    pub const DEFAULT_HIGH: u32 = 50;
    /// Default low watermark, percent.
    pub const DEFAULT_LOW: u32 = 45;
    /// Default writeback concurrency.
    pub const DEFAULT_JOBS: u32 = 64;

    /// Effective high watermark.
    pub fn high(&self) -> u32 {
        self.high_watermark.unwrap_or(Self::DEFAULT_HIGH)
    }

    /// Effective low watermark.
    pub fn low(&self) -> u32 {
        self.low_watermark.unwrap_or(Self::DEFAULT_LOW)
    }

    /// Effective writeback concurrency.
    pub fn jobs(&self) -> u32 {
        self.writeback_jobs.unwrap_or(Self::DEFAULT_JOBS)
    }

    /// Effective mode.
    pub fn mode(&self) -> CacheMode {
        self.mode.unwrap_or(CacheMode::Writeback)
    }

    fn parse<'a>(args: &mut impl Iterator<Item = &'a str>) -> Result<Self, Error> {
        let mut o = Self::default();
        let mut left = opt_count(args)?;
        while left > 0 {
            left -= 1;
            let key = args.next().ok_or(err!("Optional argument count exceeds the arguments given"))?;
            match key {
                "high_watermark" => {
                    let v = ranged(opt_value(args, &mut left)?, 0, 100, err!("Invalid high_watermark: must be 0..100"))?;
                    set_once(&mut o.high_watermark, v)?
                }
                "low_watermark" => {
                    let v = ranged(opt_value(args, &mut left)?, 0, 100, err!("Invalid low_watermark: must be 0..100"))?;
                    set_once(&mut o.low_watermark, v)?
                }
                "writeback_jobs" => {
                    let v = ranged(opt_value(args, &mut left)?, 1, 65536, err!("Invalid writeback_jobs: must be 1..65536"))?;
                    set_once(&mut o.writeback_jobs, v)?
                }
                "max_age" => {
                    let v = ranged(opt_value(args, &mut left)?, 1, 86_400_000, err!("Invalid max_age: must be 1..86400000 ms"))?;
                    set_once(&mut o.max_age_ms, v)?
                }
                "mode" => {
                    let v = CacheMode::parse(opt_value(args, &mut left)?)?;
                    set_once(&mut o.mode, v)?
                }
                "flush_on_suspend" => {
                    if o.flush_on_suspend {
                        return Err(err!("Duplicate optional argument"));
                    }
                    o.flush_on_suspend = true;
                }
                _ => return Err(err!("Unrecognised optional argument")),
            }
        }
        if o.low() > o.high() {
            return Err(err!("low_watermark must not exceed high_watermark"));
        }
        Ok(o)
    }

    fn words(&self) -> u32 {
        2 * (self.high_watermark.is_some() as u32
            + self.low_watermark.is_some() as u32
            + self.writeback_jobs.is_some() as u32
            + self.max_age_ms.is_some() as u32
            + self.mode.is_some() as u32)
            + self.flush_on_suspend as u32
    }
}

impl fmt::Display for WbcacheOptions {
    /// `<#opt_args> [opt_args...]`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.words())?;
        if let Some(v) = self.high_watermark {
            write!(f, " high_watermark {v}")?;
        }
        if let Some(v) = self.low_watermark {
            write!(f, " low_watermark {v}")?;
        }
        if let Some(v) = self.writeback_jobs {
            write!(f, " writeback_jobs {v}")?;
        }
        if let Some(v) = self.max_age_ms {
            write!(f, " max_age {v}")?;
        }
        if let Some(m) = self.mode {
            write!(f, " mode {}", m.as_str())?;
        }
        if self.flush_on_suspend {
            f.write_str(" flush_on_suspend")?;
        }
        Ok(())
    }
}

/// A dm-wbcache table line (after `<start> <len> wbcache`):
/// `<origin_dev> <cache_dev> <block_size> <#opt_args> [opt_args...]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WbcacheTable<'a> {
    /// Origin (slow, replicated) device path or `major:minor`.
    pub origin: &'a str,
    /// Cache (fast) device path or `major:minor`.
    pub cache: &'a str,
    /// Cache block size in bytes.
    pub block_size: u32,
    /// Optional arguments.
    pub opts: WbcacheOptions,
}

impl<'a> WbcacheTable<'a> {
    /// Parses the arguments that follow the target name.
    pub fn parse(args: &mut impl Iterator<Item = &'a str>) -> Result<Self, Error> {
        let origin = args.next().ok_or(err!("Missing origin device"))?;
        let cache = args.next().ok_or(err!("Missing cache device"))?;
        if origin == cache {
            return Err(err!("Origin and cache must be different devices"));
        }
        let bs = args.next().ok_or(err!("Missing block size"))?;
        let block_size = match parse_u32(bs) {
            Ok(v) if v.is_power_of_two() && (WBCACHE_MIN_BLOCK..=WBCACHE_MAX_BLOCK).contains(&v) => v,
            _ => return Err(err!("Invalid block size: must be a power of two from 512 to 65536")),
        };
        let opts = WbcacheOptions::parse(args)?;
        no_more(args)?;
        Ok(Self { origin, cache, block_size, opts })
    }
}

impl fmt::Display for WbcacheTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} {}", self.origin, self.cache, self.block_size, self.opts)
    }
}

// ------------------------------------------------------------------------------------------------
// repl

/// Role of a dm-repl device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Writes locally and sends every write to the peer.
    Primary,
    /// Receives the stream and applies it; refuses writes from above.
    Secondary,
}

impl Role {
    /// The role word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
        }
    }
}

/// Replication protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Acknowledge after the local write and queueing.
    Async,
    /// Acknowledge after the secondary has the write durable.
    Sync,
}

impl Protocol {
    /// The protocol word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Async => "async",
            Self::Sync => "sync",
        }
    }
}

/// Longest keyring key description accepted for `auth`.
pub const MAX_KEY_DESC: usize = 255;

/// Optional arguments of dm-repl, as given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplOptions<'a> {
    /// `protocol async|sync` (default async).
    pub protocol: Option<Protocol>,
    /// Send-queue memory cap in KiB (default 16384).
    pub max_inflight_kb: Option<u32>,
    /// Metadata device (dirty bitmap and state).
    pub meta_dev: Option<&'a str>,
    /// Description of the logon/user key in the kernel keyring holding the shared secret.
    pub auth: Option<&'a str>,
    /// Size of the marker region at the end of the device, in sectors (default 8).
    pub marker_sectors: Option<u32>,
    /// Secondary: stop applying frames after a marker until thawed.
    pub freeze_on_marker: bool,
    /// Secondary: thaw automatically after this many milliseconds.
    pub freeze_timeout_ms: Option<u32>,
}

impl ReplOptions<'_> {
    /// Default send-queue cap, KiB.
    pub const DEFAULT_INFLIGHT_KB: u32 = 16384;
    /// Default marker region, sectors (one 4 KiB block).
    pub const DEFAULT_MARKER_SECTORS: u32 = 8;

    /// Effective protocol.
    pub fn protocol(&self) -> Protocol {
        self.protocol.unwrap_or(Protocol::Async)
    }

    /// Effective marker region size in sectors.
    pub fn marker_sectors(&self) -> u32 {
        self.marker_sectors.unwrap_or(Self::DEFAULT_MARKER_SECTORS)
    }

    /// Effective send-queue cap in KiB.
    pub fn max_inflight_kb(&self) -> u32 {
        self.max_inflight_kb.unwrap_or(Self::DEFAULT_INFLIGHT_KB)
    }

    fn words(&self) -> u32 {
        2 * (self.protocol.is_some() as u32
            + self.max_inflight_kb.is_some() as u32
            + self.meta_dev.is_some() as u32
            + self.auth.is_some() as u32
            + self.marker_sectors.is_some() as u32
            + self.freeze_timeout_ms.is_some() as u32)
            + self.freeze_on_marker as u32
    }
}

impl fmt::Display for ReplOptions<'_> {
    /// `<#opt_args> [opt_args...]`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.words())?;
        if let Some(p) = self.protocol {
            write!(f, " protocol {}", p.as_str())?;
        }
        if let Some(v) = self.max_inflight_kb {
            write!(f, " max_inflight_kb {v}")?;
        }
        if let Some(d) = self.meta_dev {
            write!(f, " meta_dev {d}")?;
        }
        if let Some(k) = self.auth {
            write!(f, " auth {k}")?;
        }
        if let Some(v) = self.marker_sectors {
            write!(f, " marker_sectors {v}")?;
        }
        if self.freeze_on_marker {
            f.write_str(" freeze_on_marker")?;
        }
        if let Some(v) = self.freeze_timeout_ms {
            write!(f, " freeze_timeout {v}")?;
        }
        Ok(())
    }
}

/// A dm-repl table line (after `<start> <len> repl`):
/// `primary|secondary <data_dev> <host:port> <#opt_args> [opt_args...]`.
///
/// For a primary the address is the peer to connect to; for a secondary it is the address to
/// listen on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplTable<'a> {
    /// Role.
    pub role: Role,
    /// Local data device path or `major:minor`.
    pub data_dev: &'a str,
    /// Peer (primary) or listen (secondary) address.
    pub addr: SocketAddrV4,
    /// Optional arguments.
    pub opts: ReplOptions<'a>,
}

impl<'a> ReplTable<'a> {
    /// Parses the arguments that follow the target name.
    pub fn parse(args: &mut impl Iterator<Item = &'a str>) -> Result<Self, Error> {
        let role = match args.next() {
            Some("primary") => Role::Primary,
            Some("secondary") => Role::Secondary,
            Some(_) => return Err(err!("Invalid role: must be primary or secondary")),
            None => return Err(err!("Missing role (primary or secondary)")),
        };
        let data_dev = args.next().ok_or(err!("Missing data device"))?;
        let addr = args.next().ok_or(err!("Missing address (a.b.c.d:port)"))?;
        let addr = parse_ipv4_port(addr)
            .map_err(|_| err!("Invalid address: must be an IPv4 a.b.c.d:port with port 1..65535"))?;
        let mut o = ReplOptions::default();
        let mut left = opt_count(args)?;
        while left > 0 {
            left -= 1;
            let key = args.next().ok_or(err!("Optional argument count exceeds the arguments given"))?;
            match key {
                "protocol" => {
                    let p = match opt_value(args, &mut left)? {
                        "async" => Protocol::Async,
                        "sync" => Protocol::Sync,
                        _ => return Err(err!("Invalid protocol: must be async or sync")),
                    };
                    set_once(&mut o.protocol, p)?
                }
                "max_inflight_kb" => {
                    let v = ranged(opt_value(args, &mut left)?, 64, 4_194_304, err!("Invalid max_inflight_kb: must be 64..4194304"))?;
                    set_once(&mut o.max_inflight_kb, v)?
                }
                "meta_dev" => {
                    let d = opt_value(args, &mut left)?;
                    if d == data_dev {
                        return Err(err!("meta_dev must differ from the data device"));
                    }
                    set_once(&mut o.meta_dev, d)?
                }
                "auth" => {
                    let k = opt_value(args, &mut left)?;
                    if k.is_empty() || k.len() > MAX_KEY_DESC || !k.bytes().all(|c| c.is_ascii_graphic()) {
                        return Err(err!("Invalid auth key description"));
                    }
                    set_once(&mut o.auth, k)?
                }
                "marker_sectors" => {
                    let v = ranged(opt_value(args, &mut left)?, 8, 2048, err!("Invalid marker_sectors: must be 8..2048"))?;
                    if v % 8 != 0 {
                        return Err(err!("Invalid marker_sectors: must be a multiple of 8 (4 KiB)"));
                    }
                    set_once(&mut o.marker_sectors, v)?
                }
                "freeze_on_marker" => {
                    if o.freeze_on_marker {
                        return Err(err!("Duplicate optional argument"));
                    }
                    o.freeze_on_marker = true;
                }
                "freeze_timeout" => {
                    let v = ranged(opt_value(args, &mut left)?, 1, 86_400_000, err!("Invalid freeze_timeout: must be 1..86400000 ms"))?;
                    set_once(&mut o.freeze_timeout_ms, v)?
                }
                _ => return Err(err!("Unrecognised optional argument")),
            }
        }
        if role == Role::Primary && (o.freeze_on_marker || o.freeze_timeout_ms.is_some()) {
            return Err(err!("freeze_on_marker and freeze_timeout are secondary options"));
        }
        no_more(args)?;
        Ok(Self { role, data_dev, addr, opts: o })
    }
}

impl fmt::Display for ReplTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} {}", self.role.as_str(), self.data_dev, self.addr, self.opts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

    fn wb(line: &str) -> Result<WbcacheTable<'_>, Error> {
        WbcacheTable::parse(&mut line.split_ascii_whitespace())
    }

    fn repl(line: &str) -> Result<ReplTable<'_>, Error> {
        ReplTable::parse(&mut line.split_ascii_whitespace())
    }

    #[test]
    fn wbcache_good_lines() {
        let t = wb("/dev/a /dev/b 4096 0").unwrap();
        assert_eq!((t.origin, t.cache, t.block_size), ("/dev/a", "/dev/b", 4096));
        assert_eq!(t.opts, WbcacheOptions::default());
        assert_eq!(t.opts.mode(), CacheMode::Writeback);
        let line = "/dev/a /dev/b 512 11 high_watermark 60 low_watermark 10 writeback_jobs 8 max_age 1000 mode ordered flush_on_suspend";
        let t = wb(line).unwrap();
        assert_eq!(t.opts.high(), 60);
        assert_eq!(t.opts.low(), 10);
        assert_eq!(t.opts.mode(), CacheMode::Ordered);
        assert!(t.opts.flush_on_suspend);
        assert_eq!(t.to_string(), line);
        // options in another order print canonically
        let t = wb("a b 4096 3 flush_on_suspend mode writethrough").unwrap();
        assert_eq!(t.to_string(), "a b 4096 3 mode writethrough flush_on_suspend");
    }

    #[test]
    fn wbcache_bad_lines_each_have_their_own_error() {
        let cases = [
            ("", "Missing origin device"),
            ("/dev/a", "Missing cache device"),
            ("/dev/a /dev/a 4096 0", "Origin and cache must be different devices"),
            ("/dev/a /dev/b", "Missing block size"),
            ("/dev/a /dev/b 4095 0", "Invalid block size: must be a power of two from 512 to 65536"),
            ("/dev/a /dev/b 256 0", "Invalid block size: must be a power of two from 512 to 65536"),
            ("/dev/a /dev/b 131072 0", "Invalid block size: must be a power of two from 512 to 65536"),
            ("/dev/a /dev/b 4k 0", "Invalid block size: must be a power of two from 512 to 65536"),
            ("/dev/a /dev/b 4096", "Missing optional argument count"),
            ("/dev/a /dev/b 4096 x", "Invalid optional argument count"),
            ("/dev/a /dev/b 4096 33", "Invalid optional argument count"),
            ("/dev/a /dev/b 4096 2 mode", "Optional argument count exceeds the arguments given"),
            ("/dev/a /dev/b 4096 1 mode writeback", "Missing value for optional argument"),
            ("/dev/a /dev/b 4096 0 extra", "Too many arguments (check the optional argument count)"),
            ("/dev/a /dev/b 4096 1 bogus", "Unrecognised optional argument"),
            ("/dev/a /dev/b 4096 2 high_watermark 101", "Invalid high_watermark: must be 0..100"),
            ("/dev/a /dev/b 4096 2 low_watermark -1", "Invalid low_watermark: must be 0..100"),
            ("/dev/a /dev/b 4096 4 high_watermark 10 low_watermark 20", "low_watermark must not exceed high_watermark"),
            ("/dev/a /dev/b 4096 2 writeback_jobs 0", "Invalid writeback_jobs: must be 1..65536"),
            ("/dev/a /dev/b 4096 2 max_age 99999999999", "Invalid max_age: must be 1..86400000 ms"),
            ("/dev/a /dev/b 4096 2 mode fast", "Invalid mode: must be writeback, writethrough or ordered"),
            ("/dev/a /dev/b 4096 4 mode ordered mode ordered", "Duplicate optional argument"),
            ("/dev/a /dev/b 4096 2 flush_on_suspend flush_on_suspend", "Duplicate optional argument"),
        ];
        for (line, msg) in cases {
            assert_eq!(wb(line).map(|_| ()).unwrap_err().as_str(), msg, "{line:?}");
        }
    }

    #[test]
    fn repl_good_and_bad_lines() {
        let t = repl("primary /dev/x 10.0.0.2:7789 0").unwrap();
        assert_eq!(t.role, Role::Primary);
        assert_eq!(t.opts.protocol(), Protocol::Async);
        let line = "secondary /dev/x 0.0.0.0:7789 13 protocol sync max_inflight_kb 1024 meta_dev /dev/m auth wbrepl:k1 marker_sectors 16 freeze_on_marker freeze_timeout 5000";
        let t = repl(line).unwrap();
        assert_eq!(t.to_string(), line);
        assert_eq!(t.opts.marker_sectors(), 16);
        let cases = [
            ("", "Missing role (primary or secondary)"),
            ("master /dev/x 1.2.3.4:5 0", "Invalid role: must be primary or secondary"),
            ("primary", "Missing data device"),
            ("primary /dev/x", "Missing address (a.b.c.d:port)"),
            ("primary /dev/x localhost:7789 0", "Invalid address: must be an IPv4 a.b.c.d:port with port 1..65535"),
            ("primary /dev/x 10.0.0.2:0 0", "Invalid address: must be an IPv4 a.b.c.d:port with port 1..65535"),
            ("primary /dev/x 10.0.0.2 0", "Invalid address: must be an IPv4 a.b.c.d:port with port 1..65535"),
            ("primary /dev/x 1.2.3.4:5 2 protocol C", "Invalid protocol: must be async or sync"),
            ("primary /dev/x 1.2.3.4:5 2 max_inflight_kb 1", "Invalid max_inflight_kb: must be 64..4194304"),
            ("primary /dev/x 1.2.3.4:5 2 meta_dev /dev/x", "meta_dev must differ from the data device"),
            ("primary /dev/x 1.2.3.4:5 1 auth", "Missing value for optional argument"),
            ("primary /dev/x 1.2.3.4:5 2 marker_sectors 4", "Invalid marker_sectors: must be 8..2048"),
            ("primary /dev/x 1.2.3.4:5 2 marker_sectors 12", "Invalid marker_sectors: must be a multiple of 8 (4 KiB)"),
            ("primary /dev/x 1.2.3.4:5 1 freeze_on_marker", "freeze_on_marker and freeze_timeout are secondary options"),
            ("secondary /dev/x 1.2.3.4:5 2 freeze_timeout 0", "Invalid freeze_timeout: must be 1..86400000 ms"),
            ("secondary /dev/x 1.2.3.4:5 1 nodelay", "Unrecognised optional argument"),
            ("secondary /dev/x 1.2.3.4:5 0 1", "Too many arguments (check the optional argument count)"),
        ];
        for (line, msg) in cases {
            assert_eq!(repl(line).map(|_| ()).unwrap_err().as_str(), msg, "{line:?}");
        }
        let long = "k".repeat(MAX_KEY_DESC + 1);
        let line = std::format!("primary /dev/x 1.2.3.4:5 2 auth {long}");
        assert_eq!(repl(&line).unwrap_err().as_str(), "Invalid auth key description");
    }

    fn arb_wb_opts() -> impl Strategy<Value = WbcacheOptions> {
        (
            proptest::option::of(0u32..=100),
            proptest::option::of(0u32..=100),
            proptest::option::of(1u32..=65536),
            proptest::option::of(1u32..=86_400_000),
            proptest::option::of(prop_oneof![
                Just(CacheMode::Writeback),
                Just(CacheMode::Writethrough),
                Just(CacheMode::Ordered)
            ]),
            any::<bool>(),
        )
            .prop_map(|(h, l, j, a, m, f)| WbcacheOptions {
                high_watermark: h,
                low_watermark: l,
                writeback_jobs: j,
                max_age_ms: a,
                mode: m,
                flush_on_suspend: f,
            })
            .prop_filter("low <= high", |o| o.low() <= o.high())
    }

    proptest! {
        #[test]
        fn wbcache_format_parse_round_trip(opts in arb_wb_opts(), shift in 9u32..=16) {
            let t = WbcacheTable { origin: "/dev/o", cache: "/dev/c", block_size: 1 << shift, opts };
            let s = t.to_string();
            prop_assert_eq!(wb(&s), Ok(t));
        }

        #[test]
        fn repl_format_parse_round_trip(
            primary: bool, ip: [u8; 4], port in 1u16.., sync in proptest::option::of(any::<bool>()),
            kb in proptest::option::of(64u32..=4_194_304), ms in proptest::option::of(1u32..=256),
            freeze: bool, ft in proptest::option::of(1u32..=86_400_000), auth: bool, meta: bool,
        ) {
            let secondary = !primary;
            let opts = ReplOptions {
                protocol: sync.map(|s| if s { Protocol::Sync } else { Protocol::Async }),
                max_inflight_kb: kb,
                meta_dev: meta.then_some("/dev/meta"),
                auth: auth.then_some("wbrepl:key"),
                marker_sectors: ms.map(|m| m * 8),
                freeze_on_marker: freeze && secondary,
                freeze_timeout_ms: ft.filter(|_| secondary),
            };
            let t = ReplTable {
                role: if primary { Role::Primary } else { Role::Secondary },
                data_dev: "/dev/d",
                addr: SocketAddrV4 { ip, port },
                opts,
            };
            let s = t.to_string();
            prop_assert_eq!(repl(&s), Ok(t));
        }

        #[test]
        fn parsers_never_panic(words in proptest::collection::vec("[a-z0-9_:./-]{0,12}", 0..16)) {
            let line: String = words.join(" ");
            let _ = wb(&line);
            let _ = repl(&line);
            let v: Vec<&str> = words.iter().map(|s| s.as_str()).collect();
            let _ = WbcacheTable::parse(&mut v.iter().copied());
        }
    }
}
