//! `wbrepl checkpoint`: drain the cache, put a marker down the stack, optionally wait until the
//! secondary has acknowledged it.
//!
//! The kernel does the work in one message to the wbcache layer,
//! `checkpoint <hold|writethrough|ordered> [<label>|- [<timeout_ms>]]`, which blocks until the
//! marker is written and answers
//! `id <id> mode <mode> label <label|-> blocks <n> drain_ms <n> marker_ms <n> total_ms <n>`.
//! While it runs, the wbcache status shows `checkpoint <state> cp_id <id> cp_left <blocks>
//! cp_ms <ms> ...`, which drives the progress bar. A stack without a cache gets a plain
//! `marker <label>` message on its repl primary instead.

use crate::dm::{Dm, DmErr};
use crate::error::{Error, Result};
use crate::output::{self, Outcome};
use crate::stack::{self, status_fields, ReplLayer, WbcacheLayer};
use clap::{Args, ValueEnum};
use nix::errno::Errno;
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Longest label (bytes), as in marker records.
pub const LABEL_MAX: usize = 64;
/// Longest checkpoint timeout the kernel accepts, ms (a day).
pub const TIMEOUT_MAX_MS: u64 = 86_400_000;
/// How often the status is read while something runs.
const POLL: Duration = Duration::from_millis(100);

/// What happens to new writes while the checkpoint drains (see docs/cli.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// New writes stay in the cache (the next epoch); nothing newer is written back until the
    /// marker is down.
    Hold,
    /// New writes go to the cache and the origin before they complete.
    Writethrough,
    /// The cache is in ordered mode: the marker follows the closed epoch in writeback order.
    Ordered,
}

impl Mode {
    /// The message word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hold => "hold",
            Self::Writethrough => "writethrough",
            Self::Ordered => "ordered",
        }
    }

    /// The default for a cache running in `cache_mode`: `ordered` for an ordered cache,
    /// `writethrough` for a write-through one (it cannot hold writes), else `hold`.
    pub fn default_for(cache_mode: &str) -> Self {
        match cache_mode {
            "ordered" => Self::Ordered,
            "writethrough" => Self::Writethrough,
            _ => Self::Hold,
        }
    }
}

/// Checks a label: printable ASCII without spaces, 1..=64 bytes, not `-`.
pub fn parse_label(s: &str) -> std::result::Result<String, String> {
    if s.is_empty() {
        return Err("a label must not be empty".into());
    }
    if s == "-" {
        return Err("\"-\" stands for no label: leave --label out instead".into());
    }
    if s.len() > LABEL_MAX {
        return Err(format!(
            "a label is at most {LABEL_MAX} bytes (this one has {})",
            s.len()
        ));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a label must be printable ASCII without spaces".into());
    }
    Ok(s.to_owned())
}

/// Checks a checkpoint timeout: a duration from 1 ms to 24 h.
pub fn parse_timeout(s: &str) -> std::result::Result<Duration, String> {
    let d = output::parse_duration(s)?;
    let ms = d.as_millis();
    if ms == 0 || ms > u128::from(TIMEOUT_MAX_MS) {
        return Err(format!(
            "the timeout must be from 1 ms to 24 h (got {} ms)",
            ms
        ));
    }
    Ok(d)
}

/// The checkpoint message.
pub fn request(mode: Mode, label: Option<&str>, timeout: Duration) -> String {
    let ms = timeout.as_millis().clamp(1, u128::from(TIMEOUT_MAX_MS));
    format!("checkpoint {} {} {ms}", mode.as_str(), label.unwrap_or("-"))
}

/// The answer to a successful checkpoint message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CpResult {
    /// Marker id (the cache epoch the checkpoint closed).
    pub id: u64,
    /// Mode used.
    pub mode: String,
    /// Label, if any.
    pub label: Option<String>,
    /// Blocks drained.
    pub blocks: u64,
    /// Time to drain them, ms.
    pub drain_ms: u64,
    /// Time to write the marker, ms.
    pub marker_ms: u64,
    /// Whole checkpoint, ms.
    pub total_ms: u64,
}

fn num(f: &BTreeMap<String, String>, key: &str) -> std::result::Result<u64, String> {
    let v = f.get(key).ok_or_else(|| format!("no \"{key}\""))?;
    v.parse()
        .map_err(|_| format!("\"{key}\" is not a number: {v}"))
}

/// `-` as none, anything else as a number.
fn opt_num(f: &BTreeMap<String, String>, key: &str) -> Option<Option<u64>> {
    match f.get(key).map(String::as_str) {
        None => None,
        Some("-") => Some(None),
        Some(v) => v.parse().ok().map(Some),
    }
}

fn opt_word(v: &str) -> Option<String> {
    (v != "-").then(|| v.to_owned())
}

impl CpResult {
    /// Parses the kernel's answer (extra `key value` pairs are ignored).
    pub fn parse(answer: &str) -> std::result::Result<Self, String> {
        let f = status_fields(answer, 0);
        let word = |k: &str| f.get(k).cloned().ok_or_else(|| format!("no \"{k}\""));
        Ok(Self {
            id: num(&f, "id")?,
            mode: word("mode")?,
            label: opt_word(&word("label")?),
            blocks: num(&f, "blocks")?,
            drain_ms: num(&f, "drain_ms")?,
            marker_ms: num(&f, "marker_ms")?,
            total_ms: num(&f, "total_ms")?,
        })
    }
}

/// The checkpoint part of the wbcache status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CpStatus {
    /// `idle`, or the mode of the checkpoint running.
    pub state: String,
    /// Id of the running checkpoint.
    pub id: Option<u64>,
    /// Blocks it still has to drain.
    pub left: u64,
    /// Time it has run, ms.
    pub elapsed_ms: u64,
    /// The last checkpoint that ended.
    pub last_id: Option<u64>,
    /// How it ended: `ok`, `timeout`, `aborted`, `failed`.
    pub last_result: Option<String>,
    /// How long it took, ms.
    pub last_ms: u64,
}

impl CpStatus {
    /// Reads it from the wbcache status fields; `None` if the kernel does not report
    /// checkpoints (or reports them in a form this tool does not know).
    pub fn from_fields(f: &BTreeMap<String, String>) -> Option<Self> {
        Some(Self {
            state: f.get("checkpoint")?.clone(),
            id: opt_num(f, "cp_id")?,
            left: num(f, "cp_left").ok()?,
            elapsed_ms: num(f, "cp_ms").ok()?,
            last_id: opt_num(f, "last_cp")?,
            last_result: opt_word(f.get("last_cp_result")?),
            last_ms: num(f, "last_cp_ms").ok()?,
        })
    }

    /// Whether a checkpoint is running.
    pub fn running(&self) -> bool {
        self.state != "idle"
    }
}

/// What a failed checkpoint message means, for the admin.
pub fn failure_message(e: &DmErr, dev: &str, timeout: Duration) -> String {
    let why = match e.errno {
        Some(Errno::EBUSY) => "another checkpoint or a flush (dmsetup message ... flush) is running, or the device is suspended, being suspended or was never resumed".to_owned(),
        Some(Errno::EINVAL) => "refused: bad arguments, mode ordered while the cache is not in ordered mode, mode hold on a write-through cache, mode writethrough on an ordered cache, no marker region (the cache must end 8 sectors before its origin), or a kernel without checkpoints (the kernel log says which: dmesg)".to_owned(),
        Some(Errno::ETIMEDOUT) => format!(
            "timed out after {}: nothing is held any more and no marker was written (a larger --timeout, or mode writethrough, may help)",
            humantime::format_duration(timeout)
        ),
        Some(Errno::ECANCELED) => "aborted: no marker was written".to_owned(),
        Some(Errno::EIO) => "failed: a writeback failed, or the replication layer refused the marker (is the repl primary connected and in sync? see wbrepl status and dmesg)".to_owned(),
        _ => e.text.clone(),
    };
    format!("checkpoint on {dev}: {why}")
}

/// What a failed `marker` message on a repl primary means.
fn marker_failure(e: &DmErr, dev: &str) -> String {
    let why = match e.errno {
        Some(Errno::ENOTCONN) => "the primary is not connected to its secondary".to_owned(),
        Some(Errno::EBUSY) => {
            "the secondary is behind or inconsistent (a resync is due or running)".to_owned()
        }
        Some(Errno::EINVAL) => "refused (see dmesg)".to_owned(),
        _ => e.text.clone(),
    };
    format!("marker on {dev}: {why}")
}

/// Progress of a drain: (position, length) of the bar, given the most blocks seen left and the
/// blocks left now.
pub fn drain_progress(max_left: u64, left: u64) -> (u64, u64) {
    (max_left.saturating_sub(left), max_left)
}

#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// Any layer of the stack: a name, /dev/mapper/NAME or MAJOR:MINOR.
    #[arg(value_name = "DEVICE")]
    device: String,
    /// What happens to new writes during the drain [default: ordered for a cache in ordered
    /// mode, writethrough for a write-through cache, else hold].
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Label carried by the marker (printable ASCII without spaces, at most 64 bytes).
    #[arg(long, value_parser = parse_label)]
    label: Option<String>,
    /// Give up after this long (the kernel's limit for the checkpoint; with --wait also the
    /// limit for the acknowledgement). Examples: 30s, 5m; a bare number is seconds.
    #[arg(long, value_parser = parse_timeout, default_value = "60s")]
    timeout: Duration,
    /// Afterwards wait until the secondary has acknowledged the marker.
    #[arg(long)]
    wait: bool,
    /// Abort the checkpoint running on DEVICE instead.
    #[arg(long, conflicts_with_all = ["mode", "label", "wait"])]
    abort: bool,
}

/// The `--json` document of a checkpoint.
#[derive(Debug, Serialize)]
struct Report {
    /// The device the message went to.
    device: String,
    /// `wbcache` (a checkpoint) or `repl` (a marker on a stack without a cache).
    layer: &'static str,
    #[serde(flatten)]
    result: CpResult,
    /// With --wait: the repl primary the acknowledgement was awaited on.
    acked_on: Option<String>,
    /// With --wait: how long the acknowledgement took, ms.
    ack_ms: Option<u64>,
}

/// Blocks SIGINT and SIGTERM in this thread, so that they go to the one that handles them and
/// never interrupt (and restart) a blocking message ioctl.
fn block_signals() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
}

/// Ctrl-C / SIGTERM as a flag (set once per process; a second call keeps the first handler).
pub fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let f = Arc::new(AtomicBool::new(false));
        let g = f.clone();
        let _ = ctrlc::set_handler(move || g.store(true, Ordering::SeqCst));
        f
    })
    .clone()
}

fn wbcache_status(dm: &Dm, w: &WbcacheLayer) -> Option<CpStatus> {
    let info = dm.status_info(&w.name).ok()?;
    CpStatus::from_fields(&status_fields(&info, stack::WBCACHE_INFO_POSITIONAL))
}

/// Sends `msg` to `dev` in a thread while `tick` runs every [`POLL`] in this one; `abort` is
/// sent once if the process is interrupted.
fn message_with_progress(
    dm: &Dm,
    dev: &str,
    msg: &str,
    abort: Option<&str>,
    mut tick: impl FnMut(),
) -> std::result::Result<Option<String>, DmErr> {
    let stop = interrupt_flag();
    thread::scope(|s| {
        let h = s.spawn(|| {
            block_signals();
            dm.message(dev, msg)
        });
        let mut aborted = false;
        while !h.is_finished() {
            if let (Some(a), false, true) = (abort, aborted, stop.load(Ordering::SeqCst)) {
                eprintln!("wbrepl: interrupted: aborting the checkpoint on {dev}");
                let _ = dm.message(dev, a);
                aborted = true;
            }
            tick();
            thread::sleep(POLL);
        }
        h.join().unwrap_or_else(|_| {
            Err(DmErr {
                errno: None,
                text: "the message thread failed".into(),
            })
        })
    })
}

fn checkpoint_wbcache(dm: &Dm, w: &WbcacheLayer, args: &CheckpointArgs) -> Result<CpResult> {
    let mode = args.mode.unwrap_or_else(|| Mode::default_for(&w.mode));
    let msg = request(mode, args.label.as_deref(), args.timeout);
    let pb = output::bar(0, output::BLOCKS_TEMPLATE);
    pb.set_message(format!("checkpoint {} ({})", w.name, mode.as_str()));
    let mut max_left = 0;
    let answer = message_with_progress(dm, &w.name, &msg, Some("abort"), || {
        if let Some(cp) = wbcache_status(dm, w).filter(CpStatus::running) {
            max_left = max_left.max(cp.left);
            let (pos, len) = drain_progress(max_left, cp.left);
            pb.set_length(len);
            pb.set_position(pos);
            if cp.left == 0 {
                pb.set_message(format!("checkpoint {}: writing the marker", w.name));
            }
        }
    });
    pb.finish_and_clear();
    let answer = answer.map_err(|e| Error::op(failure_message(&e, &w.name, args.timeout)))?;
    let text = answer.unwrap_or_default();
    CpResult::parse(&text).map_err(|e| {
        Error::op(format!(
            "checkpoint on {}: unexpected answer from the kernel ({e}): \"{text}\"",
            w.name
        ))
    })
}

fn marker_repl(dm: &Dm, r: &ReplLayer, args: &CheckpointArgs) -> Result<CpResult> {
    if args.mode.is_some() {
        return Err(Error::usage(format!(
            "{}: the stack has no wbcache layer: --mode does not apply (a marker is sent directly)",
            r.name
        )));
    }
    let label = args.label.as_deref().unwrap_or("-");
    let start = Instant::now();
    let answer = dm
        .message(&r.name, &format!("marker {label}"))
        .map_err(|e| Error::op(marker_failure(&e, &r.name)))?
        .unwrap_or_default();
    let id = answer.trim().parse().map_err(|_| {
        Error::op(format!(
            "marker on {}: unexpected answer from the kernel: \"{answer}\"",
            r.name
        ))
    })?;
    let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(CpResult {
        id,
        mode: "marker".into(),
        label: args.label.clone(),
        blocks: 0,
        drain_ms: 0,
        marker_ms: ms,
        total_ms: ms,
    })
}

/// The last marker the repl primary's secondary acknowledged, and the last one it said it did
/// not record (`marker_ignored`; absent from older kernels), from its status.
fn marker_progress(dm: &Dm, repl: &str) -> Result<(Option<u64>, Option<u64>)> {
    let f = status_fields(&dm.status_info(repl)?, stack::REPL_INFO_POSITIONAL);
    let acked = opt_num(&f, "marker_acked").ok_or_else(|| {
        Error::op(format!(
            "{repl}: its status has no marker_acked (a kernel without acknowledged markers): cannot --wait"
        ))
    })?;
    Ok((acked, opt_num(&f, "marker_ignored").flatten()))
}

/// Waits until `repl` reports `marker_acked >= id`, for at most `timeout`.
fn wait_acked(dm: &Dm, repl: &str, id: u64, timeout: Duration) -> Result<u64> {
    let start = Instant::now();
    let pb = output::bar(0, output::SPINNER_TEMPLATE);
    pb.set_message(format!(
        "waiting for the secondary to acknowledge marker {id}"
    ));
    let stop = interrupt_flag();
    let r = loop {
        let (acked, ignored) = marker_progress(dm, repl)?;
        if ignored.is_some_and(|i| i >= id) {
            break Err(Error::op(format!(
                "marker {id} was written, but the secondary did not record it: its device was not a consistent image (a resync was under way), so no image of it exists; wait until {repl} shows peer_data consistent (wbrepl status) and take the checkpoint again"
            )));
        }
        if acked.is_some_and(|a| a >= id) {
            break Ok(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX));
        }
        if start.elapsed() >= timeout || stop.load(Ordering::SeqCst) {
            let last = acked.map_or("none".to_owned(), |a| a.to_string());
            let why = if stop.load(Ordering::SeqCst) {
                "interrupted".to_owned()
            } else {
                format!("not within {}", humantime::format_duration(timeout))
            };
            break Err(Error::op(format!(
                "marker {id} was written, but the secondary did not acknowledge it ({why}; last acknowledged on {repl}: {last}); see wbrepl status {repl}"
            )));
        }
        thread::sleep(POLL);
    };
    pb.finish_and_clear();
    r
}

/// `wbrepl checkpoint`.
pub fn run(args: &CheckpointArgs, json: bool) -> Result<Outcome> {
    let dm = Dm::open()?;
    let report = stack::identify(&dm.snapshot()?);
    let stack = report.lookup(&args.device).map_err(Error::op)?;
    let primary = stack.repl.as_ref().filter(|r| r.role == "primary");
    if let Some(r) = stack.repl.as_ref().filter(|r| r.role != "primary") {
        return Err(Error::op(format!(
            "{}: is a repl {}: checkpoints are taken on the primary",
            r.name, r.role
        )));
    }

    if args.abort {
        let w = stack.wbcache.as_ref().ok_or_else(|| {
            Error::op(format!(
                "{}: the stack has no wbcache layer: nothing to abort",
                args.device
            ))
        })?;
        dm.message(&w.name, "abort").map_err(|e| {
            if e.is(Errno::EINVAL) {
                Error::op(format!("{}: no checkpoint is running", w.name))
            } else {
                e.op(format!("cannot abort the checkpoint on {}", w.name))
            }
        })?;
        let doc = serde_json::json!({"device": w.name, "aborted": true});
        return Outcome::new(&doc, format!("aborted the checkpoint on {}\n", w.name));
    }
    if args.wait && primary.is_none() {
        return Err(Error::op(format!(
            "{}: --wait needs a repl primary below the cache, and this stack has none",
            args.device
        )));
    }

    let (device, layer, result) = match (&stack.wbcache, primary) {
        (Some(w), _) => (w.name.clone(), "wbcache", checkpoint_wbcache(&dm, w, args)?),
        (None, Some(r)) => (r.name.clone(), "repl", marker_repl(&dm, r, args)?),
        (None, None) => {
            return Err(Error::op(format!(
                "{}: neither a wbcache nor a repl primary",
                args.device
            )))
        }
    };
    if !json {
        eprintln!("wbrepl: {}", summary(&device, &result));
    }
    let mut doc = Report {
        device,
        layer,
        result,
        acked_on: None,
        ack_ms: None,
    };
    if let (true, Some(r)) = (args.wait, primary) {
        let ms = wait_acked(&dm, &r.name, doc.result.id, args.timeout)?;
        if !json {
            eprintln!(
                "wbrepl: marker {} acknowledged by the secondary ({} ms)",
                doc.result.id, ms
            );
        }
        doc.acked_on = Some(r.name.clone());
        doc.ack_ms = Some(ms);
    }
    let text = format!("{}\n", doc.result.id);
    Outcome::new(&doc, text)
}

/// One line about a finished checkpoint.
pub fn summary(dev: &str, r: &CpResult) -> String {
    let label = r.label.as_deref().unwrap_or("-");
    if r.mode == "marker" {
        return format!("marker {} on {dev} (label {label})", r.id);
    }
    format!(
        "checkpoint {} on {dev}: mode {}, label {label}, {} blocks drained in {} ms, marker {} ms, total {} ms",
        r.id, r.mode, r.blocks, r.drain_ms, r.marker_ms, r.total_ms
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(
            parse_label("nightly-2026_12.02"),
            Ok("nightly-2026_12.02".into())
        );
        assert_eq!(parse_label(&"x".repeat(64)).map(|s| s.len()), Ok(64));
        for bad in ["", "-", "two words", "tab\there", "é", &"x".repeat(65)] {
            assert!(parse_label(bad).is_err(), "{bad:?}");
        }
        assert!(parse_label(&"x".repeat(65))
            .unwrap_err()
            .contains("at most 64"));
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_timeout("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_timeout("24h"), Ok(Duration::from_secs(86400)));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("24h 1ms").is_err());
        assert!(parse_timeout("soon").is_err());
    }

    #[test]
    fn requests() {
        let t = Duration::from_secs(60);
        assert_eq!(request(Mode::Hold, None, t), "checkpoint hold - 60000");
        assert_eq!(
            request(
                Mode::Writethrough,
                Some("nightly"),
                Duration::from_millis(1500)
            ),
            "checkpoint writethrough nightly 1500"
        );
        assert_eq!(
            request(Mode::Ordered, None, Duration::from_micros(10)),
            "checkpoint ordered - 1"
        );
        assert_eq!(Mode::default_for("ordered"), Mode::Ordered);
        assert_eq!(Mode::default_for("writeback"), Mode::Hold);
        assert_eq!(Mode::default_for("writethrough"), Mode::Writethrough);
    }

    #[test]
    fn results() {
        let r = CpResult::parse(
            "id 42 mode hold label nightly blocks 1234 drain_ms 560 marker_ms 12 total_ms 575",
        )
        .unwrap();
        assert_eq!(
            r,
            CpResult {
                id: 42,
                mode: "hold".into(),
                label: Some("nightly".into()),
                blocks: 1234,
                drain_ms: 560,
                marker_ms: 12,
                total_ms: 575
            }
        );
        let r = CpResult::parse(
            "id 1 mode ordered label - blocks 0 drain_ms 0 marker_ms 1 total_ms 1 extra 9",
        )
        .unwrap();
        assert_eq!((r.id, r.label), (1, None));
        assert_eq!(
            CpResult::parse("id x mode hold").unwrap_err(),
            "\"id\" is not a number: x"
        );
        assert_eq!(CpResult::parse("").unwrap_err(), "no \"id\"");
        assert!(CpResult::parse("id 1 mode hold label - blocks 0 drain_ms 0 marker_ms 1").is_err());
    }

    fn fields(s: &str) -> BTreeMap<String, String> {
        status_fields(s, stack::WBCACHE_INFO_POSITIONAL)
    }

    #[test]
    fn status() {
        let base = "ok writeback 4096 blocks 100 free 90 dirty 10 epoch 7";
        assert_eq!(CpStatus::from_fields(&fields(base)), None);
        let idle = format!("{base} checkpoint idle cp_id - cp_left 0 cp_ms 0 last_cp 5 last_cp_result ok last_cp_ms 320");
        let s = CpStatus::from_fields(&fields(&idle)).unwrap();
        assert!(!s.running());
        assert_eq!(
            (s.id, s.last_id, s.last_result.as_deref(), s.last_ms),
            (None, Some(5), Some("ok"), 320)
        );
        let busy = format!("{base} checkpoint hold cp_id 6 cp_left 77 cp_ms 1500 last_cp - last_cp_result - last_cp_ms 0");
        let s = CpStatus::from_fields(&fields(&busy)).unwrap();
        assert!(s.running());
        assert_eq!(
            (s.state.as_str(), s.id, s.left, s.elapsed_ms),
            ("hold", Some(6), 77, 1500)
        );
        assert_eq!((s.last_id, s.last_result), (None, None));
        let bad = format!("{base} checkpoint hold cp_id x cp_left 77 cp_ms 1 last_cp - last_cp_result - last_cp_ms 0");
        assert_eq!(CpStatus::from_fields(&fields(&bad)), None);
    }

    #[test]
    fn progress() {
        assert_eq!(drain_progress(0, 0), (0, 0));
        assert_eq!(drain_progress(100, 100), (0, 100));
        assert_eq!(drain_progress(100, 25), (75, 100));
        assert_eq!(drain_progress(100, 0), (100, 100));
    }

    #[test]
    fn failures_are_explained() {
        let e = |n| DmErr {
            errno: Some(n),
            text: "x".into(),
        };
        let t = Duration::from_secs(60);
        let m = failure_message(&e(Errno::ETIMEDOUT), "wbc0", t);
        assert!(
            m.starts_with("checkpoint on wbc0: timed out after 1m"),
            "{m}"
        );
        assert!(failure_message(&e(Errno::EBUSY), "w", t).contains("another checkpoint or a flush"));
        assert!(failure_message(&e(Errno::EINVAL), "w", t).contains("dmesg"));
        assert!(failure_message(&e(Errno::ECANCELED), "w", t).contains("aborted"));
        assert!(failure_message(&e(Errno::EIO), "w", t).contains("in sync"));
        assert_eq!(
            failure_message(&e(Errno::EPERM), "w", t),
            "checkpoint on w: x"
        );
        assert!(marker_failure(&e(Errno::ENOTCONN), "r").contains("not connected"));
    }

    #[test]
    fn summaries() {
        let r =
            CpResult::parse("id 3 mode hold label - blocks 2 drain_ms 5 marker_ms 1 total_ms 6")
                .unwrap();
        assert_eq!(
            summary("wbc0", &r),
            "checkpoint 3 on wbc0: mode hold, label -, 2 blocks drained in 5 ms, marker 1 ms, total 6 ms"
        );
    }
}
