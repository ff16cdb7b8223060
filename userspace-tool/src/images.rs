//! `wbrepl images list|expose|unexpose|restore|delete|prune`: the point-in-time images
//! `secondary run` took, kept as dm-thin snapshots in the secondary's pool and recorded in its
//! state file ([`crate::state`]).
//!
//! The pool is the truth for what exists: `list` checks every image against it (an id the
//! pool no longer has is reported), an image is *exposed* when a thin device over its id is
//! active, and `delete` removes the snapshot from the pool before it drops the record.

use crate::dm::{Dm, TargetLine};
use crate::error::{Error, Result};
use crate::output::{self, Outcome};
use crate::stack::{DevNum, Device};
use crate::state::{self, Image, Retention, State, Store};
use crate::thin::{self, PoolStatus, ThinDevice};
use clap::{Args, Subcommand};
use nix::errno::Errno;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the state files are.
#[derive(Debug, Args)]
pub struct StateDir {
    /// Directory of the state files (one per secondary: SECONDARY.json).
    #[arg(long, value_name = "DIR", default_value = state::DEFAULT_DIR)]
    pub state_dir: PathBuf,
}

/// The secondary and its state directory.
#[derive(Debug, Args)]
pub struct Which {
    /// The secondary repl device the images were taken of (its device-mapper name).
    #[arg(value_name = "SECONDARY")]
    pub secondary: String,
    #[command(flatten)]
    pub dir: StateDir,
}

/// Retention rules on the command line.
#[derive(Debug, Args, Clone, Copy)]
pub struct RetentionArgs {
    /// Keep the N newest images.
    #[arg(long, value_name = "N", value_parser = state::parse_keep)]
    pub keep: Option<usize>,
    /// Keep images younger than this (by marker time), e.g. 1h, 7d.
    #[arg(long, value_name = "DURATION", value_parser = state::parse_max_age)]
    pub max_age: Option<Duration>,
}

impl RetentionArgs {
    /// The rules.
    pub fn rules(&self) -> Retention {
        Retention {
            keep: self.keep,
            max_age: self.max_age,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ImagesCmd {
    /// List the images of a secondary, checked against its thin pool.
    List(ListArgs),
    /// Make an image readable as a read-only block device (prints its path).
    Expose(ExposeArgs),
    /// Remove the read-only device(s) of an image.
    Unexpose(ImageArgs),
    /// Copy an image onto a block device, with progress.
    Restore(RestoreArgs),
    /// Delete images (their snapshots in the pool and their records).
    Delete(DeleteArgs),
    /// Delete the images the retention rules no longer keep (never the newest).
    #[command(group(clap::ArgGroup::new("rules").required(true).multiple(true).args(["keep", "max_age"])))]
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    which: Which,
    /// Do not check each image against the pool (in_pool is then null): for frequent polling.
    #[arg(long)]
    no_check: bool,
}

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(flatten)]
    which: Which,
    /// The image: a marker id, an image name, or "latest".
    #[arg(value_name = "IMAGE")]
    image: String,
}

#[derive(Debug, Args)]
pub struct ExposeArgs {
    #[command(flatten)]
    image: ImageArgs,
    /// Name of the device [default: SECONDARY-img-MARKERID].
    #[arg(long)]
    name: Option<String>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    image: ImageArgs,
    /// The block device to copy the image onto (all its data up to the image's size is
    /// overwritten).
    #[arg(value_name = "TARGET")]
    target: PathBuf,
    /// Write even if TARGET is in use (mounted, or held open exclusively).
    #[arg(long)]
    force: bool,
    /// Read both back afterwards and compare.
    #[arg(long)]
    verify: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    which: Which,
    /// The images: marker ids, image names, or "latest".
    #[arg(value_name = "IMAGE", required = true)]
    images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    which: Which,
    #[command(flatten)]
    rules: RetentionArgs,
    /// Only show what would be deleted.
    #[arg(long)]
    dry_run: bool,
}

// ------------------------------------------------------------------------------------------------
// The pool

/// A secondary's images with the live pool they are in.
pub struct Pool<'a> {
    /// Device-mapper.
    pub dm: &'a Dm,
    /// The pool's name.
    pub name: String,
    /// Its device number, if it is active.
    pub devnum: Option<DevNum>,
    /// The thin volumes active in it.
    pub volumes: Vec<ThinDevice>,
    /// Name of the secondary's own thin volume (not an exposure).
    pub origin: String,
}

impl<'a> Pool<'a> {
    /// Reads the devices and finds the pool of `st`.
    pub fn of(dm: &'a Dm, st: &State) -> Result<Self> {
        let devices = dm.snapshot()?;
        Ok(Self::from_devices(dm, st, &devices))
    }

    /// The same from devices already read.
    pub fn from_devices(dm: &'a Dm, st: &State, devices: &[Device]) -> Self {
        let devnum = devices
            .iter()
            .find(|d| d.name == st.pool && thin::single_target(d, thin::POOL).is_some())
            .map(|d| d.devnum);
        Self {
            dm,
            name: st.pool.clone(),
            devnum,
            volumes: devnum
                .map(|p| thin::volumes_in(devices, p))
                .unwrap_or_default(),
            origin: st.origin.clone(),
        }
    }

    /// The pool's device number, or why it cannot be used.
    pub fn active(&self) -> Result<DevNum> {
        self.devnum.ok_or_else(|| {
            Error::op(format!(
                "the thin pool {} is not active (no device-mapper device by that name with a thin-pool table)",
                self.name
            ))
        })
    }

    /// Its status.
    pub fn status(&self) -> Option<PoolStatus> {
        self.devnum?;
        PoolStatus::parse(&self.dm.status_info(&self.name).ok()?)
    }

    /// The devices exposing thin id `id` (every active thin volume of it except the origin).
    pub fn exposed(&self, id: u32) -> Vec<&ThinDevice> {
        self.volumes
            .iter()
            .filter(|v| v.table.id == id && v.name != self.origin)
            .collect()
    }

    /// The table line of a thin device over `id` of `size` sectors (with the origin's external
    /// origin, if any).
    pub fn line(&self, st: &State, id: u32, size: u64) -> Result<TargetLine> {
        let t = thin::ThinTable {
            pool: self.active()?,
            id: st.origin_thin_id,
            external_origin: st.external_origin.clone(),
        };
        Ok((0, size, thin::THIN.to_owned(), t.params_for(id)))
    }

    /// Whether the pool has thin id `id`: an exposed image has it; otherwise a table over it is
    /// loaded into a device that is never resumed and removed again. `None` if that cannot be
    /// told.
    pub fn has(&self, st: &State, img: &Image) -> Option<bool> {
        if !self.exposed(img.thin_id).is_empty() {
            return Some(true);
        }
        let line = self.line(st, img.thin_id, img.size_sectors).ok()?;
        let probe = format!("wbrepl-probe-{}-{}", std::process::id(), img.thin_id);
        match self.dm.try_load(&probe, &[line]) {
            Ok(()) => Some(true),
            Err(e) if e.is(Errno::ENODATA) => Some(false),
            Err(_) => None,
        }
    }

    /// Deletes the snapshot `img` from the pool. `Ok(false)`: the pool did not have it.
    pub fn delete(&self, img: &Image) -> Result<bool> {
        if let Some(d) = self.exposed(img.thin_id).first() {
            return Err(Error::op(format!(
                "image {} is exposed as /dev/mapper/{}: remove that first (wbrepl images unexpose)",
                img.name, d.name
            )));
        }
        self.active()?;
        match self
            .dm
            .message(&self.name, &format!("delete {}", img.thin_id))
        {
            Ok(_) => Ok(true),
            Err(e) if e.is(Errno::ENODATA) => Ok(false),
            Err(e) => Err(e.op(format!(
                "cannot delete image {} (thin id {}) from the pool {}",
                img.name, img.thin_id, self.name
            ))),
        }
    }
}

/// One image deleted (or, with a dry run, to delete).
#[derive(Clone, Debug, Serialize)]
pub struct Deleted {
    /// The image.
    pub image: String,
    /// Its marker id.
    pub marker_id: u64,
    /// Its thin id.
    pub thin_id: u32,
    /// Why.
    pub reason: String,
    /// Whether the pool still had it.
    pub was_in_pool: bool,
}

/// Deletes one image from the pool and the state file.
pub fn delete_one(pool: &Pool<'_>, store: &Store, img: &Image, reason: &str) -> Result<Deleted> {
    let was_in_pool = pool.delete(img)?;
    store.forget(img.seq)?;
    Ok(Deleted {
        image: img.name.clone(),
        marker_id: img.marker_id,
        thin_id: img.thin_id,
        reason: reason.to_owned(),
        was_in_pool,
    })
}

/// Applies the retention rules: deletes what they no longer keep. Returns what was deleted
/// (with `dry_run`, what would be) and the images that could not be deleted, with why.
pub fn prune(
    pool: &Pool<'_>,
    store: &Store,
    rules: &Retention,
    dry_run: bool,
) -> Result<(Vec<Deleted>, Vec<String>)> {
    let st = store.load_existing()?;
    let mut deleted = Vec::new();
    let mut failed = Vec::new();
    for (img, why) in rules.expired(&st.images, output::now_ns()) {
        if dry_run {
            deleted.push(Deleted {
                image: img.name.clone(),
                marker_id: img.marker_id,
                thin_id: img.thin_id,
                reason: why,
                was_in_pool: true,
            });
            continue;
        }
        match delete_one(pool, store, img, &why) {
            Ok(d) => deleted.push(d),
            Err(e) => failed.push(e.to_string()),
        }
    }
    Ok((deleted, failed))
}

// ------------------------------------------------------------------------------------------------
// Commands

/// An image in `list`.
#[derive(Debug, Serialize)]
struct Listed {
    #[serde(flatten)]
    image: Image,
    marker_time: Option<String>,
    created: String,
    size_bytes: u64,
    exposed: Vec<String>,
    in_pool: Option<bool>,
}

#[derive(Debug, Serialize)]
struct Listing {
    secondary: String,
    state_file: String,
    pool: String,
    pool_status: Option<PoolStatus>,
    origin: String,
    origin_thin_id: u32,
    images: Vec<Listed>,
    problems: Vec<String>,
}

fn list(a: &ListArgs) -> Result<Outcome> {
    let w = &a.which;
    let dm = Dm::open()?;
    let store = Store::new(&w.dir.state_dir, &w.secondary)?;
    let st = store.load_existing()?;
    let pool = Pool::of(&dm, &st)?;
    let mut problems = Vec::new();
    if pool.devnum.is_none() {
        problems.push(format!(
            "the thin pool {} is not active: images cannot be checked",
            st.pool
        ));
    }
    let images: Vec<Listed> = st
        .images
        .iter()
        .map(|img| {
            // An incomplete image is being taken: leave its id alone.
            let check = pool.devnum.is_some() && img.complete && !a.no_check;
            let in_pool = if check { pool.has(&st, img) } else { None };
            match (img.complete, in_pool) {
                (false, _) => problems.push(format!(
                    "image {} is incomplete (being taken now, or left by an interrupted secondary run, which cleans it up when it starts)",
                    img.name
                )),
                (true, Some(false)) => problems.push(format!(
                    "image {}: the pool {} has no thin id {} (deleted behind wbrepl's back? wbrepl images delete drops the record)",
                    img.name, st.pool, img.thin_id
                )),
                _ => {}
            }
            Listed {
                marker_time: img.marker_time_ns.map(output::rfc3339),
                created: output::rfc3339(img.created_ns),
                size_bytes: img.size_sectors.saturating_mul(512),
                exposed: pool.exposed(img.thin_id).iter().map(|d| d.name.clone()).collect(),
                in_pool,
                image: img.clone(),
            }
        })
        .collect();
    let doc = Listing {
        secondary: st.secondary.clone(),
        state_file: store.path().display().to_string(),
        pool: st.pool.clone(),
        pool_status: pool.status(),
        origin: st.origin.clone(),
        origin_thin_id: st.origin_thin_id,
        images,
        problems,
    };
    let text = render_list(&doc);
    Outcome::new(&doc, text)
}

fn render_list(doc: &Listing) -> String {
    let mut out = String::new();
    let usage = doc.pool_status.as_ref().map_or(String::new(), |p| {
        format!(
            ", {} of {} data blocks used, {}",
            p.data_used, p.data_total, p.mode
        )
    });
    let _ = writeln!(
        out,
        "{}: images in pool {}{usage} (origin {}, thin id {})",
        doc.secondary, doc.pool, doc.origin, doc.origin_thin_id
    );
    if doc.images.is_empty() {
        out.push_str("  no images\n");
    } else {
        let _ = writeln!(
            out,
            "  {:<8} {:<20} {:<21} {:>6} {:>10}  {:<16} NAME",
            "MARKER", "LABEL", "MARKER TIME (UTC)", "THIN", "SIZE", "EXPOSED"
        );
        for l in &doc.images {
            let exposed = if l.exposed.is_empty() {
                "-".to_owned()
            } else {
                l.exposed.join(",")
            };
            let _ = writeln!(
                out,
                "  {:<8} {:<20} {:<21} {:>6} {:>10}  {:<16} {}{}",
                l.image.marker_id,
                l.image.label.as_deref().unwrap_or("-"),
                l.marker_time.as_deref().unwrap_or("-"),
                l.image.thin_id,
                output::human_bytes(l.size_bytes),
                exposed,
                l.image.name,
                if l.image.complete {
                    ""
                } else {
                    " (incomplete)"
                }
            );
        }
    }
    for p in &doc.problems {
        let _ = writeln!(out, "problem: {p}");
    }
    out
}

/// The device node of an active dm device: `/dev/mapper/NAME` (waiting a moment for udev),
/// else `/dev/dm-MINOR`.
pub fn node(name: &str, devnum: DevNum) -> PathBuf {
    let mapper = PathBuf::from(format!("/dev/mapper/{name}"));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        if mapper.exists() {
            return mapper;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let dm = PathBuf::from(format!("/dev/dm-{}", devnum.minor));
    if dm.exists() {
        dm
    } else {
        mapper
    }
}

struct Loaded<'a> {
    store: Store,
    st: State,
    pool: Pool<'a>,
}

fn load<'a>(dm: &'a Dm, w: &Which) -> Result<Loaded<'a>> {
    let store = Store::new(&w.dir.state_dir, &w.secondary)?;
    let st = store.load_existing()?;
    let pool = Pool::of(dm, &st)?;
    Ok(Loaded { store, st, pool })
}

fn pick<'s>(st: &'s State, query: &str) -> Result<&'s Image> {
    state::select(&st.images, query).map_err(|e| Error::op(format!("{}: {e}", st.secondary)))
}

#[derive(Debug, Serialize)]
struct Exposure {
    image: String,
    device: String,
    path: String,
    devnum: String,
    readonly: bool,
    created: bool,
}

/// Creates a read-only device over `img` named `name`.
fn expose_as(l: &Loaded<'_>, img: &Image, name: &str) -> Result<DevNum> {
    let line = l.pool.line(&l.st, img.thin_id, img.size_sectors)?;
    l.pool.dm.create(name, &[line], true).map_err(|e| {
        if e.is(Errno::EBUSY) {
            Error::op(format!(
                "cannot expose image {}: a device named {name} already exists",
                img.name
            ))
        } else if e.is(Errno::ENODATA) {
            Error::op(format!(
                "cannot expose image {}: the pool {} has no thin id {}",
                img.name, l.pool.name, img.thin_id
            ))
        } else {
            e.op(format!("cannot expose image {} as {name}", img.name))
        }
    })
}

fn expose(a: &ExposeArgs) -> Result<Outcome> {
    let dm = Dm::open()?;
    let l = load(&dm, &a.image.which)?;
    let img = pick(&l.st, &a.image.image)?;
    let existing = l.pool.exposed(img.thin_id);
    let wanted = a.name.clone();
    let (name, devnum, created) = match existing
        .iter()
        .find(|d| wanted.as_deref().is_none_or(|n| n == d.name))
    {
        Some(d) => (d.name.clone(), d.devnum, false),
        None => {
            let name =
                wanted.unwrap_or_else(|| format!("{}-img-{}", l.st.secondary, img.marker_id));
            let devnum = expose_as(&l, img, &name)?;
            (name, devnum, true)
        }
    };
    let path = node(&name, devnum).display().to_string();
    let doc = Exposure {
        image: img.name.clone(),
        device: name,
        path: path.clone(),
        devnum: devnum.to_string(),
        readonly: true,
        created,
    };
    Outcome::new(&doc, format!("{path}\n"))
}

fn unexpose(a: &ImageArgs) -> Result<Outcome> {
    let dm = Dm::open()?;
    let l = load(&dm, &a.which)?;
    let img = pick(&l.st, &a.image)?;
    let devs = l.pool.exposed(img.thin_id);
    if devs.is_empty() {
        return Err(Error::op(format!("image {} is not exposed", img.name)));
    }
    let mut removed = Vec::new();
    for d in devs {
        dm.remove_unused(&d.name)?;
        removed.push(d.name.clone());
    }
    let text = removed.iter().map(|n| format!("removed {n}\n")).collect();
    Outcome::new(
        &serde_json::json!({"image": img.name, "removed": removed}),
        text,
    )
}

/// Removes a temporary device when dropped.
struct TempDevice<'a> {
    dm: &'a Dm,
    name: String,
}

impl Drop for TempDevice<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.dm.remove(&self.name) {
            eprintln!(
                "wbrepl: cannot remove the temporary device {}: {e}",
                self.name
            );
        }
    }
}

/// A buffer of `len` bytes aligned to 4096 (for O_DIRECT), without unsafe code.
struct Aligned {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

const ALIGN: usize = 4096;
const CHUNK: usize = 1 << 20;

impl Aligned {
    fn new(len: usize) -> Result<Self> {
        let raw = vec![0u8; len + ALIGN];
        let off = raw.as_ptr().align_offset(ALIGN);
        if off >= ALIGN {
            return Err(Error::op("cannot align an I/O buffer"));
        }
        Ok(Self { raw, off, len })
    }

    fn get(&mut self, n: usize) -> &mut [u8] {
        let end = self.off + n.min(self.len);
        self.raw.get_mut(self.off..end).unwrap_or_default()
    }
}

fn read_full(f: &File, buf: &mut [u8], at: u64, what: &Path) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = f
            .read_at(buf.get_mut(done..).unwrap_or_default(), at + done as u64)
            .map_err(|e| {
                Error::op(format!(
                    "cannot read {} at byte {}: {e}",
                    what.display(),
                    at + done as u64
                ))
            })?;
        if n == 0 {
            return Err(Error::op(format!(
                "{} ends early, at byte {}",
                what.display(),
                at + done as u64
            )));
        }
        done += n;
    }
    Ok(())
}

fn write_full(f: &File, buf: &[u8], at: u64, what: &Path) -> Result<()> {
    f.write_all_at(buf, at)
        .map_err(|e| Error::op(format!("cannot write {} at byte {at}: {e}", what.display())))
}

fn open_direct(path: &Path, write: bool, excl: bool) -> std::io::Result<File> {
    let mut flags = nix::libc::O_DIRECT;
    if excl {
        flags |= nix::libc::O_EXCL;
    }
    OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(flags)
        .open(path)
}

fn size_of(f: &mut File, path: &Path) -> Result<u64> {
    f.seek(SeekFrom::End(0))
        .map_err(|e| Error::op(format!("cannot tell the size of {}: {e}", path.display())))
}

#[derive(Debug, Serialize)]
struct Restored {
    image: String,
    target: String,
    bytes: u64,
    target_bytes: u64,
    seconds: f64,
    verified: bool,
}

fn restore(a: &RestoreArgs) -> Result<Outcome> {
    let dm = Dm::open()?;
    let l = load(&dm, &a.image.which)?;
    let img = pick(&l.st, &a.image.image)?;
    let target = &a.target;

    // The target: a block device that is not one of this image's own devices.
    let meta =
        std::fs::metadata(target).map_err(|e| Error::op(format!("{}: {e}", target.display())))?;
    if !meta.file_type().is_block_device() {
        return Err(Error::op(format!(
            "{}: not a block device",
            target.display()
        )));
    }
    let tdev = devicemapper::Device::from(meta.rdev());
    let tdev = DevNum::new(tdev.major, tdev.minor);
    if Some(tdev) == l.pool.devnum || l.pool.exposed(img.thin_id).iter().any(|d| d.devnum == tdev) {
        return Err(Error::op(format!(
            "{}: is the pool or a device of the image itself",
            target.display()
        )));
    }
    let mut out = open_direct(target, true, !a.force).map_err(|e| {
        if e.raw_os_error() == Some(Errno::EBUSY as i32) {
            Error::op(format!(
                "{}: in use (mounted, or held by another device such as a device-mapper table); unmount it or use --force",
                target.display()
            ))
        } else {
            Error::op(format!("cannot open {}: {e}", target.display()))
        }
    })?;
    let target_bytes = size_of(&mut out, target)?;
    let bytes = img.size_sectors.saturating_mul(512);
    if target_bytes < bytes {
        return Err(Error::op(format!(
            "{} is smaller ({} bytes) than image {} ({} bytes)",
            target.display(),
            target_bytes,
            img.name,
            bytes
        )));
    }

    // The source: an exposure of the image, or a temporary one.
    let (src_name, src_devnum, _temp) = match l.pool.exposed(img.thin_id).first() {
        Some(d) => (d.name.clone(), d.devnum, None),
        None => {
            let name = format!("wbrepl-restore-{}", std::process::id());
            let devnum = expose_as(&l, img, &name)?;
            let guard = TempDevice {
                dm: &dm,
                name: name.clone(),
            };
            (name, devnum, Some(guard))
        }
    };
    let src_path = node(&src_name, src_devnum);
    let src = open_direct(&src_path, false, false)
        .map_err(|e| Error::op(format!("cannot open {}: {e}", src_path.display())))?;

    let start = Instant::now();
    let pb = output::bar(bytes, output::BYTES_TEMPLATE);
    pb.set_message(format!("restore {}", img.name));
    let mut buf = Aligned::new(CHUNK)?;
    let mut at = 0u64;
    while at < bytes {
        let n = usize::try_from((bytes - at).min(CHUNK as u64)).unwrap_or(CHUNK);
        let b = buf.get(n);
        read_full(&src, b, at, &src_path)?;
        write_full(&out, b, at, target)?;
        at += n as u64;
        pb.set_position(at);
    }
    out.sync_all()
        .map_err(|e| Error::op(format!("cannot flush {}: {e}", target.display())))?;
    pb.finish_and_clear();
    if a.verify {
        verify(&src, &src_path, target, bytes)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let doc = Restored {
        image: img.name.clone(),
        target: target.display().to_string(),
        bytes,
        target_bytes,
        seconds,
        verified: a.verify,
    };
    let mut text = format!(
        "restored image {} to {}: {} in {:.1} s{}\n",
        img.name,
        target.display(),
        output::human_bytes(bytes),
        seconds,
        if a.verify { ", verified" } else { "" }
    );
    if target_bytes > bytes {
        let _ = writeln!(
            text,
            "note: {} is larger than the image; its last {} were left as they were",
            target.display(),
            output::human_bytes(target_bytes - bytes)
        );
    }
    Outcome::new(&doc, text)
}

fn verify(src: &File, src_path: &Path, target: &Path, bytes: u64) -> Result<()> {
    let t = open_direct(target, false, false)
        .map_err(|e| Error::op(format!("cannot open {}: {e}", target.display())))?;
    let pb = output::bar(bytes, output::BYTES_TEMPLATE);
    pb.set_message("verify");
    let (mut a, mut b) = (Aligned::new(CHUNK)?, Aligned::new(CHUNK)?);
    let mut at = 0u64;
    while at < bytes {
        let n = usize::try_from((bytes - at).min(CHUNK as u64)).unwrap_or(CHUNK);
        let (x, y) = (a.get(n), b.get(n));
        read_full(src, x, at, src_path)?;
        read_full(&t, y, at, target)?;
        if x != y {
            return Err(Error::op(format!(
                "verify: {} differs from the image in the MiB at byte {at}",
                target.display()
            )));
        }
        at += n as u64;
        pb.set_position(at);
    }
    pb.finish_and_clear();
    Ok(())
}

fn delete(a: &DeleteArgs) -> Result<Outcome> {
    let dm = Dm::open()?;
    let l = load(&dm, &a.which)?;
    let mut picked: BTreeMap<u64, &Image> = BTreeMap::new();
    for q in &a.images {
        let img = pick(&l.st, q)?;
        picked.insert(img.seq, img);
    }
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for img in picked.values() {
        match delete_one(&l.pool, &l.store, img, "deleted on request") {
            Ok(d) => deleted.push(d),
            Err(e) => errors.push(e.to_string()),
        }
    }
    finish_deletions(deleted, errors, false)
}

fn prune_cmd(a: &PruneArgs) -> Result<Outcome> {
    let dm = Dm::open()?;
    let l = load(&dm, &a.which)?;
    let (deleted, errors) = prune(&l.pool, &l.store, &a.rules.rules(), a.dry_run)?;
    finish_deletions(deleted, errors, a.dry_run)
}

/// The outcome of deletions: what went, and every failure (which makes the exit status 1).
fn finish_deletions(deleted: Vec<Deleted>, errors: Vec<String>, dry_run: bool) -> Result<Outcome> {
    let verb = if dry_run { "would delete" } else { "deleted" };
    let mut text = String::new();
    for d in &deleted {
        let note = if d.was_in_pool {
            ""
        } else {
            " (the pool no longer had it)"
        };
        let _ = writeln!(
            text,
            "{verb} image {} (thin id {}): {}{note}",
            d.image, d.thin_id, d.reason
        );
    }
    if deleted.is_empty() && errors.is_empty() {
        text.push_str("nothing to delete\n");
    }
    for e in &errors {
        eprintln!("wbrepl: {e}");
    }
    let doc = serde_json::json!({"dry_run": dry_run, "deleted": deleted, "errors": errors});
    let mut o = Outcome::new(&doc, text)?;
    if !errors.is_empty() {
        o.code = 1;
    }
    Ok(o)
}

/// `wbrepl images ...`.
pub fn run(cmd: &ImagesCmd) -> Result<Outcome> {
    match cmd {
        ImagesCmd::List(a) => list(a),
        ImagesCmd::Expose(a) => expose(a),
        ImagesCmd::Unexpose(a) => unexpose(a),
        ImagesCmd::Restore(a) => restore(a),
        ImagesCmd::Delete(a) => delete(a),
        ImagesCmd::Prune(a) => prune_cmd(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers() {
        let mut a = Aligned::new(CHUNK).unwrap();
        let b = a.get(CHUNK);
        assert_eq!(b.len(), CHUNK);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        assert_eq!(a.get(512).len(), 512);
        assert_eq!(a.get(CHUNK * 2).len(), CHUNK);
    }

    fn listing() -> Listing {
        let img = Image {
            seq: 1,
            name: "7-nightly-20261202T130405Z".into(),
            marker_id: 7,
            label: Some("nightly".into()),
            marker_time_ns: Some(1_796_216_645_000_000_000),
            created_ns: 1_796_216_646_000_000_000,
            thin_id: 2,
            size_sectors: 131072,
            complete: true,
        };
        Listing {
            secondary: "sec0".into(),
            state_file: "/var/lib/wbrepl/sec0.json".into(),
            pool: "pool0".into(),
            pool_status: None,
            origin: "thin0".into(),
            origin_thin_id: 1,
            images: vec![Listed {
                marker_time: img.marker_time_ns.map(output::rfc3339),
                created: output::rfc3339(img.created_ns),
                size_bytes: 64 << 20,
                exposed: vec!["sec0-img-7".into()],
                in_pool: Some(true),
                image: img,
            }],
            problems: vec!["something".into()],
        }
    }

    #[test]
    fn list_text() {
        let t = render_list(&listing());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "sec0: images in pool pool0 (origin thin0, thin id 1)"
        );
        assert!(lines[1].starts_with("  MARKER   LABEL"), "{t}");
        assert!(lines[2].starts_with("  7        nightly              2026-12-02T13:04:05Z       2   64.0 MiB  sec0-img-7       7-nightly-20261202T130405Z"), "{t}");
        assert_eq!(lines[3], "problem: something");
    }

    #[test]
    fn list_json_shape() {
        let v = serde_json::to_value(listing()).unwrap();
        let i = &v["images"][0];
        assert_eq!(i["marker_id"], 7);
        assert_eq!(i["label"], "nightly");
        assert_eq!(i["marker_time"], "2026-12-02T13:04:05Z");
        assert_eq!(i["thin_id"], 2);
        assert_eq!(i["exposed"][0], "sec0-img-7");
        assert_eq!(i["in_pool"], true);
        assert_eq!(i["complete"], true);
        assert_eq!(v["pool_status"], serde_json::Value::Null);
    }
}
