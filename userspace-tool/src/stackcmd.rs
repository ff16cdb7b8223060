//! `wbrepl stack create|remove`: build a stack from flags or a TOML file (a repl primary over a
//! data disk with an optional wbcache above it, or a repl secondary), and take one down top to
//! bottom.
//!
//! The table lines are made with the kernel's own grammar (`wbrepl_core::table`) and parsed
//! back before anything is created, so a bad option is refused with the kernel's text. Devices
//! are made with device-mapper ioctls (create, load, resume); a stack that fails half way is
//! removed again.

use crate::dm::Dm;
use crate::error::{Error, Result};
use crate::output::Outcome;
use crate::stack::{self, DevNum};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use wbrepl_core::parse::parse_ipv4_port;
use wbrepl_core::table::{
    CacheMode, Protocol, ReplOptions, ReplTable, Role, WbcacheOptions, WbcacheTable,
};

/// A stack as described by a config file or by flags.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackSpec {
    /// Name of the top device.
    pub name: String,
    /// The replication layer.
    pub repl: ReplSpec,
    /// The cache layer (primary only).
    pub wbcache: Option<CacheSpec>,
}

/// The repl layer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplSpec {
    /// Its device name [default: NAME-repl under a cache, else NAME].
    pub name: Option<String>,
    /// The data device (path or major:minor).
    pub data: String,
    /// Peer address: a primary.
    pub peer: Option<String>,
    /// Listening address: a secondary.
    pub listen: Option<String>,
    /// `async` or `sync`.
    pub protocol: Option<String>,
    /// Metadata device.
    pub meta: Option<String>,
    /// Keyring key for authentication.
    pub auth: Option<String>,
    /// Send window, KiB.
    pub max_inflight_kb: Option<u32>,
    /// Marker region, sectors.
    pub marker_sectors: Option<u32>,
    /// Secondary: freeze at markers.
    #[serde(default)]
    pub freeze_on_marker: bool,
    /// Secondary: thaw after this many ms.
    pub freeze_timeout_ms: Option<u32>,
    /// Length in sectors [default: the data device's size].
    pub size_sectors: Option<u64>,
}

/// The cache layer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Its device name [default: NAME].
    pub name: Option<String>,
    /// The cache device (path or major:minor).
    pub cache: String,
    /// Cache block size, bytes [default 4096].
    pub block_size: Option<u32>,
    /// `writeback`, `writethrough` or `ordered`.
    pub mode: Option<String>,
    /// Percent.
    pub high_watermark: Option<u32>,
    /// Percent.
    pub low_watermark: Option<u32>,
    /// Concurrent writeback copies.
    pub writeback_jobs: Option<u32>,
    /// Write back blocks older than this many ms.
    pub max_age_ms: Option<u32>,
    /// Write everything back on suspend.
    #[serde(default)]
    pub flush_on_suspend: bool,
}

/// Default cache block size.
pub const DEFAULT_BLOCK: u32 = 4096;

/// One device to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Layer {
    /// Device name.
    pub name: String,
    /// Target type.
    pub target: &'static str,
    /// Length, sectors.
    pub len: u64,
    /// Table parameters (for the wbcache, with `{origin}` where the repl device goes).
    pub params: String,
}

/// What `create` will make, bottom first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The repl device.
    pub repl: Layer,
    /// The wbcache device over it.
    pub wbcache: Option<Layer>,
}

/// Placeholder for the repl device in the wbcache parameters.
pub const ORIGIN: &str = "{origin}";

fn check_name(n: &str) -> std::result::Result<(), String> {
    if n.is_empty()
        || n.len() > 127
        || n.contains('/')
        || n == "."
        || n == ".."
        || n.contains(char::is_whitespace)
    {
        return Err(format!("\"{n}\" is not a usable device-mapper name"));
    }
    Ok(())
}

/// Works out the table lines (pure; `data_sectors` is the data device's size).
pub fn plan(spec: &StackSpec, data_sectors: u64) -> std::result::Result<Plan, String> {
    let r = &spec.repl;
    let (role, addr) = match (&r.peer, &r.listen) {
        (Some(p), None) => (Role::Primary, p),
        (None, Some(l)) => (Role::Secondary, l),
        _ => return Err("give exactly one of peer (a primary) or listen (a secondary)".into()),
    };
    let addr = parse_ipv4_port(addr).map_err(|_| {
        format!("\"{addr}\": an address is an IPv4 a.b.c.d:port with port 1..65535")
    })?;
    if role == Role::Secondary && spec.wbcache.is_some() {
        return Err("a cache goes on a primary only (a secondary has listen)".into());
    }
    let protocol = match r.protocol.as_deref() {
        None => None,
        Some("async") => Some(Protocol::Async),
        Some("sync") => Some(Protocol::Sync),
        Some(p) => return Err(format!("protocol \"{p}\": must be async or sync")),
    };
    let opts = ReplOptions {
        protocol,
        max_inflight_kb: r.max_inflight_kb,
        meta_dev: r.meta.as_deref(),
        auth: r.auth.as_deref(),
        marker_sectors: r.marker_sectors,
        freeze_on_marker: r.freeze_on_marker,
        freeze_timeout_ms: r.freeze_timeout_ms,
    };
    let repl_params = ReplTable {
        role,
        data_dev: &r.data,
        addr,
        opts,
    }
    .to_string();
    // Parsed back by the kernel's grammar: ranges, duplicates, role-specific options.
    ReplTable::parse(&mut repl_params.split_ascii_whitespace())
        .map_err(|e| format!("repl: {e}"))?;

    let len = match r.size_sectors {
        Some(s) if s > data_sectors => {
            return Err(format!(
                "size_sectors {s} is more than the data device has ({data_sectors})"
            ))
        }
        Some(s) => s,
        None => data_sectors,
    };
    let marker = u64::from(opts.marker_sectors());
    let wbcache = match &spec.wbcache {
        None => None,
        Some(c) => {
            let block_size = c.block_size.unwrap_or(DEFAULT_BLOCK);
            let mode = c
                .mode
                .as_deref()
                .map(CacheMode::parse)
                .transpose()
                .map_err(|e| format!("wbcache: {e}"))?;
            let copts = WbcacheOptions {
                high_watermark: c.high_watermark,
                low_watermark: c.low_watermark,
                writeback_jobs: c.writeback_jobs,
                max_age_ms: c.max_age_ms,
                mode,
                flush_on_suspend: c.flush_on_suspend,
            };
            let params = WbcacheTable {
                origin: ORIGIN,
                cache: &c.cache,
                block_size,
                opts: copts,
            }
            .to_string();
            WbcacheTable::parse(&mut params.split_ascii_whitespace())
                .map_err(|e| format!("wbcache: {e}"))?;
            // The cache ends before the repl device's marker region (where a checkpoint writes
            // its marker), on a whole number of blocks.
            let block = (u64::from(block_size) / 512).max(1);
            let clen = len.saturating_sub(marker) / block * block;
            Some((
                c.name.clone().unwrap_or_else(|| spec.name.clone()),
                params,
                clen,
            ))
        }
    };
    if len < 2 * marker || wbcache.as_ref().is_some_and(|w| w.2 == 0) {
        return Err(format!(
            "the device ({len} sectors) is too small: it needs at least twice the marker region ({marker} sectors), and a cache block besides it"
        ));
    }
    let repl_name = r.name.clone().unwrap_or_else(|| match wbcache {
        Some(_) => format!("{}-repl", spec.name),
        None => spec.name.clone(),
    });
    check_name(&repl_name)?;
    if let Some((n, _, _)) = &wbcache {
        check_name(n)?;
        if *n == repl_name {
            return Err(format!("the cache and repl devices are both named \"{n}\""));
        }
    }
    Ok(Plan {
        repl: Layer {
            name: repl_name,
            target: stack::REPL,
            len,
            params: repl_params,
        },
        wbcache: wbcache.map(|(name, params, len)| Layer {
            name,
            target: stack::WBCACHE,
            len,
            params,
        }),
    })
}

/// Reads and checks a TOML stack description.
pub fn parse_config(text: &str) -> std::result::Result<StackSpec, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("flags").multiple(true)))]
pub struct CreateArgs {
    /// A TOML file describing the stack (see docs/cli.md); no other flags with it.
    #[arg(long, value_name = "FILE", conflicts_with = "flags")]
    config: Option<PathBuf>,
    /// Name of the top device (/dev/mapper/NAME).
    #[arg(
        value_name = "NAME",
        required_unless_present = "config",
        group = "flags"
    )]
    name: Option<String>,
    /// The data device (a primary's local disk, or what a secondary writes to).
    #[arg(
        long,
        value_name = "DEV",
        required_unless_present = "config",
        group = "flags"
    )]
    data: Option<String>,
    /// Make a primary replicating to this secondary (a.b.c.d:port).
    #[arg(long, value_name = "ADDR", group = "flags", conflicts_with = "listen")]
    peer: Option<String>,
    /// Make a secondary listening on this address (a.b.c.d:port).
    #[arg(long, value_name = "ADDR", group = "flags")]
    listen: Option<String>,
    /// Replication protocol.
    #[arg(long, value_parser = ["async", "sync"], group = "flags")]
    protocol: Option<String>,
    /// Metadata device of the repl layer (dirty bitmap / consistency state).
    #[arg(long, value_name = "DEV", group = "flags")]
    meta: Option<String>,
    /// Keyring key description for authentication.
    #[arg(long, value_name = "KEY", group = "flags")]
    auth: Option<String>,
    /// Send window of a primary, KiB.
    #[arg(long, value_name = "KB", group = "flags")]
    max_inflight_kb: Option<u32>,
    /// Size of the marker region, sectors.
    #[arg(long, value_name = "N", group = "flags")]
    marker_sectors: Option<u32>,
    /// Secondary: stop applying after a marker until thawed (needed by secondary run).
    #[arg(long, group = "flags")]
    freeze_on_marker: bool,
    /// Secondary: thaw by itself after this many ms.
    #[arg(long, value_name = "MS", group = "flags")]
    freeze_timeout_ms: Option<u32>,
    /// Length of the stack in sectors [default: the data device's size].
    #[arg(long, value_name = "N", group = "flags")]
    size_sectors: Option<u64>,
    /// Name of the repl device [default: NAME-repl with a cache, else NAME].
    #[arg(long, value_name = "NAME", group = "flags")]
    repl_name: Option<String>,
    /// Put a wbcache on this cache device above the repl primary.
    #[arg(long, value_name = "DEV", group = "flags")]
    cache: Option<String>,
    /// Cache block size in bytes [default: 4096].
    #[arg(long, value_name = "BYTES", requires = "cache", group = "flags")]
    block_size: Option<u32>,
    /// Cache write policy.
    #[arg(long, value_parser = ["writeback", "writethrough", "ordered"], requires = "cache", group = "flags")]
    cache_mode: Option<String>,
    /// Start writeback above this percentage of dirty blocks.
    #[arg(long, value_name = "PCT", requires = "cache", group = "flags")]
    high_watermark: Option<u32>,
    /// Stop writeback below this percentage.
    #[arg(long, value_name = "PCT", requires = "cache", group = "flags")]
    low_watermark: Option<u32>,
    /// Concurrent writeback copies.
    #[arg(long, value_name = "N", requires = "cache", group = "flags")]
    writeback_jobs: Option<u32>,
    /// Also write back blocks committed longer ago than this many ms.
    #[arg(long, value_name = "MS", requires = "cache", group = "flags")]
    max_age_ms: Option<u32>,
    /// Write every dirty block back when the cache is suspended.
    #[arg(long, requires = "cache", group = "flags")]
    flush_on_suspend: bool,
}

impl CreateArgs {
    /// The stack the flags describe.
    fn spec(&self) -> StackSpec {
        StackSpec {
            name: self.name.clone().unwrap_or_default(),
            repl: ReplSpec {
                name: self.repl_name.clone(),
                data: self.data.clone().unwrap_or_default(),
                peer: self.peer.clone(),
                listen: self.listen.clone(),
                protocol: self.protocol.clone(),
                meta: self.meta.clone(),
                auth: self.auth.clone(),
                max_inflight_kb: self.max_inflight_kb,
                marker_sectors: self.marker_sectors,
                freeze_on_marker: self.freeze_on_marker,
                freeze_timeout_ms: self.freeze_timeout_ms,
                size_sectors: self.size_sectors,
            },
            wbcache: self.cache.as_ref().map(|c| CacheSpec {
                name: None,
                cache: c.clone(),
                block_size: self.block_size,
                mode: self.cache_mode.clone(),
                high_watermark: self.high_watermark,
                low_watermark: self.low_watermark,
                writeback_jobs: self.writeback_jobs,
                max_age_ms: self.max_age_ms,
                flush_on_suspend: self.flush_on_suspend,
            }),
        }
    }
}

/// Size of a block device in sectors: a path, or `major:minor` (read from sysfs).
fn device_sectors(dev: &str) -> Result<u64> {
    if let Ok(d) = dev.parse::<DevNum>() {
        let p = format!("/sys/dev/block/{d}/size");
        let s = std::fs::read_to_string(&p)
            .map_err(|e| Error::op(format!("{dev}: no such block device ({p}: {e})")))?;
        return s
            .trim()
            .parse()
            .map_err(|_| Error::op(format!("{p}: not a number: {s}")));
    }
    let mut f = File::open(Path::new(dev)).map_err(|e| Error::op(format!("{dev}: {e}")))?;
    let bytes = f
        .seek(SeekFrom::End(0))
        .map_err(|e| Error::op(format!("cannot tell the size of {dev}: {e}")))?;
    Ok(bytes / 512)
}

#[derive(Debug, Serialize)]
struct Created {
    name: String,
    target: &'static str,
    devnum: String,
    table: String,
}

fn create_layer(dm: &Dm, l: &Layer, params: &str) -> Result<DevNum> {
    let line = (0, l.len, l.target.to_owned(), params.to_owned());
    dm.create(&l.name, &[line], false).map_err(|e| {
        let hint = if e.is(nix::errno::Errno::EBUSY) {
            " (a device by that name exists already?)"
        } else {
            " (the kernel log says why: dmesg | tail)"
        };
        Error::op(format!(
            "cannot create {} ({} {params}): {e}{hint}",
            l.name, l.target
        ))
    })
}

/// `wbrepl stack create`.
pub fn create(a: &CreateArgs) -> Result<Outcome> {
    let spec = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::op(format!("cannot read {}: {e}", path.display())))?;
            parse_config(&text).map_err(|e| Error::usage(format!("{}: {e}", path.display())))?
        }
        None => a.spec(),
    };
    let data_sectors = device_sectors(&spec.repl.data)?;
    let plan = plan(&spec, data_sectors).map_err(Error::usage)?;
    let dm = Dm::open()?;
    let mut made = Vec::new();
    let rnum = create_layer(&dm, &plan.repl, &plan.repl.params)?;
    made.push(Created {
        name: plan.repl.name.clone(),
        target: plan.repl.target,
        devnum: rnum.to_string(),
        table: format!("0 {} repl {}", plan.repl.len, plan.repl.params),
    });
    if let Some(w) = &plan.wbcache {
        let params = w.params.replace(ORIGIN, &rnum.to_string());
        match create_layer(&dm, w, &params) {
            Ok(n) => made.push(Created {
                name: w.name.clone(),
                target: w.target,
                devnum: n.to_string(),
                table: format!("0 {} wbcache {params}", w.len),
            }),
            Err(e) => {
                if let Err(r) = dm.remove(&plan.repl.name) {
                    eprintln!("wbrepl: cannot remove {} again: {r}", plan.repl.name);
                }
                return Err(e);
            }
        }
    }
    let mut text = String::new();
    for c in &made {
        let _ = writeln!(text, "created {} ({}): {}", c.name, c.devnum, c.table);
    }
    let top = made.last().map(|c| c.name.clone()).unwrap_or_default();
    Outcome::new(&serde_json::json!({"top": top, "created": made}), text)
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// Any layer of the stack: a name, /dev/mapper/NAME or MAJOR:MINOR.
    #[arg(value_name = "DEVICE")]
    device: String,
    /// Write the cache back to the repl device first (message flush), so the data disk holds
    /// everything.
    #[arg(long)]
    flush: bool,
}

/// `wbrepl stack remove`.
pub fn remove(a: &RemoveArgs) -> Result<Outcome> {
    let dm = Dm::open()?;
    let report = stack::identify(&dm.snapshot()?);
    let s = report.lookup(&a.device).map_err(Error::op)?;
    let mut removed = Vec::new();
    let mut notes = Vec::new();
    if let Some(w) = &s.wbcache {
        if a.flush {
            dm.message(&w.name, "flush").map_err(|e| {
                e.op(format!(
                    "cannot write {} back (nothing was removed)",
                    w.name
                ))
            })?;
        } else if let Some(d) = w.status_fields.get("dirty").filter(|d| *d != "0") {
            notes.push(format!(
                "{} had {d} dirty blocks: they stay on its cache device {} (a wbcache table over it brings them back; --flush writes them to the repl device first)",
                w.name, w.cache
            ));
        }
        dm.remove_unused(&w.name)?;
        removed.push(w.name.clone());
    }
    if let Some(r) = &s.repl {
        let others: Vec<&str> = report
            .stacks
            .iter()
            .filter(|o| o.repl.as_ref().is_some_and(|x| x.name == r.name))
            .filter_map(|o| o.wbcache.as_ref().map(|w| w.name.as_str()))
            .filter(|n| !removed.iter().any(|m| m == n))
            .collect();
        if others.is_empty() {
            dm.remove_unused(&r.name)
                .map_err(|e| match removed.is_empty() {
                    true => e,
                    false => e.context(format!("removed {} but not the rest", removed.join(", "))),
                })?;
            removed.push(r.name.clone());
        } else {
            notes.push(format!(
                "{} stays: it also carries {}",
                r.name,
                others.join(", ")
            ));
        }
    }
    for n in &notes {
        eprintln!("wbrepl: note: {n}");
    }
    let text = removed.iter().map(|n| format!("removed {n}\n")).collect();
    Outcome::new(
        &serde_json::json!({"removed": removed, "flushed": a.flush, "notes": notes}),
        text,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary() -> StackSpec {
        StackSpec {
            name: "vol0".into(),
            repl: ReplSpec {
                data: "/dev/sdb".into(),
                peer: Some("10.0.0.2:7789".into()),
                ..Default::default()
            },
            wbcache: None,
        }
    }

    #[test]
    fn plain_primary() {
        let p = plan(&primary(), 131072).unwrap();
        assert_eq!(
            p.repl,
            Layer {
                name: "vol0".into(),
                target: "repl",
                len: 131072,
                params: "primary /dev/sdb 10.0.0.2:7789 0".into()
            }
        );
        assert_eq!(p.wbcache, None);
    }

    #[test]
    fn primary_with_cache_and_options() {
        let mut s = primary();
        s.repl.protocol = Some("sync".into());
        s.repl.meta = Some("/dev/sdc".into());
        s.wbcache = Some(CacheSpec {
            cache: "/dev/nvme0n1".into(),
            mode: Some("ordered".into()),
            flush_on_suspend: true,
            ..Default::default()
        });
        let p = plan(&s, 131079).unwrap();
        assert_eq!(p.repl.name, "vol0-repl");
        assert_eq!(
            p.repl.params,
            "primary /dev/sdb 10.0.0.2:7789 4 protocol sync meta_dev /dev/sdc"
        );
        let w = p.wbcache.unwrap();
        // The cache stops before the marker region, on a whole block.
        assert_eq!(
            (w.name.as_str(), w.len, p.repl.len),
            ("vol0", 131064, 131079)
        );
        assert_eq!(
            w.params,
            "{origin} /dev/nvme0n1 4096 3 mode ordered flush_on_suspend"
        );
    }

    #[test]
    fn secondary() {
        let s = StackSpec {
            name: "sec0".into(),
            repl: ReplSpec {
                data: "/dev/mapper/thin0".into(),
                listen: Some("0.0.0.0:7789".into()),
                freeze_on_marker: true,
                freeze_timeout_ms: Some(60000),
                ..Default::default()
            },
            wbcache: None,
        };
        let p = plan(&s, 2048).unwrap();
        assert_eq!(
            p.repl.params,
            "secondary /dev/mapper/thin0 0.0.0.0:7789 3 freeze_on_marker freeze_timeout 60000"
        );
        assert_eq!(p.repl.name, "sec0");
    }

    #[test]
    fn refusals_use_the_kernel_grammar() {
        let e = |f: &dyn Fn(&mut StackSpec), sectors: u64| {
            let mut s = primary();
            f(&mut s);
            plan(&s, sectors).unwrap_err()
        };
        assert!(
            e(&|s| s.repl.listen = Some("0.0.0.0:1".into()), 2048).contains("exactly one of peer")
        );
        assert!(e(&|s| s.repl.peer = None, 2048).contains("exactly one of peer"));
        assert!(e(&|s| s.repl.peer = Some("host:1".into()), 2048).contains("IPv4"));
        assert!(e(&|s| s.repl.protocol = Some("fast".into()), 2048).contains("async or sync"));
        assert_eq!(
            e(&|s| s.repl.freeze_on_marker = true, 2048),
            "repl: freeze_on_marker and freeze_timeout are secondary options"
        );
        assert!(e(&|s| s.repl.max_inflight_kb = Some(1), 2048)
            .starts_with("repl: Invalid max_inflight_kb"));
        assert!(
            e(&|s| s.repl.meta = Some("/dev/sdb".into()), 2048).contains("meta_dev must differ")
        );
        assert!(
            e(&|s| s.repl.size_sectors = Some(4096), 2048).contains("more than the data device")
        );
        assert!(e(&|_| {}, 8).contains("too small"));
        let c16 = CacheSpec {
            cache: "/dev/nvme0n1".into(),
            block_size: Some(8192),
            ..Default::default()
        };
        assert!(e(&move |s| s.wbcache = Some(c16.clone()), 20).contains("too small"));
        let cache = |c: CacheSpec| move |s: &mut StackSpec| s.wbcache = Some(c.clone());
        let c = CacheSpec {
            cache: "/dev/nvme0n1".into(),
            ..Default::default()
        };
        assert!(e(
            &cache(CacheSpec {
                block_size: Some(1000),
                ..c.clone()
            }),
            2048
        )
        .starts_with("wbcache: Invalid block size"));
        assert!(e(
            &cache(CacheSpec {
                mode: Some("fast".into()),
                ..c.clone()
            }),
            2048
        )
        .starts_with("wbcache: Invalid mode"));
        assert!(e(
            &cache(CacheSpec {
                high_watermark: Some(10),
                low_watermark: Some(20),
                ..c.clone()
            }),
            2048
        )
        .contains("low_watermark"));
        assert!(e(
            &cache(CacheSpec {
                cache: "/dev/sdb2".into(),
                name: Some("vol0-repl".into()),
                ..c.clone()
            }),
            2048
        )
        .contains("both named"));
        assert!(e(&|s| s.name = "a/b".into(), 2048).contains("not a usable device-mapper name"));
        let mut s = primary();
        s.repl.peer = None;
        s.repl.listen = Some("0.0.0.0:1".into());
        s.wbcache = Some(c);
        assert!(plan(&s, 2048).unwrap_err().contains("primary only"));
    }

    #[test]
    fn config_files() {
        let s = parse_config(
            r#"
            name = "vol0"
            [repl]
            data = "/dev/sdb"
            peer = "10.0.0.2:7789"
            protocol = "sync"
            [wbcache]
            cache = "/dev/nvme0n1"
            mode = "writeback"
            block_size = 4096
            "#,
        )
        .unwrap();
        assert_eq!(s.repl.protocol.as_deref(), Some("sync"));
        assert_eq!(
            s.wbcache.as_ref().map(|c| c.cache.as_str()),
            Some("/dev/nvme0n1")
        );
        let p = plan(&s, 4096).unwrap();
        let w = p.wbcache.unwrap();
        assert_eq!(w.params, "{origin} /dev/nvme0n1 4096 2 mode writeback");
        assert_eq!((w.len, p.repl.len), (4088, 4096));

        let e = parse_config("name = \"x\"\n[repl]\ndata = \"/dev/sdb\"\nprotocl = \"sync\"\n")
            .unwrap_err();
        assert!(e.contains("unknown field `protocl`"), "{e}");
        assert!(parse_config("name = \"x\"\n")
            .unwrap_err()
            .contains("missing field `repl`"));
        assert!(parse_config("name = \n").is_err());
    }
}
