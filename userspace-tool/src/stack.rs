//! Identification of wbrepl stacks from plain device-mapper data.
//!
//! A wbrepl stack is, top to bottom: a dm device with a `wbcache` target, whose origin is a dm
//! device with a `repl` target, whose data device is a local disk. This module takes a snapshot
//! of the device-mapper devices ([`Device`]: name, device number, table with per-target status)
//! and works out which devices form which stacks ([`identify`]). It does no I/O, so it is
//! unit-tested on any host; `dm.rs` fills the snapshot from the kernel.
//!
//! Rules:
//! - Only devices whose table has a `wbcache` or `repl` target are considered; others are
//!   ignored (but a wbcache origin pointing at one of them is "not a repl device").
//! - A wbrepl layer is a single-target table. A table mixing a wbrepl target with other
//!   targets, or with several, is reported as an error entry, as is a table whose parameters
//!   do not parse with the `wbrepl_core` grammar, or that could not be read at all.
//! - A wbcache sits on a repl device when its origin `major:minor` equals the repl device's
//!   device number. Each wbcache is a stack; a repl device with no wbcache above it is a stack of
//!   its own; a wbcache whose origin is not a (valid) repl device is a stack with a note.
//! - Stacks are sorted by the name of their top device, errors by device name, so the output is
//!   stable.

use crate::checkpoint::CpStatus;
use serde::{Serialize, Serializer};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use wbrepl_core::parse::parse_u32;
use wbrepl_core::table::{ReplTable, WbcacheTable};

/// Target type name of dm-wbcache.
pub const WBCACHE: &str = "wbcache";
/// Target type name of dm-repl.
pub const REPL: &str = "repl";

/// Note on a stack whose wbcache origin is not a repl device.
pub const NOTE_NOT_REPL: &str = "origin is not a repl device";
/// Note on a stack whose wbcache origin is a repl device with an unparsable table.
pub const NOTE_BAD_REPL: &str = "origin is a repl device whose table could not be parsed";

/// Leading positional words of the wbcache INFO status (`<state> <mode> <block_size>`),
/// skipped before reading `key value` pairs. Update together with the kernel's status format.
pub const WBCACHE_INFO_POSITIONAL: usize = 3;
/// Leading positional words of the repl INFO status (`<role> <state>`).
pub const REPL_INFO_POSITIONAL: usize = 2;

/// Whether `target_type` is one of the wbrepl targets.
pub fn is_wbrepl_target(target_type: &str) -> bool {
    target_type == WBCACHE || target_type == REPL
}

/// A block device number, printed and parsed as `major:minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevNum {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl DevNum {
    /// Builds a device number.
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// The string is not a decimal `major:minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadDevNum;

impl FromStr for DevNum {
    type Err = BadDevNum;

    fn from_str(s: &str) -> Result<Self, BadDevNum> {
        let (major, minor) = s.split_once(':').ok_or(BadDevNum)?;
        Ok(Self {
            major: parse_u32(major).map_err(|_| BadDevNum)?,
            minor: parse_u32(minor).map_err(|_| BadDevNum)?,
        })
    }
}

impl Serialize for DevNum {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

// ------------------------------------------------------------------------------------------------
// Input

/// One target line of a device's active table, with its INFO status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// First sector.
    pub start: u64,
    /// Length in sectors.
    pub length: u64,
    /// Target type name (`wbcache`, `repl`, `linear`, ...).
    pub target_type: String,
    /// Table parameters (the words after the target type).
    pub params: String,
    /// INFO status of the target, if it was read.
    pub status: Option<String>,
}

/// A device-mapper device as read from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Device name (`/dev/mapper/<name>`).
    pub name: String,
    /// Device number of the dm device itself.
    pub devnum: DevNum,
    /// Active table, or why it could not be read.
    pub table: Result<Vec<Target>, String>,
}

// ------------------------------------------------------------------------------------------------
// Output

/// Every stack found, and the devices that could not be understood.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Stacks, sorted by the name of the top device.
    pub stacks: Vec<Stack>,
    /// Devices that look like wbrepl layers but could not be read or parsed, sorted by name.
    pub errors: Vec<DeviceError>,
}

/// One stack: a wbcache over a repl device, or either one alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stack {
    /// The cache layer, if any.
    pub wbcache: Option<WbcacheLayer>,
    /// The replication layer, if any.
    pub repl: Option<ReplLayer>,
    /// Why the stack is incomplete ([`NOTE_NOT_REPL`], [`NOTE_BAD_REPL`]), if it is.
    pub note: Option<String>,
}

impl Stack {
    /// Name of the top device.
    pub fn top_name(&self) -> &str {
        match (&self.wbcache, &self.repl) {
            (Some(w), _) => &w.name,
            (None, Some(r)) => &r.name,
            (None, None) => "",
        }
    }

    /// The names and device numbers of the layers, top first.
    fn layers(&self) -> impl Iterator<Item = (&str, DevNum)> {
        let w = self.wbcache.as_ref().map(|w| (w.name.as_str(), w.devnum));
        let r = self.repl.as_ref().map(|r| (r.name.as_str(), r.devnum));
        w.into_iter().chain(r)
    }
}

/// A dm device with a `wbcache` target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WbcacheLayer {
    /// Device name.
    pub name: String,
    /// Device number of the wbcache device.
    pub devnum: DevNum,
    /// Origin device as in the table (`major:minor`).
    pub origin: String,
    /// Cache device as in the table (`major:minor`).
    pub cache: String,
    /// Cache block size in bytes.
    pub block_size: u32,
    /// Effective write policy.
    pub mode: String,
    /// Raw INFO status line (`null` if it could not be read).
    pub status: Option<String>,
    /// Best-effort `key value` pairs of the status line.
    pub status_fields: BTreeMap<String, String>,
    /// The checkpoint part of the status (`null` if the kernel does not report it).
    pub checkpoint: Option<CpStatus>,
}

/// A dm device with a `repl` target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplLayer {
    /// Device name.
    pub name: String,
    /// Device number of the repl device.
    pub devnum: DevNum,
    /// `primary` or `secondary`.
    pub role: String,
    /// Local data device as in the table (`major:minor`).
    pub data: String,
    /// Address from the table: the peer to connect to (primary) or to listen on (secondary).
    pub peer: String,
    /// Effective replication protocol.
    pub protocol: String,
    /// Raw INFO status line (`null` if it could not be read).
    pub status: Option<String>,
    /// Best-effort `key value` pairs of the status line.
    pub status_fields: BTreeMap<String, String>,
}

/// A device that could not be understood.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceError {
    /// Device name.
    pub name: String,
    /// Device number.
    pub devnum: DevNum,
    /// The wbrepl target type concerned, if known.
    pub target: Option<String>,
    /// What went wrong.
    pub error: String,
}

// ------------------------------------------------------------------------------------------------
// Identification

/// Best-effort `key value` pairs of an INFO status line, after `positional` leading words.
///
/// Stops at the first word that is not a plausible key (`[a-z_][a-z0-9_]*`) or has no value;
/// the first occurrence of a key wins. The raw line stays the authoritative form.
pub fn status_fields(info: &str, positional: usize) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut words = info.split_ascii_whitespace().skip(positional);
    while let (Some(key), Some(value)) = (words.next(), words.next()) {
        let mut chars = key.chars();
        let plausible = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !plausible {
            break;
        }
        fields
            .entry(key.to_owned())
            .or_insert_with(|| value.to_owned());
    }
    fields
}

fn wbcache_layer(dev: &Device, t: &Target) -> Result<WbcacheLayer, String> {
    let table = WbcacheTable::parse(&mut t.params.split_ascii_whitespace())
        .map_err(|e| format!("cannot parse wbcache table \"{}\": {e}", t.params))?;
    let status = t.status.as_ref().map(|s| s.trim().to_owned());
    let fields = status
        .as_deref()
        .map(|s| status_fields(s, WBCACHE_INFO_POSITIONAL))
        .unwrap_or_default();
    Ok(WbcacheLayer {
        name: dev.name.clone(),
        devnum: dev.devnum,
        origin: table.origin.to_owned(),
        cache: table.cache.to_owned(),
        block_size: table.block_size,
        // The running mode (a `mode` message changes it), else the table's.
        mode: status
            .as_deref()
            .and_then(|s| s.split_ascii_whitespace().nth(1))
            .filter(|m| matches!(*m, "writeback" | "writethrough" | "ordered"))
            .unwrap_or(table.opts.mode().as_str())
            .to_owned(),
        checkpoint: CpStatus::from_fields(&fields),
        status_fields: fields,
        status,
    })
}

fn repl_layer(dev: &Device, t: &Target) -> Result<ReplLayer, String> {
    let table = ReplTable::parse(&mut t.params.split_ascii_whitespace())
        .map_err(|e| format!("cannot parse repl table \"{}\": {e}", t.params))?;
    let status = t.status.as_ref().map(|s| s.trim().to_owned());
    Ok(ReplLayer {
        name: dev.name.clone(),
        devnum: dev.devnum,
        role: table.role.as_str().to_owned(),
        data: table.data_dev.to_owned(),
        peer: table.addr.to_string(),
        protocol: table.opts.protocol().as_str().to_owned(),
        status_fields: status
            .as_deref()
            .map(|s| status_fields(s, REPL_INFO_POSITIONAL))
            .unwrap_or_default(),
        status,
    })
}

/// Works out the stacks formed by `devices` (every dm device, in any order).
pub fn identify(devices: &[Device]) -> Report {
    let mut wbcaches = Vec::new();
    let mut repls = Vec::new();
    let mut bad_repls = HashSet::new();
    let mut errors = Vec::new();

    for dev in devices {
        let error = |target: Option<&str>, error: String| DeviceError {
            name: dev.name.clone(),
            devnum: dev.devnum,
            target: target.map(str::to_owned),
            error,
        };
        let targets = match &dev.table {
            Ok(targets) => targets,
            Err(e) => {
                errors.push(error(None, format!("cannot read table: {e}")));
                continue;
            }
        };
        let Some(ours) = targets.iter().find(|t| is_wbrepl_target(&t.target_type)) else {
            continue;
        };
        if targets.len() != 1 {
            let msg = format!(
                "table has {} targets; a {} layer must be the only target of its device",
                targets.len(),
                ours.target_type
            );
            errors.push(error(Some(&ours.target_type), msg));
            if ours.target_type == REPL {
                bad_repls.insert(dev.devnum);
            }
            continue;
        }
        if ours.target_type == WBCACHE {
            match wbcache_layer(dev, ours) {
                Ok(layer) => wbcaches.push(layer),
                Err(e) => errors.push(error(Some(WBCACHE), e)),
            }
        } else {
            match repl_layer(dev, ours) {
                Ok(layer) => repls.push(layer),
                Err(e) => {
                    bad_repls.insert(dev.devnum);
                    errors.push(error(Some(REPL), e));
                }
            }
        }
    }

    let by_devnum: HashMap<DevNum, &ReplLayer> = repls.iter().map(|r| (r.devnum, r)).collect();
    let mut used = HashSet::new();
    let mut stacks = Vec::new();
    for w in wbcaches {
        let origin = w.origin.parse::<DevNum>().ok();
        let repl = origin.and_then(|o| by_devnum.get(&o)).map(|r| (*r).clone());
        let note = match (&repl, origin) {
            (Some(r), _) => {
                used.insert(r.devnum);
                None
            }
            (None, Some(o)) if bad_repls.contains(&o) => Some(NOTE_BAD_REPL.to_owned()),
            (None, _) => Some(NOTE_NOT_REPL.to_owned()),
        };
        stacks.push(Stack {
            wbcache: Some(w),
            repl,
            note,
        });
    }
    for r in &repls {
        if !used.contains(&r.devnum) {
            stacks.push(Stack {
                wbcache: None,
                repl: Some(r.clone()),
                note: None,
            });
        }
    }
    stacks.sort_by(|a, b| a.top_name().cmp(b.top_name()));
    errors.sort_by(|a, b| a.name.cmp(&b.name));
    Report { stacks, errors }
}

/// Whether the command-line `query` names this device: by name, `/dev/mapper/<name>` or
/// `major:minor`.
fn names(query: &str, name: &str, devnum: DevNum) -> bool {
    query == name
        || query.strip_prefix("/dev/mapper/") == Some(name)
        || query.parse::<DevNum>() == Ok(devnum)
}

impl Report {
    /// The stack with a layer named by `query` (the first, if a repl device carries several
    /// caches).
    pub fn find(&self, query: &str) -> Option<&Stack> {
        self.stacks
            .iter()
            .find(|s| s.layers().any(|(n, d)| names(query, n, d)))
    }

    /// The same, or the message for a DEVICE that names no wbrepl device.
    pub fn lookup(&self, query: &str) -> Result<&Stack, String> {
        self.find(query)
            .ok_or_else(|| format!("{query}: no wbcache or repl device by that name"))
    }

    /// Keeps the stacks with a layer named by one of `queries`, and the errors of devices named
    /// by one of them. Returns the queries that named nothing, in the order given.
    ///
    /// With no queries everything is kept.
    pub fn filter(&mut self, queries: &[String]) -> Vec<String> {
        if queries.is_empty() {
            return Vec::new();
        }
        let mut hit = vec![false; queries.len()];
        let mut matches = |name: &str, devnum: DevNum| {
            let mut any = false;
            for (q, h) in queries.iter().zip(hit.iter_mut()) {
                if names(q, name, devnum) {
                    *h = true;
                    any = true;
                }
            }
            any
        };
        self.stacks
            .retain(|s| s.layers().fold(false, |any, (n, d)| matches(n, d) | any));
        self.errors.retain(|e| matches(&e.name, e.devnum));
        queries
            .iter()
            .zip(hit)
            .filter(|(_, h)| !h)
            .map(|(q, _)| q.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(ty: &str, params: &str, status: &str) -> Target {
        Target {
            start: 0,
            length: 131072,
            target_type: ty.to_owned(),
            params: params.to_owned(),
            status: Some(status.to_owned()),
        }
    }

    fn dev(name: &str, minor: u32, targets: Vec<Target>) -> Device {
        Device {
            name: name.to_owned(),
            devnum: DevNum::new(253, minor),
            table: Ok(targets),
        }
    }

    const WB_STATUS: &str = "passthrough writeback 4096 reads 5 writes 7 flushes 0 errors 0";
    const PRIMARY_STATUS: &str =
        "primary passthrough peer 10.0.0.2:7789 protocol async writes 3 refused 0";

    fn wbc(name: &str, minor: u32, origin: &str, cache: &str) -> Device {
        let params = format!("{origin} {cache} 4096 2 mode writeback");
        dev(name, minor, vec![target(WBCACHE, &params, WB_STATUS)])
    }

    fn primary(name: &str, minor: u32, data: &str) -> Device {
        let params = format!("primary {data} 10.0.0.2:7789 0");
        dev(name, minor, vec![target(REPL, &params, PRIMARY_STATUS)])
    }

    fn secondary(name: &str, minor: u32, data: &str) -> Device {
        let params = format!("secondary {data} 0.0.0.0:7789 2 protocol sync");
        dev(
            name,
            minor,
            vec![target(
                REPL,
                &params,
                "secondary passthrough listen 0.0.0.0:7789",
            )],
        )
    }

    fn linear(name: &str, minor: u32) -> Device {
        dev(name, minor, vec![target("linear", "7:9 0", "")])
    }

    fn stack_names(r: &Report) -> Vec<(Option<&str>, Option<&str>)> {
        r.stacks
            .iter()
            .map(|s| {
                (
                    s.wbcache.as_ref().map(|w| w.name.as_str()),
                    s.repl.as_ref().map(|r| r.name.as_str()),
                )
            })
            .collect()
    }

    #[test]
    fn devnums() {
        assert_eq!("253:0".parse(), Ok(DevNum::new(253, 0)));
        assert_eq!(DevNum::new(7, 12).to_string(), "7:12");
        for bad in [
            "", "253", "253:", ":0", "253:0:1", "/dev/sda", "-1:0", "253:x", " 253:0",
        ] {
            assert_eq!(bad.parse::<DevNum>(), Err(BadDevNum), "{bad:?}");
        }
    }

    #[test]
    fn wbcache_over_repl() {
        let r = identify(&[wbc("wbc0", 1, "253:0", "7:1"), primary("repl0", 0, "7:2")]);
        assert_eq!(stack_names(&r), [(Some("wbc0"), Some("repl0"))]);
        assert!(r.errors.is_empty());
        let s = &r.stacks[0];
        assert_eq!(s.note, None);
        let w = s.wbcache.as_ref().unwrap();
        assert_eq!(
            (w.devnum, w.origin.as_str(), w.cache.as_str()),
            (DevNum::new(253, 1), "253:0", "7:1")
        );
        assert_eq!((w.block_size, w.mode.as_str()), (4096, "writeback"));
        assert_eq!(w.status.as_deref(), Some(WB_STATUS));
        let p = s.repl.as_ref().unwrap();
        assert_eq!(p.devnum, DevNum::new(253, 0));
        assert_eq!(
            (p.role.as_str(), p.data.as_str(), p.peer.as_str()),
            ("primary", "7:2", "10.0.0.2:7789")
        );
        assert_eq!(p.protocol, "async");
    }

    #[test]
    fn effective_mode_is_the_default_when_not_given() {
        let d = dev("w", 1, vec![target(WBCACHE, "7:0 7:1 512 0", "")]);
        let r = identify(&[d]);
        assert_eq!(r.stacks[0].wbcache.as_ref().unwrap().mode, "writeback");
        let d = dev(
            "w",
            1,
            vec![target(
                WBCACHE,
                "7:0 7:1 512 3 flush_on_suspend mode ordered",
                "",
            )],
        );
        assert_eq!(
            identify(&[d]).stacks[0].wbcache.as_ref().unwrap().mode,
            "ordered"
        );
    }

    #[test]
    fn repl_alone_is_its_own_stack() {
        let r = identify(&[primary("repl0", 0, "7:2")]);
        assert_eq!(stack_names(&r), [(None, Some("repl0"))]);
        assert_eq!(r.stacks[0].note, None);
    }

    #[test]
    fn wbcache_over_a_plain_disk() {
        let r = identify(&[wbc("wbc0", 0, "8:16", "7:1")]);
        assert_eq!(stack_names(&r), [(Some("wbc0"), None)]);
        assert_eq!(r.stacks[0].note.as_deref(), Some(NOTE_NOT_REPL));
        // over another kind of dm device: the same
        let r = identify(&[linear("lin", 3), wbc("wbc0", 0, "253:3", "7:1")]);
        assert_eq!(stack_names(&r), [(Some("wbc0"), None)]);
        assert_eq!(r.stacks[0].note.as_deref(), Some(NOTE_NOT_REPL));
    }

    #[test]
    fn two_independent_stacks_in_any_order() {
        let devices = [
            primary("repl1", 2, "7:4"),
            wbc("wbc1", 3, "253:2", "7:3"),
            linear("other", 9),
            wbc("wbc0", 1, "253:0", "7:1"),
            primary("repl0", 0, "7:2"),
        ];
        let r = identify(&devices);
        assert_eq!(
            stack_names(&r),
            [(Some("wbc0"), Some("repl0")), (Some("wbc1"), Some("repl1"))]
        );
        let mut rev = devices.to_vec();
        rev.reverse();
        assert_eq!(identify(&rev), r);
    }

    #[test]
    fn secondary_repl() {
        let r = identify(&[
            secondary("sec0", 5, "7:6"),
            wbc("wbc0", 1, "253:0", "7:1"),
            primary("repl0", 0, "7:2"),
        ]);
        assert_eq!(
            stack_names(&r),
            [(None, Some("sec0")), (Some("wbc0"), Some("repl0"))]
        );
        let s = r.stacks[0].repl.as_ref().unwrap();
        assert_eq!(
            (s.role.as_str(), s.peer.as_str(), s.protocol.as_str()),
            ("secondary", "0.0.0.0:7789", "sync")
        );
        assert_eq!(
            s.status.as_deref(),
            Some("secondary passthrough listen 0.0.0.0:7789")
        );
    }

    #[test]
    fn other_targets_are_ignored() {
        let r = identify(&[linear("a", 0), dev("empty", 1, vec![])]);
        assert_eq!(r, Report::default());
    }

    #[test]
    fn malformed_params_are_error_entries() {
        let bad_wb = dev("badwb", 4, vec![target(WBCACHE, "253:0 7:1 4095 0", "")]);
        let bad_repl = dev(
            "badrepl",
            0,
            vec![target(REPL, "master 7:2 10.0.0.2:7789 0", "")],
        );
        let r = identify(&[bad_wb, bad_repl, wbc("wbc0", 1, "253:0", "7:1")]);
        // The wbcache on the broken repl is still shown, with a note.
        assert_eq!(stack_names(&r), [(Some("wbc0"), None)]);
        assert_eq!(r.stacks[0].note.as_deref(), Some(NOTE_BAD_REPL));
        let errs: Vec<_> = r
            .errors
            .iter()
            .map(|e| (e.name.as_str(), e.target.as_deref()))
            .collect();
        assert_eq!(errs, [("badrepl", Some(REPL)), ("badwb", Some(WBCACHE))]);
        assert_eq!(
            r.errors[0].error,
            "cannot parse repl table \"master 7:2 10.0.0.2:7789 0\": Invalid role: must be primary or secondary"
        );
        assert!(r.errors[1]
            .error
            .ends_with("Invalid block size: must be a power of two from 512 to 65536"));
    }

    #[test]
    fn unreadable_and_multi_target_tables_are_error_entries() {
        let unreadable = Device {
            name: "gone".into(),
            devnum: DevNum::new(253, 7),
            table: Err("ENXIO".into()),
        };
        let mut two = primary("two", 8, "7:2");
        if let Ok(t) = &mut two.table {
            t.push(target("linear", "7:3 0", ""));
        }
        let r = identify(&[unreadable, two, wbc("wbc0", 1, "253:8", "7:1")]);
        assert_eq!(r.errors.len(), 2);
        assert_eq!(
            (r.errors[0].target.as_deref(), r.errors[0].error.as_str()),
            (None, "cannot read table: ENXIO")
        );
        assert_eq!(r.errors[1].target.as_deref(), Some(REPL));
        assert!(r.errors[1].error.starts_with("table has 2 targets"));
        assert_eq!(r.stacks[0].note.as_deref(), Some(NOTE_BAD_REPL));
    }

    #[test]
    fn two_caches_on_one_repl_share_it() {
        let r = identify(&[
            wbc("a", 1, "253:0", "7:1"),
            wbc("b", 2, "253:0", "7:3"),
            primary("repl0", 0, "7:2"),
        ]);
        assert_eq!(
            stack_names(&r),
            [(Some("a"), Some("repl0")), (Some("b"), Some("repl0"))]
        );
    }

    #[test]
    fn missing_status_is_null_not_an_error() {
        let mut d = primary("repl0", 0, "7:2");
        if let Ok(t) = &mut d.table {
            t[0].status = None;
        }
        let r = identify(&[d]);
        let p = r.stacks[0].repl.as_ref().unwrap();
        assert_eq!((p.status.as_deref(), p.status_fields.len()), (None, 0));
    }

    #[test]
    fn status_fields_are_best_effort_pairs() {
        let f = status_fields(WB_STATUS, WBCACHE_INFO_POSITIONAL);
        let want: BTreeMap<String, String> = [
            ("reads", "5"),
            ("writes", "7"),
            ("flushes", "0"),
            ("errors", "0"),
        ]
        .map(|(k, v)| (k.into(), v.into()))
        .into();
        assert_eq!(f, want);
        let f = status_fields(PRIMARY_STATUS, REPL_INFO_POSITIONAL);
        assert_eq!(f.get("peer").map(String::as_str), Some("10.0.0.2:7789"));
        assert_eq!(f.get("protocol").map(String::as_str), Some("async"));
        assert_eq!(f.len(), 4);
        // stops at a non-key word or a dangling key; first occurrence wins
        assert_eq!(status_fields("a 1 B 2 c 3", 0).len(), 1);
        assert_eq!(status_fields("a 1 b", 0).len(), 1);
        assert_eq!(
            status_fields("a 1 a 2", 0).get("a").map(String::as_str),
            Some("1")
        );
        assert!(status_fields("", 3).is_empty());
    }

    #[test]
    fn filtering_by_name_path_or_devnum() {
        let devices = [
            wbc("wbc0", 1, "253:0", "7:1"),
            primary("repl0", 0, "7:2"),
            secondary("sec0", 5, "7:6"),
            dev("bad", 6, vec![target(REPL, "x", "")]),
        ];
        let all = identify(&devices);
        assert_eq!(all.stacks.len(), 2);

        let mut r = all.clone();
        assert!(r.filter(&[]).is_empty());
        assert_eq!(r, all);

        // naming the lower layer shows the whole stack
        let mut r = all.clone();
        assert!(r.filter(&["repl0".into()]).is_empty());
        assert_eq!(stack_names(&r), [(Some("wbc0"), Some("repl0"))]);
        assert!(r.errors.is_empty());

        let mut r = all.clone();
        assert!(r
            .filter(&["/dev/mapper/sec0".into(), "253:6".into()])
            .is_empty());
        assert_eq!(stack_names(&r), [(None, Some("sec0"))]);
        assert_eq!(r.errors.len(), 1);

        let mut r = all.clone();
        assert_eq!(
            r.filter(&["nosuchdev".into(), "wbc0".into(), "253:99".into()]),
            ["nosuchdev", "253:99"]
        );
        assert_eq!(r.stacks.len(), 1);

        let mut r = all;
        assert_eq!(r.filter(&["nosuchdev".into()]), ["nosuchdev"]);
        assert_eq!(r, Report::default());
    }

    #[test]
    fn find_by_any_layer() {
        let r = identify(&[
            wbc("wbc0", 1, "253:0", "7:1"),
            primary("repl0", 0, "7:2"),
            secondary("sec0", 5, "7:6"),
        ]);
        let top = |q: &str| r.find(q).map(Stack::top_name);
        assert_eq!(top("repl0"), Some("wbc0"));
        assert_eq!(top("/dev/mapper/wbc0"), Some("wbc0"));
        assert_eq!(top("253:0"), Some("wbc0"));
        assert_eq!(top("sec0"), Some("sec0"));
        assert_eq!(top("nosuch"), None);
        assert_eq!(
            r.lookup("nosuch").map(Stack::top_name),
            Err("nosuch: no wbcache or repl device by that name".into())
        );
    }

    #[test]
    fn running_mode_and_checkpoint_from_the_status() {
        let d = dev(
            "w",
            1,
            vec![target(
                WBCACHE,
                "7:0 7:1 4096 2 mode writeback",
                "ok ordered 4096 dirty 3 checkpoint ordered cp_id 9 cp_left 3 cp_ms 20 last_cp 8 last_cp_result timeout last_cp_ms 60000",
            )],
        );
        let r = identify(&[d]);
        let w = r.stacks[0].wbcache.as_ref().unwrap();
        assert_eq!(w.mode, "ordered");
        let cp = w.checkpoint.as_ref().unwrap();
        assert_eq!(
            (cp.id, cp.left, cp.last_result.as_deref()),
            (Some(9), 3, Some("timeout"))
        );
    }

    #[test]
    fn json_shape() {
        let r = identify(&[
            wbc("wbc0", 1, "253:0", "7:1"),
            primary("repl0", 0, "7:2"),
            wbc("wbc9", 2, "8:0", "7:3"),
            dev("bad", 6, vec![target(REPL, "primary", "")]),
        ]);
        let v = serde_json::to_value(&r).unwrap();
        let expected = json!({
            "stacks": [
                {
                    "wbcache": {
                        "name": "wbc0", "devnum": "253:1", "origin": "253:0", "cache": "7:1",
                        "block_size": 4096, "mode": "writeback", "status": WB_STATUS,
                        "status_fields": {"reads": "5", "writes": "7", "flushes": "0", "errors": "0"},
                        "checkpoint": null
                    },
                    "repl": {
                        "name": "repl0", "devnum": "253:0", "role": "primary", "data": "7:2",
                        "peer": "10.0.0.2:7789", "protocol": "async", "status": PRIMARY_STATUS,
                        "status_fields": {"peer": "10.0.0.2:7789", "protocol": "async", "writes": "3", "refused": "0"}
                    },
                    "note": null
                },
                {
                    "wbcache": {
                        "name": "wbc9", "devnum": "253:2", "origin": "8:0", "cache": "7:3",
                        "block_size": 4096, "mode": "writeback", "status": WB_STATUS,
                        "status_fields": {"reads": "5", "writes": "7", "flushes": "0", "errors": "0"},
                        "checkpoint": null
                    },
                    "repl": null,
                    "note": "origin is not a repl device"
                }
            ],
            "errors": [
                {"name": "bad", "devnum": "253:6", "target": "repl",
                 "error": "cannot parse repl table \"primary\": Missing data device"}
            ]
        });
        assert_eq!(v, expected);
        assert_eq!(
            serde_json::to_string(&Report::default()).unwrap(),
            r#"{"stacks":[],"errors":[]}"#
        );
    }
}
