//! `wbrepl secondary run`: the secondary's event loop. When the secondary repl device
//! (`freeze_on_marker`) is frozen at a marker, it takes a dm-thin snapshot of the thin volume
//! the secondary writes to, records it as an image, thaws the secondary and applies the
//! retention rules.
//!
//! Taking an image at marker M:
//! 1. choose a thin id above every id known in the pool; record the image as incomplete;
//! 2. suspend the thin volume (dm-thin wants the origin of a snapshot suspended);
//! 3. check that the secondary is still frozen at M (a `freeze_timeout` may have thawed it, and
//!    then the volume holds writes from after the marker: no image);
//! 4. `create_snap <id> <origin id>` to the pool (another id if that one exists);
//! 5. resume the thin volume; mark the image complete; 6. `thaw M`.
//!
//! A failure anywhere still resumes the volume and thaws the secondary (logged). At start the
//! loop resumes a thin volume left suspended, settles incomplete images against the pool, and
//! handles a secondary that is already frozen.

use crate::checkpoint::interrupt_flag;
use crate::dm::Dm;
use crate::error::{Error, Result};
use crate::images::{self, Pool, RetentionArgs, StateDir};
use crate::output::{self, Outcome};
use crate::stack::{self, status_fields, Device};
use crate::state::{self, Image, State, Store};
use crate::thin::{self, ThinTable};
use clap::Args;
use nix::errno::Errno;
use serde::Serialize;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;
use wbrepl_core::table::ReplTable;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The secondary repl device: a name, /dev/mapper/NAME or MAJOR:MINOR.
    #[arg(value_name = "DEVICE")]
    device: String,
    #[command(flatten)]
    dir: StateDir,
    #[command(flatten)]
    rules: RetentionArgs,
    /// Handle the marker the secondary is frozen at now (if any), apply the retention rules,
    /// and exit.
    #[arg(long)]
    once: bool,
}

/// How often the status is read when no event comes.
const TICK: Duration = Duration::from_secs(2);
/// Attempts at a free thin id.
const ID_TRIES: u32 = 32;

/// The secondary's marker state, from its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecStatus {
    /// Frozen at this marker.
    pub frozen: Option<u64>,
    /// The last marker recorded.
    pub marker: Option<u64>,
    /// Its time.
    pub marker_time_ns: Option<u64>,
    /// Its label (spaces shown as `_`), if the kernel reports labels.
    pub label: Option<String>,
}

fn dash_num(v: Option<&String>) -> std::result::Result<Option<u64>, String> {
    match v.map(String::as_str) {
        None | Some("-") => Ok(None),
        Some(n) => n.parse().map(Some).map_err(|_| format!("bad number {n}")),
    }
}

impl SecStatus {
    /// Parses a repl secondary's INFO status.
    pub fn parse(info: &str) -> std::result::Result<Self, String> {
        if info.split_ascii_whitespace().next() != Some("secondary") {
            return Err(format!("not a secondary's status: \"{info}\""));
        }
        let f = status_fields(info, stack::REPL_INFO_POSITIONAL);
        if !f.contains_key("frozen") {
            return Err("the status has no \"frozen\" field (a kernel without markers?)".into());
        }
        Ok(Self {
            frozen: dash_num(f.get("frozen"))?,
            marker: dash_num(f.get("marker"))?,
            marker_time_ns: dash_num(f.get("marker_time_ns"))?,
            label: f.get("marker_label").filter(|l| *l != "-").cloned(),
        })
    }
}

/// What to do about a status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Not frozen: wait.
    Wait,
    /// Frozen at a marker that has its image already (a restart after the snapshot): thaw.
    Thaw(u64),
    /// Frozen at a new marker: take its image, then thaw.
    Snapshot(u64),
}

/// Decides what to do, given the images recorded.
pub fn decide(s: &SecStatus, images: &[Image]) -> Action {
    let Some(id) = s.frozen else {
        return Action::Wait;
    };
    // The frozen marker is the last one recorded, so its time is marker_time_ns; a new primary
    // reuses ids, so the time tells them apart.
    let time = (s.marker == Some(id)).then_some(s.marker_time_ns).flatten();
    let done = images
        .iter()
        .any(|i| i.complete && i.marker_id == id && (time.is_none() || i.marker_time_ns == time));
    if done {
        Action::Thaw(id)
    } else {
        Action::Snapshot(id)
    }
}

/// The devices a secondary's images come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// The secondary repl device.
    pub repl: String,
    /// The thin volume it writes to.
    pub thin: String,
    /// Its table.
    pub thin_table: ThinTable,
    /// Its length, sectors.
    pub thin_len: u64,
    /// The pool.
    pub pool: String,
}

/// Works out the topology of `query` from the devices; every refusal says what is wrong.
pub fn topology(devices: &[Device], query: &str) -> std::result::Result<Topology, String> {
    let report = stack::identify(devices);
    let r = report
        .find(query)
        .and_then(|s| s.repl.as_ref())
        .ok_or_else(|| format!("{query}: no repl device by that name"))?;
    if r.role != "secondary" {
        return Err(format!("{}: is a repl {}, not a secondary", r.name, r.role));
    }
    let params = devices
        .iter()
        .find(|d| d.name == r.name)
        .and_then(|d| d.table.as_ref().ok())
        .and_then(|t| t.first())
        .map(|t| t.params.clone())
        .unwrap_or_default();
    let table = ReplTable::parse(&mut params.split_ascii_whitespace())
        .map_err(|e| format!("{}: cannot parse its table: {e}", r.name))?;
    if !table.opts.freeze_on_marker {
        return Err(format!(
            "{}: has no freeze_on_marker: it would go on applying writes after a marker, so a snapshot would not be the marker's point in time (reload its table with freeze_on_marker)",
            r.name
        ));
    }
    let data = devices
        .iter()
        .find(|d| d.devnum.to_string() == r.data)
        .ok_or_else(|| {
            format!(
                "{}: its data device {} is not a device-mapper device; images need a dm-thin volume",
                r.name, r.data
            )
        })?;
    let (thin_len, tparams) = thin::single_target(data, thin::THIN).ok_or_else(|| {
        format!(
            "{}: its data device {} ({}) is not a dm-thin volume; images need one",
            r.name, data.name, r.data
        )
    })?;
    let thin_table = ThinTable::parse(tparams).map_err(|e| format!("{}: {e}", data.name))?;
    let pool = devices
        .iter()
        .find(|d| d.devnum == thin_table.pool && thin::single_target(d, thin::POOL).is_some())
        .ok_or_else(|| {
            format!(
                "{}: its pool {} is not an active thin pool",
                data.name, thin_table.pool
            )
        })?;
    Ok(Topology {
        repl: r.name.clone(),
        thin: data.name.clone(),
        thin_table,
        thin_len,
        pool: pool.name.clone(),
    })
}

impl Topology {
    /// A fresh state for it.
    fn new_state(&self) -> State {
        State {
            version: state::VERSION,
            secondary: self.repl.clone(),
            pool: self.pool.clone(),
            origin: self.thin.clone(),
            origin_thin_id: self.thin_table.id,
            external_origin: self.thin_table.external_origin.clone(),
            next_seq: 1,
            images: Vec::new(),
        }
    }

    /// Whether a recorded state belongs to it; why not otherwise.
    fn matches(&self, st: &State) -> std::result::Result<(), String> {
        if st.pool == self.pool && st.origin_thin_id == self.thin_table.id {
            Ok(())
        } else {
            Err(format!(
                "the state file records pool {} and origin thin id {}, but {} now writes to pool {} thin id {}: move the old state file away (or use another --state-dir)",
                st.pool, st.origin_thin_id, self.repl, self.pool, self.thin_table.id
            ))
        }
    }
}

/// What the loop reports.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    Started {
        secondary: String,
        thin: String,
        pool: String,
        origin_thin_id: u32,
        state_file: String,
    },
    Image {
        image: Image,
        pool: String,
    },
    Thawed {
        marker_id: u64,
    },
    NoImage {
        marker_id: u64,
        reason: String,
    },
    Deleted {
        #[serde(flatten)]
        deleted: images::Deleted,
    },
    Recovered {
        what: String,
    },
    Error {
        message: String,
    },
    Stopped {},
}

struct Log {
    json: bool,
}

impl Log {
    fn emit(&self, e: &Event) {
        let line = if self.json {
            output::json_line(e)
        } else {
            format!("{} {}", output::rfc3339(output::now_ns()), Self::text(e))
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        if let (Event::Error { message }, false) = (e, self.json) {
            eprintln!("wbrepl: {message}");
        }
    }

    fn text(e: &Event) -> String {
        match e {
            Event::Started { secondary, thin, pool, origin_thin_id, state_file } => format!(
                "watching {secondary}: images of {thin} (thin id {origin_thin_id}) in pool {pool}, state {state_file}"
            ),
            Event::Image { image, pool } => format!(
                "image {}: marker {}{}, thin id {} in {pool}, {}",
                image.name,
                image.marker_id,
                image.label.as_ref().map_or(String::new(), |l| format!(" ({l})")),
                image.thin_id,
                output::human_bytes(image.size_sectors.saturating_mul(512))
            ),
            Event::Thawed { marker_id } => format!("thawed at marker {marker_id}"),
            Event::NoImage { marker_id, reason } => format!("no image for marker {marker_id}: {reason}"),
            Event::Deleted { deleted } => format!(
                "deleted image {} (thin id {}): {}",
                deleted.image, deleted.thin_id, deleted.reason
            ),
            Event::Recovered { what } => format!("recovered: {what}"),
            Event::Error { message } => format!("error: {message}"),
            Event::Stopped {} => "stopped".to_owned(),
        }
    }

    fn error(&self, message: impl Into<String>) {
        self.emit(&Event::Error {
            message: message.into(),
        });
    }
}

struct Loop<'a> {
    dm: &'a Dm,
    topo: Topology,
    store: Store,
    log: Log,
    rules: state::Retention,
}

impl Loop<'_> {
    fn status(&self) -> Result<SecStatus> {
        let info = self.dm.status_info(&self.topo.repl)?;
        SecStatus::parse(&info).map_err(|e| Error::op(format!("{}: {e}", self.topo.repl)))
    }

    fn state(&self) -> Result<State> {
        self.store.load_existing()
    }

    /// Resumes a thin volume left suspended and settles incomplete images.
    fn recover(&self) -> Result<()> {
        let info = self
            .dm
            .info(&self.topo.thin)
            .map_err(|e| e.op(format!("cannot read {}", self.topo.thin)))?;
        if info.suspended {
            self.dm
                .resume(&self.topo.thin)
                .map_err(|e| e.op(format!("cannot resume {}", self.topo.thin)))?;
            self.log.emit(&Event::Recovered {
                what: format!("{} was left suspended: resumed", self.topo.thin),
            });
        }
        let st = self.state()?;
        let pool = Pool::of(self.dm, &st)?;
        for img in st.images.iter().filter(|i| !i.complete) {
            let has = pool.has(&st, img);
            let what = match has {
                Some(true) => format!("image {} is in the pool: kept", img.name),
                Some(false) => format!("image {} never made it to the pool: dropped", img.name),
                None => continue,
            };
            if has == Some(true) {
                self.store.set_image(&Image {
                    complete: true,
                    ..img.clone()
                })?;
            } else {
                self.store.forget(img.seq)?;
            }
            self.log.emit(&Event::Recovered { what });
        }
        Ok(())
    }

    fn forget(&self, seq: u64) {
        if let Err(e) = self.store.forget(seq) {
            self.log.error(format!("cannot update the state file: {e}"));
        }
    }

    /// Takes the image of marker `id` (steps 1-5 of the module comment). `Ok(None)`: no image,
    /// and the secondary is no longer frozen at `id` (do not thaw).
    fn snapshot(&self, s: &SecStatus, id: u64) -> Result<Option<Image>> {
        let pool = Pool::of(self.dm, &self.state()?)?;
        if let Some(why) = pool.status().and_then(|p| p.refuses_snapshots()) {
            return Err(Error::op(format!("pool {}: {why}", self.topo.pool)));
        }
        // Ids in use as far as is known: the origin, the images, every active thin volume.
        let active: Vec<u32> = pool.volumes.iter().map(|v| v.table.id).collect();
        let now = output::now_ns();
        let (time, label) = if s.marker == Some(id) {
            (s.marker_time_ns, s.label.clone())
        } else {
            (None, None)
        };
        let mut img = self.store.update(|st| {
            let st = st
                .as_mut()
                .ok_or_else(|| Error::op("the state file went away"))?;
            let used = st
                .images
                .iter()
                .map(|i| i.thin_id)
                .chain([st.origin_thin_id]);
            let thin_id = thin::next_id(used.chain(active.iter().copied())).ok_or_else(|| {
                Error::op(format!("pool {}: no thin device id left", self.topo.pool))
            })?;
            let img = Image {
                seq: st.next_seq,
                name: state::image_name(id, label.as_deref(), time.unwrap_or(now)),
                marker_id: id,
                label: label.clone(),
                marker_time_ns: time,
                created_ns: now,
                thin_id,
                size_sectors: self.topo.thin_len,
                complete: false,
            };
            st.next_seq += 1;
            st.images.push(img.clone());
            Ok(img)
        })?;

        if let Err(e) = self.dm.suspend(&self.topo.thin) {
            self.forget(img.seq);
            return Err(e.op(format!("cannot suspend {}", self.topo.thin)));
        }
        let taken = self.snap_suspended(id, &mut img.thin_id);
        self.resume_thin();
        match taken {
            Ok(true) => {}
            Ok(false) => {
                self.forget(img.seq);
                return Ok(None);
            }
            Err(e) => {
                self.forget(img.seq);
                return Err(e);
            }
        }
        img.complete = true;
        self.store.set_image(&img)?;
        Ok(Some(img))
    }

    /// Resumes the thin volume (three tries): the secondary cannot write while it is suspended.
    fn resume_thin(&self) {
        for attempt in 1..=3 {
            match self.dm.resume(&self.topo.thin) {
                Ok(()) => return,
                Err(e) if attempt == 3 => self.log.error(format!(
                    "cannot resume {}: {e}; the secondary cannot write until it is resumed (dmsetup resume {})",
                    self.topo.thin, self.topo.thin
                )),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Steps 3 and 4 with the volume suspended. `Ok(false)`: no longer frozen at `marker`.
    fn snap_suspended(&self, marker: u64, id: &mut u32) -> Result<bool> {
        if self.status()?.frozen != Some(marker) {
            return Ok(false);
        }
        let origin = self.topo.thin_table.id;
        for _ in 0..ID_TRIES {
            match self
                .dm
                .message(&self.topo.pool, &format!("create_snap {id} {origin}"))
            {
                Ok(_) => return Ok(true),
                Err(e) if e.is(Errno::EEXIST) => {
                    *id = id
                        .checked_add(1)
                        .filter(|&i| i <= thin::MAX_ID)
                        .ok_or_else(|| {
                            Error::op(format!("pool {}: no thin device id left", self.topo.pool))
                        })?;
                }
                Err(e) => {
                    return Err(e.op(format!(
                        "pool {}: create_snap {id} {origin} failed",
                        self.topo.pool
                    )))
                }
            }
        }
        Err(Error::op(format!(
            "pool {}: no free thin device id found",
            self.topo.pool
        )))
    }

    fn thaw(&self, id: u64) {
        match self.dm.message(&self.topo.repl, &format!("thaw {id}")) {
            Ok(_) => self.log.emit(&Event::Thawed { marker_id: id }),
            Err(e) if e.is(Errno::EINVAL) => self.log.error(format!(
                "thaw {id}: {} was no longer frozen at marker {id} (freeze_timeout?)",
                self.topo.repl
            )),
            Err(e) => self
                .log
                .error(format!("thaw {id} on {}: {e}", self.topo.repl)),
        }
    }

    fn retention(&self) {
        if self.rules.is_none() {
            return;
        }
        let r = self.state().and_then(|st| {
            let pool = Pool::of(self.dm, &st)?;
            images::prune(&pool, &self.store, &self.rules, false)
        });
        match r {
            Ok((deleted, failed)) => {
                for d in deleted {
                    self.log.emit(&Event::Deleted { deleted: d });
                }
                for f in failed {
                    self.log.error(format!("retention: {f}"));
                }
            }
            Err(e) => self.log.error(format!("retention: {e}")),
        }
    }

    /// Handles one frozen marker; returns the marker handled.
    fn handle(&self, s: &SecStatus, action: Action) -> Option<u64> {
        match action {
            Action::Wait => None,
            Action::Thaw(id) => {
                self.thaw(id);
                Some(id)
            }
            Action::Snapshot(id) => {
                match self.snapshot(s, id) {
                    Ok(Some(image)) => {
                        self.log.emit(&Event::Image { image, pool: self.topo.pool.clone() });
                        self.thaw(id);
                    }
                    Ok(None) => self.log.emit(&Event::NoImage {
                        marker_id: id,
                        reason: format!(
                            "{} thawed before the snapshot could be taken (freeze_timeout?): the volume may hold later writes",
                            self.topo.repl
                        ),
                    }),
                    Err(e) => {
                        self.log.emit(&Event::NoImage { marker_id: id, reason: e.to_string() });
                        self.thaw(id);
                    }
                }
                self.retention();
                Some(id)
            }
        }
    }
}

/// `wbrepl secondary run`.
pub fn run(args: &RunArgs, json: bool) -> Result<Outcome> {
    let dm = Dm::open()?;
    let topo = topology(&dm.snapshot()?, &args.device).map_err(Error::op)?;
    let store = Store::new(&args.dir.state_dir, &topo.repl)?;
    let _running = store.run_lock()?;
    store.update(|st| match st {
        None => {
            *st = Some(topo.new_state());
            Ok(())
        }
        Some(s) => topo
            .matches(s)
            .map_err(|e| Error::op(format!("{}: {e}", store.path().display()))),
    })?;
    let l = Loop {
        dm: &dm,
        topo,
        store,
        log: Log { json },
        rules: args.rules.rules(),
    };
    l.log.emit(&Event::Started {
        secondary: l.topo.repl.clone(),
        thin: l.topo.thin.clone(),
        pool: l.topo.pool.clone(),
        origin_thin_id: l.topo.thin_table.id,
        state_file: l.store.path().display().to_string(),
    });
    l.recover()?;
    let stop = interrupt_flag();
    dm.arm()
        .map_err(|e| e.op("cannot watch device-mapper events"))?;
    let mut last: Option<(u64, Option<u64>)> = None;
    while !stop.load(Ordering::SeqCst) {
        let s = l.status()?;
        let action = decide(&s, &l.state()?.images);
        // The same marker still frozen right after it was handled (a thaw that failed): wait
        // for something to change rather than spin.
        let repeat = action != Action::Wait && last == s.frozen.map(|f| (f, s.marker_time_ns));
        if action == Action::Wait || repeat {
            if args.once {
                break;
            }
            dm.wait_event(TICK)
                .map_err(|e| e.op("cannot wait for device-mapper events"))?;
            if action == Action::Wait {
                last = None;
            }
            continue;
        }
        if let Some(id) = l.handle(&s, action) {
            last = Some((id, s.marker_time_ns));
        }
    }
    if args.once {
        l.retention();
    }
    l.log.emit(&Event::Stopped {});
    Ok(Outcome::streamed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::{DevNum, Target};

    const FROZEN: &str = "secondary connected listen 10.99.0.2:7800 peer 10.99.0.1:4000 applied 9 applied_bytes 0 resync_bytes 0 epoch 1 data consistent sessions 1 dropped 0 refused 0 markers 2 marker 8 marker_time_ns 1000 frozen 8 marker_label nightly";

    #[test]
    fn secondary_status() {
        let s = SecStatus::parse(FROZEN).unwrap();
        assert_eq!(
            s,
            SecStatus {
                frozen: Some(8),
                marker: Some(8),
                marker_time_ns: Some(1000),
                label: Some("nightly".into())
            }
        );
        let s = SecStatus::parse("secondary listening listen 1.2.3.4:5 peer - applied 0 markers 0 marker - marker_time_ns - frozen -").unwrap();
        assert_eq!(
            s,
            SecStatus {
                frozen: None,
                marker: None,
                marker_time_ns: None,
                label: None
            }
        );
        assert!(SecStatus::parse("primary connected peer 1.2.3.4:5").is_err());
        assert!(
            SecStatus::parse("secondary connected listen 1.2.3.4:5 applied 0")
                .unwrap_err()
                .contains("frozen")
        );
        assert!(SecStatus::parse("secondary connected listen 1.2.3.4:5 frozen x").is_err());
    }

    fn image(marker_id: u64, time: Option<u64>, complete: bool) -> Image {
        Image {
            seq: 1,
            name: "x".into(),
            marker_id,
            label: None,
            marker_time_ns: time,
            created_ns: 5,
            thin_id: 2,
            size_sectors: 8,
            complete,
        }
    }

    #[test]
    fn decisions() {
        let s = SecStatus::parse(FROZEN).unwrap();
        assert_eq!(decide(&s, &[]), Action::Snapshot(8));
        assert_eq!(decide(&s, &[image(8, Some(1000), true)]), Action::Thaw(8));
        // The same id from another primary (another time) is a new marker.
        assert_eq!(
            decide(&s, &[image(8, Some(999), true)]),
            Action::Snapshot(8)
        );
        // An incomplete record does not count.
        assert_eq!(
            decide(&s, &[image(8, Some(1000), false)]),
            Action::Snapshot(8)
        );
        let idle = SecStatus {
            frozen: None,
            ..s.clone()
        };
        assert_eq!(decide(&idle, &[]), Action::Wait);
        // Frozen at an older marker than the last recorded (not expected): the id decides.
        let odd = SecStatus {
            frozen: Some(7),
            ..s
        };
        assert_eq!(decide(&odd, &[image(7, Some(1), true)]), Action::Thaw(7));
    }

    fn dev(name: &str, minor: u32, ty: &str, params: &str) -> Device {
        Device {
            name: name.into(),
            devnum: DevNum::new(253, minor),
            table: Ok(vec![Target {
                start: 0,
                length: 131072,
                target_type: ty.into(),
                params: params.into(),
                status: None,
            }]),
        }
    }

    fn devices(repl_opts: &str) -> Vec<Device> {
        vec![
            dev("pool", 0, thin::POOL, "7:0 7:1 128 0 0"),
            dev("thin", 1, thin::THIN, "253:0 1"),
            dev(
                "sec",
                2,
                "repl",
                &format!("secondary 253:1 10.99.0.2:7800 {repl_opts}"),
            ),
            dev(
                "plain",
                3,
                "repl",
                "secondary 7:5 10.99.0.2:7801 1 freeze_on_marker",
            ),
            dev("prim", 4, "repl", "primary 7:6 10.99.0.2:7802 0"),
            dev("lin", 5, "linear", "7:7 0"),
            dev(
                "onlin",
                6,
                "repl",
                "secondary 253:5 10.99.0.2:7803 1 freeze_on_marker",
            ),
        ]
    }

    #[test]
    fn topologies() {
        let d = devices("1 freeze_on_marker");
        let t = topology(&d, "sec").unwrap();
        assert_eq!(
            t,
            Topology {
                repl: "sec".into(),
                thin: "thin".into(),
                thin_table: ThinTable {
                    pool: DevNum::new(253, 0),
                    id: 1,
                    external_origin: None
                },
                thin_len: 131072,
                pool: "pool".into(),
            }
        );
        assert_eq!(topology(&d, "/dev/mapper/sec"), Ok(t.clone()));
        assert_eq!(topology(&d, "253:2"), Ok(t.clone()));
        let st = t.new_state();
        assert_eq!(
            (st.pool.as_str(), st.origin.as_str(), st.origin_thin_id),
            ("pool", "thin", 1)
        );
        assert!(t.matches(&st).is_ok());
        let mut other = st;
        other.origin_thin_id = 9;
        assert!(t
            .matches(&other)
            .unwrap_err()
            .contains("move the old state file away"));

        let e = |q: &str, d: &[Device]| topology(d, q).unwrap_err();
        assert!(e("sec", &devices("0")).contains("no freeze_on_marker"));
        assert!(e("prim", &d).contains("is a repl primary, not a secondary"));
        assert!(e("plain", &d).contains("is not a device-mapper device"));
        assert!(e("onlin", &d).contains("(253:5) is not a dm-thin volume"));
        assert!(e("nosuch", &d).contains("no repl device"));
        assert!(e("thin", &d).contains("no repl device"));
        let mut nopool = d.clone();
        nopool.remove(0);
        assert!(e("sec", &nopool).contains("is not an active thin pool"));
    }

    #[test]
    fn event_lines() {
        let j = output::json_line(&Event::Thawed { marker_id: 3 });
        assert_eq!(j, r#"{"event":"thawed","marker_id":3}"#);
        let j = output::json_line(&Event::Stopped {});
        assert_eq!(j, r#"{"event":"stopped"}"#);
        assert_eq!(
            Log::text(&Event::NoImage {
                marker_id: 4,
                reason: "r".into()
            }),
            "no image for marker 4: r"
        );
    }
}
