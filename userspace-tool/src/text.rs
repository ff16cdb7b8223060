//! Human-readable rendering of a [`Report`]: one indented tree per stack, top layer first.
//!
//! ```text
//! wbc0 (253:1) wbcache: cache 7:1, block size 4096, mode writeback
//!   status: ok writeback 4096 blocks 16255 free 16251 dirty 4 writeback 0 ...
//!   `- repl0 (253:0) repl: primary, data 7:2, peer 10.0.0.2:7789, protocol async
//!        status: primary passthrough peer 10.0.0.2:7789 protocol async writes 3 refused 0
//! ```
//!
//! The format is for people; scripts should use `--json`.

use crate::stack::{ReplLayer, Report, WbcacheLayer};
use std::collections::BTreeMap;
use std::fmt::Write;

fn status_line(out: &mut String, indent: &str, status: Option<&str>) {
    let _ = writeln!(out, "{indent}status: {}", status.unwrap_or("(unavailable)"));
}

fn get<'a>(f: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    f.get(key).map_or("?", String::as_str)
}

/// The cache's fill and drain progress, when the status has them:
/// `cache: 10 of 100 blocks dirty, epoch 7; checkpoint hold 6: 77 blocks left (1500 ms)`.
pub fn cache_summary(w: &WbcacheLayer) -> Option<String> {
    let f = &w.status_fields;
    f.get("dirty")?;
    let mut s = format!(
        "cache: {} of {} blocks dirty, epoch {}",
        get(f, "dirty"),
        get(f, "blocks"),
        get(f, "epoch")
    );
    if let Some(cp) = &w.checkpoint {
        let id = cp.id.map_or("-".to_owned(), |i| i.to_string());
        if cp.running() {
            let _ = write!(
                s,
                "; checkpoint {} {id}: {} blocks left ({} ms)",
                cp.state, cp.left, cp.elapsed_ms
            );
        } else if let Some(last) = cp.last_id {
            let _ = write!(
                s,
                "; last checkpoint {last}: {} ({} ms)",
                cp.last_result.as_deref().unwrap_or("-"),
                cp.last_ms
            );
        } else {
            s.push_str("; no checkpoint yet");
        }
    }
    Some(s)
}

/// Replication progress and lag, when the status has them:
/// `replication: connected, lag 3 ms, in flight 2 frames / 8192 bytes, dirty 0 KiB, ...`.
pub fn repl_summary(r: &ReplLayer) -> Option<String> {
    let f = &r.status_fields;
    let state = r
        .status
        .as_deref()
        .and_then(|s| s.split_ascii_whitespace().nth(1))?;
    if r.role == "primary" {
        f.get("lag_ms")?;
        let mut s = format!(
            "replication: {state}, lag {} ms, in flight {} frames / {} bytes, dirty {} KiB, resync {}, peer data {}",
            get(f, "lag_ms"),
            get(f, "inflight"),
            get(f, "inflight_bytes"),
            get(f, "dirty_kb"),
            get(f, "resync"),
            get(f, "peer_data")
        );
        if let Some(m) = f.get("marker") {
            let _ = write!(s, ", marker {m}");
            if let Some(a) = f.get("marker_acked") {
                let _ = write!(s, " (acknowledged {a})");
            }
            if let Some(i) = f.get("marker_ignored").filter(|i| *i != "-") {
                let _ = write!(s, ", marker {i} not recorded by the resyncing secondary");
            }
        }
        Some(s)
    } else {
        f.get("applied")?;
        let mut s = format!(
            "replication: {state}, data {}, applied {} frames, marker {}",
            get(f, "data"),
            get(f, "applied"),
            get(f, "marker")
        );
        if let Some(l) = f.get("marker_label").filter(|l| *l != "-") {
            let _ = write!(s, " ({l})");
        }
        if let Some(z) = f.get("frozen").filter(|z| *z != "-") {
            let _ = write!(s, ", frozen at marker {z}");
        }
        Some(s)
    }
}

fn wbcache(out: &mut String, w: &WbcacheLayer) {
    let _ = writeln!(
        out,
        "{} ({}) wbcache: cache {}, block size {}, mode {}",
        w.name, w.devnum, w.cache, w.block_size, w.mode
    );
    status_line(out, "  ", w.status.as_deref());
    if let Some(line) = cache_summary(w) {
        let _ = writeln!(out, "  {line}");
    }
}

fn repl(out: &mut String, r: &ReplLayer, prefix: &str, indent: &str) {
    let addr = if r.role == "secondary" {
        "listen"
    } else {
        "peer"
    };
    let _ = writeln!(
        out,
        "{prefix}{} ({}) repl: {}, data {}, {addr} {}, protocol {}",
        r.name, r.devnum, r.role, r.data, r.peer, r.protocol
    );
    status_line(out, indent, r.status.as_deref());
    if let Some(line) = repl_summary(r) {
        let _ = writeln!(out, "{indent}{line}");
    }
}

/// Renders the report, one line per layer and status, each ending with a newline.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    if report.stacks.is_empty() && report.errors.is_empty() {
        out.push_str("no wbcache or repl devices\n");
    }
    for s in &report.stacks {
        match (&s.wbcache, &s.repl) {
            (Some(w), Some(r)) => {
                wbcache(&mut out, w);
                repl(&mut out, r, "  `- ", "       ");
            }
            (Some(w), None) => {
                wbcache(&mut out, w);
                let _ = writeln!(
                    out,
                    "  `- origin {}: {}",
                    w.origin,
                    s.note.as_deref().unwrap_or("not a repl device")
                );
            }
            (None, Some(r)) => repl(&mut out, r, "", "  "),
            (None, None) => {}
        }
    }
    for e in &report.errors {
        let target = e
            .target
            .as_deref()
            .map(|t| format!(" {t}"))
            .unwrap_or_default();
        let _ = writeln!(out, "{} ({}){target}: error: {}", e.name, e.devnum, e.error);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::{identify, DevNum, Device, Target};

    fn dev(name: &str, minor: u32, ty: &str, params: &str, status: Option<&str>) -> Device {
        let t = Target {
            start: 0,
            length: 8,
            target_type: ty.into(),
            params: params.into(),
            status: status.map(Into::into),
        };
        Device {
            name: name.into(),
            devnum: DevNum::new(253, minor),
            table: Ok(vec![t]),
        }
    }

    #[test]
    fn tree() {
        let r = identify(&[
            dev(
                "wbc0",
                1,
                "wbcache",
                "253:0 7:1 4096 2 mode writeback",
                Some("passthrough writeback 4096 reads 5"),
            ),
            dev(
                "repl0",
                0,
                "repl",
                "primary 7:2 10.0.0.2:7789 0",
                Some("primary passthrough peer 10.0.0.2:7789"),
            ),
            dev("sec0", 2, "repl", "secondary 7:3 0.0.0.0:7789 0", None),
            dev("wbc9", 3, "wbcache", "8:0 7:4 512 0", Some("x")),
            dev("bad", 4, "wbcache", "8:0 8:0 512 0", None),
        ]);
        let expected = "\
sec0 (253:2) repl: secondary, data 7:3, listen 0.0.0.0:7789, protocol async
  status: (unavailable)
wbc0 (253:1) wbcache: cache 7:1, block size 4096, mode writeback
  status: passthrough writeback 4096 reads 5
  `- repl0 (253:0) repl: primary, data 7:2, peer 10.0.0.2:7789, protocol async
       status: primary passthrough peer 10.0.0.2:7789
wbc9 (253:3) wbcache: cache 7:4, block size 512, mode writeback
  status: x
  `- origin 8:0: origin is not a repl device
bad (253:4) wbcache: error: cannot parse wbcache table \"8:0 8:0 512 0\": Origin and cache must be different devices
";
        assert_eq!(render(&r), expected);
    }

    #[test]
    fn summaries() {
        let r = identify(&[
            dev(
                "wbc0",
                1,
                "wbcache",
                "253:0 7:1 4096 0",
                Some("ok writeback 4096 blocks 100 free 90 dirty 10 writeback 0 releasing 0 epoch 7 checkpoint hold cp_id 7 cp_left 4 cp_ms 30 last_cp - last_cp_result - last_cp_ms 0"),
            ),
            dev(
                "repl0",
                0,
                "repl",
                "primary 7:2 10.0.0.2:7789 0",
                Some("primary connected peer 10.0.0.2:7789 protocol async sent 5 sent_bytes 4096 acked 4 acked_bytes 0 inflight 1 inflight_bytes 4096 lag_ms 3 dirty_kb 0 resync - peer_data consistent writes 1 connects 1 congested 0 refused 0 marker 6 marker_acked 6"),
            ),
            dev(
                "sec0",
                2,
                "repl",
                "secondary 7:3 0.0.0.0:7789 1 freeze_on_marker",
                Some("secondary connected listen 0.0.0.0:7789 peer 10.0.0.1:4000 applied 9 applied_bytes 0 resync_bytes 0 epoch 1 data consistent sessions 1 dropped 0 refused 0 markers 1 marker 6 marker_time_ns 5 frozen 6 marker_label before_B"),
            ),
        ]);
        let text = render(&r);
        assert!(text.contains("\n  cache: 10 of 100 blocks dirty, epoch 7; checkpoint hold 7: 4 blocks left (30 ms)\n"), "{text}");
        assert!(text.contains("\n       replication: connected, lag 3 ms, in flight 1 frames / 4096 bytes, dirty 0 KiB, resync -, peer data consistent, marker 6 (acknowledged 6)\n"), "{text}");
        assert!(text.contains("\n  replication: connected, data consistent, applied 9 frames, marker 6 (before_B), frozen at marker 6\n"), "{text}");
        let w = r.stacks[1].wbcache.as_ref().unwrap();
        let mut idle = w.clone();
        if let Some(cp) = idle.checkpoint.as_mut() {
            cp.state = "idle".into();
            cp.last_id = Some(7);
            cp.last_result = Some("ok".into());
            cp.last_ms = 31;
        }
        assert_eq!(
            cache_summary(&idle).unwrap(),
            "cache: 10 of 100 blocks dirty, epoch 7; last checkpoint 7: ok (31 ms)"
        );
    }

    #[test]
    fn empty() {
        assert_eq!(render(&Report::default()), "no wbcache or repl devices\n");
    }
}
