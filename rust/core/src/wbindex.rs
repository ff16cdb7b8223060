// SPDX-License-Identifier: GPL-2.0

//! The in-memory index of dm-wbcache: which cache block holds which version of which origin
//! block, and the state machine that keeps the on-disk entry table crash-safe.
//!
//! Storage is supplied by the caller (the kernel allocates it once, in the constructor; host
//! tests use `Vec`), so this module never allocates. Memory per cache block: one 24-byte
//! [`Slot`] and one 4-byte hash bucket (28 bytes), plus two bits per 128 blocks of metadata
//! dirty bitmaps.
//!
//! # Rules (see `docs/wbcache.md`, "Crash safety")
//!
//! - A commit (`barrier_begin`, `barrier_step`s … write metadata … flush … superblock …
//!   `commit_end`, `commit_end_step`s; `barrier` and `commit_done` in one call) makes the
//!   image of every changed slot durable. Only slots whose data writes completed before the
//!   barrier are included as dirty; the caller waits for I/O mapped before the barrier.
//! - A version may be rewritten in place only by writes of its own epoch, and not while it is
//!   being written back (a committed one: the next commit flushes the cache device); otherwise
//!   an overwrite gets a new slot, and the old one is released.
//! - A released slot is reused only after a commit has written it as free ("marking"), and it
//!   is marked only by the commit *after* the barrier that followed its release: by then the
//!   version that superseded it (or the origin, after a writeback and a flush) is durable.
//! - A free entry is a *tombstone*: it keeps the block, `seq` and epoch of the version it held,
//!   and at load it discards every version of that block that is not newer. Dirty entries of an
//!   incomplete commit (`seq` above the superblock's) are ignored, but tombstones are always
//!   applied (what they say was durable before their commit began). So when a commit tears
//!   between the marks of two versions of one block, the newer mark still removes the older
//!   version, and an older version never outlives a newer one.
//! - Versions of one origin block are chained newest first. Reads use the newest version whose
//!   data is complete; writeback takes only the oldest version of a block, so the origin sees
//!   versions in order.
//! - A block never holds more than [`MAX_VERSIONS`] versions (written, or being written): a write
//!   that would add one more waits ([`WriteMap::TooManyVersions`]) until writeback or the
//!   completion of writes in flight releases one. So every walk of a block's versions, done with
//!   interrupts disabled, is bounded by a constant. A load refuses metadata with more than
//!   [`MAX_LOADED_VERSIONS`] versions of a block (no correct writer leaves that many) and keeps
//!   the newest [`MAX_VERSIONS`].
//! - At load, a version discarded (by a tombstone, superseded within its epoch, or beyond the
//!   bound) is marked free by the first commit, and a tombstone that discarded one is not reused
//!   before that commit completes: until then it alone keeps the version from coming back.
//! - The caller makes every call under a lock with interrupts disabled, so none may do work that
//!   grows with the cache: walks of a block's versions are bounded by a constant, and format,
//!   load, the writeback scan, `count_upto` and a commit (`barrier_begin` is O(1);
//!   `barrier_step`, `find_commit_block` and `commit_end_step`) go in steps of a budget the
//!   caller chooses.
//! - A version belongs to the first commit begun after it was allocated: it carries that
//!   commit's sequence number from allocation on, and its image is a dirty entry once that
//!   commit has begun (see `Index::on_disk`). Two versions of one block never share a commit
//!   sequence number and epoch (see `Index::must_wait_for`).
//! - Buckets are chosen by a hash keyed with a secret (`Index::set_hash_key`).
//! - Epochs: every version carries the epoch it was written in. In ordered mode, a version of
//!   an older epoch is kept when overwritten, and writeback goes strictly epoch by epoch. The
//!   epoch counter is 64 bits and never wraps (closed epochs are checkpoint marker ids); a slot
//!   and an on-disk entry keep the low 32 bits of their version's epoch, read back as the
//!   current epoch minus their distance. That holds while every version is less than
//!   [`EPOCH_WINDOW`] epochs old: writeback is due for versions more than
//!   [`EPOCH_WRITEBACK_AGE`] old ([`Index::epochs_need_writeback`]), and an epoch does not close
//!   while the oldest version would be [`EPOCH_WINDOW`] old ([`Index::close_epoch`]).
//! - Checkpoints: with a writeback limit (epoch N), versions of epochs up to N are kept when
//!   overwritten by a newer epoch and nothing newer than N is written back, so once every
//!   version up to N is written back the origin holds exactly the writes of epochs up to N. A
//!   write-through (to cache and origin) supersedes every older version on completion, and no
//!   older version of its block is written back while it is in flight.

use crate::error::Error;
use crate::wbformat::{Entry, EntryState, ENTRIES_PER_META_BLOCK};
use core::ops::DerefMut;

/// Default multipliers of the hash functions (see [`Index::set_hash_key`]).
const BUCKET_MUL: u64 = 0x9E37_79B9_7F4A_7C15;
const FILTER_MUL: u64 = 0xC2B2_AE3D_27D4_EB4F;

/// The finalizer of SplitMix64 (a bijection of 64-bit words that mixes every bit into all).
fn mix64(x: u64) -> u64 {
    let x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// "No slot" in links and buckets.
pub const NIL: u32 = u32::MAX;
/// Release counters at most (a fixed cost; more only lowers false positives).
const RELEASING_FILTER_MAX: usize = 1 << 16;
/// Largest number of origin blocks the index can address.
pub const MAX_ORIGIN_BLOCKS: u64 = 1 << 48;
/// Largest number of cache blocks (slot numbers are `u32`, `NIL` excluded).
pub const MAX_CACHE_BLOCKS: u64 = NIL as u64;
/// Most versions one origin block may hold at once (written, or being written).
///
/// Ordered mode keeps one version per epoch (the origin must pass every epoch boundary), and a
/// checkpoint keeps those up to its limit, so without a bound a block rewritten after every
/// flush (`pwrite; fdatasync` in a loop) would grow one version per flush, and every walk of its
/// versions (in `end_io`, with interrupts disabled) with it. Versions cannot be merged without
/// losing an epoch boundary, so the bound is back-pressure: a write that would add a version
/// beyond it waits for writeback of the block's oldest epoch ([`WriteMap::TooManyVersions`],
/// [`Index::needs_writeback_now`]).
///
/// 16 keeps a walk of a block's versions to 16 steps (tens of nanoseconds with interrupts off;
/// a load walks at most [`MAX_LOADED_VERSIONS`]) while letting a hot block be rewritten across
/// 16 flushes before its writes wait; a larger bound would not raise the sustained rate, which
/// is that of writeback (one epoch per scan in ordered mode), only delay the first wait.
pub const MAX_VERSIONS: usize = 16;
/// Most committed dirty entries of one block a load accepts (twice [`MAX_VERSIONS`]); a load
/// refuses metadata with more, and keeps at most [`MAX_VERSIONS`] of them (the newest).
///
/// A correct writer never exceeds it. A committed (dirty) image of a block stays on disk while
/// its slot holds a version, then until the commit marking the slot free. A slot released after
/// barrier `k - 1` is marked by commit `k + 1`, one released earlier by commit `k` at the latest,
/// so once commit `k` is done the block's dirty images are of versions in its chain at barrier
/// `k` or at barrier `k - 1`: at most [`MAX_VERSIONS`] at barrier `k - 1`, and at most
/// [`MAX_VERSIONS`] more created since (each was created while the ones created before it were
/// still in the chain). A commit that tears after it only turns some of them into tombstones (its
/// own dirty entries are ignored). A load keeps at most [`MAX_VERSIONS`] versions of a block, and
/// the first commit after it marks the ones it discards, so the same holds after a load.
///
/// Those beyond the newest [`MAX_VERSIONS`] are versions released before the last commit whose
/// tombstones were not yet written (the versions in the chain at the last barrier are at most
/// [`MAX_VERSIONS`], and newer than any released earlier that is not discarded otherwise: in
/// ordered mode a version is released only by writeback, oldest first, or by a newer one of its
/// epoch, which discards it at load; outside ordered mode only the newest version matters).
pub const MAX_LOADED_VERSIONS: usize = 2 * MAX_VERSIONS;

/// Versions are kept less than this many epochs older than the current epoch (2^31): slots and
/// entries hold the low 32 bits of an epoch, compared by signed 32-bit distance.
pub const EPOCH_WINDOW: u64 = 1 << 31;
/// Writeback is due for versions more than this many epochs old (2^30, half the window), in
/// every mode, so that they never come near [`EPOCH_WINDOW`]: at 10 000 epochs a second (a flush
/// from above closes one in ordered mode) 2^30 epochs take 30 hours, and writing a cache back
/// takes minutes.
pub const EPOCH_WRITEBACK_AGE: u64 = 1 << 30;

const BLOCK_MASK: u64 = MAX_ORIGIN_BLOCKS - 1;
const FLAG_SHIFT: u32 = 48;

// Slot states (3 bits).
const ST_MASK: u16 = 0b111;
const ST_FREE: u16 = 0;
const ST_WRITING: u16 = 1;
const ST_VALID: u16 = 2;
const ST_RELEASED: u16 = 3;
const ST_MARKING: u16 = 4;
/// While loading: a tombstone, the newest of its block so far, linked in the block's chain.
const ST_TOMB: u16 = 5;
/// While loading: the slot's entry is not loaded yet.
const ST_UNLOADED: u16 = 6;
/// The slot's first write, still in flight, covers the whole block (not a read-modify-write
/// building it): another whole-block write may go into it in place. (Whether the slot's
/// on-disk image is a dirty entry follows from its sequence number: see `Index::on_disk`.)
const F_FULL: u16 = 1 << 3;
/// A writeback copy of the slot is in flight.
const F_UNDER_WB: u16 = 1 << 4;
/// A write-through (to this slot and to the origin) is in flight: older versions of the block
/// are not written back meanwhile, and are released when it completes.
const F_WT: u16 = 1 << 5;
/// Writes in flight into the slot (bits 6..16): while any is, nothing may read the slot to
/// merge a partial write with it.
const WRITERS_SHIFT: u32 = 6;
const WRITERS_MAX: u16 = (1 << (16 - WRITERS_SHIFT)) - 1;

/// One cache block's in-memory state (24 bytes).
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    /// Origin block (low 48 bits) and flags (high 16 bits).
    key: u64,
    /// Sequence number of the commit that includes the version held (for a version not yet
    /// included, the next commit to begin, which will), or that wrote the tombstone held; 0
    /// for none (a tombstone that discards nothing).
    seq: u64,
    /// Epoch of the version held: its low 32 bits (see [`EPOCH_WINDOW`]).
    epoch: u32,
    /// Next slot in the hash chain or in the list the slot is on.
    next: u32,
}

impl Slot {
    fn block(&self) -> u64 {
        self.key & BLOCK_MASK
    }
    fn flags(&self) -> u16 {
        (self.key >> FLAG_SHIFT) as u16
    }
    fn set_flags(&mut self, f: u16) {
        self.key = (self.key & BLOCK_MASK) | (u64::from(f) << FLAG_SHIFT);
    }
    fn state(&self) -> u16 {
        self.flags() & ST_MASK
    }
    fn set_state(&mut self, st: u16) {
        let f = (self.flags() & !ST_MASK) | st;
        self.set_flags(f);
    }
    fn has(&self, f: u16) -> bool {
        self.flags() & f != 0
    }
    fn set(&mut self, f: u16, on: bool) {
        let v = if on { self.flags() | f } else { self.flags() & !f };
        self.set_flags(v);
    }
    fn holds_data(&self) -> bool {
        matches!(self.state(), ST_WRITING | ST_VALID)
    }
    fn writers(&self) -> u16 {
        self.flags() >> WRITERS_SHIFT
    }
    fn add_writers(&mut self, d: i32) {
        let w = (i32::from(self.writers()) + d).clamp(0, i32::from(WRITERS_MAX)) as u16;
        let f = (self.flags() & ((1 << WRITERS_SHIFT) - 1)) | (w << WRITERS_SHIFT);
        self.set_flags(f);
    }
}

/// A singly linked list of slots threaded through `Slot::next`.
#[derive(Clone, Copy, Debug)]
struct List {
    head: u32,
    len: u32,
}

impl List {
    const EMPTY: List = List { head: NIL, len: 0 };
}

/// What to do with a write bio (see [`Index::map_write`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMap {
    /// Write into this slot (a new version, or the newest version, rewritten in place).
    Slot(u32),
    /// A partial write needing a new slot: the caller builds the block from `src` (a slot, or
    /// the origin when `None`) plus the bio's data, then calls [`Index::alloc`].
    NeedsCopy(Option<u32>),
    /// No free slot; try again after writeback.
    NoSpace,
    /// A partial write over a version whose write is still in flight (nothing to merge with
    /// yet); try again shortly.
    Busy,
    /// The block already holds [`MAX_VERSIONS`] versions and this write needs a new one (none
    /// can be rewritten in place): nothing was mapped. The caller waits, as for
    /// [`WriteMap::NoSpace`] (never sending the write to the origin: the block is cached), until
    /// writeback or the completion of writes in flight to the block releases a version, then
    /// maps it again. Meanwhile [`Index::needs_writeback_now`] is true, and the caller must make
    /// writeback due on it (it writes back the block's oldest epoch, in ordered mode after the
    /// epochs before it).
    TooManyVersions,
}

/// A run of whole-block writes mapped together (see [`Index::map_write_run`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunMap {
    /// How the first block maps.
    pub map: WriteMap,
    /// Blocks in the run: how many consecutive blocks map to consecutive slots from
    /// `WriteMap::Slot` (1 otherwise).
    pub blocks: u32,
    /// Blocks of the run that had a version in the cache already (write hits).
    pub hits: u32,
}

/// Counters for status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Cache blocks.
    pub total: u64,
    /// Free cache blocks (ready for reuse).
    pub free: u64,
    /// Blocks holding data not yet written back.
    pub dirty: u64,
    /// Blocks with a writeback copy in flight.
    pub under_writeback: u64,
    /// Blocks released but not yet reusable (waiting for a commit).
    pub releasing: u64,
}

/// The index over caller-supplied storage: `S` slots, `B` hash buckets (a power of two), `B`
/// release counters (a power of two), and two metadata dirty bitmaps `M` (one bit per
/// metadata block).
pub struct Index<S, B, M> {
    slots: S,
    buckets: B,
    /// Counting filter of the blocks of released versions not yet marked free on disk (hashed):
    /// until its tombstone is durable, such a version could come back after a crash, so its
    /// block must not be written to the origin directly (see [`Index::uncached_run`]).
    releasing_filter: B,
    meta_dirty: M,
    meta_commit: M,
    bucket_shift: u32,
    /// Multipliers of the hash functions of the buckets and of the release filter (odd; from
    /// [`Index::set_hash_key`]): chains are short for any set of blocks chosen without knowing
    /// them.
    bucket_mul: u64,
    filter_mul: u64,
    free: List,
    /// Released since the last barrier: marked free by the commit after next.
    rel_next: List,
    /// Released before the last barrier: marked free by the next commit.
    rel_ripe: List,
    /// Marked free by the commit in progress (from `rel_ripe` at its barrier), until it ends.
    marking: List,
    /// The next slot of `marking` that [`Index::barrier_step`] marks (`NIL`: all marked).
    mark_cursor: u32,
    /// The next word of `meta_commit` that [`Index::commit_end_step`] clears (`usize::MAX`:
    /// none to clear).
    clear_word: usize,
    /// The commit that ended succeeded: its marked slots are being freed.
    freeing: bool,
    /// Set bits in `meta_dirty`.
    meta_dirty_bits: u64,
    dirty: u64,
    under_wb: u64,
    /// A committed version was rewritten in place since the last barrier: the next commit must
    /// flush the cache device even if no entry changed.
    rewrote_committed: bool,
    /// The current epoch (64 bits: never wraps).
    epoch: u64,
    ordered: bool,
    /// Checkpoint: only versions of epochs up to this one are written back, and they are kept
    /// when a newer epoch overwrites them.
    wb_limit: Option<u64>,
    committed_seq: u64,
    /// Sequence number of the last commit begun (`committed_seq`, or one more while a commit
    /// is in progress). Versions with a sequence number up to it are in a commit.
    started_seq: u64,
    /// Oldest epoch holding dirty data, as of the last writeback scan, load, or write into an
    /// empty cache: never newer than the true one.
    oldest_dirty_epoch: u64,
    wb_cursor: u32,
    /// The last block a write was refused for ([`WriteMap::TooManyVersions`]).
    version_wait: Option<u64>,
}

/// The epoch of a version from the low 32 bits `low` a slot keeps of it, given an epoch `now`
/// not older than the version and less than 2^32 epochs newer (the index keeps every version
/// within [`EPOCH_WINDOW`] of the current epoch): `now` minus their distance.
fn widen(low: u32, now: u64) -> u64 {
    now.saturating_sub(u64::from((now as u32).wrapping_sub(low)))
}

/// The epoch whose low 32 bits are `low` nearest to `reference` (less than 2^31 from it).
fn nearest(low: u32, reference: u64) -> u64 {
    reference.saturating_add_signed(i64::from(low.wrapping_sub(reference as u32) as i32))
}

/// Sets bit `i`; returns whether it was clear.
fn set_bit(words: &mut [u64], i: u64) -> bool {
    match words.get_mut((i / 64) as usize) {
        Some(w) => {
            let was = *w;
            *w |= 1 << (i % 64);
            was != *w
        }
        None => false,
    }
}

impl<S, B, M> Index<S, B, M>
where
    S: DerefMut<Target = [Slot]>,
    B: DerefMut<Target = [u32]>,
    M: DerefMut<Target = [u64]>,
{
    /// Storage sizes for `nr` cache blocks: `(buckets, bitmap words, release counters)`.
    pub fn storage_for(nr: u64) -> (usize, usize, usize) {
        let buckets = (nr.max(4) as usize).next_power_of_two() / 2;
        let words = nr.div_ceil(ENTRIES_PER_META_BLOCK).div_ceil(64) as usize;
        let filter = buckets.min(RELEASING_FILTER_MAX);
        (buckets, words, filter)
    }

    /// Wraps storage sized by [`Index::storage_for`]; every slot starts free, epoch 1.
    pub fn new(slots: S, buckets: B, releasing_filter: B, meta_dirty: M, meta_commit: M) -> Result<Self, Error> {
        let nr = slots.len() as u64;
        let (nb, nw, nf) = Self::storage_for(nr);
        if nr == 0
            || nr >= MAX_CACHE_BLOCKS
            || buckets.len() != nb
            || releasing_filter.len() != nf
            || meta_dirty.len() < nw
            || meta_commit.len() < nw
        {
            return Err(err!("Cache index storage has the wrong size"));
        }
        let mut me = Self {
            slots,
            buckets,
            releasing_filter,
            meta_dirty,
            meta_commit,
            bucket_shift: 64 - nb.trailing_zeros(),
            bucket_mul: BUCKET_MUL,
            filter_mul: FILTER_MUL,
            free: List::EMPTY,
            rel_next: List::EMPTY,
            rel_ripe: List::EMPTY,
            marking: List::EMPTY,
            mark_cursor: NIL,
            clear_word: usize::MAX,
            freeing: false,
            meta_dirty_bits: 0,
            dirty: 0,
            under_wb: 0,
            rewrote_committed: false,
            epoch: 1,
            ordered: false,
            wb_limit: None,
            committed_seq: 0,
            started_seq: 0,
            oldest_dirty_epoch: 1,
            wb_cursor: 0,
            version_wait: None,
        };
        me.format();
        Ok(me)
    }

    /// Forgets everything but the storage and the mode: no version, no list, epoch 1, commit
    /// sequence `seq`. The arrays are cleared by [`Index::clear_step`].
    fn reset_state(&mut self, seq: u64) {
        self.free = List::EMPTY;
        self.rel_next = List::EMPTY;
        self.rel_ripe = List::EMPTY;
        self.marking = List::EMPTY;
        self.mark_cursor = NIL;
        self.clear_word = usize::MAX;
        self.freeing = false;
        self.meta_dirty_bits = 0;
        self.dirty = 0;
        self.under_wb = 0;
        self.rewrote_committed = false;
        self.epoch = 1;
        self.wb_limit = None;
        self.oldest_dirty_epoch = 1;
        self.committed_seq = seq;
        self.started_seq = seq;
        self.wb_cursor = 0;
        self.version_wait = None;
    }

    /// Keys the hash functions that place blocks in buckets and in the release filter with a
    /// secret `key` (the kernel draws one per table from its random number generator). With
    /// the fixed default, anyone could choose origin blocks that all land in one bucket: every
    /// lookup of them, in `map` and `end_io` with interrupts disabled, and every load would
    /// walk one chain as long as the cache. Only while the index holds nothing (after
    /// [`Index::new`], before a load): refused otherwise.
    pub fn set_hash_key(&mut self, key: u64) -> Result<(), Error> {
        if self.free.len as u64 != self.len() {
            return Err(err!("Cache index hash key set while the index holds blocks"));
        }
        // Multiply-shift hashing: universal for a random odd multiplier. The key goes through
        // a bijective mixer first, so that a key with few bits set still gives one.
        self.bucket_mul = mix64(key) | 1;
        self.filter_mul = mix64(key ^ FILTER_MUL) | 1;
        Ok(())
    }

    /// Number of cache blocks.
    pub fn len(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Always false (an index has at least one block); for clippy.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Sets ordered mode (versions of older epochs are kept, writeback goes epoch by epoch).
    pub fn set_ordered(&mut self, ordered: bool) {
        self.ordered = ordered;
    }

    /// The current epoch (new writes belong to it).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Starts a new epoch; returns the one closed. Epochs only grow (64 bits, never wrapped),
    /// so the epochs closed make increasing marker ids. `None`, and the epoch stays open, when
    /// closing it would leave the oldest dirty version [`EPOCH_WINDOW`] epochs old (writeback
    /// is due long before, at [`EPOCH_WRITEBACK_AGE`]: only a writeback failing for days gets
    /// there), or at `u64::MAX`. A flush from above then leaves its writes in the open epoch
    /// (ordered mode merges two epochs: the origin still only passes epoch boundaries), and a
    /// checkpoint is refused.
    pub fn close_epoch(&mut self) -> Option<u64> {
        let old = self.epoch;
        if old.saturating_sub(self.oldest_dirty_epoch()) >= EPOCH_WINDOW - 1 {
            return None;
        }
        self.epoch = old.checked_add(1)?;
        Some(old)
    }

    /// Whether writeback must run for the age of the oldest dirty version: it is more than
    /// [`EPOCH_WRITEBACK_AGE`] epochs old (as of the last scan: the caller keeps writing back
    /// while this holds, and each scan updates it).
    pub fn epochs_need_writeback(&self) -> bool {
        self.epoch.saturating_sub(self.oldest_dirty_epoch()) > EPOCH_WRITEBACK_AGE
    }

    /// Whether the version of epoch `low` (low 32 bits) is of epoch `limit` or older.
    fn epoch_upto(&self, low: u32, limit: u64) -> bool {
        widen(low, self.epoch) <= limit
    }

    /// Sets or clears the checkpoint writeback limit: while set to `Some(n)`, writeback takes
    /// only versions of epochs up to `n`, and such versions are kept when a newer epoch
    /// overwrites them (so the origin can be brought to exactly the state of epochs up to `n`).
    pub fn set_wb_limit(&mut self, limit: Option<u64>) {
        self.wb_limit = limit;
    }

    /// The checkpoint writeback limit.
    pub fn wb_limit(&self) -> Option<u64> {
        self.wb_limit
    }

    /// Counts the versions holding data (written or being written) of epochs up to `limit`
    /// among slots `from..from + budget`; returns the count and where to go on (the number of
    /// slots when done). In steps, so a caller holding a lock with interrupts disabled can
    /// release it between them; versions of such epochs are never created once the epoch is
    /// closed, so a pass that began after closing it and counts none proves there are none.
    pub fn count_upto(&self, limit: u64, from: u32, budget: u32) -> (u64, u32) {
        let end = from.saturating_add(budget).min(self.slots.len() as u32);
        let n = self
            .slots
            .get(from as usize..end as usize)
            .unwrap_or(&[])
            .iter()
            .filter(|s| s.holds_data() && self.epoch_upto(s.epoch, limit))
            .count();
        (n as u64, end)
    }

    /// Whether a version of `block` is being written back now.
    pub fn under_writeback(&self, block: u64) -> bool {
        self.versions(block).any(|v| self.slot(v).is_some_and(|s| s.has(F_UNDER_WB)))
    }

    /// Marks the write just mapped into slot `i` (one block, by [`Index::map_write`] or
    /// [`Index::alloc`]) as a write-through: it goes to the origin as well, so its completion
    /// releases every older version of the block, and none of them is chosen for writeback
    /// while it is in flight. The caller first waits while [`Index::under_writeback`] says a
    /// copy of an older version is in flight (it could land on the origin after this write).
    pub fn mark_write_through(&mut self, i: u32) {
        if let Some(m) = self.slots.get_mut(i as usize) {
            m.set(F_WT, true);
        }
    }

    /// Oldest epoch holding dirty data, as of the last writeback scan or load (the current
    /// epoch when nothing is dirty); never newer than the true one.
    pub fn oldest_dirty_epoch(&self) -> u64 {
        if self.dirty == 0 {
            self.epoch
        } else {
            self.oldest_dirty_epoch
        }
    }

    /// Sequence number of the last completed commit.
    pub fn committed_seq(&self) -> u64 {
        self.committed_seq
    }

    /// Status counters.
    pub fn counts(&self) -> Counts {
        Counts {
            total: self.len(),
            free: u64::from(self.free.len),
            dirty: self.dirty,
            under_writeback: self.under_wb,
            releasing: u64::from(self.rel_next.len + self.rel_ripe.len + self.marking.len),
        }
    }

    /// Origin block held by slot `i`.
    pub fn block_of(&self, i: u32) -> u64 {
        self.slots.get(i as usize).map_or(0, |s| s.block())
    }

    fn slot(&self, i: u32) -> Option<&Slot> {
        self.slots.get(i as usize)
    }

    fn bucket(&self, block: u64) -> usize {
        (block.wrapping_mul(self.bucket_mul) >> self.bucket_shift) as usize
    }

    fn filter_index(&self, block: u64) -> usize {
        let n = self.releasing_filter.len().max(1) as u64;
        // A different multiplier from the buckets': both hash the same keys. The top bits.
        block.wrapping_mul(self.filter_mul).checked_shr(64 - n.trailing_zeros()).unwrap_or(0) as usize & (n - 1) as usize
    }

    /// How many consecutive blocks from `block` (at most `n`) are not in the cache at all: no
    /// version holds or is getting data, and no released version waits for its tombstone.
    /// Writes to such blocks may go to the origin directly (the cache has nothing that could
    /// shadow them, now or after a crash).
    pub fn uncached_run(&self, block: u64, n: u32) -> u32 {
        let mut k = 0;
        while k < n {
            let Some(b) = block.checked_add(u64::from(k)) else { break };
            let pending = self.releasing_filter.get(self.filter_index(b)).is_none_or(|&c| c != 0);
            if pending || self.has_versions(b) {
                break;
            }
            k += 1;
        }
        k
    }

    fn meta_block(i: u32) -> u64 {
        u64::from(i) / ENTRIES_PER_META_BLOCK
    }

    fn touch(&mut self, i: u32) {
        self.meta_dirty_block(Self::meta_block(i));
    }

    /// Metadata block `m` must be written by the next commit.
    fn meta_dirty_block(&mut self, m: u64) {
        if set_bit(&mut self.meta_dirty, m) {
            self.meta_dirty_bits = self.meta_dirty_bits.saturating_add(1);
        }
    }

    /// Whether the image of slot `s` is a dirty entry on disk, or will be when the commit in
    /// progress completes: it holds a version (or a released one not yet marked free) that a
    /// commit begun so far includes. A version is included by the first commit begun after it
    /// was allocated ([`Index::alloc`] gives it that commit's sequence number), so a barrier
    /// includes every version allocated before it without visiting any (O(1)).
    fn on_disk(&self, s: &Slot) -> bool {
        matches!(s.state(), ST_WRITING | ST_VALID | ST_RELEASED) && s.seq != 0 && s.seq <= self.started_seq
    }

    // --- lists

    fn list(&mut self, id: ListId) -> &mut List {
        match id {
            ListId::Free => &mut self.free,
            ListId::RelNext => &mut self.rel_next,
            ListId::RelRipe => &mut self.rel_ripe,
            ListId::Marking => &mut self.marking,
        }
    }

    fn push(&mut self, id: ListId, i: u32) {
        if let (ListId::RelNext | ListId::RelRipe, Some(s)) = (id, self.slot(i)) {
            // Every released version enters here (or, at load, directly into RelRipe), and
            // leaves when marked free (commit_done).
            let f = self.filter_index(s.block());
            if let Some(c) = self.releasing_filter.get_mut(f) {
                *c = c.saturating_add(1);
            }
        }
        let head = self.list(id).head;
        if let Some(s) = self.slots.get_mut(i as usize) {
            s.next = head;
            let l = self.list(id);
            l.head = i;
            l.len = l.len.saturating_add(1);
        }
    }

    fn pop(&mut self, id: ListId) -> Option<u32> {
        let head = self.list(id).head;
        let next = self.slot(head)?.next;
        let l = self.list(id);
        l.head = next;
        l.len = l.len.saturating_sub(1);
        Some(head)
    }

    // --- hash chains (newest version first)

    fn chain_insert_head(&mut self, i: u32, block: u64) {
        let b = self.bucket(block);
        let head = self.buckets.get(b).copied().unwrap_or(NIL);
        if let Some(s) = self.slots.get_mut(i as usize) {
            s.next = head;
        }
        if let Some(h) = self.buckets.get_mut(b) {
            *h = i;
        }
    }

    fn chain_remove(&mut self, i: u32) {
        let Some(s) = self.slot(i) else { return };
        let (b, next) = (self.bucket(s.block()), s.next);
        let mut cur = self.buckets.get(b).copied().unwrap_or(NIL);
        if cur == i {
            if let Some(h) = self.buckets.get_mut(b) {
                *h = next;
            }
            return;
        }
        while let Some(c) = self.slot(cur) {
            let n = c.next;
            if n == i {
                if let Some(c) = self.slots.get_mut(cur as usize) {
                    c.next = next;
                }
                return;
            }
            cur = n;
        }
    }

    /// Versions of `block`, newest first.
    fn versions(&self, block: u64) -> Versions<'_> {
        Versions { slots: &self.slots, cur: self.buckets.get(self.bucket(block)).copied().unwrap_or(NIL), block }
    }

    // --- I/O mapping

    /// The slot to read `block` from: its newest version whose data is complete, if any
    /// (otherwise the origin holds the current data).
    pub fn lookup_read(&self, block: u64) -> Option<u32> {
        self.versions(block).find(|&i| self.slot(i).is_some_and(|s| s.state() == ST_VALID))
    }

    /// Maps a write to `block` covering the whole block (`full`) or part of it. Every
    /// [`WriteMap::Slot`] returned (and every [`Index::alloc`]) counts a write in flight into
    /// that slot until its [`Index::write_done`].
    pub fn map_write(&mut self, block: u64, full: bool) -> WriteMap {
        let newest = self.versions(block).next();
        if let (Some(n), Some(s)) = (newest, newest.and_then(|n| self.slot(n)).copied()) {
            if self.rewritable(&s, full) {
                self.rewrite(n);
                return WriteMap::Slot(n);
            }
            if !full && (s.state() == ST_WRITING || s.writers() > 0) {
                // A partial write must merge with that version's data, which is not all there
                // yet (a write into it is in flight).
                return WriteMap::Busy;
            }
            if self.must_wait_for(&s) {
                return WriteMap::Busy;
            }
        }
        if self.at_version_bound(block) {
            return WriteMap::TooManyVersions;
        }
        if !full {
            return WriteMap::NeedsCopy(self.lookup_read(block));
        }
        match self.alloc_full(block) {
            Some(i) => WriteMap::Slot(i),
            None => WriteMap::NoSpace,
        }
    }

    /// Whether `block` holds [`MAX_VERSIONS`] versions already (then remembered for
    /// [`Index::needs_writeback_now`]). One walk of its chain.
    fn at_version_bound(&mut self, block: u64) -> bool {
        let full = self.versions(block).nth(MAX_VERSIONS - 1).is_some();
        if full {
            self.version_wait = Some(block);
        }
        full
    }

    /// Whether a write that cannot rewrite the newest version `s` of its block in place (a
    /// read-modify-write building it is still in flight, or too many writes into it are) must
    /// wait for it ([`WriteMap::Busy`])
    /// rather than make a new version: `s` is of the open epoch and not being written back. A
    /// second version of one epoch would be wrong twice over. Made before a commit includes
    /// `s`, it would get the same commit sequence number and epoch as `s`: a load could not
    /// tell the two apart, and the tombstone of `s` (not older) would discard it. And once `s`
    /// were superseded within its epoch, its tombstone would discard at load the versions of
    /// older epochs that ordered mode keeps. (Two writes in flight together have no order, so
    /// either result is correct, but a result the cache returned before a crash must be the
    /// one it returns after it.) Under writeback, `s` is the block's only version (writeback
    /// takes only the oldest) and committed, so a new one is newer by sequence number.
    fn must_wait_for(&self, s: &Slot) -> bool {
        s.epoch == self.epoch as u32 && !s.has(F_UNDER_WB)
    }

    /// Whether writeback must run now whatever the watermarks say: a write was refused with
    /// [`WriteMap::TooManyVersions`] and its block (the last one refused) still holds more than
    /// half of [`MAX_VERSIONS`] versions. Writeback then frees the block's oldest versions (in
    /// ordered mode, epoch by epoch up to them); going on to half the bound lets the writer
    /// rewrite the block across several more flushes before it waits again. Another block
    /// refused meanwhile is remembered when its write is retried and refused again. One walk of
    /// the block's chain.
    pub fn needs_writeback_now(&self) -> bool {
        self.version_wait.is_some_and(|b| self.versions(b).nth(MAX_VERSIONS / 2).is_some())
    }

    /// Whether a version may be rewritten in place by a write of the whole block (`full`) or
    /// of part of it: a partial write only over complete data (a first write still in flight,
    /// or a read-modify-write building the slot, must not be merged with: a read after the
    /// partial write completed would not see it); a whole-block write also over a first
    /// whole-block write still in flight (the slot ends with one of the two, or a mix of their
    /// sectors, as a disk does with two writes in flight together; the first to complete makes
    /// it readable). Never over a block under writeback, only in the open epoch. A committed
    /// version may be rewritten: its entry stays valid, and the next commit flushes the cache
    /// device (see [`Index::needs_commit`]).
    fn rewritable(&self, s: &Slot, full: bool) -> bool {
        (s.state() == ST_VALID || (full && s.state() == ST_WRITING && s.has(F_FULL)))
            && !s.has(F_UNDER_WB)
            && s.epoch == self.epoch as u32
            && s.writers() < WRITERS_MAX
    }

    /// Counts a write in flight into version `n`, rewritten in place.
    fn rewrite(&mut self, n: u32) {
        if let Some(m) = self.slots.get_mut(n as usize) {
            m.add_writers(1);
        }
        if self.slot(n).is_some_and(|m| self.on_disk(m)) {
            self.rewrote_committed = true;
        }
    }

    /// Maps a write of `n` (at least one) whole blocks from `block`, so that one I/O to the
    /// cache can carry them: the first block as [`Index::map_write`] does, then each following
    /// block as long as it maps to the next slot (its newest version, rewritable in place, or
    /// the next free slot, if the block is below [`MAX_VERSIONS`]). Each block of the run counts
    /// as a write in flight into its slot until its [`Index::write_done`]. Work: `n` walks of a
    /// block's chain.
    pub fn map_write_run(&mut self, block: u64, n: u32) -> RunMap {
        let hit = |ix: &Self, b: u64| u32::from(ix.has_versions(b));
        let mut hits = hit(self, block);
        let first = self.map_write(block, true);
        let WriteMap::Slot(s0) = first else {
            return RunMap { map: first, blocks: 1, hits };
        };
        let mut k: u32 = 1;
        while k < n {
            let (Some(b), Some(want)) = (block.checked_add(u64::from(k)), s0.checked_add(k)) else { break };
            let h = hit(self, b);
            if !self.map_write_into(b, want) {
                break;
            }
            hits += h;
            k += 1;
        }
        RunMap { map: first, blocks: k, hits }
    }

    /// Maps a whole-block write of `block` if it maps to slot `want` (see
    /// [`Index::map_write_run`]); otherwise changes nothing.
    fn map_write_into(&mut self, block: u64, want: u32) -> bool {
        let newest = self.versions(block).next();
        if let (Some(n), Some(s)) = (newest, newest.and_then(|n| self.slot(n)).copied()) {
            if self.rewritable(&s, true) {
                if n != want {
                    return false;
                }
                self.rewrite(n);
                return true;
            }
        }
        self.free.head == want && self.alloc_full(block) == Some(want)
    }

    /// [`Index::alloc`] for a write of the whole block.
    fn alloc_full(&mut self, block: u64) -> Option<u32> {
        let i = self.alloc(block)?;
        if let Some(m) = self.slots.get_mut(i as usize) {
            m.set(F_FULL, true);
        }
        Some(i)
    }

    /// Allocates a new version of `block` (state: writing). Older versions stay until the
    /// write completes ([`Index::write_done`]). `None` when no slot is free, when the block
    /// holds [`MAX_VERSIONS`] versions already, or when the write must wait for its newest
    /// version (see [`Index::map_write`]'s `Busy`; never after it returned
    /// [`WriteMap::NeedsCopy`] in the same hold of the caller's lock: it checks those first).
    pub fn alloc(&mut self, block: u64) -> Option<u32> {
        if block >= MAX_ORIGIN_BLOCKS || self.at_version_bound(block) {
            return None;
        }
        if self.versions(block).next().and_then(|n| self.slot(n)).is_some_and(|s| self.must_wait_for(s)) {
            return None;
        }
        let i = self.pop(ListId::Free)?;
        let epoch = self.epoch as u32;
        if self.dirty == 0 {
            // Nothing older is dirty: the oldest dirty epoch is known without a scan.
            self.oldest_dirty_epoch = self.epoch;
        }
        if let Some(s) = self.slots.get_mut(i as usize) {
            s.key = block;
            s.set_state(ST_WRITING);
            s.add_writers(1);
            s.epoch = epoch;
            // The next commit to begin includes it (until then its image is a tombstone that
            // discards nothing: see `image`).
            s.seq = self.started_seq.saturating_add(1);
        }
        self.chain_insert_head(i, block);
        self.dirty = self.dirty.saturating_add(1);
        self.touch(i);
        Some(i)
    }

    /// A data write into slot `i` completed (`ok`) or failed. On success the version becomes
    /// readable and the older versions it supersedes are released (kept only while under
    /// writeback or, in ordered mode, when they belong to an older epoch).
    pub fn write_done(&mut self, i: u32, ok: bool) {
        let mut wt = false;
        if let Some(m) = self.slots.get_mut(i as usize) {
            m.add_writers(-1);
            wt = m.has(F_WT);
            m.set(F_WT, false);
        }
        let Some(s) = self.slot(i).copied() else { return };
        match s.state() {
            ST_WRITING | ST_VALID => {}
            // Released while in flight (superseded by a newer write that completed first).
            _ => return,
        }
        if !ok {
            // A version no write into has completed goes once the last write into it in
            // flight failed too (another whole-block write into it may still succeed).
            if s.state() == ST_WRITING && s.writers() == 0 {
                // Never held data: it disappears; older versions stay readable.
                self.chain_remove(i);
                if let Some(m) = self.slots.get_mut(i as usize) {
                    m.set_state(ST_RELEASED);
                    m.seq = 0;
                }
                self.dirty = self.dirty.saturating_sub(1);
                self.touch(i);
                self.push(ListId::RelNext, i);
            }
            return;
        }
        if let Some(m) = self.slots.get_mut(i as usize) {
            m.set_state(ST_VALID);
            m.set(F_FULL, false);
        }
        // Release older versions: all of them after a write-through (the origin has this one);
        // otherwise those of older epochs stay in ordered mode and, up to the limit, during a
        // checkpoint.
        let block = s.block();
        let (ordered, limit, now) = (self.ordered, self.wb_limit, self.epoch);
        let keep = |o: &Slot| {
            o.has(F_UNDER_WB)
                || (!wt && o.epoch != s.epoch && (ordered || limit.is_some_and(|n| widen(o.epoch, now) <= n)))
        };
        self.release_older(i, block, keep);
    }

    /// Releases the versions of `block` older than version `i` (after it in the chain) that
    /// `keep` does not keep: one walk of the hash chain.
    fn release_older(&mut self, i: u32, block: u64, keep: impl Fn(&Slot) -> bool) {
        let b = self.bucket(block);
        let (mut prev, mut cur) = (NIL, self.buckets.get(b).copied().unwrap_or(NIL));
        let mut older = false;
        while let Some(c) = self.slot(cur).copied() {
            let next = c.next;
            if c.block() == block && c.holds_data() {
                if cur == i {
                    older = true;
                } else if older && !keep(&c) {
                    self.relink(b, prev, next);
                    self.retire(cur, ListId::RelNext);
                    cur = next;
                    continue;
                }
            }
            prev = cur;
            cur = next;
        }
    }

    /// Points the link after `prev` (the bucket's head when `prev` is `NIL`) to `to`: unlinks the
    /// slot after `prev` when `to` is the one after it, links `to` in after `prev` otherwise.
    fn relink(&mut self, bucket: usize, prev: u32, to: u32) {
        if prev == NIL {
            if let Some(h) = self.buckets.get_mut(bucket) {
                *h = to;
            }
        } else if let Some(p) = self.slots.get_mut(prev as usize) {
            p.next = to;
        }
    }

    /// A version already unlinked from its chain is released onto `list`. One that no commit
    /// includes yet never will (its tombstone discards nothing); nor will one whose first write
    /// is still in flight: it never needs to be durable (the version that released it
    /// completed first, and a flush that covers it covers that one), and its data, if its
    /// write fails, is not there.
    fn retire(&mut self, i: u32, list: ListId) {
        let on_disk = self.slot(i).is_some_and(|m| self.on_disk(m) && m.state() != ST_WRITING);
        if let Some(m) = self.slots.get_mut(i as usize) {
            if !on_disk {
                m.seq = 0;
            }
            m.set_state(ST_RELEASED);
        }
        self.dirty = self.dirty.saturating_sub(1);
        self.push(list, i);
    }

    /// Removes a version from its chain and queues it to be marked free.
    fn release(&mut self, i: u32) {
        let Some(s) = self.slot(i).copied() else { return };
        if !s.holds_data() {
            return;
        }
        self.chain_remove(i);
        self.retire(i, ListId::RelNext);
    }

    // --- commits

    /// Starts commit number `committed_seq + 1` and returns it, all in one call: the kernel
    /// uses [`Index::barrier_begin`] and [`Index::barrier_step`] (see them). Then the caller
    /// writes every metadata block returned by [`Index::next_commit_block`] (images from
    /// [`Index::image`]), flushes, writes the superblock and calls [`Index::commit_done`].
    pub fn barrier(&mut self) -> u64 {
        let k = self.barrier_begin();
        while !self.barrier_step(u32::MAX) {}
        k
    }

    /// Starts commit number `committed_seq + 1` and returns it; O(1) (the caller must have
    /// ended the previous commit: [`Index::commit_end_step`] returned true). Every version
    /// allocated before this call is included (its image is a dirty entry from now on: the
    /// caller waits for the data writes mapped before this call before writing images), and
    /// the slots released before the previous barrier are to be marked free, which
    /// [`Index::barrier_step`] does in pieces before any image is written.
    pub fn barrier_begin(&mut self) -> u64 {
        // What the previous commit's end left (only a caller that skipped its steps does).
        while !self.commit_end_step(u32::MAX) {}
        let k = self.committed_seq.saturating_add(1);
        self.started_seq = k;
        self.rewrote_committed = false;
        // `meta_commit` was cleared as the previous commit ended.
        core::mem::swap(&mut self.meta_dirty, &mut self.meta_commit);
        self.meta_dirty_bits = 0;
        let ripe = core::mem::replace(&mut self.rel_ripe, core::mem::replace(&mut self.rel_next, List::EMPTY));
        if self.marking.len > 0 {
            // Left by a failed commit (after which the caller stops using the index): marked
            // again by this one. A walk of that list, only here.
            let mut tail = self.marking.head;
            while let Some(n) = self.slot(tail).map(|s| s.next).filter(|&n| n != NIL) {
                tail = n;
            }
            if let Some(t) = self.slots.get_mut(tail as usize) {
                t.next = ripe.head;
            }
            self.marking.len = self.marking.len.saturating_add(ripe.len);
        } else {
            self.marking = ripe;
        }
        self.mark_cursor = self.marking.head;
        k
    }

    /// Marks free at most `budget` (at least 1) of the slots the commit begun by
    /// [`Index::barrier_begin`] marks: each image becomes the tombstone of the version the slot
    /// held. Returns true when done; only then may the caller look for the metadata blocks to
    /// write.
    pub fn barrier_step(&mut self, budget: u32) -> bool {
        let mut left = budget.max(1);
        while left > 0 {
            let cur = self.mark_cursor;
            let Some(m) = self.slots.get_mut(cur as usize) else { break };
            m.set_state(ST_MARKING);
            self.mark_cursor = m.next;
            set_bit(&mut self.meta_commit, Self::meta_block(cur));
            left -= 1;
        }
        self.slot(self.mark_cursor).is_none()
    }

    /// Next metadata block (≥ `from`) the commit in progress must write. Looks at every
    /// bitmap word from `from` on: the kernel uses [`Index::find_commit_block`].
    pub fn next_commit_block(&self, from: u64) -> Option<u64> {
        let mut from = from;
        loop {
            match self.find_commit_block(from, u32::MAX) {
                CommitBlock::Write(b) => return Some(b),
                CommitBlock::Done => return None,
                CommitBlock::Continue(f) => from = f,
            }
        }
    }

    /// Looks for the next metadata block (≥ `from`) the commit in progress must write, in at
    /// most `words` (at least 1) words of its bitmap.
    pub fn find_commit_block(&self, from: u64, words: u32) -> CommitBlock {
        let total = self.len().div_ceil(ENTRIES_PER_META_BLOCK);
        let mut w = from / 64;
        for _ in 0..words.max(1) {
            let Some(&word) = self.meta_commit.get(w as usize) else { return CommitBlock::Done };
            let bits = if w == from / 64 { word & (!0u64).checked_shl((from % 64) as u32).unwrap_or(0) } else { word };
            if bits != 0 {
                let b = w * 64 + u64::from(bits.trailing_zeros());
                return if b < total { CommitBlock::Write(b) } else { CommitBlock::Done };
            }
            w += 1;
        }
        CommitBlock::Continue(w * 64)
    }

    /// The on-disk image of slot `i` as of now: a dirty entry for a version a commit includes
    /// (see [`Index::on_disk`]); otherwise a free entry, the tombstone of the version the slot
    /// held last (one that discards nothing if no commit included it).
    pub fn image(&self, i: u32) -> Entry {
        match self.slot(i) {
            Some(s) => {
                let on_disk = self.on_disk(s);
                let holds = matches!(s.state(), ST_WRITING | ST_VALID | ST_RELEASED);
                Entry {
                    block: s.block(),
                    seq: if on_disk || !holds { s.seq } else { 0 },
                    epoch: s.epoch,
                    state: if on_disk { EntryState::Dirty } else { EntryState::Free },
                }
            }
            None => Entry::free(0),
        }
    }

    /// Ends the commit started by [`Index::barrier`], all in one call: the kernel uses
    /// [`Index::commit_end`] and [`Index::commit_end_step`].
    pub fn commit_done(&mut self, k: u64, ok: bool) {
        self.commit_end(k, ok);
        if ok {
            while !self.commit_end_step(u32::MAX) {}
        }
    }

    /// Ends the commit started by [`Index::barrier_begin`]; O(1). On success it is the
    /// committed state, and [`Index::commit_end_step`] frees the slots it marked, in pieces,
    /// before the next barrier. On failure nothing changes on disk that the caller can rely
    /// on, so the caller must stop using the cache (the error is latched by the target).
    pub fn commit_end(&mut self, k: u64, ok: bool) {
        self.clear_word = 0;
        self.freeing = ok;
        if ok {
            self.committed_seq = k;
        }
    }

    /// Frees at most `budget` (at least 1) of the slots the ended commit marked, or clears as
    /// many words of its metadata bitmap; returns true when done. Slots are freed in the order
    /// they were released, which is slot order within a writeback batch: a sequential stream
    /// then gets contiguous cache blocks, and its writeback can be merged into large copies.
    pub fn commit_end_step(&mut self, budget: u32) -> bool {
        if self.slot(self.mark_cursor).is_some() {
            // Not marked yet (a caller that skipped the barrier's steps).
            while !self.barrier_step(u32::MAX) {}
        }
        let mut left = budget.max(1);
        while left > 0 && self.freeing {
            // `marking` holds them newest released first: pushed one by one onto the free
            // list, the first released is allocated first.
            let Some(i) = self.pop(ListId::Marking) else { break };
            let f = self.filter_index(self.block_of(i));
            if let Some(c) = self.releasing_filter.get_mut(f) {
                *c = c.saturating_sub(1);
            }
            if let Some(m) = self.slots.get_mut(i as usize) {
                m.set_flags(ST_FREE);
            }
            self.push(ListId::Free, i);
            left -= 1;
        }
        let words = self.meta_commit.len();
        if left > 0 && self.clear_word < words {
            let to = self.clear_word.saturating_add(left as usize).min(words);
            self.meta_commit.get_mut(self.clear_word..to).unwrap_or(&mut []).fill(0);
            self.clear_word = to;
        }
        if (self.marking.len == 0 || !self.freeing) && self.clear_word >= words {
            self.clear_word = usize::MAX;
            self.freeing = false;
            return true;
        }
        false
    }

    /// Whether a commit would change anything on disk (or must flush data rewritten in place);
    /// O(1).
    pub fn needs_commit(&self) -> bool {
        self.rewrote_committed || self.meta_dirty_bits > 0 || self.rel_ripe.len > 0 || self.rel_next.len > 0
    }

    // --- writeback

    /// Picks up to `out.len()` committed dirty versions to write back and marks them under
    /// writeback. Only the oldest version of a block is taken. In ordered mode only versions of
    /// the oldest dirty epoch are taken, and only once that epoch is closed. With `max_seq`,
    /// only versions committed at or before that sequence number. (One call does the whole
    /// scan; the kernel uses [`Index::scan_begin`] / [`Index::scan_step`] to do it in pieces.)
    pub fn select_writeback(&mut self, out: &mut [u32], max_seq: Option<u64>) -> usize {
        let mut scan = self.scan_begin(max_seq);
        while !self.scan_step(&mut scan, out, u32::MAX) {}
        scan.found
    }

    /// Starts a writeback selection done in pieces (see [`WbScan`]).
    pub fn scan_begin(&self, max_seq: Option<u64>) -> WbScan {
        WbScan {
            reference: self.epoch,
            oldest_age: 0,
            pos: 0,
            selecting: false,
            want_epoch: 0,
            start: self.wb_cursor,
            max_seq,
            limit: self.wb_limit,
            found: 0,
        }
    }

    /// Advances `scan` by at most `budget` slots; candidates go to `out[scan.found..]` and are
    /// marked under writeback. Returns true when the selection is complete.
    pub fn scan_step(&mut self, scan: &mut WbScan, out: &mut [u32], budget: u32) -> bool {
        let nr = self.slots.len() as u32;
        if !scan.selecting {
            // First pass: the oldest dirty epoch. The low 32 bits of epochs are compared by
            // signed distance from the epoch current when the scan began (every version is
            // within EPOCH_WINDOW of it; versions written after an epoch closed during the scan
            // count as age 0).
            let end = scan.pos.saturating_add(budget).min(nr);
            let reference = scan.reference as u32;
            for i in scan.pos..end {
                if let Some(s) = self.slot(i) {
                    if s.holds_data() {
                        let age = reference.wrapping_sub(s.epoch) as i32;
                        scan.oldest_age = scan.oldest_age.max(age.max(0) as u32);
                    }
                }
            }
            scan.pos = end;
            if scan.pos < nr {
                return false;
            }
            self.oldest_dirty_epoch = scan.reference.saturating_sub(u64::from(scan.oldest_age));
            if self.ordered && scan.oldest_age == 0 {
                return true;
            }
            scan.want_epoch = reference.wrapping_sub(scan.oldest_age);
            scan.selecting = true;
            scan.pos = 0;
            return false;
        }
        let start = scan.start.min(nr.saturating_sub(1));
        let end = scan.pos.saturating_add(budget).min(nr);
        for k in scan.pos..end {
            scan.pos = k + 1;
            if scan.found >= out.len() {
                return true;
            }
            let i = (u64::from(start) + u64::from(k)).checked_rem(u64::from(nr)).unwrap_or(0) as u32;
            let Some(s) = self.slot(i).copied() else { break };
            // Not while a write into it is in flight (a committed version rewritten in place).
            if s.state() != ST_VALID || !self.on_disk(&s) || s.has(F_UNDER_WB) || s.writers() > 0 || s.seq > self.committed_seq {
                continue;
            }
            if self.ordered && s.epoch != scan.want_epoch {
                continue;
            }
            // Within the checkpoint limit in force now and the one the scan began under: a scan
            // begun during a checkpoint's drain may still run after its marker lifted the limit.
            let beyond = |l: Option<u64>| l.is_some_and(|n| !self.epoch_upto(s.epoch, n));
            if beyond(self.wb_limit) || beyond(scan.limit) {
                continue;
            }
            if scan.max_seq.is_some_and(|m| s.seq > m) {
                continue;
            }
            // Oldest version of its block: no other data-holding version after it in chain; and
            // no newer one being written through (which will release it).
            if self.versions(s.block()).skip_while(|&v| v != i).nth(1).is_some()
                || self.versions(s.block()).take_while(|&v| v != i).any(|v| self.slot(v).is_some_and(|o| o.has(F_WT)))
            {
                continue;
            }
            if let Some(m) = self.slots.get_mut(i as usize) {
                m.set(F_UNDER_WB, true);
            }
            self.under_wb = self.under_wb.saturating_add(1);
            if let Some(o) = out.get_mut(scan.found) {
                *o = i;
            }
            scan.found += 1;
            self.wb_cursor = (u64::from(i) + 1).checked_rem(u64::from(nr)).unwrap_or(0) as u32;
        }
        scan.found >= out.len() || scan.pos >= nr
    }

    /// A writeback of slot `i` finished. `ok` means the data reached the origin *and* the
    /// origin was flushed since: the version is released. Otherwise it stays dirty.
    pub fn writeback_done(&mut self, i: u32, ok: bool) {
        let Some(s) = self.slot(i).copied() else { return };
        if !s.has(F_UNDER_WB) {
            return;
        }
        if let Some(m) = self.slots.get_mut(i as usize) {
            m.set(F_UNDER_WB, false);
        }
        self.under_wb = self.under_wb.saturating_sub(1);
        if !ok {
            return;
        }
        // A newer version of the same epoch may have been written meanwhile; either way the
        // origin now holds this version, so this copy is no longer needed.
        self.release(i);
    }

    // --- load

    /// Formats: every slot free, commit sequence 0, epoch 1. O(cache blocks) in one call: the
    /// kernel uses [`Index::format_begin`] and [`Index::format_step`].
    pub fn format(&mut self) {
        let mut st = self.format_begin();
        while !self.format_step(&mut st, u32::MAX) {}
    }

    /// Starts a format done in steps ([`Index::format_step`]); O(1). Until the last step the
    /// index holds nothing (no version, no free slot).
    pub fn format_begin(&mut self) -> LoadState {
        self.reset_state(0);
        LoadState::new(true, 1)
    }

    /// Advances a format by at most `budget` (at least 1) slots, buckets, counters or bitmap
    /// words; returns true when done: every slot free, commit sequence 0, epoch 1. The caller
    /// holding a lock with interrupts disabled releases it between steps (about 2.6 steps of
    /// work per cache block in all).
    pub fn format_step(&mut self, st: &mut LoadState, budget: u32) -> bool {
        if st.phase == LoadPhase::Clear && self.clear_step(st, budget) {
            let n = self.slots.len() as u32;
            self.free = List { head: if n > 0 { 0 } else { NIL }, len: n };
            st.phase = LoadPhase::Done;
        }
        st.phase == LoadPhase::Done
    }

    /// Clears the arrays, in order buckets, release counters, bitmaps, slots (free and listed in
    /// order for a format, not yet loaded for a load), at most `budget` items; true when done.
    fn clear_step(&mut self, st: &mut LoadState, budget: u32) -> bool {
        let mut left = u64::from(budget.max(1));
        let n = self.slots.len();
        let lens = [self.buckets.len(), self.releasing_filter.len(), self.meta_dirty.len(), self.meta_commit.len(), n];
        let mut base = 0u64;
        for (k, &len) in lens.iter().enumerate() {
            let end = base.saturating_add(len as u64);
            if st.pos < end && left > 0 {
                let from = st.pos.saturating_sub(base) as usize;
                let to = (from as u64).saturating_add(left).min(len as u64) as usize;
                match k {
                    0 => self.buckets.get_mut(from..to).unwrap_or(&mut []).fill(NIL),
                    1 => self.releasing_filter.get_mut(from..to).unwrap_or(&mut []).fill(0),
                    2 => self.meta_dirty.get_mut(from..to).unwrap_or(&mut []).fill(0),
                    3 => self.meta_commit.get_mut(from..to).unwrap_or(&mut []).fill(0),
                    _ => {
                        for (i, s) in self.slots.get_mut(from..to).unwrap_or(&mut []).iter_mut().enumerate() {
                            *s = Slot::default();
                            let i = from + i;
                            if st.format {
                                s.next = if i + 1 < n { (i + 1) as u32 } else { NIL };
                            } else {
                                s.set_state(ST_UNLOADED);
                            }
                        }
                    }
                }
                left = left.saturating_sub(to.saturating_sub(from) as u64);
                st.pos = base.saturating_add(to as u64);
            }
            base = end;
        }
        st.pos >= base
    }

    /// Rebuilds the index from entries read from disk. `entry(i)` returns entry `i`. Dirty
    /// entries written by a commit after `sb_seq` are ignored (that commit never completed);
    /// tombstones always apply. Fails on an entry that names a block beyond `origin_blocks`, and
    /// on more than [`MAX_LOADED_VERSIONS`] versions of one block. O(cache blocks) in one call:
    /// the kernel uses [`Index::load_begin`], [`Index::load_begin_step`], [`Index::load_entry`]
    /// and [`Index::load_finish_step`], so that no lock is held long or across its reads.
    pub fn load(
        &mut self,
        sb_seq: u64,
        sb_epoch: u64,
        origin_blocks: u64,
        mut entry: impl FnMut(u32) -> Result<Entry, Error>,
    ) -> Result<LoadReport, Error> {
        let mut st = self.load_begin(sb_seq, sb_epoch);
        while !self.load_begin_step(&mut st, u32::MAX) {}
        for i in 0..self.slots.len() as u32 {
            self.load_entry(&mut st, i, entry(i)?, origin_blocks)?;
        }
        while !self.load_finish_step(&mut st, u32::MAX) {}
        Ok(st.report)
    }

    /// Starts a load of the metadata of commit `sb_seq` (superblock epoch `sb_epoch`): forgets
    /// everything; O(1). Then [`Index::load_begin_step`] until it returns true, then
    /// [`Index::load_entry`] for every entry, then [`Index::load_finish_step`] until it returns
    /// true. Until then the index must not be used otherwise (it holds nothing usable).
    pub fn load_begin(&mut self, sb_seq: u64, sb_epoch: u64) -> LoadState {
        self.reset_state(sb_seq);
        LoadState::new(false, sb_epoch)
    }

    /// Clears the index for a load by at most `budget` (at least 1) slots, buckets, counters or
    /// bitmap words; returns true when entries may be loaded (about 2.6 steps of work per
    /// cache block in all).
    pub fn load_begin_step(&mut self, st: &mut LoadState, budget: u32) -> bool {
        if st.phase == LoadPhase::Clear && self.clear_step(st, budget) {
            st.phase = LoadPhase::Entries;
            st.pos = 0;
        }
        st.phase != LoadPhase::Clear
    }

    /// Loads entry `i` (every entry exactly once, after [`Index::load_begin_step`] returned true
    /// and before [`Index::load_finish_step`]). Bounded: one walk of a hash chain holding at most
    /// [`MAX_LOADED_VERSIONS`] versions of the entry's block. Fails on an entry naming a block
    /// beyond `origin_blocks`, on a dirty entry newer than the superblock allows, and on a dirty
    /// entry that would be more than [`MAX_LOADED_VERSIONS`] of its block (no correct writer
    /// makes one: the metadata is damaged or forged).
    pub fn load_entry(&mut self, st: &mut LoadState, i: u32, e: Entry, origin_blocks: u64) -> Result<(), Error> {
        let sb_seq = self.committed_seq;
        if st.phase != LoadPhase::Entries {
            return Err(err!("Cache metadata entry loaded outside a load"));
        }
        if e.block >= origin_blocks && (e.state == EntryState::Dirty || e.seq != 0) {
            return Err(err!("Cache metadata names a block beyond the origin"));
        }
        if e.state == EntryState::Dirty && e.seq > sb_seq.saturating_add(1) {
            return Err(err!("Cache metadata entry is newer than the superblock allows"));
        }
        if e.state == EntryState::Dirty && e.seq == 0 {
            // Every dirty entry was written by a commit (a version belongs to one from its
            // allocation): writeback, which takes only versions a commit included, would never
            // take this one.
            return Err(err!("Cache metadata has a dirty entry of no commit"));
        }
        match self.slot(i) {
            None => return Err(err!("Cache metadata entry index out of range")),
            Some(s) if s.state() != ST_UNLOADED => return Err(err!("Cache metadata entry loaded twice")),
            Some(_) => {}
        }
        let mut s = Slot { key: e.block & BLOCK_MASK, seq: e.seq, epoch: e.epoch, next: NIL };
        if e.state == EntryState::Dirty && e.seq > sb_seq {
            // Written by the commit that never completed: the slot's previous image was a
            // tombstone that was no longer needed. Rewrite it as one that discards nothing.
            st.report.ignored += 1;
            s.seq = 0;
            self.touch(i);
        } else if e.state == EntryState::Dirty {
            // On disk (its sequence number is not above the superblock's). Its epoch in 64
            // bits: the one nearest to the superblock's (a correct writer's are not newer, and
            // less than EPOCH_WINDOW older). The versions loaded must be less than EPOCH_WINDOW
            // epochs older than the epoch the load starts (the newest one's plus one): every
            // reading of their low 32 bits relies on it, and a correct writer never leaves them
            // further apart (`close_epoch`).
            let epoch = nearest(e.epoch, st.sb_epoch);
            let (lo, hi) = (st.min_epoch.min(epoch), st.max_epoch.max(epoch));
            if hi.saturating_sub(lo) >= EPOCH_WINDOW {
                return Err(err!("Cache metadata has versions 2^31 or more epochs apart"));
            }
            s.set_state(ST_VALID);
            self.load_version(i, s)?;
            st.report.dirty += 1;
            (st.min_epoch, st.max_epoch) = (lo, hi);
            return Ok(());
        } else if e.seq != 0 {
            self.load_tombstone(i, s);
            return Ok(());
        }
        if let Some(m) = self.slots.get_mut(i as usize) {
            *m = s;
        }
        self.push(ListId::Free, i);
        Ok(())
    }

    /// Links loaded version `s` into slot `i` and its block's chain, newest first by
    /// `(seq, epoch)`; refuses one more than [`MAX_LOADED_VERSIONS`] of a block.
    fn load_version(&mut self, i: u32, s: Slot) -> Result<(), Error> {
        let b = self.bucket(s.block());
        let (mut prev, mut cur) = (NIL, self.buckets.get(b).copied().unwrap_or(NIL));
        let mut before: Option<(u32, u32)> = None;
        let mut count = 0;
        while let Some(c) = self.slot(cur) {
            if c.block() == s.block() && c.holds_data() {
                count += 1;
                if before.is_none() && !Self::newer(c, &s) {
                    before = Some((prev, cur));
                }
            }
            prev = cur;
            cur = c.next;
        }
        if count >= MAX_LOADED_VERSIONS {
            return Err(err!("Cache metadata has more than 32 versions of one block"));
        }
        // Before the first older one, or at the end of the chain.
        let (prev, next) = before.unwrap_or((prev, NIL));
        if let Some(m) = self.slots.get_mut(i as usize) {
            *m = Slot { next, ..s };
        }
        self.relink(b, prev, i);
        Ok(())
    }

    /// Loads tombstone `s` into slot `i`: only the newest tombstone of a block matters (a
    /// version is discarded when some tombstone of its block is not older), so that one is kept
    /// in the block's chain and the others are free.
    fn load_tombstone(&mut self, i: u32, mut s: Slot) {
        let b = self.bucket(s.block());
        let mut cur = self.buckets.get(b).copied().unwrap_or(NIL);
        while let Some(c) = self.slot(cur) {
            if c.block() == s.block() && c.state() == ST_TOMB {
                break;
            }
            cur = c.next;
        }
        if let Some(old) = self.slot(cur).copied() {
            if !Self::newer(&s, &old) {
                if let Some(m) = self.slots.get_mut(i as usize) {
                    *m = s;
                }
                self.push(ListId::Free, i);
                return;
            }
            self.chain_remove(cur);
            if let Some(m) = self.slots.get_mut(cur as usize) {
                m.set_state(ST_FREE);
            }
            self.push(ListId::Free, cur);
        }
        s.set_state(ST_TOMB);
        s.next = self.buckets.get(b).copied().unwrap_or(NIL);
        if let Some(m) = self.slots.get_mut(i as usize) {
            *m = s;
        }
        if let Some(h) = self.buckets.get_mut(b) {
            *h = i;
        }
    }

    /// Ends a load by at most `budget` (at least 1) slots; returns true when done. Each slot
    /// costs at most a few walks of its hash chain (at most [`MAX_LOADED_VERSIONS`] versions of
    /// its block). For each block, in one pass: the newest tombstone discards every version not
    /// newer, a version with a newer one of its epoch is discarded (superseded), and of the rest
    /// the newest [`MAX_VERSIONS`] are kept (see [`MAX_LOADED_VERSIONS`] for why the others are
    /// released versions). Discarded versions are marked free by the first commit; a tombstone
    /// that discarded one is kept from reuse until that commit completes (until then it alone
    /// keeps them from coming back). The new epoch follows the newest one loaded: the
    /// superblock's, or that of a committed version (its low 32 bits read as the epoch nearest
    /// the superblock's), in 64 bits.
    pub fn load_finish_step(&mut self, st: &mut LoadState, budget: u32) -> bool {
        if st.phase == LoadPhase::Clear {
            // Not cleared yet (a caller's mistake): clear, then finish with nothing loaded.
            self.load_begin_step(st, budget);
            return false;
        }
        if st.phase == LoadPhase::Entries {
            st.phase = LoadPhase::Finish;
            st.pos = 0;
            st.new_epoch = st.max_epoch.saturating_add(1);
            self.dirty = st.report.dirty;
        }
        if st.phase != LoadPhase::Finish {
            return true;
        }
        let nr = self.slots.len() as u64;
        let end = st.pos.saturating_add(u64::from(budget.max(1))).min(nr);
        for i in st.pos..end {
            self.finish_slot(st, i as u32);
        }
        st.pos = end;
        if st.pos < nr {
            return false;
        }
        // New writes after a restart start a new epoch.
        self.epoch = st.new_epoch;
        self.oldest_dirty_epoch = st.new_epoch.saturating_sub(u64::from(st.oldest_age));
        st.phase = LoadPhase::Done;
        true
    }

    fn finish_slot(&mut self, st: &mut LoadState, i: u32) {
        let Some(s) = self.slot(i).copied() else { return };
        match s.state() {
            // Each block once, at its newest version.
            ST_VALID if self.versions(s.block()).next() == Some(i) => self.finish_block(st, s.block()),
            ST_TOMB if !self.has_versions(s.block()) => {
                self.chain_remove(i);
                if let Some(m) = self.slots.get_mut(i as usize) {
                    m.set_state(ST_FREE);
                }
                self.push(ListId::Free, i);
            }
            ST_UNLOADED => {
                // Never loaded (a caller's mistake): free, and its entry rewritten as such.
                if let Some(m) = self.slots.get_mut(i as usize) {
                    *m = Slot::default();
                }
                self.touch(i);
                self.push(ListId::Free, i);
            }
            _ => {}
        }
    }

    /// Applies the tombstone, superseded versions and the bound to `block` (see
    /// [`Index::load_finish_step`]): two walks of its hash chain.
    fn finish_block(&mut self, st: &mut LoadState, block: u64) {
        let b = self.bucket(block);
        let head = self.buckets.get(b).copied().unwrap_or(NIL);
        let mut tomb = NIL;
        let mut cur = head;
        while let Some(c) = self.slot(cur) {
            if c.block() == block && c.state() == ST_TOMB {
                tomb = cur;
                break;
            }
            cur = c.next;
        }
        let t = self.slot(tomb).copied();
        let mut kept = [0u32; MAX_VERSIONS];
        let mut nk = 0;
        let mut tomb_used = false;
        let (mut prev, mut cur) = (NIL, head);
        while let Some(c) = self.slot(cur).copied() {
            let next = c.next;
            if c.block() == block && c.state() == ST_TOMB {
                self.relink(b, prev, next);
                cur = next;
                continue;
            }
            if c.block() == block && c.holds_data() {
                let discard = if t.is_some_and(|t| !Self::newer(&c, &t)) {
                    tomb_used = true;
                    true
                } else {
                    kept.get(..nk).unwrap_or(&[]).contains(&c.epoch) || nk >= MAX_VERSIONS
                };
                if discard {
                    self.relink(b, prev, next);
                    self.retire(cur, ListId::RelRipe);
                    st.report.discarded += 1;
                    cur = next;
                    continue;
                }
                if let Some(k) = kept.get_mut(nk) {
                    *k = c.epoch;
                }
                nk += 1;
                st.oldest_age = st.oldest_age.max((st.new_epoch as u32).wrapping_sub(c.epoch));
            }
            prev = cur;
            cur = next;
        }
        if t.is_some() {
            if let Some(m) = self.slots.get_mut(tomb as usize) {
                // A tombstone that discarded a version stays one (its image is not a dirty
                // entry) until the first commit, which marks the version, completes.
                m.set_state(if tomb_used { ST_MARKING } else { ST_FREE });
            }
            self.push(if tomb_used { ListId::RelRipe } else { ListId::Free }, tomb);
        }
    }

    /// Checks the index's invariants (test support, O(cache blocks)): every slot is counted once
    /// among free, dirty and releasing; every version is on its block's chain, and no block has
    /// more than [`MAX_VERSIONS`] versions; the current epoch is newer than every version's.
    #[cfg(any(test, feature = "fuzz"))]
    pub fn check_invariants(&self) -> Result<(), Error> {
        let c = self.counts();
        if c.free + c.dirty + c.releasing != c.total {
            return Err(err!("Index counts do not add up"));
        }
        let mut holding = 0u64;
        for (i, s) in self.slots.iter().enumerate() {
            if !s.holds_data() {
                continue;
            }
            holding += 1;
            if s.block() >= MAX_ORIGIN_BLOCKS {
                return Err(err!("Index holds a block beyond the origin"));
            }
            if !self.versions(s.block()).any(|v| v as usize == i) {
                return Err(err!("Index version is not on its block's chain"));
            }
            if self.versions(s.block()).nth(MAX_VERSIONS).is_some() {
                return Err(err!("Index block has more than MAX_VERSIONS versions"));
            }
            if nearest(s.epoch, self.epoch) > self.epoch {
                return Err(err!("Index version newer than the current epoch"));
            }
        }
        if holding != c.dirty {
            return Err(err!("Index dirty count differs from the versions held"));
        }
        Ok(())
    }

    /// Whether any version of `block` (holding data) is cached.
    pub fn has_versions(&self, block: u64) -> bool {
        self.versions(block).next().is_some()
    }

    /// Versions of `block` (holding data or being written).
    #[cfg(test)]
    fn chain_len(&self, block: u64) -> usize {
        self.versions(block).count()
    }

    /// Whether `a` is newer than `b` (of one block): by commit sequence number, then by epoch
    /// (two versions committed together are less than [`EPOCH_WINDOW`] apart: compared by
    /// signed distance of their low 32 bits).
    fn newer(a: &Slot, b: &Slot) -> bool {
        a.seq > b.seq || (a.seq == b.seq && a.epoch.wrapping_sub(b.epoch) as i32 > 0)
    }
}

/// Sorts writeback copies `(from, to, sectors)` by destination and merges those contiguous on
/// both sides into copies of at most `max_sectors` (a merged copy never grows past it, so that a
/// long run still makes several copies that can run at once); returns how many copies are left
/// (at the front of `jobs`). Destinations must be distinct (a writeback batch holds one version
/// per block).
pub fn merge_copies(jobs: &mut [(u64, u64, u64)], max_sectors: u64) -> usize {
    // Heapsort by destination: O(n log n) with no panicking paths (core's slice sorts
    // have some, which objtool flags in a kernel module).
    let key = |jobs: &[(u64, u64, u64)], i: usize| jobs.get(i).map_or(0, |j| j.1);
    let sift = |jobs: &mut [(u64, u64, u64)], mut root: usize, end: usize| loop {
        let mut child = 2 * root + 1;
        if child >= end {
            break;
        }
        if child + 1 < end && key(jobs, child + 1) > key(jobs, child) {
            child += 1;
        }
        if key(jobs, root) >= key(jobs, child) {
            break;
        }
        jobs.swap(root, child);
        root = child;
    };
    let len = jobs.len();
    for start in (0..len / 2).rev() {
        sift(jobs, start, len);
    }
    for end in (1..len).rev() {
        jobs.swap(0, end);
        sift(jobs, 0, end);
    }
    let mut out = 0;
    for i in 0..jobs.len() {
        let Some(&j) = jobs.get(i) else { break };
        if out > 0 {
            if let Some(last) = jobs.get_mut(out - 1) {
                if last.0 + last.2 == j.0 && last.1 + last.2 == j.1 && last.2 + j.2 <= max_sectors {
                    last.2 += j.2;
                    continue;
                }
            }
        }
        if let Some(slot) = jobs.get_mut(out) {
            *slot = j;
        }
        out += 1;
    }
    out
}

/// A writeback selection in progress ([`Index::scan_begin`], [`Index::scan_step`]): a pass
/// over every slot for the oldest dirty epoch, then a pass from the writeback cursor for
/// candidates. Each step handles a bounded number of slots, so a caller holding a lock with
/// interrupts disabled can release it between steps. Interleaved changes are harmless: the
/// oldest epoch found is never newer than the true one (new versions only go to the current
/// epoch), and every candidate is checked when it is taken.
#[derive(Clone, Copy, Debug)]
pub struct WbScan {
    /// The current epoch when the scan began.
    reference: u64,
    /// Age of the oldest dirty version found, relative to `reference`.
    oldest_age: u32,
    pos: u32,
    selecting: bool,
    /// Low 32 bits of the epoch taken in ordered mode.
    want_epoch: u32,
    start: u32,
    max_seq: Option<u64>,
    /// The checkpoint writeback limit when the scan began (it stays in force for the scan).
    limit: Option<u64>,
    /// Candidates found so far.
    pub found: usize,
}

/// What [`Index::load`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Dirty versions loaded.
    pub dirty: u64,
    /// Entries of an incomplete commit, ignored.
    pub ignored: u64,
    /// Versions discarded, released: by a tombstone, superseded within their epoch, or older
    /// than the newest [`MAX_VERSIONS`] of their block.
    pub discarded: u64,
}

/// A format ([`Index::format_begin`]) or a load ([`Index::load_begin`]) in progress, done in
/// steps of bounded work, so that a caller holding a lock with interrupts disabled can release
/// it between them.
#[derive(Clone, Copy, Debug)]
pub struct LoadState {
    phase: LoadPhase,
    /// Position in the phase.
    pos: u64,
    format: bool,
    /// The superblock's epoch.
    sb_epoch: u64,
    /// Newest epoch seen (the superblock's, or of a version loaded).
    max_epoch: u64,
    /// Oldest epoch of a version loaded (`u64::MAX`: none yet).
    min_epoch: u64,
    /// The epoch new writes will start (known once every entry is loaded).
    new_epoch: u64,
    /// Age of the oldest version kept, relative to `new_epoch`.
    oldest_age: u32,
    /// What the load found so far (complete when it is done).
    pub report: LoadReport,
}

impl LoadState {
    fn new(format: bool, sb_epoch: u64) -> Self {
        Self {
            phase: LoadPhase::Clear,
            pos: 0,
            format,
            sb_epoch,
            max_epoch: sb_epoch,
            min_epoch: u64::MAX,
            new_epoch: 1,
            oldest_age: 0,
            report: LoadReport::default(),
        }
    }

    /// Whether the format or load is complete.
    pub fn done(&self) -> bool {
        self.phase == LoadPhase::Done
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LoadPhase {
    /// Clearing the arrays.
    Clear,
    /// Taking entries (a load).
    Entries,
    /// Applying tombstones and bounds, block by block (a load).
    Finish,
    Done,
}

/// What [`Index::find_commit_block`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitBlock {
    /// This metadata block must be written.
    Write(u64),
    /// None in the words looked at: go on from this block.
    Continue(u64),
    /// No more.
    Done,
}

#[derive(Clone, Copy)]
enum ListId {
    Free,
    RelNext,
    /// Released before the last barrier (at load: discarded, or a tombstone that discarded).
    RelRipe,
    Marking,
}

struct Versions<'a> {
    slots: &'a [Slot],
    cur: u32,
    block: u64,
}

impl Iterator for Versions<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        loop {
            let s = self.slots.get(self.cur as usize)?;
            let i = self.cur;
            self.cur = s.next;
            if s.block() == self.block && s.holds_data() {
                return Some(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wbformat::Entry;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::vec;
    use std::vec::Vec;

    type Ix = Index<Vec<Slot>, Vec<u32>, Vec<u64>>;

    fn index(nr: u64) -> Ix {
        let (nb, nw, nf) = Ix::storage_for(nr);
        Index::new(vec![Slot::default(); nr as usize], vec![0; nb], vec![0; nf], vec![0; nw], vec![0; nw]).unwrap()
    }

    #[test]
    fn memory_per_block_is_at_most_32_bytes() {
        assert_eq!(core::mem::size_of::<Slot>(), 24);
        for nr in [1u64, 7, 1000, 1 << 20] {
            let (nb, nw, nf) = Ix::storage_for(nr);
            let bytes = nr * 24 + nb as u64 * 4 + 2 * nw as u64 * 8 + nf as u64 * 4;
            assert!(bytes <= nr * 32 + 64, "{nr}: {bytes}");
        }
    }

    #[test]
    fn storage_size_is_checked() {
        let (nb, nw, nf) = Ix::storage_for(10);
        assert!(Index::new(vec![Slot::default(); 10], vec![0u32; nb + 1], vec![0u32; nf], vec![0u64; nw], vec![0u64; nw]).is_err());
        assert!(Index::new(vec![Slot::default(); 10], vec![0u32; nb], vec![0u32; nf + 1], vec![0u64; nw], vec![0u64; nw]).is_err());
        assert!(Index::new(Vec::<Slot>::new(), vec![0u32; 2], vec![0u32; 2], vec![0u64; 1], vec![0u64; 1]).is_err());
    }

    #[test]
    fn overwrite_of_an_older_epoch_gets_a_new_slot_and_releases_the_old_after_two_commits() {
        let mut ix = index(4);
        let WriteMap::Slot(a) = ix.map_write(7, true) else { panic!() };
        ix.write_done(a, true);
        let k = ix.barrier();
        ix.commit_done(k, true);
        ix.close_epoch();
        let WriteMap::Slot(b) = ix.map_write(7, true) else { panic!() };
        assert_ne!(a, b);
        assert_eq!(ix.lookup_read(7), Some(a), "the old version is read until the new write completes");
        ix.write_done(b, true);
        assert_eq!(ix.lookup_read(7), Some(b));
        assert_eq!(ix.counts().free, 2);
        // Commit 2 makes b durable; a is marked free only by commit 3.
        let k = ix.barrier();
        assert_eq!(ix.image(a).state, EntryState::Dirty);
        ix.commit_done(k, true);
        assert_eq!(ix.counts().free, 2);
        let k = ix.barrier();
        assert_eq!(ix.image(a), Entry { block: 7, seq: 1, epoch: 1, state: EntryState::Free }, "a tombstone");
        ix.commit_done(k, true);
        assert_eq!(ix.counts().free, 3);
    }

    /// Block 5: version `a` committed; then `b`, in the next epoch, in flight at a barrier and
    /// complete before that commit's images are written (part of it; `a` is released after the
    /// barrier); `b` written back (the origin holds it) and committed. Returns `(a, b, the last
    /// commit's sequence number)`.
    fn superseded_and_written_back(
        ix: &mut Ix,
        disk: &mut [Entry; 4],
        commit: &mut dyn FnMut(&mut Ix, &mut [Entry; 4]) -> u64,
    ) -> (u32, u32, u64) {
        let WriteMap::Slot(a) = ix.map_write(5, true) else { panic!() };
        ix.write_done(a, true);
        commit(ix, disk);
        ix.close_epoch();
        let WriteMap::Slot(b) = ix.map_write(5, true) else { panic!() };
        let k = ix.barrier();
        ix.write_done(b, true);
        for i in 0..4 {
            disk[i as usize] = ix.image(i);
        }
        ix.commit_done(k, true);
        let mut out = [0u32; 4];
        assert_eq!(ix.select_writeback(&mut out, None), 1);
        assert_eq!(out[0], b);
        ix.writeback_done(b, true);
        (a, b, commit(ix, disk))
    }

    /// Found by the model test: a commit that tears between the marks of an old version
    /// (superseded) and a newer one (written back) must not bring the old version back.
    #[test]
    fn torn_marks_never_resurrect_an_older_version() {
        let mut ix = index(4);
        let mut disk = [Entry::free(0); 4];
        let commit = |ix: &mut Ix, disk: &mut [Entry; 4], land: &dyn Fn(u32) -> bool, finish: bool| {
            let k = ix.barrier();
            for i in 0..4 {
                if land(i) {
                    disk[i as usize] = ix.image(i);
                }
            }
            if finish {
                ix.commit_done(k, true);
            }
            k
        };
        let (_, b, sb_seq) = superseded_and_written_back(&mut ix, &mut disk, &mut |ix, d| commit(ix, d, &|_| true, true));
        // The commit marking a and b tears: only b's sector lands.
        commit(&mut ix, &mut disk, &|i| i == b, false);
        let mut fresh = index(4);
        let rep = fresh.load(sb_seq, 1, 100, |i| Ok(disk[i as usize])).unwrap();
        assert_eq!(fresh.lookup_read(5), None, "block 5 must come from the origin, not from a");
        assert_eq!(rep.discarded, 1);
    }

    /// A writeback scan made due by a checkpoint's drain can still be running when the
    /// checkpoint writes its marker and lifts the limit: the rest of that scan must not take
    /// versions of the epoch after the checkpoint (they would reach the origin right after the
    /// marker, before a DRBD secondary's snapshot). Found as a rare `92-checkpoint-drbd.sh` failure.
    #[test]
    fn a_scan_keeps_the_limit_it_began_under() {
        let mut ix = index(16);
        for b in 0..4 {
            let WriteMap::Slot(i) = ix.map_write(b, true) else { panic!() };
            ix.write_done(i, true);
        }
        let id = ix.close_epoch().unwrap();
        ix.set_wb_limit(Some(id));
        for b in 10..14 {
            let WriteMap::Slot(i) = ix.map_write(b, true) else { panic!() };
            ix.write_done(i, true);
        }
        let k = ix.barrier();
        ix.commit_done(k, true);
        let mut out = [0u32; 16];
        let mut scan = ix.scan_begin(None);
        // The first pass, and the first two slots of the selection.
        while !scan.selecting {
            assert!(!ix.scan_step(&mut scan, &mut out, 2));
        }
        assert!(!ix.scan_step(&mut scan, &mut out, 2));
        // The marker is written: the checkpoint lifts the limit mid-scan.
        ix.set_wb_limit(None);
        while !ix.scan_step(&mut scan, &mut out, 2) {}
        let taken: Vec<Entry> = out[..scan.found].iter().map(|&i| ix.image(i)).collect();
        assert_eq!(taken.len(), 4, "{taken:?}");
        assert!(taken.iter().all(|e| u64::from(e.epoch) == id), "versions of a later epoch taken: {taken:?}");
        // A scan begun afterwards takes them.
        let mut scan = ix.scan_begin(None);
        while !ix.scan_step(&mut scan, &mut out, 2) {}
        assert_eq!(scan.found, 4);
        // And a limit set mid-scan is honoured at once.
        let mut ix = index(8);
        let WriteMap::Slot(i) = ix.map_write(1, true) else { panic!() };
        ix.write_done(i, true);
        let id = ix.close_epoch().unwrap();
        let WriteMap::Slot(j) = ix.map_write(2, true) else { panic!() };
        ix.write_done(j, true);
        let k = ix.barrier();
        ix.commit_done(k, true);
        let mut scan = ix.scan_begin(None);
        ix.set_wb_limit(Some(id));
        while !ix.scan_step(&mut scan, &mut out, 1) {}
        assert_eq!(&out[..scan.found], &[i]);
    }

    /// Everything an index holds: slots, buckets, release counters, bitmaps, lists, counters.
    type IxState = (Vec<(u64, u64, u32, u32)>, Vec<u32>, Vec<u32>, Vec<u64>, [(u32, u32); 4], Vec<u64>);

    /// Everything an index holds, to compare two of them.
    fn state_of(ix: &Ix) -> IxState {
        let slots = ix.slots.iter().map(|s| (s.key, s.seq, s.epoch, s.next)).collect();
        let lists = [ix.free, ix.rel_next, ix.rel_ripe, ix.marking].map(|l| (l.head, l.len));
        let scalars = vec![
            ix.dirty,
            ix.under_wb,
            u64::from(ix.rewrote_committed),
            u64::from(ix.epoch),
            ix.committed_seq,
            u64::from(ix.oldest_dirty_epoch),
            u64::from(ix.wb_cursor),
        ];
        let mut bitmaps = ix.meta_dirty.clone();
        bitmaps.extend_from_slice(&ix.meta_commit);
        (slots, ix.buckets.clone(), ix.releasing_filter.clone(), bitmaps, lists, scalars)
    }

    /// Feeds `disk` to a load in steps of `budget`, counting the steps.
    fn load_in_steps(ix: &mut Ix, disk: &[Entry], sb_seq: u64, sb_epoch: u64, budget: u32) -> (Result<LoadReport, Error>, u64) {
        let mut steps = 0;
        let mut st = ix.load_begin(sb_seq, sb_epoch);
        while !ix.load_begin_step(&mut st, budget) {
            steps += 1;
        }
        steps += 1;
        for (i, &e) in disk.iter().enumerate() {
            if let Err(e) = ix.load_entry(&mut st, i as u32, e, 1 << 40) {
                return (Err(e), steps);
            }
        }
        while !ix.load_finish_step(&mut st, budget) {
            steps += 1;
        }
        assert!(st.done());
        (Ok(st.report), steps + 1)
    }

    /// Found by review: a well-checksummed image whose entries all name one block was loaded
    /// into one chain, in O(n²) with interrupts off (20 000 entries: 4.8 s in a test build),
    /// and every later walk of that chain too. Now the entry one beyond MAX_LOADED_VERSIONS is
    /// refused, after bounded work.
    #[test]
    fn a_forged_image_naming_one_block_everywhere_is_refused() {
        let n: u32 = 1 << 20;
        let mut ix = index(u64::from(n));
        let forged = |i: u32| Entry { block: 7, seq: u64::from(i) + 1, epoch: i + 1, state: EntryState::Dirty };
        let budget = 4096;
        let mut st = ix.load_begin(u64::from(n) + 1, u64::from(n) + 1);
        let mut steps = 1;
        while !ix.load_begin_step(&mut st, budget) {
            steps += 1;
        }
        // Clearing: about 2.6 items per cache block, `budget` per step.
        assert!(steps * u64::from(budget) <= u64::from(n) * 3, "{steps} steps");
        let mut fed = 0;
        let r = (0..n).try_for_each(|i| {
            fed += 1;
            ix.load_entry(&mut st, i, forged(i), 100)
        });
        let e = r.unwrap_err();
        assert_eq!(e.as_str(), "Cache metadata has more than 32 versions of one block");
        assert!(e.as_str().contains(&std::format!(" {MAX_LOADED_VERSIONS} ")));
        assert_eq!(fed, MAX_LOADED_VERSIONS + 1, "refused at the first entry beyond the bound");
        // The one-shot path refuses it too.
        let mut ix = index(1000);
        assert_eq!(ix.load(2000, 2000, 100, |i| Ok(forged(i))).unwrap_err(), e);
        // Up to the bound it loads, keeping the newest MAX_VERSIONS.
        let mut ix = index(1000);
        let rep = ix.load(2000, 2000, 100, |i| Ok(if (i as usize) < MAX_LOADED_VERSIONS { forged(i) } else { Entry::free(0) })).unwrap();
        assert_eq!(rep.dirty, MAX_LOADED_VERSIONS as u64);
        assert_eq!(rep.discarded, (MAX_LOADED_VERSIONS - MAX_VERSIONS) as u64);
        assert_eq!(ix.chain_len(7), MAX_VERSIONS);
        assert_eq!(ix.lookup_read(7), Some(MAX_LOADED_VERSIONS as u32 - 1));
        // Tombstones of one block everywhere (a block rewritten over and over) are legitimate:
        // linear, and only the newest one discards.
        let mut ix = index(u64::from(n));
        let disk: Vec<Entry> = (0..n)
            .map(|i| match i {
                0 => Entry { block: 7, seq: 10, epoch: 3, state: EntryState::Dirty },
                1 => Entry { block: 7, seq: 12, epoch: 4, state: EntryState::Dirty },
                _ => Entry { block: 7, seq: u64::from(i % 11), epoch: 3, state: EntryState::Free },
            })
            .collect();
        let (rep, steps) = load_in_steps(&mut ix, &disk, 20, 1, budget);
        let rep = rep.unwrap();
        assert!(steps * u64::from(budget) <= u64::from(n) * 4, "{steps} steps");
        assert_eq!((rep.dirty, rep.discarded), (2, 1), "the newest tombstone (seq 10) discards seq 10, not 12");
        assert_eq!(ix.lookup_read(7), Some(1));
        let c = ix.counts();
        assert_eq!(c.free + c.dirty + c.releasing, c.total);
        assert_eq!(c.releasing, 2, "the discarded version and the tombstone that discarded it");
    }

    /// Format and load in small steps give exactly what the one-shot calls give, whatever the
    /// index held before.
    #[test]
    fn format_and_load_in_steps_match_the_one_shot_path() {
        let n: u32 = 1 << 20;
        let budget = 4096;
        let mut a = index(u64::from(n));
        let mut b = index(u64::from(n));
        // Something in b before: versions, releases, a limit.
        b.set_ordered(true);
        for blk in 0..1000 {
            let WriteMap::Slot(i) = b.map_write(blk % 300, true) else { panic!() };
            b.write_done(i, true);
            if blk % 100 == 0 {
                b.close_epoch();
            }
        }
        b.set_wb_limit(Some(3));
        let _ = b.barrier();
        a.format();
        let mut st = b.format_begin();
        let mut steps = 1;
        while !b.format_step(&mut st, budget) {
            steps += 1;
        }
        assert!(st.done());
        assert!(steps * u64::from(budget) <= u64::from(n) * 3, "{steps} steps");
        assert_eq!(b.wb_limit(), None);
        assert!(state_of(&a) == state_of(&b), "format in steps differs");
        // A varied image: versions of several epochs, superseded ones, tombstones, entries of an
        // incomplete commit.
        let sb_seq = 50;
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let disk: Vec<Entry> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let block = x % 40_000;
                let seq = (x >> 20) % (sb_seq + 2);
                let epoch = (seq / 3) as u32 + ((x >> 30) % 2) as u32;
                match (x >> 40) % 4 {
                    0 => Entry::free(0),
                    1 => Entry { block, seq, epoch, state: EntryState::Free },
                    _ if seq == 0 => Entry::free(0),
                    _ => Entry { block, seq, epoch, state: EntryState::Dirty },
                }
            })
            .collect();
        let ra = a.load(sb_seq, 9, 1 << 40, |i| Ok(disk[i as usize])).unwrap();
        let (rb, steps) = load_in_steps(&mut b, &disk, sb_seq, 9, budget);
        let rb = rb.unwrap();
        assert_eq!(ra, rb);
        assert!(ra.dirty > 100_000 && ra.discarded > 10_000 && ra.ignored > 1000, "{ra:?}");
        assert!(steps * u64::from(budget) <= u64::from(n) * 4, "{steps} steps");
        assert!(state_of(&a) == state_of(&b), "load in steps differs");
        let c = a.counts();
        assert_eq!(c.free + c.dirty + c.releasing, c.total, "{c:?}");
        assert_eq!(c.dirty, ra.dirty - ra.discarded);
        for blk in 0..40_000 {
            assert!(a.chain_len(blk) <= MAX_VERSIONS);
        }
    }

    /// Found while bounding the load: a version discarded at load by another slot's tombstone
    /// was marked free only by the second commit after the load, but that tombstone's slot was
    /// free at once. Reused and rewritten by the first commit, it no longer kept the version
    /// from coming back: after a second crash block 5 read the stale version (the origin held a
    /// newer one, written back). The first commit now marks it, and the tombstone is not reused
    /// before that commit completes.
    #[test]
    fn a_tombstone_that_discarded_a_version_outlives_it() {
        let mut ix = index(4);
        let mut disk = [Entry::free(0); 4];
        let mut commit = |ix: &mut Ix, disk: &mut [Entry; 4]| {
            let k = ix.barrier();
            for i in 0..4 {
                disk[i as usize] = ix.image(i);
            }
            ix.commit_done(k, true);
            k
        };
        let (a, b, sb_seq) = superseded_and_written_back(&mut ix, &mut disk, &mut commit);
        // The commit marking a and b tears: only b's tombstone lands. Crash.
        let _ = ix.barrier();
        disk[b as usize] = ix.image(b);
        let mut ix = index(4);
        let rep = ix.load(sb_seq, 2, 100, |i| Ok(disk[i as usize])).unwrap();
        assert_eq!(rep.discarded, 1);
        assert_eq!(ix.lookup_read(5), None);
        // New writes take every free slot, and one commit completes. Crash again.
        while let WriteMap::Slot(i) = ix.map_write(20 + u64::from(ix.counts().dirty as u32), true) {
            ix.write_done(i, true);
        }
        let sb_seq = commit(&mut ix, &mut disk);
        let mut ix = index(4);
        ix.load(sb_seq, 2, 100, |i| Ok(disk[i as usize])).unwrap();
        assert_eq!(ix.lookup_read(5), None, "block 5 must come from the origin: {disk:?}");
        assert_eq!(disk[a as usize].state, EntryState::Free, "a is marked by the first commit");
        // And a torn first commit leaves the tombstone in place.
        let mut ix = index(4);
        let mut torn = disk;
        torn[b as usize] = Entry { block: 5, seq: 2, epoch: 2, state: EntryState::Free };
        torn[a as usize] = Entry { block: 5, seq: 1, epoch: 1, state: EntryState::Dirty };
        ix.load(sb_seq, 2, 100, |i| Ok(torn[i as usize])).unwrap();
        while let WriteMap::Slot(i) = ix.map_write(30 + u64::from(ix.counts().dirty as u32), true) {
            ix.write_done(i, true);
        }
        assert_eq!(ix.counts().free, 0);
        let _ = ix.barrier();
        assert_eq!(ix.image(b), torn[b as usize], "the tombstone is rewritten as it was, not reused");
        assert_eq!(ix.image(a).state, EntryState::Free);
    }

    /// Found by review: two full writes of one block in flight together, mapped between the
    /// same two barriers in one epoch, got two versions with the same (seq, epoch). The later
    /// one (read until the crash) completed first and released the earlier; after a crash the
    /// load could not tell them apart, and once the earlier was marked free its tombstone,
    /// "not older" than the later version, discarded it: the block read the origin's data,
    /// older than both writes, although a flush had covered them.
    #[test]
    fn concurrent_full_writes_of_a_block_survive_a_crash_as_the_later_one() {
        for first_in_high_slot in [false, true] {
            let mut ix = index(8);
            let mut disk = [Entry::free(0); 8];
            if first_in_high_slot {
                // Put the first write in slot 1 and the second in slot 0.
                let WriteMap::Slot(x) = ix.map_write(9, true) else { panic!() };
                let WriteMap::Slot(a) = ix.map_write(5, true) else { panic!() };
                ix.write_done(x, false);
                let _ = (x, a);
            }
            let w1 = match ix.versions(5).next() {
                Some(a) => a,
                None => match ix.map_write(5, true) {
                    WriteMap::Slot(a) => a,
                    other => panic!("{other:?}"),
                },
            };
            // The second write: into the first, in place (the old code made a second version).
            let w2 = match ix.map_write(5, true) {
                WriteMap::Slot(b) => b,
                other => panic!("{other:?}"),
            };
            assert_eq!(w2, w1);
            // A flush arrives while both are in flight: its commit waits for them, and the
            // later one completes first.
            let mut k = ix.barrier();
            ix.write_done(w2, true);
            ix.write_done(w1, true);
            assert_eq!(ix.lookup_read(5), Some(w2), "the later write is read");
            // That commit, then two more (the earlier version is marked free); a crash after
            // each one must read the later write.
            for round in 0..3 {
                if round > 0 {
                    k = ix.barrier();
                }
                let mut m = 0;
                while let Some(b) = ix.next_commit_block(m) {
                    for i in b * ENTRIES_PER_META_BLOCK..((b + 1) * ENTRIES_PER_META_BLOCK).min(8) {
                        disk[i as usize] = ix.image(i as u32);
                    }
                    m = b + 1;
                }
                ix.commit_done(k, true);
                let mut fresh = index(8);
                fresh.load(k, ix.epoch(), 100, |i| Ok(disk[i as usize])).unwrap();
                assert_eq!(fresh.lookup_read(5), Some(w2), "after commit {round} (slots {w1}, {w2}): {disk:?}");
            }
        }
    }

    /// Storage that counts how many times it is reached (one per slot or word access through
    /// `get`/`get_mut`/indexing): the work a call does, whatever the size of the index.
    struct Counted<T>(Vec<T>, std::rc::Rc<core::cell::Cell<u64>>);
    impl<T> core::ops::Deref for Counted<T> {
        type Target = [T];
        fn deref(&self) -> &[T] {
            self.1.set(self.1.get() + 1);
            &self.0
        }
    }
    impl<T> core::ops::DerefMut for Counted<T> {
        fn deref_mut(&mut self) -> &mut [T] {
            self.1.set(self.1.get() + 1);
            &mut self.0
        }
    }

    /// Found by review: `barrier` and `commit_done` run under the index lock with interrupts
    /// disabled, and visited every entry of every dirty metadata block and every slot released
    /// in one call (on the old code, with half of a million-block cache written since the last
    /// commit: 528 515 slot and word accesses in `barrier`; once it was all written back, 2.6
    /// million in the `barrier` marking it free and 3.7 million in the `commit_done` freeing
    /// it). Now a commit is made of calls that each do bounded work: `barrier_begin`,
    /// `barrier_step`, `find_commit_block`, one metadata block's images, `commit_end`,
    /// `commit_end_step`, and `needs_commit`.
    #[test]
    fn each_commit_call_does_bounded_work() {
        let nr: u64 = 1 << 20;
        let n = std::rc::Rc::new(core::cell::Cell::new(0u64));
        let (nb, nw, nf) = Index::<Vec<Slot>, Vec<u32>, Vec<u64>>::storage_for(nr);
        let mut ix = Index::new(
            Counted(vec![Slot::default(); nr as usize], n.clone()),
            vec![0u32; nb],
            vec![0u32; nf],
            Counted(vec![0u64; nw], n.clone()),
            Counted(vec![0u64; nw], n.clone()),
        )
        .unwrap();
        const STEP: u32 = 64;
        // Accesses per call: a step's budget, plus a few per call and per item.
        const BOUND: u64 = 8 * STEP as u64 + 16;
        let mut worst = 0u64;
        let mut calls = 0u64;
        let mut work = |what: &str, f: &mut dyn FnMut() -> bool| {
            let before = n.get();
            let r = f();
            let w = n.get() - before;
            assert!(w <= BOUND, "{what}: {w} accesses");
            worst = worst.max(w);
            calls += 1;
            r
        };
        // One commit, as the kernel makes it (its data writes are done).
        let mut commit = |ix: &mut Index<_, _, _>| {
            assert!(work("needs_commit", &mut || ix.needs_commit()));
            let mut k = 0;
            work("barrier_begin", &mut || {
                k = ix.barrier_begin();
                true
            });
            while !work("barrier_step", &mut || ix.barrier_step(STEP)) {}
            let mut from = 0;
            let mut blocks = 0u64;
            loop {
                let mut found = CommitBlock::Done;
                work("find_commit_block", &mut || {
                    found = ix.find_commit_block(from, STEP);
                    true
                });
                match found {
                    CommitBlock::Write(b) => {
                        work("images", &mut || {
                            let mut dirty = 0;
                            for i in b * ENTRIES_PER_META_BLOCK..(b + 1) * ENTRIES_PER_META_BLOCK {
                                dirty += usize::from(ix.image(i as u32).state == EntryState::Dirty);
                            }
                            dirty <= ENTRIES_PER_META_BLOCK as usize
                        });
                        blocks += 1;
                        from = b + 1;
                    }
                    CommitBlock::Continue(f) => from = f,
                    CommitBlock::Done => break,
                }
            }
            work("commit_end", &mut || {
                ix.commit_end(k, true);
                true
            });
            while !work("commit_end_step", &mut || ix.commit_end_step(STEP)) {}
            blocks
        };
        // Half the cache written since the last commit.
        for b in 0..nr / 2 {
            let WriteMap::Slot(i) = ix.map_write(b, true) else { panic!() };
            ix.write_done(i, true);
        }
        assert_eq!(commit(&mut ix), nr / 2 / ENTRIES_PER_META_BLOCK);
        // All of it written back, and marked free two commits later.
        let mut out = vec![0u32; (nr / 2) as usize];
        assert_eq!(ix.select_writeback(&mut out, None), (nr / 2) as usize);
        for &i in &out {
            ix.writeback_done(i, true);
        }
        assert_eq!(ix.counts().free, nr / 2);
        assert_eq!(commit(&mut ix), 0, "nothing to write: the released versions are marked by the next commit");
        assert_eq!(commit(&mut ix), nr / 2 / ENTRIES_PER_META_BLOCK);
        assert_eq!(ix.counts().free, nr);
        assert!(!ix.needs_commit());
        drop(commit);
        assert!(calls > 3 * u64::from(STEP) && worst > u64::from(STEP), "{calls} calls, the worst {worst} accesses");
    }

    /// Found by review: the hash of the buckets was fixed and public, so anyone writing to the
    /// cached device could choose origin blocks that all land in one bucket. On the old code,
    /// the 1024 blocks below made one chain of 1024 slots in a 4096-block cache, walked by
    /// every lookup of them with interrupts disabled. Keyed by a secret, they spread out.
    #[test]
    fn chosen_blocks_do_not_share_a_bucket_under_a_secret_key() {
        let chosen: Vec<u64> = (0u64..).filter(|b| b.wrapping_mul(BUCKET_MUL) >> 53 == 0).take(1024).collect();
        let longest = |ix: &Ix| {
            (0..ix.buckets.len())
                .map(|b| {
                    let (mut n, mut cur) = (0, ix.buckets[b]);
                    while let Some(s) = ix.slot(cur) {
                        n += 1;
                        cur = s.next;
                    }
                    n
                })
                .max()
                .unwrap()
        };
        let fill = |ix: &mut Ix| {
            for &b in &chosen {
                let WriteMap::Slot(i) = ix.map_write(b, true) else { panic!() };
                ix.write_done(i, true);
            }
            assert_eq!(ix.counts().dirty, 1024);
        };
        let mut ix = index(4096);
        assert_eq!(ix.bucket_shift, 53);
        fill(&mut ix);
        assert_eq!(longest(&ix), 1024, "the attack: one bucket with the default multiplier");
        for key in [0x5DEE_CE66_D1CE_4E5Bu64, 0x0123_4567_89AB_CDEF, 42] {
            let mut ix = index(4096);
            ix.set_hash_key(key).unwrap();
            fill(&mut ix);
            assert!(longest(&ix) <= 8, "key {key:#x}: a chain of {}", longest(&ix));
            // Keyed hashing changes nothing else.
            for &b in &chosen {
                assert!(ix.lookup_read(b).is_some());
            }
            assert_eq!(ix.set_hash_key(1).unwrap_err().as_str(), "Cache index hash key set while the index holds blocks");
        }
    }

    /// Found by the crash model once it let writes of one block overlap: in ordered mode, a
    /// version superseded within its epoch by a second version (made while it was in flight)
    /// was marked free, and its tombstone discarded at load the version of the older epoch that
    /// ordered mode keeps (the origin could no longer be brought to that epoch's boundary).
    #[test]
    fn a_version_superseded_within_its_epoch_keeps_the_older_epochs() {
        let mut ix = index(8);
        ix.set_ordered(true);
        let mut disk = [Entry::free(0); 8];
        let commit = |ix: &mut Ix, disk: &mut [Entry; 8], k: Option<u64>| {
            let k = k.unwrap_or_else(|| ix.barrier());
            for i in 0..8 {
                disk[i as usize] = ix.image(i);
            }
            ix.commit_done(k, true);
            k
        };
        let WriteMap::Slot(a) = ix.map_write(5, true) else { panic!() };
        ix.write_done(a, true);
        commit(&mut ix, &mut disk, None);
        let old_epoch = ix.close_epoch().unwrap();
        let WriteMap::Slot(b) = ix.map_write(5, true) else { panic!() };
        let k = ix.barrier();
        let c = match ix.map_write(5, true) {
            WriteMap::Slot(c) => c,
            other => panic!("{other:?}"),
        };
        ix.write_done(c, true);
        ix.write_done(b, true);
        let mut k = Some(k);
        for _ in 0..3 {
            let seq = commit(&mut ix, &mut disk, k.take());
            let mut fresh = index(8);
            fresh.set_ordered(true);
            fresh.load(seq, ix.epoch(), 100, |i| Ok(disk[i as usize])).unwrap();
            let epochs: Vec<u64> = fresh.versions(5).map(|v| u64::from(fresh.slots[v as usize].epoch)).collect();
            assert!(epochs.contains(&old_epoch), "epoch {old_epoch} lost after commit {seq}: {epochs:?} {disk:?}");
            assert_eq!(fresh.lookup_read(5), Some(c));
        }
    }

    /// Found by review: a dirty entry of no commit (sequence number 0; no correct writer makes
    /// one) loaded as a dirty version that writeback never takes (it takes only versions a
    /// commit included): `flush` waited for ever, and a suspend with `flush_on_suspend` hung.
    /// It is refused now.
    #[test]
    fn a_dirty_entry_of_no_commit_is_refused() {
        let mut ix = index(8);
        let disk = |i: u32| Ok(if i == 3 { Entry { block: 7, seq: 0, epoch: 5, state: EntryState::Dirty } } else { Entry::free(0) });
        let r = ix.load(4, 5, 100, disk);
        assert_eq!(r.map_err(|e| e.as_str()), Err("Cache metadata has a dirty entry of no commit"));
    }

    /// Found by review: a version whose first write was still in flight when a newer version
    /// released it kept the sequence number of the commit in progress, and was written as a
    /// dirty entry by it, whether its write then failed or not (a failed one: the cache block's
    /// old contents, of another block, came back after a load). It never needs to be durable:
    /// the newer version completed first, and any flush covering it covers the newer one too.
    #[test]
    fn a_version_released_before_its_write_completed_is_never_a_dirty_entry() {
        for ok in [false, true] {
            let mut ix = index(8);
            let WriteMap::Slot(a) = ix.map_write(1, true) else { panic!() };
            ix.close_epoch();
            let WriteMap::Slot(b) = ix.map_write(1, true) else { panic!() };
            let k = ix.barrier();
            ix.write_done(b, true);
            ix.write_done(a, ok);
            assert_eq!(ix.image(a), Entry { block: 1, seq: 0, epoch: 1, state: EntryState::Free }, "ok {ok}");
            assert_eq!(ix.image(b).state, EntryState::Dirty);
            ix.commit_done(k, true);
            let mut out = [0u32; 8];
            assert_eq!(ix.select_writeback(&mut out, None), 1);
            assert_eq!(out[0], b);
        }
    }

    /// Found by review: of two whole-block writes into one version still being written, the
    /// first to complete failing dropped the version, and the other's success was then
    /// ignored: the block read the older version. Now the version stays while a write into it
    /// is in flight, and goes only when none of them succeeded.
    #[test]
    fn a_failed_write_into_a_shared_version_leaves_the_others() {
        let mut ix = index(8);
        let WriteMap::Slot(o) = ix.map_write(1, true) else { panic!() };
        ix.write_done(o, true);
        let k = ix.barrier();
        ix.commit_done(k, true);
        ix.close_epoch();
        let WriteMap::Slot(v) = ix.map_write(1, true) else { panic!() };
        assert_eq!(ix.map_write(1, true), WriteMap::Slot(v));
        ix.write_done(v, false);
        ix.write_done(v, true);
        assert_eq!(ix.lookup_read(1), Some(v), "the successful write is read");
        // Both failing: the version goes, the older one is read.
        ix.close_epoch();
        let WriteMap::Slot(w) = ix.map_write(1, true) else { panic!() };
        assert_eq!(ix.map_write(1, true), WriteMap::Slot(w));
        ix.write_done(w, false);
        ix.write_done(w, false);
        assert_eq!(ix.lookup_read(1), Some(v));
        assert_eq!(ix.chain_len(1), 1);
    }

    /// The worst a correct writer leaves: a block's MAX_VERSIONS versions all written back (not
    /// yet marked free) and MAX_VERSIONS newer ones, in one commit. It loads (the newest
    /// MAX_VERSIONS), and the first commit after the load marks the others.
    #[test]
    fn the_most_versions_a_correct_writer_leaves_load() {
        let mut ix = index(64);
        ix.set_ordered(true);
        let mut disk = vec![Entry::free(0); 64];
        let commit = |ix: &mut Ix, disk: &mut Vec<Entry>| {
            let k = ix.barrier();
            for (i, d) in disk.iter_mut().enumerate() {
                *d = ix.image(i as u32);
            }
            ix.commit_done(k, true);
            k
        };
        let write = |ix: &mut Ix| {
            let WriteMap::Slot(i) = ix.map_write(0, true) else { panic!() };
            ix.write_done(i, true);
            ix.close_epoch();
            i
        };
        for _ in 0..MAX_VERSIONS {
            write(&mut ix);
        }
        commit(&mut ix, &mut disk);
        let mut out = [0u32; 4];
        for _ in 0..MAX_VERSIONS {
            assert_eq!(ix.select_writeback(&mut out, None), 1);
            ix.writeback_done(out[0], true);
        }
        let newest: Vec<u32> = (0..MAX_VERSIONS).map(|_| write(&mut ix)).collect();
        let sb_seq = commit(&mut ix, &mut disk);
        assert_eq!(disk.iter().filter(|e| e.state == EntryState::Dirty).count(), MAX_LOADED_VERSIONS);
        let mut ix = index(64);
        ix.set_ordered(true);
        let rep = ix.load(sb_seq, 40, 100, |i| Ok(disk[i as usize])).unwrap();
        assert_eq!((rep.dirty, rep.discarded), (MAX_LOADED_VERSIONS as u64, MAX_VERSIONS as u64));
        assert_eq!(ix.versions(0).collect::<Vec<_>>(), newest.iter().rev().copied().collect::<Vec<_>>());
        commit(&mut ix, &mut disk);
        assert_eq!(disk.iter().filter(|e| e.state == EntryState::Dirty).count(), MAX_VERSIONS);
    }

    #[test]
    fn uncommitted_version_is_rewritten_in_place_until_a_barrier() {
        let mut ix = index(4);
        let WriteMap::Slot(a) = ix.map_write(1, true) else { panic!() };
        assert_eq!(ix.map_write(1, false), WriteMap::Busy, "no merging with data in flight");
        assert_eq!(
            ix.map_write(1, true),
            WriteMap::Slot(a),
            "a second whole-block write goes into the first in flight, not into a second version of the \
             same commit and epoch (a load could not tell them apart)"
        );
        assert_eq!(ix.lookup_read(1), None, "nothing readable before a write completes");
        ix.write_done(a, true);
        assert_eq!(ix.lookup_read(1), Some(a), "readable once one completed");
        assert_eq!(ix.map_write(1, false), WriteMap::Slot(a));
        ix.write_done(a, true);
        ix.write_done(a, true);
        let k = ix.barrier();
        ix.commit_done(k, true);
        assert_eq!(ix.map_write(2, false), WriteMap::NeedsCopy(None));
        // A read-modify-write building a slot is neither merged with nor overwritten: a write of
        // its epoch waits for it (`Busy`), one of the next epoch gets a new version, which the
        // next commit includes (a larger sequence number).
        let WriteMap::NeedsCopy(None) = ix.map_write(3, false) else { panic!() };
        let c = ix.alloc(3).unwrap();
        let k = ix.barrier();
        assert_eq!(ix.map_write(3, true), WriteMap::Busy);
        assert_eq!(ix.map_write(3, false), WriteMap::Busy);
        assert_eq!(ix.alloc(3), None);
        ix.close_epoch();
        let WriteMap::Slot(d) = ix.map_write(3, true) else { panic!() };
        assert_ne!(c, d, "a write in flight is never overwritten in place");
        ix.write_done(d, true);
        ix.write_done(c, true);
        assert_eq!(ix.lookup_read(3), Some(d), "the newer version wins whatever the completion order");
        ix.commit_done(k, true);
        let k = ix.barrier();
        // c, released before its write completed, is never a dirty entry (see
        // a_version_released_before_its_write_completed_is_never_a_dirty_entry).
        assert_eq!((ix.image(c).state, ix.image(c).seq), (EntryState::Free, 0));
        assert_eq!((ix.image(d).state, ix.image(d).seq), (EntryState::Dirty, k));
    }

    #[test]
    fn blocks_written_back_in_slot_order_are_reallocated_in_that_order() {
        let mut ix = index(8);
        let mut slots = vec![];
        for b in 0..8 {
            let WriteMap::Slot(i) = ix.map_write(b, true) else { panic!() };
            ix.write_done(i, true);
            slots.push(i);
        }
        assert_eq!(slots, (0..8).collect::<Vec<u32>>(), "a fresh index allocates ascending");
        let k = ix.barrier();
        ix.commit_done(k, true);
        let mut out = [0u32; 8];
        assert_eq!(ix.select_writeback(&mut out, None), 8);
        for &i in &out {
            ix.writeback_done(i, true);
        }
        for _ in 0..3 {
            let k = ix.barrier();
            ix.commit_done(k, true);
        }
        assert_eq!(ix.counts().free, 8);
        let again: Vec<u32> = (100..108)
            .map(|b| match ix.map_write(b, true) {
                WriteMap::Slot(i) => i,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(again, (0..8).collect::<Vec<u32>>());
    }

    /// Found by review: a partial write must not merge with a version that an in-place write
    /// is still writing, even once a barrier has put that version on disk.
    #[test]
    fn runs_of_blocks_map_to_consecutive_slots() {
        let mut ix = index(64);
        ix.format();
        let r = ix.map_write_run(100, 8);
        assert_eq!(r, RunMap { map: WriteMap::Slot(0), blocks: 8, hits: 0 });
        for i in 0..8 {
            ix.write_done(i, true);
        }
        // Rewritten in place before a barrier: the same slots, all hits.
        let r = ix.map_write_run(100, 8);
        assert_eq!(r, RunMap { map: WriteMap::Slot(0), blocks: 8, hits: 8 });
        for i in 0..8 {
            ix.write_done(i, true);
        }
        // Committed versions are rewritten in place too.
        let k = ix.barrier();
        ix.commit_done(k, true);
        let r = ix.map_write_run(100, 8);
        assert_eq!(r, RunMap { map: WriteMap::Slot(0), blocks: 8, hits: 8 });
        for i in 0..8 {
            ix.write_done(i, true);
        }
        // Versions of a closed epoch are not: the run gets the next free slots.
        ix.close_epoch();
        let r = ix.map_write_run(100, 8);
        assert_eq!(r, RunMap { map: WriteMap::Slot(8), blocks: 8, hits: 8 });
        for i in 8..16 {
            ix.write_done(i, true);
        }
        // A block whose newest version sits elsewhere ends the run before it.
        assert_eq!(ix.map_write(300, true), WriteMap::Slot(16));
        ix.write_done(16, true);
        let r = ix.map_write_run(298, 4);
        assert_eq!(r, RunMap { map: WriteMap::Slot(17), blocks: 2, hits: 0 });
        // A run never takes a slot it does not report.
        assert_eq!(ix.map_write(400, true), WriteMap::Slot(19));
        let c = ix.counts();
        assert_eq!(c.free + c.dirty + c.releasing, c.total);
    }

    #[test]
    fn blocks_with_a_version_or_a_pending_release_are_not_uncached() {
        let mut ix = index(64);
        ix.format();
        assert_eq!(ix.uncached_run(10, 4), 4);
        assert_eq!(ix.map_write(12, true), WriteMap::Slot(0));
        // Being written: cached.
        assert_eq!(ix.uncached_run(10, 4), 2);
        ix.write_done(0, true);
        let k = ix.barrier();
        ix.commit_done(k, true);
        // Written back: released, but its tombstone is not durable for two more commits.
        let mut out = [0u32; 4];
        assert_eq!(ix.select_writeback(&mut out, None), 1);
        ix.writeback_done(0, true);
        assert!(!ix.has_versions(12));
        assert_eq!(ix.uncached_run(12, 1), 0);
        for _ in 0..2 {
            assert_eq!(ix.uncached_run(12, 1), 0);
            let k = ix.barrier();
            ix.commit_done(k, true);
        }
        assert_eq!(ix.uncached_run(12, 1), 1);
        assert_eq!(ix.uncached_run(10, 4), 4);
    }

    #[test]
    fn partial_write_waits_for_in_place_writes_in_flight() {
        let mut ix = index(4);
        let WriteMap::Slot(a) = ix.map_write(9, true) else { panic!() };
        // The first write of the block is in flight: nothing to merge with yet.
        assert_eq!(ix.map_write(9, false), WriteMap::Busy);
        ix.write_done(a, true);
        // In place once complete, committed or not.
        assert_eq!(ix.map_write(9, false), WriteMap::Slot(a));
        let k = ix.barrier();
        ix.write_done(a, true);
        ix.commit_done(k, true);
        assert_eq!(ix.map_write(9, false), WriteMap::Slot(a));
        ix.write_done(a, true);
        // A version of a closed epoch is copied into a new slot instead.
        ix.close_epoch();
        assert_eq!(ix.map_write(9, false), WriteMap::NeedsCopy(Some(a)));
    }

    #[test]
    fn committed_version_rewritten_in_place_is_flushed_and_not_written_back_meanwhile() {
        let mut ix = index(4);
        let WriteMap::Slot(a) = ix.map_write(3, true) else { panic!() };
        ix.write_done(a, true);
        let k = ix.barrier();
        ix.commit_done(k, true);
        assert!(!ix.needs_commit());
        assert_eq!(ix.map_write(3, true), WriteMap::Slot(a));
        // The entry does not change, but the data must be flushed by the next commit.
        assert!(ix.needs_commit());
        let mut out = [0u32; 4];
        assert_eq!(ix.select_writeback(&mut out, None), 0, "a write into it is in flight");
        ix.write_done(a, true);
        assert_eq!(ix.select_writeback(&mut out, None), 1);
        assert_eq!(out[0], a);
        // Under writeback: a new write gets a new slot.
        let WriteMap::Slot(b) = ix.map_write(3, true) else { panic!() };
        assert_ne!(a, b);
        let k = ix.barrier();
        ix.commit_done(k, true);
        assert!(!ix.needs_commit() || ix.counts().releasing > 0);
    }

    #[test]
    fn contiguous_copies_merge_into_one() {
        let mut jobs: Vec<(u64, u64, u64)> = (0..100u64).rev().map(|b| (b * 8, 1000 + b * 8, 8)).collect();
        let mut capped = jobs.clone();
        assert_eq!(merge_copies(&mut jobs, u64::MAX), 1);
        assert_eq!(jobs[0], (0, 1000, 800));
        // At most 256 sectors per copy: 256 + 256 + 256 + 32.
        assert_eq!(merge_copies(&mut capped, 256), 4);
        assert_eq!(capped[..4], [(0, 1000, 256), (256, 1256, 256), (512, 1512, 256), (768, 1768, 32)]);
        let mut gap = vec![(0, 0, 8), (8, 16, 8), (16, 8, 8)];
        assert_eq!(merge_copies(&mut gap, u64::MAX), 3, "contiguous on one side only: no merge");
    }

    proptest! {
        /// Merged copies cover exactly the blocks given, in destination order.
        #[test]
        fn merged_copies_cover_exactly_the_input(blocks in proptest::collection::btree_set(0u64..500, 0..300),
                                                  seed in any::<u64>(), cap in 1u64..40) {
            let mut s = seed | 1;
            let mut jobs: Vec<(u64, u64, u64)> = blocks.iter().map(|&b| {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                // Cache slots sometimes follow the origin order, sometimes not.
                let slot = if s % 3 == 0 { s % 1000 } else { b };
                (slot * 8, b * 8, 8)
            }).collect();
            let mut want = jobs.clone();
            want.sort_by_key(|j| j.1);
            let m = merge_copies(&mut jobs, cap * 8);
            let mut got = vec![];
            for &(f, t, n) in &jobs[..m] {
                prop_assert!(n > 0 && n % 8 == 0 && n <= cap * 8);
                for k in 0..n / 8 {
                    got.push((f + 8 * k, t + 8 * k, 8));
                }
            }
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn cache_full_reports_no_space() {
        let mut ix = index(2);
        assert!(matches!(ix.map_write(1, true), WriteMap::Slot(_)));
        assert!(matches!(ix.map_write(2, true), WriteMap::Slot(_)));
        assert_eq!(ix.map_write(3, true), WriteMap::NoSpace);
    }

    /// Found by review: in ordered mode every flush closes the epoch and a version of a closed
    /// epoch is kept, so `pwrite 4K@0; fdatasync` in a loop added a version of block 0 per
    /// iteration, until the whole cache was one chain (1024 versions here, then `NoSpace`),
    /// walked by `write_done` in `end_io` with interrupts disabled.
    #[test]
    fn a_block_rewritten_after_every_flush_keeps_at_most_max_versions() {
        let mut ix = index(1024);
        ix.set_ordered(true);
        let mut out = [0u32; 64];
        let (mut refused, mut written_back) = (0, 0);
        for it in 0..100_000u32 {
            let i = match ix.map_write(0, true) {
                WriteMap::Slot(i) => i,
                WriteMap::TooManyVersions => {
                    refused += 1;
                    assert_eq!(ix.chain_len(0), MAX_VERSIONS);
                    assert!(ix.needs_writeback_now(), "writeback must become due");
                    assert_eq!(ix.alloc(0), None, "alloc keeps the bound too");
                    assert_eq!(ix.map_write(0, false), WriteMap::TooManyVersions, "a partial write too");
                    // The kernel's writeback round: commit, scan, copy, flush, release. In
                    // ordered mode it takes the oldest epoch: block 0's oldest version.
                    let k = ix.barrier();
                    ix.commit_done(k, true);
                    let oldest = ix.versions(0).last().unwrap();
                    assert_eq!(ix.select_writeback(&mut out, None), 1);
                    assert_eq!(out[0], oldest);
                    ix.writeback_done(oldest, true);
                    written_back += 1;
                    assert_eq!(ix.chain_len(0), MAX_VERSIONS - 1);
                    // The retried write goes through.
                    let WriteMap::Slot(i) = ix.map_write(0, true) else { panic!("retry refused at {it}") };
                    i
                }
                other => panic!("iteration {it}: {other:?}"),
            };
            ix.write_done(i, true);
            assert!(ix.chain_len(0) <= MAX_VERSIONS, "iteration {it}: {} versions", ix.chain_len(0));
            ix.close_epoch(); // the fdatasync
            if it % 7 == 0 {
                let k = ix.barrier();
                ix.commit_done(k, true);
            }
        }
        assert!(refused > 90_000, "{refused}");
        assert_eq!(refused, written_back);
        assert_eq!(ix.counts().dirty, MAX_VERSIONS as u64);
        // Writeback down to half the bound keeps it due; then it is not any more.
        let mut rounds = 0;
        while ix.needs_writeback_now() {
            let k = ix.barrier();
            ix.commit_done(k, true);
            let n = ix.select_writeback(&mut out, None);
            for &i in &out[..n] {
                ix.writeback_done(i, true);
            }
            rounds += 1;
        }
        assert_eq!(ix.chain_len(0), MAX_VERSIONS / 2);
        assert_eq!(rounds, MAX_VERSIONS / 2);
    }

    /// Writes in flight count towards the bound too (each write over a version still being
    /// written, of an older epoch, needs a new slot), and their completion lifts it.
    #[test]
    fn writes_in_flight_to_one_block_are_bounded() {
        let mut ix = index(64);
        let slots: Vec<u32> = (0..MAX_VERSIONS)
            .map(|_| {
                ix.close_epoch();
                match ix.map_write(3, true) {
                    WriteMap::Slot(i) => i,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert_eq!(ix.map_write(3, true), WriteMap::Slot(slots[MAX_VERSIONS - 1]), "into the newest, in place");
        ix.close_epoch();
        assert_eq!(ix.map_write(3, true), WriteMap::TooManyVersions);
        assert_eq!(ix.map_write_run(2, 4), RunMap { map: WriteMap::Slot(MAX_VERSIONS as u32), blocks: 1, hits: 0 }, "a run stops before it");
        ix.write_done(MAX_VERSIONS as u32, true);
        assert_eq!(ix.map_write_run(3, 2).map, WriteMap::TooManyVersions);
        for &i in slots.iter().rev() {
            ix.write_done(i, true);
        }
        ix.write_done(slots[MAX_VERSIONS - 1], true);
        assert_eq!(ix.chain_len(3), 1, "the newest completed write released the others");
        assert!(!ix.needs_writeback_now());
        assert!(matches!(ix.map_write(3, true), WriteMap::Slot(_)));
    }

    /// Checkpoints keep versions up to their limit when a newer epoch overwrites them; aborted
    /// checkpoints one after another (each closing an epoch) kept one more each, without bound.
    #[test]
    fn aborted_checkpoints_keep_at_most_max_versions() {
        let mut ix = index(256);
        let mut out = [0u32; 8];
        let mut refused = 0;
        for _ in 0..100 {
            let id = ix.close_epoch().unwrap();
            ix.set_wb_limit(Some(id));
            match ix.map_write(9, true) {
                WriteMap::Slot(i) => ix.write_done(i, true),
                WriteMap::TooManyVersions => {
                    refused += 1;
                    assert!(ix.needs_writeback_now());
                    // The checkpoint drains its epochs: the oldest version of block 9 goes.
                    let k = ix.barrier();
                    ix.commit_done(k, true);
                    assert!(ix.select_writeback(&mut out, None) >= 1);
                    ix.writeback_done(out[0], true);
                    let WriteMap::Slot(i) = ix.map_write(9, true) else { panic!() };
                    ix.write_done(i, true);
                }
                other => panic!("{other:?}"),
            }
            assert!(ix.chain_len(9) <= MAX_VERSIONS);
            ix.set_wb_limit(None); // aborted
        }
        assert_eq!(refused, 100 - MAX_VERSIONS);
        assert_eq!(ix.chain_len(9), MAX_VERSIONS);
        // Write-through releases every older version on completion (once it may be mapped).
        ix.close_epoch();
        assert_eq!(ix.map_write(9, true), WriteMap::TooManyVersions);
        let k = ix.barrier();
        ix.commit_done(k, true);
        assert_eq!(ix.select_writeback(&mut out[..1], None), 1);
        ix.writeback_done(out[0], true);
        let WriteMap::Slot(i) = ix.map_write(9, true) else { panic!() };
        ix.mark_write_through(i);
        ix.write_done(i, true);
        assert_eq!(ix.chain_len(9), 1);
    }

    #[test]
    fn ordered_mode_keeps_older_epochs_and_writes_back_epoch_by_epoch() {
        let mut ix = index(8);
        ix.set_ordered(true);
        let WriteMap::Slot(a) = ix.map_write(5, true) else { panic!() };
        ix.write_done(a, true);
        let WriteMap::Slot(x) = ix.map_write(6, true) else { panic!() };
        ix.write_done(x, true);
        let k = ix.barrier();
        ix.commit_done(k, true);
        let mut out = [0u32; 8];
        assert_eq!(ix.select_writeback(&mut out, None), 0, "the current epoch is open");
        assert_eq!(ix.close_epoch(), Some(1));
        let WriteMap::Slot(b) = ix.map_write(5, true) else { panic!() };
        ix.write_done(b, true);
        assert_eq!(ix.counts().dirty, 3, "the epoch-1 version of block 5 is kept");
        assert_eq!(ix.lookup_read(5), Some(b));
        let k = ix.barrier();
        ix.commit_done(k, true);
        ix.close_epoch();
        let n = ix.select_writeback(&mut out, None);
        let mut got = out[..n].to_vec();
        got.sort();
        let mut want = vec![a, x];
        want.sort();
        assert_eq!(got, want, "only epoch 1, and only the oldest version of block 5");
        for &i in &want {
            ix.writeback_done(i, true);
        }
        assert_eq!(ix.lookup_read(5), Some(b));
        assert_eq!(ix.oldest_dirty_epoch(), 1, "as of the last scan");
        assert_eq!(ix.select_writeback(&mut out, None), 1);
        assert_eq!(ix.oldest_dirty_epoch(), 2);
    }

    /// An index as loaded from a superblock of epoch `sb_epoch` with nothing cached (the new
    /// epoch is the next one).
    fn index_at(nr: u64, sb_epoch: u64, ordered: bool) -> Ix {
        let mut ix = index(nr);
        ix.set_ordered(ordered);
        ix.load(0, sb_epoch, 1 << 40, |_| Ok(Entry::free(0))).unwrap();
        assert_eq!(ix.epoch(), sb_epoch + 1);
        ix
    }

    fn write_block(ix: &mut Ix, block: u64) -> u32 {
        let WriteMap::Slot(i) = ix.map_write(block, true) else { panic!("block {block}") };
        ix.write_done(i, true);
        i
    }

    fn commit_all(ix: &mut Ix, disk: &mut [Entry]) -> u64 {
        let k = ix.barrier();
        for (i, d) in disk.iter_mut().enumerate() {
            *d = ix.image(i as u32);
        }
        ix.commit_done(k, true);
        k
    }

    /// Found by review: epochs were 32-bit and wrapped (to 1) after 2^32 closes, so marker ids
    /// (the epochs closed) started again from 1, and dm-repl's acknowledged marker id (a
    /// maximum) covered the new ones at once. Epochs are 64-bit now: from 2^32 - 2 they go on
    /// past 2^32 (the old code gave 2^32 - 1, then 1, 2, ...; its load also clamped a
    /// superblock's epoch to 2^32 - 2). Versions on both sides of 2^32 are written back epoch by
    /// epoch in ordered mode, and checkpoint limits across 2^32 count and keep the right ones.
    #[test]
    fn epochs_and_marker_ids_go_on_past_2_pow_32() {
        const B: u64 = 1 << 32;
        let mut ix = index_at(64, B - 3, true);
        let mut ids = vec![];
        // Block 0 rewritten in every epoch, block 10 + k written in epoch k.
        for k in 0..6u64 {
            write_block(&mut ix, 0);
            write_block(&mut ix, 10 + k);
            ids.push(ix.close_epoch().unwrap());
        }
        assert_eq!(ids, (B - 2..B + 4).collect::<Vec<_>>(), "ids increase past 2^32");
        assert_eq!(ix.epoch(), B + 4);
        assert_eq!(ix.chain_len(0), 6, "ordered mode keeps one version per epoch");
        let k = ix.barrier();
        ix.commit_done(k, true);
        // Ordered writeback: one epoch per scan, oldest first, across 2^32.
        let mut out = [0u32; 64];
        for &id in &ids {
            let n = ix.select_writeback(&mut out, None);
            assert_eq!(ix.oldest_dirty_epoch(), id);
            let mut got: Vec<u64> = out[..n].iter().map(|&i| ix.block_of(i)).collect();
            got.sort();
            assert_eq!(got, vec![0, 10 + (id - (B - 2))], "epoch {id}");
            assert!(out[..n].iter().all(|&i| u64::from(ix.image(i).epoch) == id & 0xFFFF_FFFF));
            for &i in &out[..n] {
                ix.writeback_done(i, true);
            }
        }
        assert_eq!(ix.counts().dirty, 0);
        assert_eq!(ix.oldest_dirty_epoch(), B + 4);

        // A checkpoint limit across 2^32, not in ordered mode: versions up to the limit are
        // counted and kept when a newer epoch overwrites them; newer ones are not written back.
        let mut ix = index_at(64, B - 3, false);
        write_block(&mut ix, 1); // epoch 2^32 - 2
        ix.close_epoch().unwrap();
        write_block(&mut ix, 2); // epoch 2^32 - 1
        ix.close_epoch().unwrap();
        write_block(&mut ix, 3); // epoch 2^32
        let id = ix.close_epoch().unwrap();
        assert_eq!(id, B);
        ix.set_wb_limit(Some(id));
        write_block(&mut ix, 1); // epoch 2^32 + 1 over 2^32 - 2: kept
        write_block(&mut ix, 4);
        assert_eq!(ix.chain_len(1), 2);
        let count = |ix: &Ix, limit: u64| ix.count_upto(limit, 0, 64).0;
        assert_eq!(count(&ix, id), 3);
        assert_eq!(count(&ix, B - 1), 2);
        assert_eq!(count(&ix, B + 1), 5);
        let k = ix.barrier();
        ix.commit_done(k, true);
        let n = ix.select_writeback(&mut out, None);
        let mut got: Vec<u64> = out[..n].iter().map(|&i| ix.block_of(i)).collect();
        got.sort();
        assert_eq!(got, vec![1, 2, 3], "epochs up to 2^32 only, the oldest version of block 1");
        for &i in &out[..n] {
            ix.writeback_done(i, true);
        }
        assert_eq!(count(&ix, id), 0);
        ix.set_wb_limit(None);
        assert_eq!(ix.select_writeback(&mut out, None), 2);
    }

    /// A crash with versions of one block in epochs 2^32 - 1 and 2^32 committed together: the
    /// load orders them by epoch across 2^32 and the next epoch is above every id handed out.
    /// (The old code compared the raw 32-bit epochs of versions committed together, taking the
    /// one of epoch 0xFFFF_FFFF for the newer: reads returned the older data; and its next epoch
    /// followed the largest raw epoch, 0xFFFF_FFFF, wrapping to 1: an id handed out before.)
    #[test]
    fn a_load_reconstructs_64_bit_epochs_across_2_pow_32() {
        const B: u64 = 1 << 32;
        let mut ix = index_at(16, B - 2, true);
        let mut disk = vec![Entry::free(0); 16];
        let old = write_block(&mut ix, 7); // epoch 2^32 - 1
        write_block(&mut ix, 8);
        let mut handed_out = vec![ix.close_epoch().unwrap()];
        let new = write_block(&mut ix, 7); // epoch 2^32
        handed_out.push(ix.close_epoch().unwrap());
        write_block(&mut ix, 9); // epoch 2^32 + 1
        assert_eq!(handed_out, vec![B - 1, B]);
        let sb_seq = commit_all(&mut ix, &mut disk);
        let sb_epoch = ix.epoch();
        assert_eq!(sb_epoch, B + 1);
        assert_eq!((disk[old as usize].seq, disk[new as usize].seq), (sb_seq, sb_seq), "committed together");
        assert_eq!((disk[old as usize].epoch, disk[new as usize].epoch), (0xFFFF_FFFF, 0));
        for budget in [1, 3, 1000] {
            let mut ix = index(16);
            ix.set_ordered(true);
            let (rep, _) = load_in_steps(&mut ix, &disk, sb_seq, sb_epoch, budget);
            assert_eq!(rep.unwrap().dirty, 4);
            assert_eq!(ix.epoch(), B + 2, "the next epoch follows the superblock's");
            assert_eq!(ix.lookup_read(7), Some(new), "the version of epoch 2^32 is the newer");
            assert_eq!(ix.versions(7).collect::<Vec<_>>(), vec![new, old]);
            assert_eq!(ix.oldest_dirty_epoch(), B - 1);
            let id = ix.close_epoch().unwrap();
            assert!(handed_out.iter().all(|&h| id > h), "id {id} after {handed_out:?}");
            let mut out = [0u32; 16];
            let n = ix.select_writeback(&mut out, None);
            let mut got: Vec<u32> = out[..n].to_vec();
            got.sort();
            assert_eq!(got.len(), 2);
            assert!(got.contains(&old) && !got.contains(&new), "epoch 2^32 - 1 first: {got:?}");
        }
        // The newest entry, not only the superblock, sets the next epoch: a superblock behind
        // its entries (not written by this code, but loadable) still gives a newer epoch.
        let mut ix = index(16);
        ix.load(sb_seq, B - 5, 1 << 40, |i| Ok(disk[i as usize])).unwrap();
        assert_eq!(ix.epoch(), B + 2, "entry of epoch 2^32 + 1 read as the epoch nearest 2^32 - 5");
        // A superblock of the 32-bit format converts with 2^32 added (wbformat): its entries'
        // low 32 bits read the same against it.
        let mut ix = index(16);
        ix.load(sb_seq, B + 3, 1 << 40, |i| Ok(disk[i as usize])).unwrap();
        assert_eq!(ix.epoch(), B + 4);
        assert_eq!(ix.oldest_dirty_epoch(), B - 1);
    }

    /// Slots keep the low 32 bits of epochs, so every version must stay less than 2^31 epochs
    /// old: past 2^30 writeback is due in every mode, and an epoch does not close once the
    /// oldest version would be 2^31 old (a flush from above leaves its writes in the open epoch,
    /// a checkpoint is refused) until it is written back.
    #[test]
    fn the_oldest_version_stays_within_2_pow_31_epochs() {
        const B: u64 = 1 << 32;
        let now = 3 * B + 17;
        let mut ix = index(8);
        let e = |epoch: u64| Entry { block: 4, seq: 1, epoch: epoch as u32, state: EntryState::Dirty };
        let young = now + 1 - EPOCH_WRITEBACK_AGE;
        ix.load(1, now, 1 << 40, |i| Ok(if i == 0 { e(young) } else { Entry::free(0) })).unwrap();
        assert_eq!(ix.oldest_dirty_epoch(), young);
        assert!(!ix.epochs_need_writeback(), "exactly 2^30 old: not yet");
        ix.close_epoch().unwrap();
        assert!(ix.epochs_need_writeback());
        let old = now + 3 - EPOCH_WINDOW;
        let mut ix = index(8);
        ix.load(1, now, 1 << 40, |i| Ok(if i == 0 { e(old) } else { Entry::free(0) })).unwrap();
        assert_eq!(ix.oldest_dirty_epoch(), old, "its 64-bit epoch, from 2^31 - 2 epochs back");
        assert!(ix.epochs_need_writeback());
        assert_eq!(ix.close_epoch(), Some(now + 1), "age 2^31 - 2: one more close");
        assert_eq!(ix.close_epoch(), None, "age 2^31 - 1: no more");
        assert_eq!(ix.epoch(), now + 2);
        let mut out = [0u32; 8];
        assert_eq!(ix.select_writeback(&mut out, None), 1);
        ix.writeback_done(out[0], true);
        assert!(!ix.epochs_need_writeback());
        assert_eq!(ix.close_epoch(), Some(now + 2));
        // A write into an empty cache knows its oldest epoch without a scan.
        write_block(&mut ix, 5);
        assert_eq!(ix.oldest_dirty_epoch(), now + 3);
        // u64::MAX is never passed.
        let mut ix = index_at(8, u64::MAX - 2, false);
        assert_eq!(ix.close_epoch(), Some(u64::MAX - 1));
        assert_eq!(ix.close_epoch(), None);
        assert_eq!(ix.epoch(), u64::MAX);
    }

    #[test]
    fn failed_first_write_leaves_the_older_version_readable() {
        let mut ix = index(4);
        let WriteMap::Slot(a) = ix.map_write(3, true) else { panic!() };
        ix.write_done(a, true);
        let k = ix.barrier();
        ix.commit_done(k, true);
        let WriteMap::Slot(b) = ix.map_write(3, true) else { panic!() };
        ix.write_done(b, false);
        assert_eq!(ix.lookup_read(3), Some(a));
        assert_eq!(ix.counts().dirty, 1);
    }

    // --- model-based test: random operations, crashes with torn commits, reloads.

    #[derive(Clone, Debug)]
    enum Op {
        Write(u64),
        WriteRun(u64, u32),
        WriteAround(u64),
        Complete(usize),
        /// A commit begins (`barrier_begin`); its steps run with other operations in between.
        Barrier,
        /// A step of the commit in progress (`barrier_step`, or `commit_end_step` once it
        /// ended) of this budget.
        CommitStep(u32),
        WriteImages(Vec<bool>),
        Sb,
        Writeback(usize),
        WritebackDone,
        CloseEpoch,
        /// Starts a checkpoint (hold, or write-through when true): closes the epoch, sets the
        /// writeback limit.
        Checkpoint(bool),
        /// Ends the checkpoint if everything up to its epoch is written back (the marker).
        CheckpointDone,
        /// Ends the checkpoint without a marker (abort, timeout, error): the limit is lifted
        /// with versions up to its epoch still cached.
        CheckpointAbort,
        /// A write of the whole block, its completion, then a flush from above (`pwrite;
        /// fdatasync`): in ordered mode the epoch closes, and the flush commits.
        Fsync(u64),
        /// A crash, then a load in steps of this budget.
        Crash(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u64..6).prop_map(Op::Write),
            2 => (0u64..6, 2u32..4).prop_map(|(b, n)| Op::WriteRun(b, n)),
            2 => (0u64..6).prop_map(Op::WriteAround),
            6 => (0usize..8).prop_map(Op::Complete),
            2 => Just(Op::Barrier),
            2 => (1u32..4).prop_map(Op::CommitStep),
            2 => proptest::collection::vec(any::<bool>(), 8).prop_map(Op::WriteImages),
            2 => Just(Op::Sb),
            2 => (1usize..5).prop_map(Op::Writeback),
            2 => Just(Op::WritebackDone),
            1 => Just(Op::CloseEpoch),
            1 => any::<bool>().prop_map(Op::Checkpoint),
            2 => Just(Op::CheckpointDone),
            1 => Just(Op::CheckpointAbort),
            1 => (0u64..6).prop_map(Op::Fsync),
            1 => (1u32..64).prop_map(Op::Crash),
        ]
    }

    /// Few blocks rewritten across many epochs, little writeback: chains reach the bound.
    fn hot_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u64..2).prop_map(Op::Fsync),
            3 => (0u64..3).prop_map(Op::Write),
            1 => (0u64..2, 2u32..3).prop_map(|(b, n)| Op::WriteRun(b, n)),
            3 => (0usize..8).prop_map(Op::Complete),
            2 => Just(Op::CloseEpoch),
            1 => Just(Op::Barrier),
            1 => (1u32..4).prop_map(Op::CommitStep),
            1 => proptest::collection::vec(any::<bool>(), 8).prop_map(Op::WriteImages),
            1 => Just(Op::Sb),
            1 => (1usize..5).prop_map(Op::Writeback),
            1 => Just(Op::WritebackDone),
            1 => any::<bool>().prop_map(Op::Checkpoint),
            1 => Just(Op::CheckpointDone),
            1 => Just(Op::CheckpointAbort),
            1 => (1u32..64).prop_map(Op::Crash),
        ]
    }

    /// A run of the model: ordered mode or not, and its operations (a hot mix in half the runs).
    fn model_run() -> impl Strategy<Value = (bool, Vec<Op>)> {
        prop_oneof![
            (any::<bool>(), proptest::collection::vec(op(), 1..120)),
            (Just(true), proptest::collection::vec(hot_op(), 1..300)),
        ]
    }

    /// The epoch a run starts at: 1 (a new cache) in half the runs, otherwise just below 2^32,
    /// so that the run's epochs (and marker ids) cross it.
    fn start_epoch() -> impl Strategy<Value = u64> {
        prop_oneof![Just(1u64), (1u64 << 32) - 16..(1u64 << 32) + 1]
    }

    const NR: u64 = 40; // three 16-entry sectors: commits can tear between them
    const SECTOR_ENTRIES: u64 = 16;

    struct Model {
        ix: Ix,
        ordered: bool,
        next_id: u64,
        /// In-flight writes: (slot, block, id, mapped before the current barrier).
        inflight: Vec<(u32, u64, u64, bool)>,
        slot_data: Vec<u64>,
        origin: BTreeMap<u64, u64>,
        /// Latest completed write per block.
        latest: BTreeMap<u64, u64>,
        /// Durable lower bound per block (latest completed before the last committed barrier).
        durable: BTreeMap<u64, u64>,
        at_barrier: Option<(u64, BTreeMap<u64, u64>)>,
        /// The commit in progress has slots left to mark (`barrier_step`).
        marking: bool,
        /// The last commit ended and has slots left to free (`commit_end_step`).
        ending: bool,
        images_written: bool,
        disk: Vec<Entry>,
        disk_seq: u64,
        disk_epoch: u64,
        wb: Vec<(u32, u64, u64)>,
        ids_of: BTreeMap<u64, Vec<u64>>,
        pending_images: Vec<(u64, Entry)>,
        /// Latest write per block by mapping order (what a checkpoint closed now contains).
        mapped: BTreeMap<u64, u64>,
        /// A checkpoint in progress: its epoch, write-through mode, and what the origin must
        /// hold at its marker (every write mapped before it closed the epoch; in write-through
        /// mode updated by the writes through since).
        cp: Option<(u64, bool, BTreeMap<u64, u64>)>,
        checkpoints: u32,
        /// Writes refused at the version bound.
        bound_hits: u32,
        /// Loads of metadata holding more than MAX_VERSIONS versions of a block.
        over_bound_loads: u32,
        /// At a crash: per slot, the block and epoch of the committed version it held.
        live: Vec<Option<(u64, u32)>>,
        /// The last epoch closed (since the last crash: then the largest marker id).
        last_closed: u64,
        /// The largest marker id written (a checkpoint that completed).
        max_marker: u64,
    }

    impl Model {
        /// A model whose index starts at epoch `start` (1: formatted; otherwise loaded from an
        /// empty cache whose superblock says `start - 1`).
        fn new(ordered: bool, start: u64) -> Self {
            let mut ix = index(NR);
            ix.set_ordered(ordered);
            if start > 1 {
                ix.load(0, start - 1, 1 << 20, |_| Ok(Entry::free(0))).unwrap();
                assert_eq!(ix.epoch(), start);
            }
            Self {
                ix,
                ordered,
                next_id: 1,
                inflight: vec![],
                slot_data: vec![0; NR as usize],
                origin: BTreeMap::new(),
                latest: BTreeMap::new(),
                durable: BTreeMap::new(),
                at_barrier: None,
                marking: false,
                ending: false,
                images_written: false,
                disk: vec![Entry::free(0); NR as usize],
                disk_seq: 0,
                disk_epoch: start.max(2) - 1,
                wb: vec![],
                ids_of: BTreeMap::new(),
                pending_images: vec![],
                mapped: BTreeMap::new(),
                cp: None,
                checkpoints: 0,
                bound_hits: 0,
                over_bound_loads: 0,
                live: vec![],
                last_closed: 0,
                max_marker: 0,
            }
        }

        /// Closes the epoch: ids only grow, also across 2^32 and across crashes.
        fn close_epoch(&mut self) -> Option<u64> {
            let n = self.ix.close_epoch()?;
            assert!(n > self.last_closed, "epoch {n} closed after {}", self.last_closed);
            self.last_closed = n;
            Some(n)
        }

        fn read(&self, b: u64) -> u64 {
            match self.ix.lookup_read(b) {
                Some(i) => self.slot_data[i as usize],
                None => self.origin.get(&b).copied().unwrap_or(0),
            }
        }

        fn check_reads(&self) {
            for b in 0..6 {
                let want = self.latest.get(&b).copied().unwrap_or(0);
                assert_eq!(self.read(b), want, "block {b}");
            }
        }

        fn step(&mut self, op: &Op) {
            match op {
                Op::Write(b) => {
                    // Several writes of a block may be in flight, into different versions,
                    // except in a write-through checkpoint (the model would have to order their
                    // copies on the origin).
                    let wt = matches!(self.cp, Some((_, true, _)));
                    if (wt && self.inflight.iter().any(|w| w.1 == *b)) || self.rewrite_in_flight(*b) {
                        return;
                    }
                    if wt && self.ix.under_writeback(*b) {
                        return; // the target waits for that copy first
                    }
                    let m = self.ix.map_write(*b, true);
                    if m == WriteMap::TooManyVersions {
                        assert_eq!(self.ix.chain_len(*b), MAX_VERSIONS);
                        assert!(self.ix.needs_writeback_now());
                        self.bound_hits += 1;
                    }
                    if let WriteMap::Slot(i) = m {
                        let id = self.next_id;
                        self.next_id += 1;
                        if wt {
                            self.ix.mark_write_through(i);
                        }
                        self.inflight.push((i, *b, id, false));
                        self.ids_of.entry(*b).or_default().push(id);
                        self.mapped.insert(*b, id);
                    }
                }
                Op::WriteRun(b, n) => {
                    let n = (*n).min((6 - *b) as u32).max(1);
                    if (*b..*b + u64::from(n)).any(|x| self.rewrite_in_flight(x)) {
                        return;
                    }
                    if matches!(self.cp, Some((_, true, _))) {
                        return; // write-through takes one block at a time
                    }
                    let r = self.ix.map_write_run(*b, n);
                    if let WriteMap::Slot(i) = r.map {
                        assert!(r.blocks >= 1 && r.blocks <= n);
                        // One I/O carries the run; its blocks may complete in any order here
                        // (a superset of what one bio does).
                        for k in 0..r.blocks {
                            let id = self.next_id;
                            self.next_id += 1;
                            self.inflight.push((i + k, *b + u64::from(k), id, false));
                            self.ids_of.entry(*b + u64::from(k)).or_default().push(id);
                            self.mapped.insert(*b + u64::from(k), id);
                        }
                    }
                }
                Op::WriteAround(b) => {
                    // A write straight to the origin (the target does this when the cache is
                    // full), completed and flushed at once: the strongest claim.
                    // A hold checkpoint turns this off (nothing new may reach the origin before
                    // the marker); write-through sends uncached blocks this way.
                    if self.inflight.iter().any(|w| w.1 == *b) || self.ix.uncached_run(*b, 1) != 1 || matches!(self.cp, Some((_, false, _))) {
                        return;
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    self.ids_of.entry(*b).or_default().push(id);
                    self.mapped.insert(*b, id);
                    if let Some((_, true, want)) = &mut self.cp {
                        want.insert(*b, id);
                    }
                    self.origin.insert(*b, id);
                    self.latest.insert(*b, id);
                    self.durable.insert(*b, id);
                    if let Some((_, snap)) = &mut self.at_barrier {
                        snap.insert(*b, id);
                    }
                }
                Op::Complete(n) => {
                    if self.inflight.is_empty() {
                        return;
                    }
                    let w = self.inflight.remove(n % self.inflight.len());
                    self.complete(w);
                }
                Op::Barrier => {
                    if self.at_barrier.is_some() {
                        return;
                    }
                    // The kernel ends a commit before it begins the next.
                    while self.ending {
                        self.step(&Op::CommitStep(u32::MAX));
                    }
                    for w in &mut self.inflight {
                        w.3 = true;
                    }
                    let k = self.ix.barrier_begin();
                    self.marking = true;
                    self.at_barrier = Some((k, self.latest.clone()));
                    self.images_written = false;
                }
                Op::CommitStep(budget) => {
                    if self.marking {
                        self.marking = !self.ix.barrier_step(*budget);
                    } else if self.ending {
                        self.ending = !self.ix.commit_end_step(*budget);
                    }
                }
                Op::WriteImages(torn) => {
                    let Some((_, _)) = self.at_barrier else { return };
                    if self.images_written {
                        return;
                    }
                    // The kernel marks before it writes.
                    while self.marking {
                        self.step(&Op::CommitStep(u32::MAX));
                    }
                    // The target waits for I/O mapped before the barrier.
                    while let Some(p) = self.inflight.iter().position(|w| w.3) {
                        let w = self.inflight.remove(p);
                        self.complete(w);
                    }
                    let mut mb = 0;
                    loop {
                        // In steps of one bitmap word, as the kernel looks.
                        let m = match self.ix.find_commit_block(mb, 1) {
                            CommitBlock::Write(m) => m,
                            CommitBlock::Continue(f) => {
                                mb = f;
                                continue;
                            }
                            CommitBlock::Done => break,
                        };
                        let first = m * ENTRIES_PER_META_BLOCK;
                        for i in first..(first + ENTRIES_PER_META_BLOCK).min(NR) {
                            // Each 512-byte sector lands or not (torn write before a crash).
                            if torn.get((i / SECTOR_ENTRIES) as usize).copied().unwrap_or(true) {
                                self.disk[i as usize] = self.ix.image(i as u32);
                            }
                        }
                        mb = m + 1;
                    }
                    // A torn pattern models a crash in the middle: make it whole if we go on.
                    self.images_written = true;
                    let mut mb = 0;
                    let snapshot: Vec<(u64, Entry)> = {
                        let mut v = vec![];
                        while let Some(m) = self.ix.next_commit_block(mb) {
                            let first = m * ENTRIES_PER_META_BLOCK;
                            for i in first..(first + ENTRIES_PER_META_BLOCK).min(NR) {
                                v.push((i, self.ix.image(i as u32)));
                            }
                            mb = m + 1;
                        }
                        v
                    };
                    self.pending_images = snapshot;
                }
                Op::Sb => {
                    let Some((k, snap)) = self.at_barrier.take() else { return };
                    if !self.images_written {
                        self.at_barrier = Some((k, snap));
                        return;
                    }
                    for (i, e) in self.pending_images.drain(..) {
                        self.disk[i as usize] = e;
                    }
                    self.disk_seq = k;
                    self.disk_epoch = self.ix.epoch();
                    self.ix.commit_end(k, true);
                    self.ending = true;
                    for (b, id) in snap {
                        let d = self.durable.entry(b).or_insert(0);
                        *d = (*d).max(id);
                    }
                }
                Op::Writeback(n) => {
                    // In small steps, as the kernel does between lock drops.
                    let mut out = vec![0u32; *n];
                    let mut scan = self.ix.scan_begin(None);
                    while !self.ix.scan_step(&mut scan, &mut out, 7) {}
                    let got = scan.found;
                    for &i in &out[..got] {
                        let b = self.ix.block_of(i);
                        // The copy reads the cache block now.
                        self.wb.push((i, b, self.slot_data[i as usize]));
                    }
                }
                Op::WritebackDone => {
                    // Data written and the origin flushed.
                    for (i, b, id) in self.wb.drain(..) {
                        self.origin.insert(b, id);
                        self.ix.writeback_done(i, true);
                    }
                }
                Op::CloseEpoch => {
                    // Also during a checkpoint (a flush from above in ordered mode): the new
                    // epochs are newer than the checkpoint's.
                    self.close_epoch();
                }
                Op::Checkpoint(wt) => {
                    if self.cp.is_some() {
                        return;
                    }
                    let Some(n) = self.close_epoch() else { return };
                    self.ix.set_wb_limit(Some(n));
                    if *wt {
                        // The target runs the checkpoint in write-through mode (not ordered).
                        self.ix.set_ordered(false);
                    }
                    self.cp = Some((n, *wt, self.mapped.clone()));
                    // The target commits the new epoch before the drain, so that marker ids
                    // never repeat after a crash (after any commit in progress).
                    if self.at_barrier.is_none() {
                        self.step(&Op::Barrier);
                    }
                    self.step(&Op::WriteImages(vec![true; 8]));
                    self.step(&Op::Sb);
                }
                Op::CheckpointAbort => {
                    if self.cp.take().is_some() {
                        self.ix.set_wb_limit(None);
                        self.ix.set_ordered(self.ordered);
                    }
                }
                Op::CheckpointDone => {
                    let Some((n, _, want)) = &self.cp else { return };
                    let mut left = 0;
                    let mut pos = 0;
                    while (pos as u64) < NR {
                        let (c, next) = self.ix.count_upto(*n, pos, 7);
                        left += c;
                        pos = next;
                    }
                    if left > 0 {
                        return;
                    }
                    // The marker goes down now: the origin holds exactly the checkpoint's state.
                    for b in 0..6u64 {
                        let got = self.origin.get(&b).copied().unwrap_or(0);
                        assert_eq!(got, want.get(&b).copied().unwrap_or(0), "block {b} at the marker of epoch {n}");
                    }
                    assert!(self.disk_epoch > *n, "marker {n} written, the superblock says epoch {}", self.disk_epoch);
                    self.max_marker = self.max_marker.max(*n);
                    self.checkpoints += 1;
                    self.ix.set_wb_limit(None);
                    self.ix.set_ordered(self.ordered);
                    self.cp = None;
                }
                Op::Fsync(b) => {
                    if self.inflight.iter().any(|w| w.1 == *b) {
                        return;
                    }
                    self.step(&Op::Write(*b));
                    if let Some(p) = self.inflight.iter().position(|w| w.1 == *b) {
                        let w = self.inflight.remove(p);
                        self.complete(w);
                    }
                    if self.ordered {
                        self.close_epoch();
                    }
                    // The flush commits (after any commit in progress).
                    if self.at_barrier.is_none() {
                        self.step(&Op::Barrier);
                    }
                    self.step(&Op::WriteImages(vec![true; 8]));
                    self.step(&Op::Sb);
                }
                Op::Crash(budget) => self.crash(*budget),
            }
            if !matches!(op, Op::Crash(_)) {
                self.check_reads();
            }
            self.check_invariants();
        }

        /// Whether a write of `b` would rewrite in place a version with a write in flight into it:
        /// the slot would hold whichever lands last, which the model does not follow.
        fn rewrite_in_flight(&self, b: u64) -> bool {
            let Some(n) = self.ix.versions(b).next() else { return false };
            self.ix.slots[n as usize].epoch == self.ix.epoch() as u32 && self.inflight.iter().any(|w| w.0 == n)
        }

        fn complete(&mut self, (i, b, id, before_barrier): (u32, u64, u64, bool)) {
            self.slot_data[i as usize] = id;
            if let Some((n, true, want)) = &mut self.cp {
                // A write of the checkpoint's write-through phase (a newer epoch): it reached
                // the origin too before completing.
                if self.ix.slots[i as usize].epoch != *n as u32 && self.ix.slots[i as usize].has(F_WT) {
                    self.origin.insert(b, id);
                    want.insert(b, id);
                }
            }
            self.ix.write_done(i, true);
            // Of writes of a block in flight together, the one mapped last wins (the block
            // layer orders none of them; the cache takes the newest version).
            let l = self.latest.entry(b).or_insert(0);
            *l = (*l).max(id);
            // A write mapped before the barrier and completing before the commit's images are
            // written is in that commit, unless a newer version released it first (a flush need
            // not cover a write that completed after it was issued: such a version never needs
            // to be durable, the newer one completed before it).
            if before_barrier && self.ix.slots[i as usize].state() == ST_VALID {
                if let Some((_, snap)) = &mut self.at_barrier {
                    let l = snap.entry(b).or_insert(0);
                    *l = (*l).max(id);
                }
            }
        }

        fn check_invariants(&self) {
            let c = self.ix.counts();
            assert_eq!(c.free + c.dirty + c.releasing, c.total, "{c:?}");
            for b in 0..6 {
                assert!(self.ix.chain_len(b) <= MAX_VERSIONS, "block {b}: {} versions", self.ix.chain_len(b));
            }
        }

        fn crash(&mut self, budget: u32) {
            // In-flight writes and writebacks are lost (writebacks never reached a flush).
            // Versions held now whose image on disk is committed.
            self.live = (0..NR as usize)
                .map(|i| {
                    let s = self.ix.slots[i];
                    let d = self.disk[i];
                    let on_disk = d.state == EntryState::Dirty && d.seq <= self.disk_seq && d.seq == s.seq && d.block == s.block();
                    (s.holds_data() && on_disk).then_some((s.block(), s.epoch))
                })
                .collect();
            let mut fresh = core::mem::replace(&mut self.ix, index(NR));
            fresh.set_ordered(self.ordered);
            let disk = self.disk.clone();
            for b in 0..6 {
                let raw = disk.iter().filter(|e| e.block == b && e.state == EntryState::Dirty && e.seq <= self.disk_seq).count();
                assert!(raw <= MAX_LOADED_VERSIONS, "block {b}: {raw} versions on disk");
                if raw > MAX_VERSIONS {
                    self.over_bound_loads += 1;
                }
            }
            // In steps, as the kernel does between lock drops, into the index used before the
            // crash (compared below with a load into a new one).
            let (rep, _) = load_in_steps(&mut fresh, &disk, self.disk_seq, self.disk_epoch, budget);
            let rep = rep.unwrap();
            // Marker ids never repeat: the next epoch is above every one written.
            assert!(fresh.epoch() > self.max_marker, "epoch {} after marker {}", fresh.epoch(), self.max_marker);
            assert!(fresh.epoch() > self.disk_epoch);
            self.last_closed = self.max_marker;
            let committed = disk.iter().filter(|e| e.state == EntryState::Dirty && e.seq <= self.disk_seq).count() as u64;
            assert_eq!(rep.dirty + rep.ignored, disk.iter().filter(|e| e.state == EntryState::Dirty).count() as u64);
            assert_eq!(rep.dirty, committed);
            assert_eq!(fresh.counts().dirty, rep.dirty - rep.discarded);
            let mut again = index(NR);
            assert_eq!(again.load(self.disk_seq, self.disk_epoch, 1 << 20, |i| Ok(disk[i as usize])).unwrap(), rep);
            assert!(state_of(&again) == state_of(&fresh), "a load in steps differs from the one-shot load");
            if self.ordered {
                // Every version held before the crash and committed comes back (or one of its
                // epoch, newer): the origin can still be brought to every epoch boundary.
                for (i, was) in self.live.iter().enumerate() {
                    let Some((b, epoch)) = *was else { continue };
                    let back = fresh.versions(b).any(|v| v as usize == i || fresh.slots[v as usize].epoch == epoch);
                    assert!(back, "slot {i}: block {b} epoch {epoch} lost at load; disk {disk:?}");
                }
            }
            for b in 0..6u64 {
                let got = match fresh.lookup_read(b) {
                    Some(i) => self.slot_data[i as usize],
                    None => self.origin.get(&b).copied().unwrap_or(0),
                };
                let d = self.durable.get(&b).copied().unwrap_or(0);
                assert!(got >= d, "block {b}: read {got} after crash, but {d} was durable");
                if got != 0 {
                    assert!(self.ids_of.get(&b).is_some_and(|v| v.contains(&got)), "block {b}: data {got} of another block");
                }
            }
            // Continue from the recovered state (a checkpoint in progress is lost: its marker was
            // never written).
            self.ix = fresh;
            self.cp = None;
            self.inflight.clear();
            self.wb.clear();
            self.at_barrier = None;
            self.marking = false;
            self.ending = false;
            self.images_written = false;
            self.pending_images.clear();
            self.latest.clear();
            for b in 0..6u64 {
                let v = match self.ix.lookup_read(b) {
                    Some(i) => self.slot_data[i as usize],
                    None => self.origin.get(&b).copied().unwrap_or(0),
                };
                self.latest.insert(b, v);
                self.durable.insert(b, v);
            }
            self.mapped = self.latest.clone();
        }
    }

    /// The hot mix of the model does reach the bound, and loads metadata beyond it.
    #[test]
    fn the_crash_model_reaches_the_version_bound() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let (mut runs_refused, mut loads_over) = (0, 0);
        for _ in 0..200 {
            let ops = proptest::collection::vec(hot_op(), 300).new_tree(&mut runner).unwrap().current();
            let mut m = Model::new(true, 1);
            for o in &ops {
                m.step(o);
            }
            m.crash(7);
            runs_refused += u32::from(m.bound_hits > 0);
            loads_over += m.over_bound_loads;
        }
        assert!(runs_refused >= 150, "{runs_refused} of 200 runs hit the bound");
        assert!(loads_over >= 10, "{loads_over} loads beyond MAX_VERSIONS");
    }

    /// Runs of the model started below 2^32 cross it: markers with ids above 2^32, and crashes
    /// whose load reads back versions from both sides.
    #[test]
    fn the_crash_model_crosses_2_pow_32() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let (mut crossed, mut markers_above) = (0, 0);
        for k in 0..200 {
            let (ordered, ops) = model_run().new_tree(&mut runner).unwrap().current();
            let mut m = Model::new(ordered, (1 << 32) - 16 + k % 17);
            for o in &ops {
                m.step(o);
            }
            m.crash(5);
            crossed += u32::from(m.ix.epoch() > 1 << 32);
            markers_above += u32::from(m.max_marker >= 1 << 32);
        }
        // 104 and 6 (TestRunner::deterministic).
        assert!(crossed >= 80, "{crossed} of 200 runs crossed 2^32");
        assert!(markers_above >= 3, "{markers_above} of 200 runs wrote a marker above 2^32");
    }



    proptest! {
        // 2000 cases in `make test`; `make test-long` sets PROPTEST_CASES higher.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000),
            ..ProptestConfig::default()
        })]

        #[test]
        fn index_matches_the_model_and_survives_crashes((ordered, ops) in model_run(), budget in 1u32..64, start in start_epoch()) {
            let mut m = Model::new(ordered, start);
            for o in &ops {
                m.step(o);
            }
            m.crash(budget);
        }
    }
}
