// SPDX-License-Identifier: GPL-2.0

//! Bios handed to a target, and clones submitted on their behalf.
//!
//! C header: [`include/linux/bio.h`](srctree/include/linux/bio.h)
//!
//! A [`Bio`] is the *responsibility to complete* one bio. It is consumed by [`Bio::end`] (complete
//! now), by returning it from `map` ([`super::target::MapResult`]) or by
//! [`Bio::submit_clone`] (complete when the clone does). A `Bio` dropped without any of these is
//! completed with an I/O error and a warning, so a bio can never be completed twice and never be
//! forgotten.

use super::bindings::{self, ffi};
use super::device::Device;
use super::mem::GFP_NOIO;
use core::marker::PhantomData;
use core::mem::{size_of, ManuallyDrop};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};
use kernel::alloc::KBox;
use kernel::error::{code::*, Error, Result};
use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::types::Opaque;

/// Per-bio data a target keeps in device-mapper's front pad: plain data, no destructor.
pub trait PerBio: Copy + Default + Send + Sync + 'static {}
impl<T: Copy + Default + Send + Sync + 'static> PerBio for T {}

/// A block-layer completion status (`blk_status_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkStatus(pub(crate) bindings::blk_status_t);

impl BlkStatus {
    /// Success.
    pub const OK: Self = Self(bindings::DMCORE_BLK_STS_OK);
    /// Generic I/O error.
    pub const IOERR: Self = Self(bindings::DMCORE_BLK_STS_IOERR);
    /// Operation not supported.
    pub const NOTSUPP: Self = Self(bindings::DMCORE_BLK_STS_NOTSUPP);
    /// No space.
    pub const NOSPC: Self = Self(bindings::DMCORE_BLK_STS_NOSPC);
    /// Timed out.
    pub const TIMEOUT: Self = Self(bindings::DMCORE_BLK_STS_TIMEOUT);
    /// Try again (non-blocking I/O).
    pub const AGAIN: Self = Self(bindings::DMCORE_BLK_STS_AGAIN);
    /// Device-mapper internal: requeue.
    pub const DM_REQUEUE: Self = Self(bindings::DMCORE_BLK_STS_DM_REQUEUE);

    /// Whether this is success.
    pub fn is_ok(self) -> bool {
        self == Self::OK
    }

    /// The status for a kernel error.
    pub fn from_error(e: Error) -> Self {
        // SAFETY: pure function of its argument.
        Self(unsafe { bindings::errno_to_blk_status(e.to_errno()) })
    }

    /// The raw value, to keep in per-bio data (which must be plain data).
    pub fn to_raw(self) -> u8 {
        self.0
    }

    /// A status kept with [`BlkStatus::to_raw`].
    pub fn from_raw(v: u8) -> Self {
        Self(v)
    }

    /// The errno for this status (0 for success).
    pub fn to_errno(self) -> i32 {
        // SAFETY: pure function of its argument.
        unsafe { bindings::blk_status_to_errno(self.0) }
    }
}

/// Operation of a bio (`REQ_OP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read data.
    Read,
    /// Write data.
    Write,
    /// Empty flush: `REQ_OP_FLUSH`, or a `REQ_OP_WRITE` with `REQ_PREFLUSH` and no data (how
    /// device-mapper sends flushes to targets).
    Flush,
    /// Discard a range.
    Discard,
    /// Securely erase a range.
    SecureErase,
    /// Write zeroes to a range.
    WriteZeroes,
    /// Any other operation (zone management, driver-private).
    Other(u32),
}

impl Op {
    fn from_raw(op: u32) -> Self {
        match op {
            bindings::req_op_REQ_OP_READ => Op::Read,
            bindings::req_op_REQ_OP_WRITE => Op::Write,
            bindings::req_op_REQ_OP_FLUSH => Op::Flush,
            bindings::req_op_REQ_OP_DISCARD => Op::Discard,
            bindings::req_op_REQ_OP_SECURE_ERASE => Op::SecureErase,
            bindings::req_op_REQ_OP_WRITE_ZEROES => Op::WriteZeroes,
            o => Op::Other(o),
        }
    }
}

/// Given to [`crate::target::Target::map`] with its bio, for the duration of the call: proof
/// that the code holding it runs in `map` for that bio (see [`Bio::accept_partial`]).
///
/// # Invariants
///
/// `bio` is the bio `map` was called for; the token does not outlive that call (it is only
/// lent out, and it is neither `Send` nor `Sync`, so no other thread sees it).
pub struct MapContext<'a> {
    bio: *mut bindings::bio,
    _p: PhantomData<&'a ()>,
}

impl MapContext<'_> {
    /// # Safety
    ///
    /// Only for `map_callback`: `bio` is the bio being mapped, and the token is dropped before
    /// `map` returns.
    pub(crate) unsafe fn new(bio: *mut bindings::bio) -> Self {
        Self { bio, _p: PhantomData }
    }
}

/// A bio this code must complete. `P` is the target's per-bio data.
///
/// # Invariants
///
/// `ptr` is a live bio that nobody else will complete: completing it (or returning it to
/// device-mapper) is the job of this object. If the bio came from device-mapper's `map`, its
/// front pad holds an initialised `P`. `begin` is the first sector of the target it was mapped
/// through.
pub struct Bio<P: PerBio = ()> {
    ptr: NonNull<bindings::bio>,
    begin: u64,
    _p: PhantomData<P>,
}

// SAFETY: the responsibility for a bio may move between threads (bios are completed from any
// context); `P: Send`.
unsafe impl<P: PerBio> Send for Bio<P> {}
// SAFETY: `&Bio` only reads the bio's fields and pages; `P: Sync`.
unsafe impl<P: PerBio> Sync for Bio<P> {}

impl<P: PerBio> Bio<P> {
    /// Takes a bio given to a target's `map` and initialises its per-bio data.
    ///
    /// # Safety
    ///
    /// `bio` must be a bio device-mapper hands to `map` of a target whose `per_io_data_size` is
    /// `size_of::<P>()`, and the caller gives up completing it itself.
    pub(crate) unsafe fn from_dm_map(bio: *mut bindings::bio, begin: u64) -> Option<Self> {
        let ptr = NonNull::new(bio)?;
        if size_of::<P>() != 0 {
            // SAFETY: the front pad holds `size_of::<P>()` bytes, aligned for `P` (alignment
            // is checked at registration to be at most 8, device-mapper's pad alignment).
            unsafe { (bindings::dm_per_bio_data(bio, size_of::<P>()) as *mut P).write(P::default()) };
        }
        // INVARIANT: per-bio data initialised; the caller hands over completion.
        Some(Self { ptr, begin, _p: PhantomData })
    }

    /// A view of a bio in `end_io`, which must never be completed or dropped: wrap it in
    /// `ManuallyDrop`.
    ///
    /// # Safety
    ///
    /// `bio` went through `map` of the same target (so `P` is initialised) and is live for the
    /// view's lifetime.
    pub(crate) unsafe fn borrowed(bio: *mut bindings::bio, begin: u64) -> ManuallyDrop<Self> {
        // INVARIANT: as above; completion stays with device-mapper because the view is never
        // dropped or consumed (only `&Bio` is handed out).
        // SAFETY: `bio` is non-null: device-mapper passes a live bio.
        ManuallyDrop::new(Self { ptr: unsafe { NonNull::new_unchecked(bio) }, begin, _p: PhantomData })
    }

    /// Takes back a bio previously released with [`Bio::into_raw`].
    ///
    /// # Safety
    ///
    /// `bio` must come from `into_raw` of a `Bio<P>` whose responsibility nobody else took.
    pub(crate) unsafe fn from_owned_raw(bio: *mut bindings::bio) -> Self {
        // SAFETY: `into_raw` never returns null.
        let ptr = unsafe { NonNull::new_unchecked(bio) };
        // INVARIANT: guaranteed by the caller; `begin` only matters for `target_sector`, and
        // a bio taken back this way is only completed.
        Self { ptr, begin: 0, _p: PhantomData }
    }

    /// Gives up the responsibility (to device-mapper, or to a later `from_owned_raw`).
    pub(crate) fn into_raw(self) -> *mut bindings::bio {
        ManuallyDrop::new(self).ptr.as_ptr()
    }

    fn raw(&self) -> &bindings::bio {
        // SAFETY: the bio is live (type invariant).
        unsafe { self.ptr.as_ref() }
    }

    fn opf(&self) -> u32 {
        self.raw().bi_opf
    }

    /// The operation. A flush is [`Op::Flush`] however it is encoded: device-mapper hands
    /// targets an empty `REQ_OP_WRITE` with `REQ_PREFLUSH` (and any data in a separate bio).
    pub fn op(&self) -> Op {
        match Op::from_raw(self.opf() & bindings::DMCORE_REQ_OP_MASK) {
            Op::Write if self.is_preflush() && self.size() == 0 => Op::Flush,
            op => op,
        }
    }

    /// Whether the operation writes (`op_is_write`: writes, flushes, discards, zeroing).
    pub fn is_write(&self) -> bool {
        self.opf() & 1 != 0
    }

    /// Whether the bio carries data pages (`bio_has_data`).
    pub fn has_data(&self) -> bool {
        self.size() != 0 && matches!(self.op(), Op::Read | Op::Write | Op::Other(_))
    }

    /// `REQ_PREFLUSH`: flush the device's volatile cache before this bio.
    pub fn is_preflush(&self) -> bool {
        self.opf() & bindings::DMCORE_REQ_PREFLUSH != 0
    }

    /// `REQ_FUA`: this bio's data must be durable when it completes.
    pub fn is_fua(&self) -> bool {
        self.opf() & bindings::DMCORE_REQ_FUA != 0
    }

    /// First sector, in the mapped (dm) device.
    pub fn sector(&self) -> u64 {
        self.raw().bi_iter.bi_sector
    }

    /// First sector relative to the start of this target (`dm_target_offset`).
    pub fn target_sector(&self) -> u64 {
        self.sector().wrapping_sub(self.begin)
    }

    /// Size in bytes.
    pub fn size(&self) -> u32 {
        self.raw().bi_iter.bi_size
    }

    /// Size in 512-byte sectors.
    pub fn sectors(&self) -> u32 {
        self.size() >> 9
    }

    /// The per-bio data.
    pub fn data(&self) -> &P {
        if size_of::<P>() == 0 {
            // SAFETY: any well-aligned non-null pointer is valid for a zero-sized type.
            return unsafe { NonNull::<P>::dangling().as_ref() };
        }
        // SAFETY: the front pad holds an initialised `P` (type invariant), borrowed with `self`.
        unsafe { &*(bindings::dm_per_bio_data(self.ptr.as_ptr(), size_of::<P>()) as *const P) }
    }

    /// The per-bio data, mutably.
    pub fn data_mut(&mut self) -> &mut P {
        if size_of::<P>() == 0 {
            // SAFETY: as in `data`.
            return unsafe { NonNull::<P>::dangling().as_mut() };
        }
        // SAFETY: as in `data`, and `&mut self` makes the borrow unique.
        unsafe { &mut *(bindings::dm_per_bio_data(self.ptr.as_ptr(), size_of::<P>()) as *mut P) }
    }

    /// Points the bio at `dev`, starting at `sector` (for [`super::target::MapResult::Remapped`]).
    pub fn remap(&mut self, dev: &Device, sector: u64) {
        // SAFETY: the bio is live and ours; `dev` is an open block device that outlives the I/O
        // (device-mapper keeps the table, and so the device, until the bio completes).
        unsafe {
            bindings::dmcore_bio_set_dev(self.ptr.as_ptr(), dev.bdev());
            (*self.ptr.as_ptr()).bi_iter.bi_sector = sector;
        }
    }

    /// Accepts only the first `sectors` sectors of the bio; device-mapper sends the rest in a new
    /// bio. `ctx` is the token `map` received with this bio: only there may a bio be shortened.
    /// Does nothing for another bio, a flush, or a size not below the current one.
    pub fn accept_partial(&mut self, ctx: &MapContext<'_>, sectors: u32) {
        if ctx.bio != self.ptr.as_ptr() || sectors == 0 || sectors >= self.sectors() || self.is_preflush() {
            return;
        }
        // SAFETY: the bio is live, and the token proves this runs in `map` for this very bio
        // (device-mapper's split state it updates is live until `map` returns); `sectors` is
        // below its size.
        unsafe { bindings::dm_accept_partial_bio(self.ptr.as_ptr(), sectors) };
    }

    /// The data segments (single pages), from the current position.
    pub fn segments(&self) -> Segments<'_> {
        Segments { bio: self.ptr.as_ptr(), iter: self.raw().bi_iter, _p: PhantomData }
    }

    /// Copies the bio's payload into `dst`; returns the bytes copied (`min(size, dst.len())`).
    pub fn copy_to(&self, dst: &mut [u8]) -> usize {
        let mut done = 0;
        for seg in self.segments() {
            if done == dst.len() {
                break;
            }
            done += seg.copy_to(&mut dst[done..]);
        }
        done
    }

    /// Copies `src` into the bio's pages (to serve a read from memory); returns the bytes copied.
    pub fn copy_from(&mut self, src: &[u8]) -> usize {
        let mut done = 0;
        for seg in self.segments() {
            if done == src.len() {
                break;
            }
            // SAFETY: `&mut self` means no other user of this bio's pages through us; the
            // segment is a valid page range of the live bio.
            done += unsafe { seg.copy_from(&src[done..]) };
        }
        done
    }

    /// Completes the bio with `status` (`bio_endio`).
    pub fn end(self, status: BlkStatus) {
        let ptr = self.into_raw();
        // SAFETY: we own the completion (type invariant) and give it up here, exactly once.
        unsafe {
            (*ptr).bi_status = status.0;
            bindings::bio_endio(ptr);
        }
    }

    /// Submits a bio that `map` took ([`super::target::MapResult::Submitted`]) after remapping
    /// it with [`Bio::remap`] (`dm_submit_bio_remap`). Its completion goes through the target's
    /// `end_io` like a remapped bio's.
    pub fn submit_remapped(self) {
        let ptr = self.into_raw();
        // SAFETY: `ptr` is a bio device-mapper gave to `map`, which returned "submitted", so
        // the target may submit it; responsibility passes to the block layer here.
        unsafe { bindings::dm_submit_bio_remap(ptr, core::ptr::null_mut()) };
    }

    /// Clones the bio onto `dev` at `sector` and submits the clone; the parent is handed to
    /// `ctx.clone_done` when the clone completes (or at once with an error if no clone could be
    /// allocated). The clone shares the parent's pages, which is why the parent stays owned
    /// (and so uncompleted) until then.
    pub fn submit_clone<C: CloneDone<P>>(self, bs: &BioSet, dev: &Device, sector: u64, ctx: Arc<C>) {
        // SAFETY: `self.ptr` is live; `bs` is an initialised bio set whose front pad fits a
        // `CloneHeader`; GFP_NOIO cannot recurse into I/O and, with a mempool behind it, does
        // not fail in process context.
        let clone = unsafe { bindings::bio_alloc_clone(dev.bdev(), self.ptr.as_ptr(), GFP_NOIO, bs.raw()) };
        if clone.is_null() {
            if let Some((parent, status)) = ctx.clone_done(self, BlkStatus::from_error(ENOMEM)) {
                drop(ctx);
                parent.end(status);
            }
            return;
        }
        let begin = self.begin;
        let header = CloneHeader {
            parent: self.into_raw(),
            begin,
            ctx: Arc::into_raw(ctx).cast(),
            finish: finish_clone::<C, P>,
        };
        // SAFETY: the header slot is the bio set's front pad, just before `clone`, sized and
        // aligned for a `CloneHeader` (see `BioSet::new`); `clone` is ours until submitted.
        unsafe {
            (clone as *mut CloneHeader).sub(1).write(header);
            (*clone).bi_iter.bi_sector = sector;
            (*clone).bi_end_io = Some(clone_end_io);
            (*clone).bi_private = core::ptr::null_mut();
            bindings::submit_bio_noacct(clone);
        }
    }
}

impl<P: PerBio> Drop for Bio<P> {
    fn drop(&mut self) {
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            kernel::pr_warn!("dmcore: a bio was dropped without completion; failing it\n");
        }
        // SAFETY: we own the completion (type invariant); `drop` runs once.
        unsafe {
            (*self.ptr.as_ptr()).bi_status = BlkStatus::IOERR.0;
            bindings::bio_endio(self.ptr.as_ptr());
        }
    }
}

/// Receives the parent bio when its clone completes (see [`Bio::submit_clone`]).
///
/// The callback runs in the clone's completion context, which may be interrupt context: it
/// must not sleep. The context object must be kept alive by its owner too (for example the
/// target) for as long as parents are outstanding.
pub trait CloneDone<P: PerBio>: Send + Sync + 'static {
    /// The clone completed with `status`. Returns the parent (and its status) if it is to be
    /// completed now: dmcore completes it after dropping its reference to `self`. (Completing
    /// the parent can let device-mapper destroy the target, and with it the owner's reference,
    /// so the context must not be touched, or its last reference dropped in interrupt context,
    /// after that.) Returns `None` when it kept the parent to complete it later.
    fn clone_done(&self, parent: Bio<P>, status: BlkStatus) -> Option<(Bio<P>, BlkStatus)>;
}

#[repr(C)]
struct CloneHeader {
    parent: *mut bindings::bio,
    begin: u64,
    ctx: *const ffi::c_void,
    finish: unsafe fn(&CloneHeader, BlkStatus),
}

/// # Safety
///
/// `h` must be a header written by `submit_clone::<C, P>`, read once.
unsafe fn finish_clone<C: CloneDone<P>, P: PerBio>(h: &CloneHeader, status: BlkStatus) {
    // SAFETY: `ctx` is the `Arc<C>` leaked by `submit_clone`, reclaimed once here.
    let ctx = unsafe { Arc::<C>::from_raw(h.ctx.cast()) };
    // SAFETY: `parent` was released with `into_raw` by `submit_clone`; its responsibility is
    // taken back once, here.
    let mut parent = unsafe { Bio::<P>::from_owned_raw(h.parent) };
    parent.begin = h.begin;
    let now = ctx.clone_done(parent, status);
    // The owner holds a reference while the parent is outstanding, so this is not the last.
    drop(ctx);
    if let Some((parent, status)) = now {
        parent.end(status);
    }
}

unsafe extern "C" fn clone_end_io(clone: *mut bindings::bio) {
    // SAFETY: `clone` was set up by `submit_clone`, so a `CloneHeader` sits in its front pad.
    // The header is copied out before the clone is freed.
    unsafe {
        let h = (clone as *const CloneHeader).sub(1).read();
        let status = BlkStatus((*clone).bi_status);
        bindings::bio_put(clone);
        (h.finish)(&h, status);
    }
}

/// A pool of bios for clones (`struct bio_set`), with room for dmcore's clone header.
///
/// Must outlive every clone allocated from it: keep it in the target's private data, whose
/// `dtr` only runs once every parent bio (and so every clone) has completed.
///
/// # Invariants
///
/// `bs` was initialised with `bioset_init` and is pinned until `bioset_exit` in `Drop`.
pub struct BioSet {
    bs: Pin<KBox<Opaque<bindings::bio_set>>>,
}

// SAFETY: a bio set is a mempool, safe to allocate from and to free into from any context.
unsafe impl Send for BioSet {}
// SAFETY: as above.
unsafe impl Sync for BioSet {}

impl BioSet {
    /// Creates a pool guaranteeing `pool_size` bios under memory pressure.
    pub fn new(pool_size: u32) -> Result<Self> {
        let bs = KBox::pin(Opaque::new(bindings::bio_set::default()), GFP_KERNEL)?;
        let pad = size_of::<CloneHeader>().next_multiple_of(8) as u32;
        // SAFETY: `bs` is zeroed, pinned storage for a bio set.
        let r = unsafe { bindings::bioset_init(bs.get(), pool_size, pad, 0) };
        kernel::error::to_result(r)?;
        // INVARIANT: initialised above, pinned in a box.
        Ok(Self { bs })
    }

    fn raw(&self) -> *mut bindings::bio_set {
        self.bs.get()
    }
}

impl Drop for BioSet {
    fn drop(&mut self) {
        // SAFETY: initialised (type invariant); no clone is outstanding (documented contract).
        unsafe { bindings::bioset_exit(self.bs.get()) };
    }
}

/// Iterator over the single-page data segments of a bio.
pub struct Segments<'a> {
    bio: *mut bindings::bio,
    iter: bindings::bvec_iter,
    _p: PhantomData<&'a bindings::bio>,
}

impl<'a> Iterator for Segments<'a> {
    type Item = Segment<'a>;

    fn next(&mut self) -> Option<Segment<'a>> {
        let mut bv = bindings::bio_vec::default();
        // SAFETY: `bio` is live for `'a`; `iter` is our private copy of its iterator.
        if !unsafe { bindings::dmcore_bio_next_segment(self.bio, &mut self.iter, &mut bv) } {
            return None;
        }
        Some(Segment { page: bv.bv_page, offset: bv.bv_offset, len: bv.bv_len, _p: PhantomData })
    }
}

/// One single-page segment of a bio's data.
///
/// # Invariants
///
/// `page` is a page of a bio live for `'a`, and `offset + len <= PAGE_SIZE`.
pub struct Segment<'a> {
    page: *mut bindings::page,
    offset: u32,
    len: u32,
    _p: PhantomData<&'a ()>,
}

impl Segment<'_> {
    /// Length in bytes.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the segment is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset within its page.
    pub fn offset(&self) -> u32 {
        self.offset
    }

    /// Copies up to `dst.len()` bytes out of the segment; returns the count.
    pub fn copy_to(&self, dst: &mut [u8]) -> usize {
        let n = dst.len().min(self.len as usize);
        // SAFETY: the page is live (type invariant) and mapped for the copy; `offset + n` stays
        // inside it. Page contents are copied, never referenced, as they may change under us
        // (a bio's pages can be shared with userspace).
        unsafe {
            let va = bindings::dmcore_kmap_local_page(self.page) as *const u8;
            core::ptr::copy_nonoverlapping(va.add(self.offset as usize), dst.as_mut_ptr(), n);
            bindings::dmcore_kunmap_local(va.cast());
        }
        n
    }

    /// Copies up to `src.len()` bytes into the segment; returns the count.
    ///
    /// # Safety
    ///
    /// The caller must have the right to write the bio's pages (it owns the bio exclusively).
    unsafe fn copy_from(&self, src: &[u8]) -> usize {
        let n = src.len().min(self.len as usize);
        // SAFETY: as in `copy_to`; writing is allowed by the caller's contract.
        unsafe {
            let va = bindings::dmcore_kmap_local_page(self.page) as *mut u8;
            core::ptr::copy_nonoverlapping(src.as_ptr(), va.add(self.offset as usize), n);
            bindings::dmcore_kunmap_local(va.cast());
        }
        n
    }
}

/// A FIFO of bios a target holds (`struct bio_list`-style, linked through `bi_next`).
///
/// # Invariants
///
/// `head` … `tail` is a `bi_next`-linked chain of `len` bios, each a [`Bio<P>`] released with
/// `into_raw` whose responsibility the list holds; `begin` is their target's first sector.
pub struct BioList<P: PerBio> {
    head: *mut bindings::bio,
    tail: *mut bindings::bio,
    len: usize,
    begin: u64,
    _p: PhantomData<P>,
}

// SAFETY: the list owns the responsibility for its bios, which may move between threads.
unsafe impl<P: PerBio> Send for BioList<P> {}
// SAFETY: `&BioList` only reads the length.
unsafe impl<P: PerBio> Sync for BioList<P> {}

impl<P: PerBio> Default for BioList<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: PerBio> BioList<P> {
    /// An empty list.
    pub const fn new() -> Self {
        // INVARIANT: empty chain.
        Self { head: core::ptr::null_mut(), tail: core::ptr::null_mut(), len: 0, begin: 0, _p: PhantomData }
    }

    /// Number of bios held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a bio (no allocation: safe in `map`).
    pub fn push(&mut self, bio: Bio<P>) {
        self.begin = bio.begin;
        let p = bio.into_raw();
        // SAFETY: `p` is a live bio we now hold; `tail` (if any) is a live bio of the chain.
        unsafe {
            (*p).bi_next = core::ptr::null_mut();
            if self.tail.is_null() {
                self.head = p;
            } else {
                (*self.tail).bi_next = p;
            }
        }
        self.tail = p;
        self.len += 1;
    }

    /// Removes the oldest bio.
    pub fn pop(&mut self) -> Option<Bio<P>> {
        let p = NonNull::new(self.head)?;
        // SAFETY: `p` is the live head of the chain (type invariant).
        unsafe {
            self.head = (*p.as_ptr()).bi_next;
            (*p.as_ptr()).bi_next = core::ptr::null_mut();
        }
        if self.head.is_null() {
            self.tail = core::ptr::null_mut();
        }
        self.len = self.len.saturating_sub(1);
        // SAFETY: the responsibility held by the list passes to the returned `Bio`.
        let mut bio = unsafe { Bio::<P>::from_owned_raw(p.as_ptr()) };
        bio.begin = self.begin;
        Some(bio)
    }

    /// Takes every bio, leaving the list empty.
    pub fn take(&mut self) -> Self {
        core::mem::take(self)
    }
}

impl<P: PerBio> Drop for BioList<P> {
    fn drop(&mut self) {
        // Dropped bios are failed (see `Bio`'s `Drop`); a target completes its lists first.
        while self.pop().is_some() {}
    }
}
