// SPDX-License-Identifier: GPL-2.0

//! dm-wbcache: a write-back cache device-mapper target (wbrepl).
//!
//! Table line: `<start> <len> wbcache <origin_dev> <cache_dev> <block_size> <#opt_args> [opt_args...]`
//! (see `docs/wbcache.md`).
//!
//! This is the foundation slice: the table line is parsed and validated in full and both devices
//! are opened, but no data is cached yet. All I/O is remapped to the origin, so a write is
//! acknowledged only once the origin has completed it and the origin always holds every
//! acknowledged write (the guarantees of `writethrough`, whatever `mode` says). Caching comes
//! with the dm-wbcache issue.

#![deny(unsafe_code)]

use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::prelude::*;

include!("../dmcore/crate_root.rs");

use dmcore::args::Args;
use dmcore::bio::{BlkStatus, Bio, Op};
use dmcore::device::Device;
use dmcore::status::StatusWriter;
use dmcore::target::{CtrError, CtrTarget, DeviceVisitor, EndIo, MapResult, QueueLimits, StatusType, Stop, Target, TargetModule};
use wbrepl_core::table::{WbcacheOptions, WbcacheTable};

module! {
    type: WbcacheModule,
    name: "dm_wbcache",
    author: "wbrepl developers",
    description: "dm-wbcache: write-back cache target with epochs (wbrepl)",
    license: "GPL",
    alias: ["dm-wbcache"],
}

type WbcacheModule = TargetModule<Wbcache>;

#[derive(Default)]
struct Stats {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    errors: AtomicU64,
}

struct Wbcache {
    len: u64,
    origin: Device,
    cache: Device,
    block_size: u32,
    opts: WbcacheOptions,
    stats: Stats,
}

#[vtable]
impl Target for Wbcache {
    const NAME: &'static CStr = kernel::c_str!("wbcache");
    const VERSION: [u32; 3] = [0, 1, 0];
    type PerBio = ();

    fn ctr(ti: &mut CtrTarget<'_>, args: Args<'_>) -> Result<Pin<KBox<Self>>, CtrError> {
        let t = WbcacheTable::parse(&mut { args })?;
        let origin = ti
            .get_device_path(t.origin)
            .map_err(|e| CtrError::new(kernel::c_str!("Origin device lookup failed"), e))?;
        let cache = ti
            .get_device_path(t.cache)
            .map_err(|e| CtrError::new(kernel::c_str!("Cache device lookup failed"), e))?;
        if origin.same_as(&cache) {
            return Err(CtrError::inval(kernel::c_str!("Origin and cache must be different devices")));
        }
        if t.block_size < origin.logical_block_size() || t.block_size < cache.logical_block_size() {
            return Err(CtrError::inval(kernel::c_str!("Block size is below a device's logical block size")));
        }
        let block_sectors = u64::from(t.block_size >> 9);
        if ti.len().checked_rem(block_sectors) != Some(0) {
            return Err(CtrError::inval(kernel::c_str!("Target length must be a multiple of the block size")));
        }
        if ti.len() > origin.sectors() {
            return Err(CtrError::inval(kernel::c_str!("Origin device is smaller than the target")));
        }
        ti.set_num_flush_bios(1);
        ti.set_num_discard_bios(1);
        ti.set_num_write_zeroes_bios(1);
        let me = Self { len: ti.len(), origin, cache, block_size: t.block_size, opts: t.opts, stats: Stats::default() };
        KBox::pin(me, GFP_KERNEL).map_err(|_| CtrError::new(kernel::c_str!("Cannot allocate"), ENOMEM))
    }

    fn map(&self, mut bio: Bio<()>) -> MapResult<()> {
        let sector = bio.target_sector();
        match bio.op() {
            Op::Read => {
                self.stats.reads.fetch_add(1, Ordering::Relaxed);
                bio.remap(&self.origin, sector);
                MapResult::Remapped(bio)
            }
            Op::Write => {
                self.stats.writes.fetch_add(1, Ordering::Relaxed);
                if bio.is_preflush() {
                    self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                }
                bio.remap(&self.origin, sector);
                MapResult::Remapped(bio)
            }
            Op::Flush => {
                self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                bio.remap(&self.origin, sector);
                MapResult::Remapped(bio)
            }
            _ => {
                bio.remap(&self.origin, sector);
                MapResult::Remapped(bio)
            }
        }
    }

    fn end_io(&self, bio: &Bio<()>, status: &mut BlkStatus) -> EndIo {
        if !status.is_ok() && bio.is_write() {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        EndIo::Done
    }

    fn postsuspend(&self) {
        if self.opts.flush_on_suspend {
            if let Err(e) = self.origin.flush() {
                pr_err!("flush on suspend failed: {:?}\n", e);
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn status(&self, ty: StatusType, out: &mut StatusWriter<'_>) {
        let _ = match ty {
            StatusType::Info => {
                let s = &self.stats;
                write!(
                    out,
                    "passthrough {} {} reads {} writes {} flushes {} errors {}",
                    self.opts.mode().as_str(),
                    self.block_size,
                    s.reads.load(Ordering::Relaxed),
                    s.writes.load(Ordering::Relaxed),
                    s.flushes.load(Ordering::Relaxed),
                    s.errors.load(Ordering::Relaxed),
                )
            }
            StatusType::Table => write!(out, "{} {} {} {}", self.origin, self.cache, self.block_size, self.opts),
            StatusType::Ima => write!(
                out,
                "origin={},cache={},block_size={},mode={};",
                self.origin,
                self.cache,
                self.block_size,
                self.opts.mode().as_str()
            ),
        };
    }

    fn message(&self, mut args: Args<'_>, out: &mut StatusWriter<'_>) -> Result {
        let verb = args.next().unwrap_or("");
        if args.next().is_some() {
            pr_warn!("message '{}': too many arguments\n", verb);
            return Err(EINVAL);
        }
        match verb {
            "flush" => {
                // Nothing is held in the cache yet, so "flush" means: make every acknowledged
                // write durable on the origin.
                self.origin.flush()?;
                let _ = write!(out, "flushed");
                Ok(())
            }
            "clear_stats" => {
                let s = &self.stats;
                for c in [&s.reads, &s.writes, &s.flushes, &s.errors] {
                    c.store(0, Ordering::Relaxed);
                }
                Ok(())
            }
            _ => {
                pr_warn!("unrecognised message '{}'\n", verb);
                Err(EINVAL)
            }
        }
    }

    fn iterate_devices(&self, visit: &mut DeviceVisitor<'_>) -> core::result::Result<(), Stop> {
        // The origin backs the whole mapped range; the cache device is private to the target.
        visit.visit(&self.origin, 0, self.len)
    }

    fn io_hints(&self, limits: &mut QueueLimits<'_>) {
        limits.set_io_opt(self.block_size);
    }
}
