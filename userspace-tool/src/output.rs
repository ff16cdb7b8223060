//! What a command hands back to `main` ([`Outcome`]), progress bars, and time and size
//! formatting shared by the commands.

use crate::error::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The result of a command: its document for `--json`, its text otherwise, and the exit
/// status (0 unless the command succeeded with a reservation, like `status` naming an unknown
/// device).
#[derive(Debug, Default)]
pub struct Outcome {
    /// The `--json` document.
    pub json: Option<serde_json::Value>,
    /// The text output (printed as is).
    pub text: String,
    /// Exit status.
    pub code: u8,
}

impl Outcome {
    /// An outcome with a JSON document and a text rendering.
    pub fn new(json: &impl Serialize, text: String) -> Result<Self> {
        Ok(Self {
            json: Some(
                serde_json::to_value(json)
                    .map_err(|e| Error::op(format!("cannot encode JSON: {e}")))?,
            ),
            text,
            code: 0,
        })
    }

    /// A command that printed as it went (a daemon loop): nothing more to print.
    pub fn streamed() -> Self {
        Self::default()
    }

    /// The rendering to print: pretty JSON (with a final newline) or the text.
    pub fn render(&self, json: bool) -> Result<String> {
        match (&self.json, json) {
            (Some(v), true) => {
                let mut s = serde_json::to_string_pretty(v)
                    .map_err(|e| Error::op(format!("cannot encode JSON: {e}")))?;
                s.push('\n');
                Ok(s)
            }
            _ => Ok(self.text.clone()),
        }
    }
}

/// One JSON line (for streams of events).
pub fn json_line(v: &impl Serialize) -> String {
    serde_json::to_string(v)
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode JSON: {e}\"}}"))
}

/// A progress bar on stderr (drawn only when stderr is a terminal) over `len` units, with
/// `template` (an indicatif template; a bad one falls back to the default style).
pub fn bar(len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Template for byte counts.
pub const BYTES_TEMPLATE: &str = "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";
/// Template for block counts.
pub const BLOCKS_TEMPLATE: &str = "{msg} [{bar:40}] {pos}/{len} blocks, {elapsed}";
/// Template for an open-ended wait.
pub const SPINNER_TEMPLATE: &str = "{spinner} {msg} ({elapsed})";

/// Now, in nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 UTC time, to the second, of `ns` since the Unix epoch.
pub fn rfc3339(ns: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

/// Compact UTC time for names: `20261202T130405Z`.
pub fn compact_time(ns: u64) -> String {
    rfc3339(ns)
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

/// A byte count for people: `64.0 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A duration given on the command line: humantime syntax (`90s`, `5m`, `1h 30m`, `7d`), or a
/// bare number of seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| {
        format!("invalid duration \"{s}\": {e} (examples: 30s, 5m, 1h 30m, 7d; a bare number is seconds)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let ns = 1_796_216_645_123_456_789; // 2026-12-02T13:04:05.123Z
        assert_eq!(rfc3339(ns), "2026-12-02T13:04:05Z");
        assert_eq!(compact_time(ns), "20261202T130405Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert!(now_ns() > ns / 2);
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "x", "-5", "5 parsecs"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.starts_with("invalid duration"), "{bad}: {e}");
        }
    }

    #[test]
    fn outcome_renders_json_or_text() {
        let o = Outcome::new(&serde_json::json!({"a": 1}), "text\n".into()).unwrap();
        assert_eq!(o.render(false).unwrap(), "text\n");
        assert_eq!(o.render(true).unwrap(), "{\n  \"a\": 1\n}\n");
        assert_eq!(Outcome::streamed().render(true).unwrap(), "");
    }
}
