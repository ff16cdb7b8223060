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
use std::fmt::Write;

fn status_line(out: &mut String, indent: &str, status: Option<&str>) {
    let _ = writeln!(out, "{indent}status: {}", status.unwrap_or("(unavailable)"));
}

fn wbcache(out: &mut String, w: &WbcacheLayer) {
    let _ = writeln!(
        out,
        "{} ({}) wbcache: cache {}, block size {}, mode {}",
        w.name, w.devnum, w.cache, w.block_size, w.mode
    );
    status_line(out, "  ", w.status.as_deref());
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
    fn empty() {
        assert_eq!(render(&Report::default()), "no wbcache or repl devices\n");
    }
}
