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

// The target, by concern (see docs/architecture.md, "Code layout").
mod checkpoints;
mod io;
mod meta;
mod target;
mod writeback;

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
use wbrepl_core::wbformat::{Geometry, SbRead, Superblock, ENTRIES_PER_META_BLOCK, ENTRY_BYTES, META_BLOCK, META_START, SB_BYTES};
use wbrepl_core::wbload::{load_raw_entry, superblock_for_table, LoadError};
use wbrepl_core::wbindex::{merge_copies, CommitBlock, Index, Slot, WriteMap, MAX_CACHE_BLOCKS, MAX_ORIGIN_BLOCKS};

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
    /// Drains in progress (the `flush` message, `flush_on_suspend`): everything dirty is due.
    /// Counted in the same lock hold as the `flush` message checks for a checkpoint, and a
    /// checkpoint refuses to start while it is not 0: a drain running when a checkpoint ends
    /// would write back at once the writes the checkpoint held, which below DRBD land in the
    /// image (docs/checkpoints.md). A checkpoint's own writeback is due while `cp` is set.
    drains: u32,
}

impl Inner {
    /// Whether everything dirty is due regardless of the watermarks: a drain (`flush`,
    /// `flush_on_suspend`) or a checkpoint is running. A checkpoint's writeback is bounded by
    /// the index's limit, set and lifted in the same lock holds as `cp`.
    fn forced(&self) -> bool {
        self.drains > 0 || self.cp.is_some()
    }
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

impl Drop for Wbcache {
    fn drop(&mut self) {
        // Normally stopped by postsuspend already; make sure no worker outlives the target.
        self.stop_writeback();
        self.io_wq.flush();
    }
}
