// SPDX-License-Identifier: GPL-2.0

//! Checkpoint marker records: one 512-byte sector written into the marker region (the last
//! `marker_sectors` sectors) of a dm-repl device. dm-repl replicates such a write like any other
//! and also recognises it: the secondary records the marker once every earlier write is durable.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `WBRPMRK1` |
//! | 8 | 8 | id (u64, chosen by the writer, increasing) |
//! | 16 | 8 | time, nanoseconds since the Unix epoch |
//! | 24 | 64 | label: printable ASCII, NUL-padded |
//! | 88 | 4 | CRC-32C of bytes 0..88 |
//! | 92 | 420 | zero |

use crate::wbformat::{le32, le64, Crc32c};
use core::fmt;
use crate::wire::LABEL_LEN;

/// Record magic.
pub const MARKER_MAGIC: [u8; 8] = *b"WBRPMRK1";
/// Bytes of a record (one sector).
pub const RECORD_LEN: usize = 512;
const CRC_AT: usize = 24 + LABEL_LEN;

/// A marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkerRecord {
    /// Marker id.
    pub id: u64,
    /// Wall-clock time when it was made, ns since the Unix epoch.
    pub time_ns: u64,
    /// Label: printable ASCII, NUL-padded.
    pub label: [u8; LABEL_LEN],
}

/// Whether `label` is printable ASCII followed only by NULs.
pub fn label_ok(label: &[u8; LABEL_LEN]) -> bool {
    let text = label.iter().position(|&b| b == 0).unwrap_or(LABEL_LEN);
    label.iter().take(text).all(|&b| (0x20..0x7f).contains(&b)) && label.iter().skip(text).all(|&b| b == 0)
}

/// A label from text: printable ASCII, at most 64 bytes; `None` otherwise.
pub fn label_from(text: &str) -> Option<[u8; LABEL_LEN]> {
    let b = text.as_bytes();
    if b.len() > LABEL_LEN || !b.iter().all(|&c| (0x20..0x7f).contains(&c)) {
        return None;
    }
    let mut l = [0u8; LABEL_LEN];
    l.get_mut(..b.len())?.copy_from_slice(b);
    Some(l)
}

/// The label's text (up to the first NUL).
pub fn label_text(label: &[u8; LABEL_LEN]) -> &str {
    let n = label.iter().position(|&b| b == 0).unwrap_or(LABEL_LEN);
    core::str::from_utf8(label.get(..n).unwrap_or(&[])).unwrap_or("")
}

/// A label as one status/answer word: its text, or `-` when empty.
pub struct LabelWord<'a>(pub &'a [u8; LABEL_LEN]);

impl fmt::Display for LabelWord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.iter().position(|&b| b == 0).unwrap_or(LABEL_LEN);
        if n == 0 {
            return f.write_str("-");
        }
        // A record written by someone else may hold blanks: keep the output one word.
        for &b in self.0.iter().take(n) {
            let c = if b.is_ascii_graphic() { char::from(b) } else { '_' };
            fmt::Write::write_char(f, c)?;
        }
        Ok(())
    }
}

/// A marker id as one status word: the number, or `-` for none.
pub struct IdWord(pub Option<u64>);

impl fmt::Display for IdWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id}"),
            None => f.write_str("-"),
        }
    }
}

impl MarkerRecord {
    /// Encodes into one sector.
    pub fn encode(&self, crc: &impl Crc32c, out: &mut [u8; RECORD_LEN]) {
        out.fill(0);
        out[0..8].copy_from_slice(&MARKER_MAGIC);
        out[8..16].copy_from_slice(&self.id.to_le_bytes());
        out[16..24].copy_from_slice(&self.time_ns.to_le_bytes());
        out[24..CRC_AT].copy_from_slice(&self.label);
        let c = crc.append(0, &out[..CRC_AT]);
        out[CRC_AT..CRC_AT + 4].copy_from_slice(&c.to_le_bytes());
    }

    /// Decodes the first sector of `b`, if it holds a valid record (magic, CRC, label, zero
    /// padding); anything else is ordinary data.
    pub fn decode(b: &[u8], crc: &impl Crc32c) -> Option<Self> {
        let s: &[u8; RECORD_LEN] = b.get(..RECORD_LEN)?.try_into().ok()?;
        if s[0..8] != MARKER_MAGIC || s[CRC_AT + 4..].iter().any(|&x| x != 0) {
            return None;
        }
        if crc.append(0, &s[..CRC_AT]) != le32(s, CRC_AT) {
            return None;
        }
        let mut label = [0u8; LABEL_LEN];
        label.copy_from_slice(&s[24..CRC_AT]);
        if !label_ok(&label) {
            return None;
        }
        Some(Self { id: le64(s, 8), time_ns: le64(s, 16), label })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wbformat::tests::RefCrc;

    #[test]
    fn records_round_trip_and_everything_else_is_data() {
        let m = MarkerRecord { id: 42, time_ns: 1_700_000_000_000_000_000, label: label_from("nightly 2026-11-25").unwrap() };
        let mut s = [0u8; RECORD_LEN];
        m.encode(&RefCrc, &mut s);
        assert_eq!(MarkerRecord::decode(&s, &RefCrc), Some(m));
        assert_eq!(label_text(&m.label), "nightly 2026-11-25");
        for i in 0..RECORD_LEN * 8 {
            let mut t = s;
            t[i / 8] ^= 1 << (i % 8);
            assert_eq!(MarkerRecord::decode(&t, &RefCrc), None, "bit {i}");
        }
        assert_eq!(MarkerRecord::decode(&s[..511], &RefCrc), None);
        assert_eq!(MarkerRecord::decode(&[0u8; 4096], &RefCrc), None);
        assert!(label_from("tab\there").is_none() && label_from(&"x".repeat(65)).is_none());
        assert!(label_from(&"x".repeat(64)).is_some() && label_from("").is_some());
        assert_eq!(std::format!("{} {}", IdWord(Some(3)), IdWord(None)), "3 -");
        assert_eq!(std::format!("{}", LabelWord(&label_from("a b").unwrap())), "a_b");
        assert_eq!(std::format!("{}", LabelWord(&[0; LABEL_LEN])), "-");
    }
}
