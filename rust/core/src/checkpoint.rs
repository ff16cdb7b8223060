// SPDX-License-Identifier: GPL-2.0

//! dm-wbcache checkpoints: the `checkpoint` message's arguments and its answer (see
//! `docs/checkpoints.md`).
//!
//! `checkpoint <hold|writethrough|ordered> [<label>|- [<timeout_ms>]]`

use crate::marker::{label_from, LabelWord};
use crate::parse::parse_u32;
use crate::wire::LABEL_LEN;
use core::fmt;

/// What happens to new writes while a checkpoint drains the closed epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpMode {
    /// New writes stay in the cache (the next epoch) and none is written back until the marker
    /// is down.
    Hold,
    /// New writes go to the cache and to the origin before they complete.
    Writethrough,
    /// The cache is in ordered mode: the epoch is closed and the marker follows it in writeback
    /// order.
    Ordered,
}

impl CpMode {
    /// Parses a mode word.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hold" => Some(Self::Hold),
            "writethrough" => Some(Self::Writethrough),
            "ordered" => Some(Self::Ordered),
            _ => None,
        }
    }

    /// The mode word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hold => "hold",
            Self::Writethrough => "writethrough",
            Self::Ordered => "ordered",
        }
    }
}

/// Default time a checkpoint may take.
pub const DEFAULT_TIMEOUT_MS: u32 = 60_000;
/// Longest timeout accepted (a day).
pub const MAX_TIMEOUT_MS: u32 = 86_400_000;

/// A parsed `checkpoint` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpRequest {
    /// Mode.
    pub mode: CpMode,
    /// Label for the marker record (NUL-padded; all zero for none).
    pub label: [u8; LABEL_LEN],
    /// Give up after this many milliseconds.
    pub timeout_ms: u32,
}

/// Why a `checkpoint` message was refused (the text goes to the kernel log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpArgError {
    /// No or an unknown mode.
    Mode,
    /// A label that is not printable ASCII of at most 64 bytes.
    Label,
    /// A timeout that is not a number in 1..=86400000.
    Timeout,
    /// More words than `<mode> <label> <timeout_ms>`.
    TooMany,
}

impl CpArgError {
    /// What is wrong, for the kernel log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mode => "mode must be hold, writethrough or ordered",
            Self::Label => "label must be printable ASCII without spaces, at most 64 bytes ('-' for none)",
            Self::Timeout => "timeout_ms must be 1..86400000",
            Self::TooMany => "too many arguments (checkpoint <mode> [<label>|- [<timeout_ms>]])",
        }
    }
}

impl CpRequest {
    /// Parses the words after `checkpoint`.
    pub fn parse<'a>(mut words: impl Iterator<Item = &'a str>) -> Result<Self, CpArgError> {
        let mode = words.next().and_then(CpMode::parse).ok_or(CpArgError::Mode)?;
        let label = match words.next() {
            None | Some("-") => [0u8; LABEL_LEN],
            // Message words never hold spaces; refuse other blanks too (status prints labels).
            Some(l) if l.bytes().all(|b| b.is_ascii_graphic()) => label_from(l).ok_or(CpArgError::Label)?,
            Some(_) => return Err(CpArgError::Label),
        };
        let timeout_ms = match words.next() {
            None => DEFAULT_TIMEOUT_MS,
            Some(t) => match parse_u32(t) {
                Ok(v) if (1..=MAX_TIMEOUT_MS).contains(&v) => v,
                _ => return Err(CpArgError::Timeout),
            },
        };
        if words.next().is_some() {
            return Err(CpArgError::TooMany);
        }
        Ok(Self { mode, label, timeout_ms })
    }
}

/// How a checkpoint ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpOutcome {
    /// The marker is down.
    Ok,
    /// The timeout passed first: nothing is held any more, no marker was written.
    Timeout,
    /// The `abort` message (or a suspend) ended it: no marker was written.
    Aborted,
    /// A writeback, the cache or the marker write failed: no marker (or a failed one).
    Failed,
}

impl CpOutcome {
    /// The status word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Timeout => "timeout",
            Self::Aborted => "aborted",
            Self::Failed => "failed",
        }
    }
}

/// The answer to a successful `checkpoint` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpReport {
    /// Marker id (the epoch the checkpoint closed).
    pub id: u64,
    /// Mode.
    pub mode: CpMode,
    /// Label.
    pub label: [u8; LABEL_LEN],
    /// Blocks of the closed epochs that were still in the cache when it began.
    pub blocks: u64,
    /// Time to write them back.
    pub drain_ms: u64,
    /// Time to write the marker.
    pub marker_ms: u64,
    /// Time from the request to the marker being down.
    pub total_ms: u64,
}

impl fmt::Display for CpReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "id {} mode {} label {} blocks {} drain_ms {} marker_ms {} total_ms {}",
            self.id,
            self.mode.as_str(),
            LabelWord(&self.label),
            self.blocks,
            self.drain_ms,
            self.marker_ms,
            self.total_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    fn p(s: &str) -> Result<CpRequest, CpArgError> {
        CpRequest::parse(s.split_whitespace())
    }

    #[test]
    fn arguments_parse_strictly() {
        let r = p("hold").unwrap();
        assert_eq!((r.mode, r.label, r.timeout_ms), (CpMode::Hold, [0; LABEL_LEN], DEFAULT_TIMEOUT_MS));
        let r = p("writethrough nightly-1 5000").unwrap();
        assert_eq!(r.mode, CpMode::Writethrough);
        assert_eq!(&r.label[..9], b"nightly-1");
        assert_eq!(r.timeout_ms, 5000);
        assert_eq!(p("ordered - 1").unwrap().label, [0; LABEL_LEN]);
        assert_eq!(p("").unwrap_err(), CpArgError::Mode);
        assert_eq!(p("flush").unwrap_err(), CpArgError::Mode);
        assert_eq!(p("hold x 0").unwrap_err(), CpArgError::Timeout);
        assert_eq!(p("hold x 86400001").unwrap_err(), CpArgError::Timeout);
        assert_eq!(p("hold x 10s").unwrap_err(), CpArgError::Timeout);
        assert_eq!(p("hold x 86400000").unwrap().timeout_ms, MAX_TIMEOUT_MS);
        assert_eq!(p("hold x 5 y").unwrap_err(), CpArgError::TooMany);
        assert_eq!(p(&format!("hold {}", "a".repeat(65))).unwrap_err(), CpArgError::Label);
        assert!(p(&format!("hold {}", "a".repeat(64))).is_ok());
        assert_eq!(CpRequest::parse(["hold", "tab\there"].into_iter()).unwrap_err(), CpArgError::Label);
        assert_eq!(CpRequest::parse(["hold", "é"].into_iter()).unwrap_err(), CpArgError::Label);
    }

    #[test]
    fn report_is_one_line_of_key_value_pairs() {
        let mut label = [0u8; LABEL_LEN];
        label[..3].copy_from_slice(b"a b");
        let r = CpReport { id: 7, mode: CpMode::Hold, label, blocks: 12, drain_ms: 30, marker_ms: 2, total_ms: 33 };
        assert_eq!(format!("{r}"), "id 7 mode hold label a_b blocks 12 drain_ms 30 marker_ms 2 total_ms 33");
        let r = CpReport { label: [0; LABEL_LEN], ..r };
        assert!(format!("{r}").contains(" label - "));
        for m in [CpMode::Hold, CpMode::Writethrough, CpMode::Ordered] {
            assert_eq!(CpMode::parse(m.as_str()), Some(m));
        }
    }
}
