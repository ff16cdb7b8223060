// SPDX-License-Identifier: GPL-2.0

//! dm-wbcache: a persistent, crash-safe write-back cache device-mapper target with epochs
//! (wbrepl).
//!
//! Table line: `<start> <len> wbcache <origin_dev> <cache_dev> <block_size> <#opt_args> [opt_args...]`
//! (see `docs/wbcache.md`).
//!
//! Whole-block writes go to a cache block and are acknowledged from there; reads of cached
//! blocks come from the cache, others from the origin. Everything else (partial writes, FUA
//! writes, writes that must wait for space, write-through updates of cached blocks) takes the
//! slow path: an ordered worker that builds the block in a buffer and writes it with dm-io. A
//! background worker commits the metadata every second and writes dirty blocks back with
//! dm-kcopyd between the watermarks. The state machine that keeps the metadata crash-safe is
//! `rust/core/src/wbindex.rs`; the on-disk format is `rust/core/src/wbformat.rs`.

#![deny(unsafe_code)]
// `pin_init!` of the shared state expands one recursion level per field.
#![recursion_limit = "256"]

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use kernel::alloc::AllocError;
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};
use kernel::workqueue::{impl_has_work, new_work, Work, WorkItem};
use kernel::{new_mutex, time::Ktime};

include!("../dmcore/crate_root.rs");

use dmcore::args::Args;
use dmcore::bio::{BioList, BlkStatus, Bio, MapContext, Op};
use dmcore::crc::KernelCrc32c;
use dmcore::device::Device;
use dmcore::dmio::{IoClient, IoFlags, Region};
use dmcore::errno::{ecanceled, etimedout};
use dmcore::kcopyd::Kcopyd;
use dmcore::status::StatusWriter;
use dmcore::sync::IrqSpinLock;
use dmcore::target::{CtrError, CtrTarget, DeviceVisitor, EndIo, MapResult, QueueLimits, StatusType, Stop, Target, TargetModule};
use dmcore::wq::{real_time_ns, sleep_ms, Completion, WorkQueue};
use wbrepl_core::checkpoint::{CpArgError, CpMode, CpOutcome, CpReport, CpRequest};
use wbrepl_core::marker::{MarkerRecord, RECORD_LEN};
use wbrepl_core::parse::parse_u32;
use wbrepl_core::wire::LABEL_LEN;
use wbrepl_core::table::{CacheMode, WbcacheOptions, WbcacheTable};
use wbrepl_core::wbformat::{choose_superblock, Entry, Geometry, SbRead, Superblock, ENTRIES_PER_META_BLOCK, ENTRY_BYTES, META_BLOCK, META_START};
use wbrepl_core::wbindex::{merge_copies, Index, Slot, WriteMap, MAX_CACHE_BLOCKS, MAX_ORIGIN_BLOCKS};

module! {
    type: WbcacheModule,
    name: "dm_wbcache",
    author: "wbrepl developers",
    description: "dm-wbcache: write-back cache target with epochs (wbrepl)",
    license: "GPL",
    alias: ["dm-wbcache"],
}

type WbcacheModule = TargetModule<Wbcache>;

/// Metadata commit interval without flushes from above (like dm-writecache's autocommit).
const AUTOCOMMIT_MS: u32 = 1000;
/// Metadata I/O unit: this many 4 KiB metadata blocks at most per request.
const META_RUN: usize = 16;
/// Blocks written back per writeback batch, at most (contiguous ones are merged into one copy;
/// at most `writeback_jobs` copies run at once).
const MAX_WB_BATCH: usize = 4096;
/// Sectors one writeback copy carries at most (1 MiB): a long contiguous run is split, so its
/// pieces run at once (up to `writeback_jobs`) instead of one after another in a single copy.
const MAX_COPY_SECTORS: u64 = 2048;
/// Slots examined per step of a writeback scan (one hold of the index lock).
const SCAN_STEP: u32 = 2048;
/// Blocks one bio may carry to or from consecutive cache slots (bounds the work done under the
/// index lock in `map` and `end_io`).
const MAX_RUN: u64 = 256;
/// Below `1/RESERVE_DIV` of the cache free, writes of blocks the cache has nothing of bypass it
/// (writeback mode), keeping the rest for new versions of cached blocks.
const RESERVE_DIV: u64 = 16;
/// A write waiting for space fails after this long if writeback keeps failing meanwhile.
const WAIT_SPACE_MAX_MS: i64 = 30_000;
/// The marker region: the last 4 KiB of the origin (beyond the target), where a checkpoint
/// writes its marker record (dm-repl's default `marker_sectors`).
const MARKER_SECTORS: u64 = 8;
/// How often a checkpoint re-counts what is left to write back.
const CP_POLL_MS: u32 = 20;

/// Per-bio data: which slot the bio maps to and which in-flight generation it counts in.
#[derive(Clone, Copy, Default)]
struct PerBio {
    /// First slot (reads of cached blocks, writes into the cache).
    slot: u32,
    /// Blocks the bio covers from `slot` (writes into the cache).
    blocks: u32,
    flags: u8,
}

const PB_GEN0: u8 = 1;
const PB_GEN1: u8 = 2;
const PB_SLOT_WRITE: u8 = 4;
/// A write to the origin alone: its completion makes the next flush from above flush the origin.
const PB_ORIGIN: u8 = 8;

fn gen_flag(gen: usize) -> u8 {
    if gen == 0 {
        PB_GEN0
    } else {
        PB_GEN1
    }
}

type Ix = Index<KVVec<Slot>, KVVec<u32>, KVVec<u64>>;

/// Commit times, for `max_age`: the newest commit at least `max_age` old bounds what is due.
#[derive(Clone, Copy, Default)]
struct AgeMark {
    seq: u64,
    ms: i64,
}

const AGE_MARKS: usize = 32;

struct Inner {
    ix: Ix,
    /// In-flight generation new I/O counts in (flipped by each commit barrier).
    gen: usize,
    slow: BioList<PerBio>,
    flushes: BioList<PerBio>,
    loaded: bool,
    mode: CacheMode,
    high: u32,
    low: u32,
    /// Writeback running because the high watermark was crossed (until the low one).
    wb_active: bool,
    ages: [AgeMark; AGE_MARKS],
    age_next: usize,
    /// The checkpoint in progress.
    cp: Option<CpState>,
    /// The last checkpoint that ended: its id, outcome and duration (ms).
    last_cp: Option<(u64, CpOutcome, u64)>,
    /// Between `presuspend` and the next `resume` (or `presuspend_undo`): no checkpoint starts.
    suspending: bool,
}

/// A checkpoint in progress (see [`Shared::checkpoint`]).
#[derive(Clone, Copy)]
struct CpState {
    mode: CpMode,
    /// The epoch it closed: the marker id.
    id: u64,
    start_ms: i64,
    /// Blocks of epochs up to `id` still in the cache, as of the last count.
    left: u64,
    /// Asked to end (the `abort` message, a suspend).
    abort: bool,
}

#[derive(Default)]
struct Stats {
    read_hits: AtomicU64,
    read_misses: AtomicU64,
    write_hits: AtomicU64,
    write_misses: AtomicU64,
    write_through: AtomicU64,
    write_around: AtomicU64,
    slow_writes: AtomicU64,
    writebacks: AtomicU64,
    wb_errors: AtomicU64,
    flushes: AtomicU64,
    commits: AtomicU64,
    io_errors: AtomicU64,
}

struct WbScratch {
    slots: KVVec<u32>,
    /// Copies: (cache sector, origin sector, sectors).
    jobs: KVVec<(u64, u64, u64)>,
}

#[pin_data]
struct Shared {
    len: u64,
    origin: Device,
    cache: Device,
    block_size: u32,
    block_shift: u32,
    geom: Geometry,
    origin_blocks: u64,
    opts: WbcacheOptions,
    #[pin]
    inner: IrqSpinLock<Inner>,
    inflight: [AtomicU32; 2],
    #[pin]
    inflight_done: Completion,
    /// Wakes the writeback worker.
    #[pin]
    wake: Completion,
    /// Signalled when blocks were freed or written back.
    #[pin]
    space: Completion,
    #[pin]
    commit_buf: Mutex<KVec<u8>>,
    #[pin]
    slow_buf: Mutex<KVec<u8>>,
    #[pin]
    wb_scratch: Mutex<WbScratch>,
    dmio: IoClient,
    kcopyd: Kcopyd,
    stop: AtomicBool,
    drains: AtomicU32,
    /// Writeback rounds that failed (never cleared, unlike `stats.wb_errors`).
    wb_failures: AtomicU64,
    /// Wakes a checkpoint waiting for writeback progress (or told to end).
    #[pin]
    cp_wake: Completion,
    /// The marker record's block.
    #[pin]
    marker_buf: Mutex<KVec<u8>>,
    /// Latched metadata error (errno, 0: none): writes and flushes fail from then on.
    meta_error: AtomicI32,
    /// Latched writeback error (cleared by a successful writeback round).
    wb_error: AtomicBool,
    /// A write to the origin alone *completed* since the origin was last flushed for a flush
    /// from above (set in `end_io`, never at submission: a flush covers the writes completed
    /// before it was issued, and a write still in flight when one flush is processed must be
    /// covered by the next).
    origin_dirty: AtomicBool,
    stats: Stats,
    #[pin]
    io_work: Work<Shared, 0>,
    #[pin]
    wb_work: Work<Shared, 1>,
}

impl_has_work! {
    impl HasWork<Self, 0> for Shared { self.io_work }
    impl HasWork<Self, 1> for Shared { self.wb_work }
}

struct Wbcache {
    shared: Arc<Shared>,
    io_wq: WorkQueue,
    wb_wq: WorkQueue,
}

fn ms_now() -> i64 {
    Ktime::ktime_get().to_ms()
}


impl Shared {
    fn block_sectors(&self) -> u64 {
        1 << self.block_shift
    }

    fn slot_sector(&self, i: u32) -> u64 {
        self.geom.data_start / 512 + (u64::from(i) << self.block_shift)
    }

    fn slot_region(&self, i: u32, off: u64, sectors: u64) -> Region<'_> {
        Region { dev: &self.cache, sector: self.slot_sector(i) + off, sectors }
    }

    fn io_enter(&self, gen: usize) {
        if let Some(c) = self.inflight.get(gen) {
            c.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn io_exit(&self, gen: usize) {
        if let Some(c) = self.inflight.get(gen) {
            if c.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.inflight_done.complete();
            }
        }
    }

    fn failed(&self) -> bool {
        self.meta_error.load(Ordering::Relaxed) != 0
    }

    /// Fails the cache for writes and flushes (a metadata write, or a data write to the cache
    /// device, failed); logs once.
    fn latch_failure(&self, e: Error, what: &str) {
        if self.meta_error.swap(e.to_errno(), Ordering::Relaxed) == 0 {
            pr_err!("wbcache {}: {} failed ({:?}); the cache is failed: writes and flushes now return errors\n", self.cache, what, e);
        }
    }

    // --- metadata

    /// Makes everything completed so far durable (see `Index::barrier`). With `force`, commits
    /// even when nothing changed.
    fn commit(&self, force: bool) -> Result {
        let mut buf = self.commit_buf.lock();
        if self.failed() {
            return Err(EIO);
        }
        let (k, old) = {
            let mut g = self.inner.lock();
            if !force && !g.ix.needs_commit() {
                return Ok(());
            }
            let k = g.ix.barrier();
            let old = g.gen;
            g.gen ^= 1;
            (k, old)
        };
        loop {
            self.inflight_done.reinit();
            if self.inflight.get(old).is_none_or(|c| c.load(Ordering::Acquire) == 0) {
                break;
            }
            self.inflight_done.wait_timeout_ms(100);
        }
        let r = self.write_meta_blocks(&mut buf).and_then(|_| self.write_superblock(&mut buf, k));
        {
            let mut g = self.inner.lock();
            g.ix.commit_done(k, r.is_ok());
            if r.is_ok() {
                let n = g.age_next;
                if let Some(a) = g.ages.get_mut(n % AGE_MARKS) {
                    *a = AgeMark { seq: k, ms: ms_now() };
                }
                g.age_next = n.wrapping_add(1);
            }
        }
        match r {
            Ok(()) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.space.complete();
                Ok(())
            }
            Err(e) => {
                self.latch_failure(e, "metadata commit");
                Err(e)
            }
        }
    }

    /// Commits until released blocks are durably free (at most three commits).
    fn settle(&self) -> Result {
        for _ in 0..3 {
            let busy = {
                let g = self.inner.lock();
                g.ix.counts().releasing > 0 || g.ix.needs_commit()
            };
            if !busy {
                break;
            }
            self.commit(true)?;
        }
        Ok(())
    }

    fn encode_meta_block(&self, ix: &Ix, m: u64, out: &mut [u8]) {
        out.fill(0);
        let first = m * ENTRIES_PER_META_BLOCK;
        let last = (first + ENTRIES_PER_META_BLOCK).min(ix.len());
        for (n, i) in (first..last).enumerate() {
            if let Some(dst) = out.get_mut(n * ENTRY_BYTES..(n + 1) * ENTRY_BYTES) {
                ix.image(i as u32).encode(i, dst, &KernelCrc32c);
            }
        }
    }

    fn meta_region(&self, first: u64, count: usize) -> Region<'_> {
        Region { dev: &self.cache, sector: (META_START + first * META_BLOCK) / 512, sectors: count as u64 * (META_BLOCK / 512) }
    }

    /// Writes every metadata block of the commit in progress, in runs of contiguous blocks.
    fn write_meta_blocks(&self, buf: &mut KVec<u8>) -> Result {
        let mb = META_BLOCK as usize;
        let mut from = 0;
        loop {
            let Some(first) = self.inner.lock().ix.next_commit_block(from) else { break };
            let mut n = 0;
            // One metadata block per hold of the index lock (interrupts are off meanwhile).
            while n < META_RUN {
                let g = self.inner.lock();
                if g.ix.next_commit_block(first + n as u64) != Some(first + n as u64) {
                    break;
                }
                if let Some(out) = buf.get_mut(n * mb..(n + 1) * mb) {
                    self.encode_meta_block(&g.ix, first + n as u64, out);
                }
                n += 1;
            }
            let data = buf.get(..n * mb).ok_or(EINVAL)?;
            self.dmio.write(&[self.meta_region(first, n)], data, IoFlags::default())?;
            from = first + n as u64;
        }
        Ok(())
    }

    fn superblock(&self, seq: u64, epoch: u64) -> Superblock {
        Superblock {
            block_size: self.block_size,
            nr_blocks: self.geom.nr_blocks,
            data_start: self.geom.data_start,
            cache_sectors: self.cache.sectors(),
            origin_sectors: self.len,
            seq,
            epoch,
        }
    }

    /// Writes superblock copy `seq & 1` with PREFLUSH (everything before is durable first) and
    /// FUA.
    fn write_superblock(&self, buf: &mut KVec<u8>, seq: u64) -> Result {
        let epoch = u64::from(self.inner.lock().ix.epoch());
        let out = buf.get_mut(..META_BLOCK as usize).ok_or(EINVAL)?;
        out.fill(0);
        self.superblock(seq, epoch).encode(out, &KernelCrc32c);
        let region = Region { dev: &self.cache, sector: Superblock::offset_for(seq) / 512, sectors: META_BLOCK / 512 };
        self.dmio.write(&[region], out, IoFlags { preflush: true, fua: true })
    }

    fn read_superblock(&self, buf: &mut KVec<u8>, copy: u64) -> Result<core::result::Result<SbRead, wbrepl_core::error::Error>> {
        let b = buf.get_mut(..META_BLOCK as usize).ok_or(EINVAL)?;
        self.dmio.read(Region { dev: &self.cache, sector: copy * META_BLOCK / 512, sectors: META_BLOCK / 512 }, b)?;
        Ok(Superblock::decode(b, &KernelCrc32c))
    }

    /// Reads and validates the metadata, or formats a blank cache device. Runs at the first
    /// resume of a table (never in the constructor: an older table may still be live).
    fn load(&self) -> Result {
        let mut buf = self.commit_buf.lock();
        let a = self.read_superblock(&mut buf, 0)?;
        let b = self.read_superblock(&mut buf, 1)?;
        if a.is_err() != b.is_err() {
            pr_warn!("wbcache {}: one superblock copy is unreadable ({}); using the other\n", self.cache,
                a.err().or(b.err()).map_or("", |e| e.as_str()));
        }
        let sb = match choose_superblock(a, b) {
            Ok(SbRead::Blank) => return self.format(&mut buf),
            Ok(SbRead::Valid(sb)) => sb,
            Err(e) => {
                pr_err!("wbcache {}: cannot use the cache device: {}\n", self.cache, e.as_str());
                return Err(EINVAL);
            }
        };
        if let Err(e) = sb.check_table(self.block_size, self.cache.sectors(), self.len) {
            pr_err!("wbcache {}: cannot use the cache device: {}\n", self.cache, e.as_str());
            return Err(EINVAL);
        }
        let mut rep = self.inner.lock().ix.load_begin(sb.seq);
        let mb = META_BLOCK as usize;
        let total = self.geom.meta_blocks();
        let mut first = 0;
        while first < total {
            let n = (total - first).min(META_RUN as u64) as usize;
            let data = buf.get_mut(..n * mb).ok_or(EINVAL)?;
            self.dmio.read(self.meta_region(first, n), data)?;
            let mut g = self.inner.lock();
            for k in 0..n as u64 * ENTRIES_PER_META_BLOCK {
                let i = first * ENTRIES_PER_META_BLOCK + k;
                if i >= self.geom.nr_blocks {
                    break;
                }
                let off = k as usize * ENTRY_BYTES;
                let raw = data.get(off..off + ENTRY_BYTES).ok_or(EINVAL)?;
                let r = Entry::decode(i, raw, &KernelCrc32c)
                    .and_then(|e| g.ix.load_entry(i as u32, e, self.origin_blocks, &mut rep));
                if let Err(e) = r {
                    drop(g);
                    pr_err!("wbcache {}: cannot use the cache device: metadata entry {}: {}\n", self.cache, i, e.as_str());
                    return Err(EINVAL);
                }
            }
            first += n as u64;
        }
        let (dirty, epoch) = {
            let mut g = self.inner.lock();
            g.ix.load_finish(sb.epoch, &mut rep);
            g.loaded = true;
            (g.ix.counts().dirty, g.ix.epoch())
        };
        pr_info!(
            "wbcache {}: loaded commit {}: {} dirty blocks, {} discarded, {} entries of an incomplete commit ignored; epoch {}\n",
            self.cache, sb.seq, dirty, rep.discarded, rep.ignored, epoch
        );
        Ok(())
    }

    fn format(&self, buf: &mut KVec<u8>) -> Result {
        let mb = META_BLOCK as usize;
        let total = self.geom.meta_blocks();
        {
            let mut g = self.inner.lock();
            g.ix.format();
        }
        let mut first = 0;
        while first < total {
            let n = (total - first).min(META_RUN as u64) as usize;
            {
                let g = self.inner.lock();
                for k in 0..n {
                    if let Some(out) = buf.get_mut(k * mb..(k + 1) * mb) {
                        self.encode_meta_block(&g.ix, first + k as u64, out);
                    }
                }
            }
            self.dmio.write(&[self.meta_region(first, n)], buf.get(..n * mb).ok_or(EINVAL)?, IoFlags::default())?;
            first += n as u64;
        }
        // Both superblock copies, seq 0; copy 0 first (a valid copy 0 next to a blank copy 1 is
        // a format interrupted after its first superblock, which loads).
        for copy in [0u64, 1] {
            let out = buf.get_mut(..mb).ok_or(EINVAL)?;
            out.fill(0);
            self.superblock(0, 1).encode(out, &KernelCrc32c);
            let region = Region { dev: &self.cache, sector: copy * META_BLOCK / 512, sectors: META_BLOCK / 512 };
            self.dmio.write(&[region], out, IoFlags { preflush: true, fua: true })?;
        }
        self.inner.lock().loaded = true;
        pr_info!("wbcache {}: formatted: {} blocks of {} bytes\n", self.cache, self.geom.nr_blocks, self.block_size);
        Ok(())
    }

    // --- slow path (ordered worker)

    fn run_io(&self) {
        // Writes waiting for space, retried together whenever writeback frees some (so that a
        // queue of them does not wait one after another), and since when.
        let mut waiting = BioList::<PerBio>::new();
        let mut since = 0;
        loop {
            let (flushes, bio) = {
                let mut g = self.inner.lock();
                (g.flushes.take(), g.slow.pop())
            };
            let had_flushes = !flushes.is_empty();
            if had_flushes {
                self.process_flushes(flushes);
            }
            match bio {
                Some(b) => {
                    self.stats.slow_writes.fetch_add(1, Ordering::Relaxed);
                    if let Some(b) = self.slow_write(b) {
                        if waiting.is_empty() {
                            since = ms_now();
                        }
                        waiting.push(b);
                    }
                }
                None if had_flushes => {}
                None if waiting.is_empty() => break,
                None => {
                    let fail = self.failed() || self.give_up_waiting(since);
                    if !fail {
                        self.wait_space();
                    }
                    let mut retry = waiting.take();
                    while let Some(b) = retry.pop() {
                        if fail {
                            self.stats.io_errors.fetch_add(1, Ordering::Relaxed);
                            b.end(BlkStatus::IOERR);
                        } else if let Some(b) = self.slow_write(b) {
                            waiting.push(b);
                        }
                    }
                }
            }
        }
    }

    /// Completes flushes from above: a commit makes the cache durable, and the origin is flushed
    /// if a write to it alone completed since the last such flush (see `origin_dirty`).
    fn process_flushes(&self, mut list: BioList<PerBio>) {
        let mut r = self.commit(false);
        if r.is_ok() && self.origin_dirty.swap(false, Ordering::AcqRel) {
            r = self.dmio.flush(&self.origin);
        }
        let status = match r {
            Ok(()) => BlkStatus::OK,
            Err(_) => BlkStatus::IOERR,
        };
        while let Some(b) = list.pop() {
            b.end(status);
        }
    }

    /// Waits (briefly) for writeback to free blocks; the caller re-checks. Completes the flushes
    /// queued meanwhile, so that they do not wait behind this write.
    fn wait_space(&self) {
        self.space.reinit();
        self.wake.complete();
        let flushes = self.inner.lock().flushes.take();
        if !flushes.is_empty() {
            self.process_flushes(flushes);
        }
        self.space.wait_timeout_ms(100);
    }

    /// Whether a write waiting for space should give up: writeback has been failing for as long
    /// as the write has waited, and at least `WAIT_SPACE_MAX_MS`.
    fn give_up_waiting(&self, since: i64) -> bool {
        self.wb_error.load(Ordering::Relaxed) && ms_now() - since >= WAIT_SPACE_MAX_MS
    }

    /// Handles one write the fast path could not; returns it when it must wait for space.
    fn slow_write(&self, mut bio: Bio<PerBio>) -> Option<Bio<PerBio>> {
        let ts = bio.target_sector();
        let block = ts >> self.block_shift;
        let off = ts & (self.block_sectors() - 1);
        let len = bio.size() as usize;
        let fua = bio.is_fua();
        let full = off == 0 && len == self.block_size as usize;
        let mut buf = self.slow_buf.lock();
        loop {
            if self.failed() {
                self.stats.io_errors.fetch_add(1, Ordering::Relaxed);
                bio.end(BlkStatus::IOERR);
                return None;
            }
            let mut g = self.inner.lock();
            let wt = g.mode == CacheMode::Writethrough;
            if wt && g.ix.uncached_run(block, 1) == 1 {
                drop(g);
                self.write_to_origin(&mut bio, 1, &self.stats.write_through);
                bio.submit_remapped();
                return None;
            }
            if wt && g.ix.under_writeback(block) {
                // A copy of an older version is on its way to the origin: it could land after
                // this write. Wait for it.
                drop(g);
                sleep_ms(1);
                continue;
            }
            let (slot, src) = match g.ix.map_write(block, full) {
                WriteMap::Slot(i) => (i, None),
                WriteMap::NeedsCopy(src) => match g.ix.alloc(block) {
                    Some(i) => (i, Some(src)),
                    None => return Some(bio),
                },
                WriteMap::NoSpace if full && g.mode == CacheMode::Writeback && g.cp.is_none() && g.ix.uncached_run(block, 1) == 1 => {
                    // Nothing of it is cached: to the origin directly (see `map`).
                    drop(g);
                    self.write_to_origin(&mut bio, 1, &self.stats.write_around);
                    bio.submit_remapped();
                    return None;
                }
                WriteMap::NoSpace => return Some(bio),
                WriteMap::Busy => {
                    drop(g);
                    sleep_ms(1);
                    continue;
                }
            };
            if wt {
                // Older versions are not written back while this write is in flight, and are
                // released when it completes (the origin then has this one).
                g.ix.mark_write_through(slot);
            }
            let gen = g.gen;
            self.io_enter(gen);
            drop(g);
            if src.is_none() && !wt && !fua {
                // Nothing to merge or copy (it only waited for space, or is a partial write
                // over a complete version): submit it like the fast path, asynchronously.
                *bio.data_mut() = PerBio { slot, blocks: 1, flags: gen_flag(gen) | PB_SLOT_WRITE };
                bio.remap(&self.cache, self.slot_sector(slot) + off);
                bio.submit_remapped();
                return None;
            }
            let r = self.write_slot(&mut bio, &mut buf, slot, src, block, off, len, wt, fua);
            self.inner.lock().ix.write_done(slot, r.is_ok());
            self.io_exit(gen);
            let r = if r.is_ok() && fua { self.commit(false) } else { r };
            if r.is_err() {
                self.stats.io_errors.fetch_add(1, Ordering::Relaxed);
            }
            bio.end(if r.is_ok() { BlkStatus::OK } else { BlkStatus::IOERR });
            return None;
        }
    }

    /// Writes `data` to the cache region, and to the origin region too in write-through
    /// (`wt`). A failed write to the cache alone fails the cache (see `end_io`).
    fn write_block(&self, regions: &[Region<'_>; 2], wt: bool, data: &[u8], flags: IoFlags) -> Result {
        let r = self.dmio.write(if wt { &regions[..] } else { &regions[..1] }, data, flags);
        if let (Err(e), false) = (r, wt) {
            self.latch_failure(e, "a data write to the cache device");
        }
        r
    }

    /// Points a write over `blocks` blocks at the origin alone (write-through, or a full cache
    /// in writeback mode), counting them in `counter`. The caller checked that the cache has
    /// nothing of them ([`Index::uncached_run`]), so nothing cached can shadow them, now or
    /// after a crash, and cut the bio to them. Once it completes (`end_io`), the next flush from
    /// above flushes the origin too.
    fn write_to_origin(&self, bio: &mut Bio<PerBio>, blocks: u32, counter: &AtomicU64) {
        counter.fetch_add(u64::from(blocks), Ordering::Relaxed);
        bio.data_mut().flags |= PB_ORIGIN;
        let ts = bio.target_sector();
        bio.remap(&self.origin, ts);
    }

    /// Writes the bio's data to slot `slot` (and the origin in write-through). `src`: a new
    /// slot for a partial write, built from this version (a slot, or the origin when `None`).
    #[allow(clippy::too_many_arguments)]
    fn write_slot(
        &self,
        bio: &mut Bio<PerBio>,
        buf: &mut KVec<u8>,
        slot: u32,
        src: Option<Option<u32>>,
        block: u64,
        off: u64,
        len: usize,
        wt: bool,
        fua: bool,
    ) -> Result {
        let flags = IoFlags { fua, preflush: false };
        let bs = self.block_size as usize;
        match src {
            None => {
                // The whole bio goes to its place in the slot.
                let data = buf.get_mut(..len).ok_or(EINVAL)?;
                bio.copy_to(data);
                let sectors = len as u64 / 512;
                let cache = self.slot_region(slot, off, sectors);
                let origin = Region { dev: &self.origin, sector: (block << self.block_shift) + off, sectors };
                let regions = [cache, origin];
                self.write_block(&regions, wt, data, flags)
            }
            Some(from) => {
                let whole = buf.get_mut(..bs).ok_or(EINVAL)?;
                let src_region = match from {
                    Some(i) => self.slot_region(i, 0, self.block_sectors()),
                    None => Region { dev: &self.origin, sector: block << self.block_shift, sectors: self.block_sectors() },
                };
                self.dmio.read(src_region, whole)?;
                let o = (off * 512) as usize;
                let part = whole.get_mut(o..o + len).ok_or(EINVAL)?;
                bio.copy_to(part);
                let cache = self.slot_region(slot, 0, self.block_sectors());
                let origin = Region { dev: &self.origin, sector: block << self.block_shift, sectors: self.block_sectors() };
                let regions = [cache, origin];
                self.write_block(&regions, wt, whole, flags)
            }
        }
    }

    // --- writeback (background worker)

    fn tick_ms(&self) -> u32 {
        match self.opts.max_age_ms {
            Some(a) => (a / 4).clamp(10, AUTOCOMMIT_MS),
            None => AUTOCOMMIT_MS,
        }
    }

    fn run_wb(&self) {
        while !self.stop.load(Ordering::Acquire) {
            // Wake-ups from now on start another round; older ones are covered by this one.
            self.wake.reinit();
            self.writeback_round(false);
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            let t = if self.drains.load(Ordering::Relaxed) > 0 { 10 } else { self.tick_ms() };
            self.wake.wait_timeout_ms(t);
        }
    }

    /// What is due for writeback now: `None` nothing, `Some((None, n))` any `n` blocks,
    /// `Some((Some(s), n))` versions committed at or before commit `s` (`max_age`). Between the
    /// watermarks `n` stops at the low one (a batch does not overshoot it).
    fn due(&self, g: &mut Inner) -> Option<(Option<u64>, usize)> {
        let c = g.ix.counts();
        if c.dirty == 0 {
            g.wb_active = false;
            return None;
        }
        let pct = c.dirty * 100 / c.total.max(1);
        if pct >= u64::from(g.high) {
            g.wb_active = true;
        } else if pct < u64::from(g.low) || g.low == 0 && pct == 0 {
            g.wb_active = false;
        }
        // No free block left: writes are waiting for space, whatever the watermarks say.
        if c.free == 0 || self.drains.load(Ordering::Relaxed) > 0 || g.mode == CacheMode::Writethrough {
            return Some((None, MAX_WB_BATCH));
        }
        if g.wb_active {
            // Down to just below the low watermark (1 % of the cache under it), so that writeback
            // stops there and the next round waits for the high one: not a string of tiny
            // rounds (each a commit, a scan and an origin flush) hovering at the low one.
            let low = c.total * u64::from(g.low) / 100;
            let n = c.dirty.saturating_sub(low) + c.total / 100 + 1;
            return Some((None, n.min(MAX_WB_BATCH as u64) as usize));
        }
        let age = i64::from(self.opts.max_age_ms?);
        let now = ms_now();
        let seq = g.ages.iter().filter(|a| a.seq != 0 && now - a.ms >= age).map(|a| a.seq).max()?;
        Some((Some(seq), MAX_WB_BATCH))
    }

    /// Commits, then writes back what is due, batch by batch. `inline`: called by a drain
    /// while the worker is stopped (suspended device).
    fn writeback_round(&self, inline: bool) {
        let mut scratch = self.wb_scratch.lock();
        let WbScratch { slots, jobs } = &mut *scratch;
        let mut recommitted = false;
        loop {
            if (!inline && self.stop.load(Ordering::Acquire)) || self.failed() {
                return;
            }
            if self.commit(false).is_err() {
                return;
            }
            let (mut scan, due_all, limit) = {
                let mut g = self.inner.lock();
                let Some((max_seq, limit)) = self.due(&mut g) else { return };
                (g.ix.scan_begin(max_seq), max_seq.is_none(), limit)
            };
            let out = slots.get_mut(..limit).unwrap_or(&mut []);
            // The scan covers every slot: in bounded steps, so interrupts are never off long.
            while !self.inner.lock().ix.scan_step(&mut scan, out, SCAN_STEP) {}
            let n = {
                let mut g = self.inner.lock();
                let n = scan.found;
                if n == 0 {
                    let ordered = g.mode == CacheMode::Ordered;
                    if ordered && due_all && g.ix.oldest_dirty_epoch() == g.ix.epoch() && g.ix.wb_limit().is_none() {
                        // Everything dirty is in the open epoch: close it so it can go.
                        g.ix.close_epoch();
                        continue;
                    }
                    // What is dirty may just need committing first (once per round).
                    if g.ix.needs_commit() && !recommitted {
                        recommitted = true;
                        continue;
                    }
                    return;
                }
                for (&i, j) in slots.iter().take(n).zip(jobs.iter_mut()) {
                    *j = (self.slot_sector(i), g.ix.block_of(i) << self.block_shift, self.block_sectors());
                }
                n
            };
            let nj = merge_copies(jobs.get_mut(..n).unwrap_or(&mut []), MAX_COPY_SECTORS);
            let r = self
                .kcopyd
                .copy_all(&self.cache, &self.origin, jobs.get(..nj).unwrap_or(&[]), self.opts.jobs() as usize)
                .and_then(|_| self.dmio.flush(&self.origin));
            // In pieces: interrupts stay off for a bounded time.
            for piece in slots.get(..n).unwrap_or(&[]).chunks(256) {
                let mut g = self.inner.lock();
                for &i in piece {
                    g.ix.writeback_done(i, r.is_ok());
                }
            }
            if let Err(e) = r {
                self.stats.wb_errors.fetch_add(1, Ordering::Relaxed);
                self.wb_failures.fetch_add(1, Ordering::Relaxed);
                if !self.wb_error.swap(true, Ordering::Relaxed) {
                    pr_err!("wbcache {}: writeback to the origin failed ({:?}); the blocks stay dirty and are retried\n", self.cache, e);
                }
                return;
            }
            self.wb_error.store(false, Ordering::Relaxed);
            self.stats.writebacks.fetch_add(n as u64, Ordering::Relaxed);
            self.space.complete();
            self.cp_wake.complete();
        }
    }

    /// Writes everything back (the `flush` message, `flush_on_suspend`).
    fn drain(&self) -> Result {
        self.drains.fetch_add(1, Ordering::AcqRel);
        let r = self.drain_wait();
        self.drains.fetch_sub(1, Ordering::AcqRel);
        r.and_then(|_| self.settle())
    }

    // --- checkpoints

    /// The `checkpoint` message (`docs/checkpoints.md`): closes the current epoch N, writes
    /// back every block of epochs up to N while new writes are held in the cache (`hold`,
    /// `ordered`) or written through (`writethrough`), then writes the marker record with
    /// `PREFLUSH|FUA` into the marker region of the origin, before any newer block can reach
    /// it. Ends cleanly (nothing held, no marker) on timeout, `abort`, suspend or error.
    fn checkpoint(&self, req: &CpRequest) -> Result<CpReport> {
        let start = ms_now();
        if self.len.saturating_add(MARKER_SECTORS) > self.origin.sectors() {
            pr_warn!(
                "wbcache {}: checkpoint: no marker region: the target must end at least {} sectors before the end of the origin\n",
                self.cache,
                MARKER_SECTORS
            );
            return Err(EINVAL);
        }
        let (id, saved_mode) = {
            let mut g = self.inner.lock();
            let refuse = if g.suspending {
                Some(("the device is being suspended", EBUSY))
            } else if !g.loaded || self.stop.load(Ordering::SeqCst) {
                Some(("the device is suspended (or was never resumed)", EBUSY))
            } else if g.cp.is_some() {
                Some(("another checkpoint is in progress", EBUSY))
            } else if self.failed() {
                Some(("the cache has failed", EIO))
            } else if req.mode == CpMode::Ordered && g.mode != CacheMode::Ordered {
                Some(("mode ordered needs the cache in ordered mode", EINVAL))
            } else if req.mode == CpMode::Writethrough && g.mode == CacheMode::Ordered {
                // New writes would reach the origin before older epochs are written back: a
                // crash meanwhile would leave it off an epoch boundary.
                Some(("the cache is in ordered mode: writing through would break its epoch order (use checkpoint ordered or hold)", EINVAL))
            } else if req.mode == CpMode::Hold && g.mode == CacheMode::Writethrough {
                Some(("the cache is in writethrough mode: new writes cannot be held (use checkpoint writethrough)", EINVAL))
            } else {
                None
            };
            if let Some((why, e)) = refuse {
                drop(g);
                pr_warn!("wbcache {}: checkpoint refused: {}\n", self.cache, why);
                return Err(e);
            }
            let id = g.ix.close_epoch();
            g.ix.set_wb_limit(Some(id));
            let saved_mode = g.mode;
            if req.mode == CpMode::Writethrough {
                g.mode = CacheMode::Writethrough;
                g.ix.set_ordered(false);
            }
            g.cp = Some(CpState { mode: req.mode, id: u64::from(id), start_ms: start, left: 0, abort: false });
            (id, saved_mode)
        };
        self.drains.fetch_add(1, Ordering::AcqRel);
        let errors_before = self.wb_failures.load(Ordering::Relaxed);
        let deadline = start + i64::from(req.timeout_ms);
        let mut blocks = None;
        // The new epoch on disk first, so that marker ids never repeat after a crash.
        let committed = self.commit(true).map_err(|e| (CpOutcome::Failed, e, "the metadata commit failed"));
        let drained = committed.and_then(|()| loop {
            self.cp_wake.reinit();
            self.wake.complete();
            let left = self.count_upto(id);
            blocks.get_or_insert(left);
            let abort = {
                let mut g = self.inner.lock();
                g.cp.as_mut().is_some_and(|c| {
                    c.left = left;
                    c.abort
                })
            };
            if left == 0 {
                break Ok(());
            }
            if abort || self.stop.load(Ordering::SeqCst) {
                break Err((CpOutcome::Aborted, ecanceled(), "aborted"));
            }
            if self.failed() || self.wb_failures.load(Ordering::Relaxed) != errors_before {
                break Err((CpOutcome::Failed, EIO, "writeback to the origin failed"));
            }
            if ms_now() >= deadline {
                break Err((CpOutcome::Timeout, etimedout(), "timed out"));
            }
            // A signal to the process that sent the message (Ctrl-C) ends the checkpoint.
            if self.cp_wake.wait_interruptible_timeout_ms(CP_POLL_MS).is_err() {
                break Err((CpOutcome::Aborted, EINTR, "interrupted by a signal"));
            }
        });
        let drain_ms = ms_now() - start;
        let result = drained.and_then(|()| {
            self.write_marker(u64::from(id), &req.label)
                .map_err(|e| (CpOutcome::Failed, e, "the marker write failed (a dm-repl primary refuses markers while it is not replicating)"))
        });
        let total_ms = ms_now() - start;
        let outcome = match &result {
            Ok(()) => CpOutcome::Ok,
            Err((o, _, _)) => *o,
        };
        {
            let mut g = self.inner.lock();
            g.ix.set_wb_limit(None);
            g.mode = saved_mode;
            g.ix.set_ordered(saved_mode == CacheMode::Ordered);
            g.cp = None;
            g.last_cp = Some((u64::from(id), outcome, total_ms.max(0) as u64));
        }
        self.drains.fetch_sub(1, Ordering::AcqRel);
        // Held blocks may go now.
        self.wake.complete();
        match result {
            Ok(()) => Ok(CpReport {
                id: u64::from(id),
                mode: req.mode,
                label: req.label,
                blocks: blocks.unwrap_or(0),
                drain_ms: drain_ms.max(0) as u64,
                marker_ms: (total_ms - drain_ms).max(0) as u64,
                total_ms: total_ms.max(0) as u64,
            }),
            Err((_, e, why)) => {
                pr_warn!("wbcache {}: checkpoint {}: {} after {} ms; no marker, nothing held any more\n", self.cache, id, why, total_ms);
                Err(e)
            }
        }
    }

    /// Asks the checkpoint in progress, if any, to end; returns whether there was one. With
    /// `suspending`, no other starts until `resume` (checked under the same lock hold as the
    /// refusals in [`Shared::checkpoint`], so none slips in between).
    fn abort_checkpoint(&self, suspending: bool) -> bool {
        let found = {
            let mut g = self.inner.lock();
            g.suspending |= suspending;
            g.cp.as_mut().map(|c| c.abort = true).is_some()
        };
        self.cp_wake.complete();
        found
    }

    /// Data-holding versions of epochs up to `limit`, counted in steps of the index lock.
    fn count_upto(&self, limit: u32) -> u64 {
        let (mut n, mut pos) = (0, 0);
        loop {
            let g = self.inner.lock();
            let (c, next) = g.ix.count_upto(limit, pos, SCAN_STEP);
            n += c;
            pos = next;
            if u64::from(next) >= g.ix.len() {
                return n;
            }
        }
    }

    /// Writes marker record `id` into the marker region of the origin, `PREFLUSH|FUA`: durable,
    /// after everything that completed before it.
    fn write_marker(&self, id: u64, label: &[u8; LABEL_LEN]) -> Result {
        let mut buf = self.marker_buf.lock();
        buf.fill(0);
        let rec = MarkerRecord { id, time_ns: real_time_ns(), label: *label };
        let first: &mut [u8; RECORD_LEN] = buf.get_mut(..RECORD_LEN).and_then(|b| b.try_into().ok()).ok_or(EINVAL)?;
        rec.encode(&KernelCrc32c, first);
        // Re-checked here: the origin may have been resized since the request.
        let sector = self.origin.sectors().checked_sub(MARKER_SECTORS).filter(|&s| s >= self.len).ok_or(EINVAL)?;
        let region = Region { dev: &self.origin, sector, sectors: MARKER_SECTORS };
        self.dmio.write(&[region], &buf[..], IoFlags { preflush: true, fua: true })
    }

    fn drain_wait(&self) -> Result {
        let errors_before = self.wb_failures.load(Ordering::Relaxed);
        loop {
            self.space.reinit();
            self.wake.complete();
            if self.failed() {
                return Err(EIO);
            }
            if self.wb_failures.load(Ordering::Relaxed) != errors_before {
                return Err(EIO);
            }
            if self.inner.lock().ix.counts().dirty == 0 {
                return Ok(());
            }
            if self.stop.load(Ordering::Acquire) {
                // No writeback worker (suspended): do the rounds here.
                self.writeback_round(true);
                if self.inner.lock().ix.counts().dirty != 0 && self.wb_failures.load(Ordering::Relaxed) == errors_before {
                    sleep_ms(1);
                }
                continue;
            }
            self.space.wait_timeout_ms(50);
        }
    }
}

impl WorkItem<0> for Shared {
    type Pointer = Arc<Shared>;
    fn run(this: Arc<Shared>) {
        this.run_io();
    }
}

impl WorkItem<1> for Shared {
    type Pointer = Arc<Shared>;
    fn run(this: Arc<Shared>) {
        this.run_wb();
    }
}

impl Wbcache {
    fn kick_io(&self) {
        let _ = self.io_wq.enqueue::<Arc<Shared>, 0>(self.shared.clone());
    }

    fn start_writeback(&self) {
        self.shared.stop.store(false, Ordering::Release);
        let _ = self.wb_wq.enqueue::<Arc<Shared>, 1>(self.shared.clone());
    }

    fn stop_writeback(&self) {
        self.shared.stop.store(true, Ordering::Release);
        // The worker checks `stop` before each wait, so one wake-up is enough.
        self.shared.wake.complete();
        self.wb_wq.flush();
    }
}

fn alloc_err(_: AllocError) -> CtrError {
    CtrError::new(kernel::c_str!("Cannot allocate the cache index"), ENOMEM)
}

#[vtable]
impl Target for Wbcache {
    const NAME: &'static CStr = kernel::c_str!("wbcache");
    const VERSION: [u32; 3] = [1, 0, 0];
    type PerBio = PerBio;

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
        let origin_blocks = ti.len() / block_sectors;
        if origin_blocks >= MAX_ORIGIN_BLOCKS {
            return Err(CtrError::inval(kernel::c_str!("Origin has too many blocks for this block size")));
        }
        let geom = Geometry::compute(cache.sectors().saturating_mul(512), t.block_size)
            .map_err(|_| CtrError::inval(kernel::c_str!("Cache device too small for one cache block")))?;
        if geom.nr_blocks >= MAX_CACHE_BLOCKS {
            return Err(CtrError::inval(kernel::c_str!("Cache device has too many blocks for this block size")));
        }
        let nr = geom.nr_blocks as usize;
        let (nb, nw, nf) = Ix::storage_for(geom.nr_blocks);
        let ix = Index::new(
            KVVec::from_elem(Slot::default(), nr, GFP_KERNEL).map_err(alloc_err)?,
            KVVec::from_elem(0u32, nb, GFP_KERNEL).map_err(alloc_err)?,
            KVVec::from_elem(0u32, nf, GFP_KERNEL).map_err(alloc_err)?,
            KVVec::from_elem(0u64, nw, GFP_KERNEL).map_err(alloc_err)?,
            KVVec::from_elem(0u64, nw, GFP_KERNEL).map_err(alloc_err)?,
        )
        .map_err(CtrError::from)?;
        // The cache device is a volatile cache of our own: flushes and FUA must reach `map` even
        // when the origin has no write cache.
        ti.set_flush_supported();
        ti.set_num_flush_bios(1);
        ti.set_num_discard_bios(0);
        ti.set_num_write_zeroes_bios(0);
        let mode = t.opts.mode();
        let mut ix = ix;
        ix.set_ordered(mode == CacheMode::Ordered);
        let inner = Inner {
            ix,
            gen: 0,
            slow: BioList::new(),
            flushes: BioList::new(),
            loaded: false,
            mode,
            high: t.opts.high(),
            low: t.opts.low(),
            wb_active: false,
            ages: [AgeMark::default(); AGE_MARKS],
            age_next: 0,
            cp: None,
            last_cp: None,
            suspending: false,
        };
        let scratch = WbScratch {
            slots: KVVec::from_elem(0u32, MAX_WB_BATCH, GFP_KERNEL).map_err(alloc_err)?,
            jobs: KVVec::from_elem((0u64, 0u64, 0u64), MAX_WB_BATCH, GFP_KERNEL).map_err(alloc_err)?,
        };
        let commit_buf = KVec::from_elem(0u8, META_RUN * META_BLOCK as usize, GFP_KERNEL).map_err(alloc_err)?;
        let slow_buf = KVec::from_elem(0u8, t.block_size as usize, GFP_KERNEL).map_err(alloc_err)?;
        let marker_buf = KVec::from_elem(0u8, (MARKER_SECTORS * 512) as usize, GFP_KERNEL).map_err(alloc_err)?;
        let dmio = IoClient::new().map_err(|e| CtrError::new(kernel::c_str!("Cannot create a dm-io client"), e))?;
        let kcopyd = Kcopyd::new().map_err(|e| CtrError::new(kernel::c_str!("Cannot create a kcopyd client"), e))?;
        let io_wq = WorkQueue::new(kernel::c_str!("wbcache_io"), 1, true)
            .map_err(|e| CtrError::new(kernel::c_str!("Cannot create a workqueue"), e))?;
        let wb_wq = WorkQueue::new(kernel::c_str!("wbcache_wb"), 1, true)
            .map_err(|e| CtrError::new(kernel::c_str!("Cannot create a workqueue"), e))?;
        let shared = Arc::pin_init(
            pin_init!(Shared {
                len: ti.len(),
                origin,
                cache,
                block_size: t.block_size,
                block_shift: block_sectors.trailing_zeros(),
                geom,
                origin_blocks,
                opts: t.opts,
                inner <- IrqSpinLock::new(inner),
                inflight: [AtomicU32::new(0), AtomicU32::new(0)],
                inflight_done <- Completion::new(),
                wake <- Completion::new(),
                space <- Completion::new(),
                commit_buf <- new_mutex!(commit_buf),
                slow_buf <- new_mutex!(slow_buf),
                wb_scratch <- new_mutex!(scratch),
                dmio,
                kcopyd,
                stop: AtomicBool::new(true),
                drains: AtomicU32::new(0),
                wb_failures: AtomicU64::new(0),
                cp_wake <- Completion::new(),
                marker_buf <- new_mutex!(marker_buf),
                meta_error: AtomicI32::new(0),
                wb_error: AtomicBool::new(false),
                origin_dirty: AtomicBool::new(false),
                stats: Stats::default(),
                io_work <- new_work!("wbcache::io"),
                wb_work <- new_work!("wbcache::wb"),
            }),
            GFP_KERNEL,
        )
        .map_err(|_| CtrError::new(kernel::c_str!("Cannot allocate"), ENOMEM))?;
        KBox::pin(Self { shared, io_wq, wb_wq }, GFP_KERNEL).map_err(|_| CtrError::new(kernel::c_str!("Cannot allocate"), ENOMEM))
    }

    fn map(&self, mut bio: Bio<PerBio>, ctx: &MapContext<'_>) -> MapResult<PerBio> {
        let sh = &*self.shared;
        let ts = bio.target_sector();
        let block = ts >> sh.block_shift;
        let off = ts & (sh.block_sectors() - 1);
        match bio.op() {
            Op::Flush => {
                sh.stats.flushes.fetch_add(1, Ordering::Relaxed);
                let mut g = sh.inner.lock();
                if g.mode == CacheMode::Ordered {
                    // A flush from above closes the epoch: everything completed before it is in
                    // this epoch or an older one.
                    g.ix.close_epoch();
                }
                g.flushes.push(bio);
                drop(g);
                self.kick_io();
                MapResult::Submitted
            }
            Op::Read => {
                let bs = sh.block_sectors();
                let last = (ts + u64::from(bio.sectors()).max(1) - 1) >> sh.block_shift;
                let want = (last - block + 1).min(MAX_RUN);
                let g = sh.inner.lock();
                // One run: consecutive cached blocks in consecutive slots, or uncached blocks.
                let first = g.ix.lookup_read(block);
                let mut n = 1;
                while n < want {
                    let next = g.ix.lookup_read(block + n);
                    let same = match (first, next) {
                        (Some(i), Some(j)) => u64::from(j) == u64::from(i) + n,
                        (None, None) => true,
                        _ => false,
                    };
                    if !same {
                        break;
                    }
                    n += 1;
                }
                let gen = g.gen;
                if first.is_some() {
                    sh.io_enter(gen);
                }
                drop(g);
                bio.accept_partial(ctx, (((block + n) * bs) - ts).min(u64::from(u32::MAX)) as u32);
                match first {
                    Some(i) => {
                        *bio.data_mut() = PerBio { slot: i, blocks: 0, flags: gen_flag(gen) };
                        sh.stats.read_hits.fetch_add(n, Ordering::Relaxed);
                        let s = sh.slot_sector(i) + off;
                        bio.remap(&sh.cache, s);
                    }
                    None => {
                        sh.stats.read_misses.fetch_add(n, Ordering::Relaxed);
                        bio.remap(&sh.origin, ts);
                    }
                }
                MapResult::Remapped(bio)
            }
            Op::Write => {
                if sh.failed() {
                    return MapResult::Kill(bio);
                }
                let bs = sh.block_sectors();
                let sectors = u64::from(bio.sectors());
                // Whole blocks the bio covers from its start (0: it starts or ends inside one).
                let whole = if off == 0 { (sectors >> sh.block_shift).min(MAX_RUN) } else { 0 };
                let mut g = sh.inner.lock();
                let wt = g.mode == CacheMode::Writethrough;
                if wt {
                    // Blocks the cache has nothing of go to the origin alone (partial ones too).
                    let last = (ts + sectors.max(1) - 1) >> sh.block_shift;
                    let touched = (last - block + 1).min(MAX_RUN);
                    let n = g.ix.uncached_run(block, touched as u32);
                    if n > 0 {
                        drop(g);
                        bio.accept_partial(ctx, (((block + u64::from(n)) * bs) - ts).min(u64::from(u32::MAX)) as u32);
                        sh.write_to_origin(&mut bio, n, &sh.stats.write_through);
                        return MapResult::Remapped(bio);
                    }
                }
                if whole == 0 || wt || bio.is_fua() {
                    // The slow path takes one block at a time: device-mapper sends the rest of
                    // the bio as another.
                    bio.accept_partial(ctx, (bs - off).min(sectors) as u32);
                    g.slow.push(bio);
                    drop(g);
                    self.kick_io();
                    return MapResult::Submitted;
                }
                if g.mode == CacheMode::Writeback && g.cp.is_none() {
                    // Full or nearly: the last free blocks are kept for new versions of cached
                    // blocks; blocks the cache has nothing of go to the origin directly (as
                    // dm-writecache does once it is full). Others wait for writeback. Not
                    // during a checkpoint: nothing new may reach the origin before its marker.
                    let c = g.ix.counts();
                    if c.free < (c.total / RESERVE_DIV).max(1) {
                        let n = g.ix.uncached_run(block, whole as u32);
                        if n > 0 {
                            drop(g);
                            bio.accept_partial(ctx, (u64::from(n) * bs) as u32);
                            sh.write_to_origin(&mut bio, n, &sh.stats.write_around);
                            return MapResult::Remapped(bio);
                        }
                    }
                }
                let r = g.ix.map_write_run(block, whole as u32);
                match r.map {
                    WriteMap::Slot(i) => {
                        let gen = g.gen;
                        sh.io_enter(gen);
                        drop(g);
                        bio.accept_partial(ctx, (u64::from(r.blocks) * bs) as u32);
                        sh.stats.write_hits.fetch_add(u64::from(r.hits), Ordering::Relaxed);
                        sh.stats.write_misses.fetch_add(u64::from(r.blocks - r.hits), Ordering::Relaxed);
                        *bio.data_mut() = PerBio { slot: i, blocks: r.blocks, flags: gen_flag(gen) | PB_SLOT_WRITE };
                        let s = sh.slot_sector(i);
                        bio.remap(&sh.cache, s);
                        MapResult::Remapped(bio)
                    }
                    _ => {
                        bio.accept_partial(ctx, bs as u32);
                        g.slow.push(bio);
                        drop(g);
                        self.kick_io();
                        MapResult::Submitted
                    }
                }
            }
            // Discards and write-zeroes are not enabled (num_*_bios = 0).
            _ => MapResult::Kill(bio),
        }
    }

    fn end_io(&self, bio: &Bio<PerBio>, status: &mut BlkStatus) -> EndIo {
        let sh = &*self.shared;
        let p = *bio.data();
        if p.flags & PB_ORIGIN != 0 {
            // Before the completion goes up: a flush issued after it sees the flag.
            sh.origin_dirty.store(true, Ordering::Release);
        }
        if p.flags & PB_SLOT_WRITE != 0 {
            if !status.is_ok() {
                // The cache device no longer takes writes: stop using it for them (as
                // dm-writecache does), rather than hold dirty data it may not have.
                sh.latch_failure(EIO, "a data write to the cache device");
            }
            let mut g = sh.inner.lock();
            for k in 0..p.blocks {
                g.ix.write_done(p.slot.saturating_add(k), status.is_ok());
            }
        }
        if p.flags & PB_GEN0 != 0 {
            sh.io_exit(0);
        } else if p.flags & PB_GEN1 != 0 {
            sh.io_exit(1);
        }
        if !status.is_ok() {
            sh.stats.io_errors.fetch_add(1, Ordering::Relaxed);
        }
        EndIo::Done
    }

    fn preresume(&self) -> Result {
        let loaded = self.shared.inner.lock().loaded;
        if !loaded {
            self.shared.load()?;
        }
        Ok(())
    }

    fn resume(&self) {
        self.shared.inner.lock().suspending = false;
        self.start_writeback();
    }

    fn presuspend(&self) {
        // Device-mapper waits for a running message before it suspends: end the checkpoint now
        // rather than let the suspend wait for its timeout, and start no other meanwhile.
        self.shared.abort_checkpoint(true);
    }

    fn presuspend_undo(&self) {
        // The suspend failed (e.g. freezing the file system above): checkpoints may start again.
        self.shared.inner.lock().suspending = false;
    }

    fn postsuspend(&self) {
        let sh = &*self.shared;
        self.stop_writeback();
        // A checkpoint in progress ends (it sees `stop` too): nothing stays held.
        sh.abort_checkpoint(true);
        if sh.opts.flush_on_suspend {
            if let Err(e) = sh.drain() {
                pr_err!("wbcache {}: flush on suspend failed ({:?})\n", sh.cache, e);
            }
        }
        // Leave the metadata current for a table that may be loaded next.
        if let Err(e) = sh.commit(false).and_then(|_| sh.settle()) {
            pr_err!("wbcache {}: metadata commit on suspend failed ({:?})\n", sh.cache, e);
        }
    }

    fn status(&self, ty: StatusType, out: &mut StatusWriter<'_>) {
        let sh = &*self.shared;
        let _ = match ty {
            StatusType::Info => {
                let (c, mode, epoch, oldest, loaded, cp, last_cp) = {
                    let g = sh.inner.lock();
                    (g.ix.counts(), g.mode, g.ix.epoch(), g.ix.oldest_dirty_epoch(), g.loaded, g.cp, g.last_cp)
                };
                let state = if !loaded {
                    "unloaded"
                } else if sh.failed() {
                    "failed"
                } else if sh.wb_error.load(Ordering::Relaxed) {
                    "degraded"
                } else {
                    "ok"
                };
                let s = &sh.stats;
                let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
                write!(
                    out,
                    "{} {} {} blocks {} free {} dirty {} writeback {} releasing {} epoch {} oldest_epoch {} \
                     read_hits {} read_misses {} write_hits {} write_misses {} write_through {} write_around {} \
                     slow_writes {} writebacks {} wb_errors {} flushes {} commits {} io_errors {} ",
                    state,
                    mode.as_str(),
                    sh.block_size,
                    c.total,
                    c.free,
                    c.dirty,
                    c.under_writeback,
                    c.releasing,
                    epoch,
                    oldest,
                    l(&s.read_hits),
                    l(&s.read_misses),
                    l(&s.write_hits),
                    l(&s.write_misses),
                    l(&s.write_through),
                    l(&s.write_around),
                    l(&s.slow_writes),
                    l(&s.writebacks),
                    l(&s.wb_errors),
                    l(&s.flushes),
                    l(&s.commits),
                    l(&s.io_errors),
                )
                .and_then(|_| match cp {
                    Some(c) => write!(
                        out,
                        "checkpoint {} cp_id {} cp_left {} cp_ms {} ",
                        c.mode.as_str(),
                        c.id,
                        c.left,
                        (ms_now() - c.start_ms).max(0)
                    ),
                    None => write!(out, "checkpoint idle cp_id - cp_left 0 cp_ms 0 "),
                })
                .and_then(|_| match last_cp {
                    Some((id, o, ms)) => write!(out, "last_cp {} last_cp_result {} last_cp_ms {}", id, o.as_str(), ms),
                    None => write!(out, "last_cp - last_cp_result - last_cp_ms 0"),
                })
            }
            StatusType::Table => write!(out, "{} {} {} {}", sh.origin, sh.cache, sh.block_size, sh.opts),
            StatusType::Ima => write!(
                out,
                "origin={},cache={},block_size={},mode={};",
                sh.origin,
                sh.cache,
                sh.block_size,
                sh.opts.mode().as_str()
            ),
        };
    }

    fn message(&self, mut args: Args<'_>, out: &mut StatusWriter<'_>) -> Result {
        let sh = &*self.shared;
        let verb = args.next().unwrap_or("");
        if verb == "checkpoint" {
            let req = CpRequest::parse(args).map_err(|e: CpArgError| {
                pr_warn!("wbcache {}: message 'checkpoint': {}\n", sh.cache, e.as_str());
                EINVAL
            })?;
            let report = sh.checkpoint(&req)?;
            let _ = write!(out, "{}", report);
            return Ok(());
        }
        let arg = args.next();
        if args.next().is_some() {
            pr_warn!("wbcache {}: message '{}': too many arguments\n", sh.cache, verb);
            return Err(EINVAL);
        }
        let no_arg = |a: Option<&str>| -> Result {
            if a.is_some() {
                pr_warn!("wbcache {}: message '{}' takes no argument\n", sh.cache, verb);
                return Err(EINVAL);
            }
            Ok(())
        };
        let busy = |what: &str| -> Result {
            if sh.inner.lock().cp.is_some() {
                pr_warn!("wbcache {}: message '{}': a checkpoint is in progress (abort it first)\n", sh.cache, what);
                return Err(EBUSY);
            }
            Ok(())
        };
        match verb {
            "abort" => {
                no_arg(arg)?;
                if !sh.abort_checkpoint(false) {
                    pr_warn!("wbcache {}: message 'abort': no checkpoint in progress\n", sh.cache);
                    return Err(EINVAL);
                }
                let _ = write!(out, "aborting");
                Ok(())
            }
            "flush" => {
                no_arg(arg)?;
                busy(verb)?;
                if !sh.inner.lock().loaded {
                    pr_warn!("wbcache {}: flush: the device was never resumed\n", sh.cache);
                    return Err(EBUSY);
                }
                sh.drain()?;
                let _ = write!(out, "flushed");
                Ok(())
            }
            "clear_stats" => {
                no_arg(arg)?;
                let s = &sh.stats;
                for c in [
                    &s.read_hits, &s.read_misses, &s.write_hits, &s.write_misses, &s.write_through, &s.write_around,
                    &s.slow_writes, &s.writebacks, &s.wb_errors, &s.flushes, &s.commits, &s.io_errors,
                ] {
                    c.store(0, Ordering::Relaxed);
                }
                Ok(())
            }
            "mode" => {
                let m = CacheMode::parse(arg.unwrap_or("")).map_err(|e| {
                    pr_warn!("wbcache {}: message 'mode': {}\n", sh.cache, e.as_str());
                    EINVAL
                })?;
                // Versions kept for older epochs stay until written back in any mode.
                let mut g = sh.inner.lock();
                if g.cp.is_some() {
                    drop(g);
                    return busy(verb);
                }
                g.mode = m;
                g.ix.set_ordered(m == CacheMode::Ordered);
                drop(g);
                sh.wake.complete();
                let _ = write!(out, "mode {}", m.as_str());
                Ok(())
            }
            "high_watermark" | "low_watermark" => {
                let v = match arg.map(parse_u32) {
                    Some(Ok(v)) if v <= 100 => v,
                    _ => {
                        pr_warn!("wbcache {}: message '{}': value must be 0..100\n", sh.cache, verb);
                        return Err(EINVAL);
                    }
                };
                let mut g = sh.inner.lock();
                let (high, low) = if verb == "high_watermark" { (v, g.low) } else { (g.high, v) };
                if low > high {
                    drop(g);
                    pr_warn!("wbcache {}: message '{}': low_watermark must not exceed high_watermark\n", sh.cache, verb);
                    return Err(EINVAL);
                }
                g.high = high;
                g.low = low;
                drop(g);
                sh.wake.complete();
                Ok(())
            }
            _ => {
                pr_warn!("wbcache {}: unrecognised message '{}'\n", sh.cache, verb);
                Err(EINVAL)
            }
        }
    }

    fn iterate_devices(&self, visit: &mut DeviceVisitor<'_>) -> core::result::Result<(), Stop> {
        // The origin backs the whole mapped range; the cache device is private to the target.
        visit.visit(&self.shared.origin, 0, self.shared.len)
    }

    fn io_hints(&self, limits: &mut QueueLimits<'_>) {
        limits.set_io_opt(self.shared.block_size);
        // Bios are remapped to the cache device too, which the stacked limits do not include.
        limits.raise_block_size(self.shared.cache.logical_block_size());
    }
}

impl Drop for Wbcache {
    fn drop(&mut self) {
        // Normally stopped by postsuspend already; make sure no worker outlives the target.
        self.stop_writeback();
        self.io_wq.flush();
    }
}
