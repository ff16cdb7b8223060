// SPDX-License-Identifier: GPL-2.0

//! Device-mapper targets: a [`Target`] implementation becomes a registered `struct target_type`.
//!
//! C header: [`include/linux/device-mapper.h`](srctree/include/linux/device-mapper.h)
//!
//! The private data of a target instance is the implementing type itself. `ctr` builds it (pinned,
//! so it may hold locks and work items), every other callback gets `&Self`, and `dtr` drops it.
//! Device-mapper calls `map` and `end_io` concurrently on many CPUs, hence `Self: Send + Sync`.
//!
//! A [`Device`] or a [`TargetHandle`] refers to its `dm_target`, which device-mapper frees once
//! `dtr` returns. Each holds a counted reference on the target's [`Anchor`], which dmcore
//! allocates before `ctr`: `dtr` drops the private data and then waits until no reference is
//! left (warning while it waits), so a reference kept elsewhere (a work item on a system
//! workqueue, a leaked `Arc`) delays `dtr` and never touches a freed target. A failed `ctr` does
//! the same before it returns.

use super::args::Args;
use super::bindings::{self, ffi};
use super::bio::{BlkStatus, Bio, MapContext, PerBio};
use super::device::Device;
use super::status::StatusWriter;
use super::wq::Completion;
// The including crate provides `wbrepl_core` next to `dmcore` (see the module roots).
use crate::wbrepl_core::error as wbrepl_core_error;
use core::marker::PhantomData;
use core::pin::Pin;
use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicUsize, Ordering};
use kernel::alloc::KBox;
use kernel::error::{code::*, Error, Result};
use kernel::prelude::*;
use kernel::str::CStr;
use kernel::time::Ktime;
use kernel::types::{ARef, AlwaysRefCounted, Opaque};
use kernel::ThisModule;

/// A constructor failure: the `ti->error` text device-mapper logs and the errno it returns.
#[derive(Clone, Copy, Debug)]
pub struct CtrError {
    /// Message for `ti->error` (static: device-mapper keeps the pointer).
    pub msg: &'static CStr,
    /// Error returned to device-mapper.
    pub err: Error,
}

impl CtrError {
    /// A failure with `-EINVAL`.
    pub const fn inval(msg: &'static CStr) -> Self {
        Self { msg, err: EINVAL }
    }

    /// A failure with a given errno.
    pub const fn new(msg: &'static CStr, err: Error) -> Self {
        Self { msg, err }
    }
}

impl From<wbrepl_core_error::Error> for CtrError {
    /// Table-line parse errors from `wbrepl-core` are `-EINVAL` with their own message.
    fn from(e: wbrepl_core_error::Error) -> Self {
        match CStr::from_bytes_with_nul(e.as_bytes_with_nul()) {
            Ok(msg) => Self::inval(msg),
            Err(_) => Self::inval(kernel::c_str!("Invalid argument")),
        }
    }
}


/// What `status` is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusType {
    /// Runtime state (`dmsetup status`).
    Info,
    /// The table line (`dmsetup table`).
    Table,
    /// Measurement data for IMA.
    Ima,
}

/// Result of [`Target::map`]: what happens to the bio next.
pub enum MapResult<P: PerBio> {
    /// The bio was remapped (see [`Bio::remap`]); device-mapper submits it.
    Remapped(Bio<P>),
    /// The target took the bio and completes it itself (now or later).
    Submitted,
    /// Fail the bio with an I/O error.
    Kill(Bio<P>),
    /// Ask device-mapper to requeue the bio (only while suspending, or for `noflush` suspends).
    Requeue(Bio<P>),
}

/// Result of [`Target::end_io`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndIo {
    /// Completion proceeds with the (possibly changed) status.
    Done,
    /// Ask device-mapper to requeue the original bio.
    Requeue,
}

/// Target flags for [`Target::FEATURES`] (`DM_TARGET_*`).
pub mod features {
    use super::bindings;
    /// Only one target of this type per table.
    pub const SINGLETON: u64 = bindings::DM_TARGET_SINGLETON as u64;
    /// The target must be the only one in its table.
    pub const ALWAYS_WRITEABLE: u64 = bindings::DM_TARGET_ALWAYS_WRITEABLE as u64;
    /// May not be used with other targets in a table.
    pub const IMMUTABLE: u64 = bindings::DM_TARGET_IMMUTABLE as u64;
}

/// A device-mapper target type. The implementing type is the per-instance private data.
#[vtable]
pub trait Target: Sized + Send + Sync + 'static {
    /// Target name used in table lines.
    const NAME: &'static CStr;
    /// Target version `[major, minor, patch]` (shown by `dmsetup targets`).
    const VERSION: [u32; 3];
    /// `DM_TARGET_*` flags.
    const FEATURES: u64 = 0;
    /// Per-bio data device-mapper reserves in front of every bio given to `map`.
    type PerBio: PerBio;

    /// Builds an instance from its table line. Runs while an older table may still be live:
    /// do not touch on-disk state here, do it in `preresume`.
    fn ctr(ti: &mut CtrTarget<'_>, args: Args<'_>) -> Result<Pin<KBox<Self>>, CtrError>;

    /// Maps a bio. Called concurrently; must not sleep for long (it runs in the submitter's
    /// context) and must not allocate with I/O recursion.
    /// `ctx` is valid for this call and this bio only (see [`Bio::accept_partial`]).
    fn map(&self, bio: Bio<Self::PerBio>, ctx: &MapContext<'_>) -> MapResult<Self::PerBio>;

    /// Sees a mapped bio complete, with the chance to change its status.
    fn end_io(&self, _bio: &Bio<Self::PerBio>, _status: &mut BlkStatus) -> EndIo {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Before suspending: I/O may still be arriving.
    fn presuspend(&self) {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// A suspend that ran `presuspend` failed before `postsuspend` (for example the file system
    /// above could not be frozen): the device stays live.
    fn presuspend_undo(&self) {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// After suspending: no I/O is in flight.
    fn postsuspend(&self) {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Before resuming (also before the first resume): read on-disk state here. An error
    /// aborts the resume.
    fn preresume(&self) -> Result {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// After resuming.
    fn resume(&self) {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Writes status text (`dmsetup status` / `dmsetup table`).
    fn status(&self, _ty: StatusType, _out: &mut StatusWriter<'_>) {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Handles `dmsetup message <dev> 0 <args...>`; text written to `out` is returned to the
    /// caller.
    fn message(&self, _args: Args<'_>, _out: &mut StatusWriter<'_>) -> Result {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Reports the underlying devices (device-mapper derives queue limits from them).
    fn iterate_devices(&self, _visit: &mut DeviceVisitor<'_>) -> core::result::Result<(), Stop> {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Adjusts the queue limits of the mapped device.
    fn io_hints(&self, _limits: &mut QueueLimits<'_>) {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }
}

/// The target instance during `ctr`.
///
/// # Invariants
///
/// `ti` is the `dm_target` being constructed; it is valid and exclusively ours for `'a`.
/// `anchor` is the anchor of `ti` (its `ti` field is `ti`), live for `'a`.
pub struct CtrTarget<'a> {
    ti: NonNull<bindings::dm_target>,
    anchor: &'a Anchor,
    _p: PhantomData<&'a mut bindings::dm_target>,
}

impl CtrTarget<'_> {
    fn ti(&self) -> *mut bindings::dm_target {
        self.ti.as_ptr()
    }

    /// Length of this target in sectors.
    pub fn len(&self) -> u64 {
        // SAFETY: as above.
        unsafe { (*self.ti()).len }
    }

    /// Opens a device named by a path or `major:minor`, with the table's mode.
    pub fn get_device(&mut self, path: &CStr) -> Result<Device> {
        let mut dev: *mut bindings::dm_dev = core::ptr::null_mut();
        // SAFETY: `ti` and its table are valid during `ctr`; `path` is NUL-terminated.
        let r = unsafe {
            let mode = bindings::dm_table_get_mode((*self.ti()).table);
            bindings::dm_get_device(self.ti(), path.as_char_ptr(), mode, &mut dev)
        };
        kernel::error::to_result(r)?;
        let dev = NonNull::new(dev).ok_or(ENODEV)?;
        // SAFETY: `dev` comes from a successful `dm_get_device(ti, ..)`, and the reference on
        // `ti`'s anchor keeps `ti` alive as long as the `Device` (see `Anchor`).
        Ok(unsafe { Device::from_raw(dev, ARef::from(self.anchor)) })
    }

    /// Opens a device named by a table word (a path or `major:minor`).
    pub fn get_device_path(&mut self, path: &str) -> Result<Device> {
        let c = kernel::str::CString::try_from_fmt(kernel::fmt!("{path}"))?;
        self.get_device(&c)
    }

    /// Number of empty flush bios `map` gets for a flush (0: flushes are not passed to `map`).
    pub fn set_num_flush_bios(&mut self, n: u32) {
        // SAFETY: `ti` is valid and ours during `ctr`.
        unsafe { (*self.ti()).num_flush_bios = n };
    }

    /// Declares that the target handles flushes and FUA itself (it has a volatile cache of its
    /// own): the mapped device then advertises a write cache and FUA whatever the devices below
    /// it support, so flushes and FUA always reach `map` (`ti->flush_supported`).
    pub fn set_flush_supported(&mut self) {
        // SAFETY: `ti` is valid and ours during `ctr`.
        unsafe { (*self.ti()).set_flush_supported(true) };
    }

    /// Number of discard bios per discard (0: discards not supported).
    pub fn set_num_discard_bios(&mut self, n: u32) {
        // SAFETY: as above.
        unsafe { (*self.ti()).num_discard_bios = n };
    }

    /// Number of write-zeroes bios per write-zeroes (0: not supported).
    pub fn set_num_write_zeroes_bios(&mut self, n: u32) {
        // SAFETY: as above.
        unsafe { (*self.ti()).num_write_zeroes_bios = n };
    }

    /// Splits bios so that none crosses a multiple of `sectors` (counted from the target's
    /// start): every bio `map` sees then lies within one such chunk.
    pub fn set_max_io_len(&mut self, sectors: u32) -> Result {
        // SAFETY: `ti` is valid and ours during `ctr`.
        kernel::error::to_result(unsafe { bindings::dm_set_target_max_io_len(self.ti(), u64::from(sectors)) })
    }

    /// A handle for raising events later. It may be cloned and kept anywhere: `dtr` waits for
    /// every handle (and every [`Device`]) to be dropped before it returns, so keep them in the
    /// private data or in work its `Drop` ends, or `dtr` waits (and says so in the kernel log).
    pub fn handle(&self) -> TargetHandle {
        // INVARIANT: a new counted reference on `ti`'s anchor.
        TargetHandle { anchor: ARef::from(self.anchor) }
    }
}

/// The per-instance object that [`Device`]s and [`TargetHandle`]s hold counted references on
/// (through [`ARef`]), so that `dtr` can wait for the last one before device-mapper frees the
/// `dm_target` they use.
///
/// dmcore allocates it (in an `Instance`, the object `ti->private` points to) before calling
/// [`Target::ctr`], with one reference of its own (the base). `dtr` drops the private data, then
/// the base reference, then waits for `zero` (completed by whoever drops the last reference);
/// a failed `ctr` does the same. Only then is it freed and control returned to device-mapper.
///
/// # Invariants
///
/// `ti` is the target this anchor belongs to: constructed (or being constructed), and not freed
/// by device-mapper while `refs` is non-zero, because its `dtr` (or its failed `ctr`) drops the
/// base reference last and does not return before `refs` is zero (seen at once, or through
/// `zero`). `refs` counts the base reference plus every `ARef<Anchor>`; it reaches zero once
/// only: after the base reference is gone no new reference can be made, since the only
/// `&Anchor` that is not borrowed from a live `ARef` is `CtrTarget`'s, which ends with `ctr`.
/// `zero` is completed when the drop of an `ARef` takes `refs` to zero, and not before.
#[pin_data]
pub(super) struct Anchor {
    ti: NonNull<bindings::dm_target>,
    refs: AtomicUsize,
    #[pin]
    zero: Completion,
}

// SAFETY: the anchor only hands `ti` to device-mapper functions that may be called from any
// process context (`dm_put_device`, `dm_table_event`) and reads `ti->table`, which is set before
// `ctr` and constant while `ti` lives; `refs` and `zero` are thread-safe.
unsafe impl Send for Anchor {}
// SAFETY: as above; `&Anchor` only allows those calls and counting.
unsafe impl Sync for Anchor {}

// SAFETY: an increment keeps the anchor alive until the matching decrement: the anchor is freed
// only after `refs` reached zero (`wait_unused`). Every anchor is counted: it is created with
// the base reference by `ctr_callback` and lives inside dmcore's `Instance` only.
unsafe impl AlwaysRefCounted for Anchor {
    fn inc_ref(&self) {
        // A new reference is made from an existing one (or by dmcore during `ctr`, which holds
        // the base): nothing to order. The count cannot overflow in practice (2^64 references).
        self.refs.fetch_add(1, Ordering::Relaxed);
    }

    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: the caller owns a reference, so the anchor is live until the decrement below.
        // After it, `a` is used only by the last reference, for which the waiter keeps the
        // anchor alive until `zero` is completed.
        let a = unsafe { obj.as_ref() };
        if a.refs.fetch_sub(1, Ordering::Release) == 1 {
            // The last reference, after the base one: the waiter (in `dtr` or a failed `ctr`)
            // frees the anchor once it sees `zero`, after `complete_all` released the
            // completion's lock; `complete_all` is the last access.
            fence(Ordering::Acquire);
            a.zero.complete_all();
        }
    }
}

impl Anchor {
    fn new(ti: NonNull<bindings::dm_target>) -> impl PinInit<Self> {
        // INVARIANT: `ti` is the target being constructed; the base reference is the only one.
        pin_init!(Self { ti, refs: AtomicUsize::new(1), zero <- Completion::new() })
    }

    /// The target, live while a reference is held (type invariant).
    pub(super) fn ti(&self) -> *mut bindings::dm_target {
        self.ti.as_ptr()
    }

    /// Drops the base reference and waits until no other is left: afterwards nothing refers to
    /// the anchor or (through it) to `ti`, and the anchor may be freed. Process context only.
    /// Logs a warning at once when a reference is left, and every few seconds while waiting.
    fn wait_unused(&self, name: &CStr, what: &str, outlived: &str) {
        let left = self.refs.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        if left == 0 {
            return;
        }
        const WARN_EVERY_MS: u32 = 5000;
        let start = Ktime::ktime_get();
        pr_warn!("dmcore: {name}: {what} waits for {left} references to the target that outlive {outlived}\n");
        while !self.zero.wait_timeout_ms(WARN_EVERY_MS) {
            let left = self.refs.load(Ordering::Relaxed);
            let ms = kernel::time::ktime_ms_delta(Ktime::ktime_get(), start);
            pr_warn!("dmcore: {name}: {what} waits for {left} references to the target that outlive {outlived} ({ms} ms so far)\n");
        }
        let ms = kernel::time::ktime_ms_delta(Ktime::ktime_get(), start);
        pr_info!("dmcore: {name}: {what} waited {ms} ms for the last reference to the target\n");
    }
}

/// What `ti->private` points to: the target's private data and its anchor.
///
/// # Invariants
///
/// `target` is `Some` from before `ctr_callback` publishes the instance in `ti->private` until
/// `dtr_callback` takes it (the only two places that change it).
#[pin_data]
struct Instance<T: Target> {
    #[pin]
    anchor: Anchor,
    /// `None` until `ctr` succeeds, and again once `dtr` dropped it.
    target: Option<Pin<KBox<T>>>,
}

/// A handle on a live target instance, for raising dm events (`dmsetup wait`).
///
/// Cloning it takes another reference on the target; dropping it releases one. The target's
/// `dtr` waits until every handle is dropped, so keep handles in the private data (or in work
/// that the private data's `Drop` ends): one kept elsewhere makes `dtr` wait for it.
///
/// # Invariants
///
/// `anchor` is a counted reference on the anchor of a constructed (or being constructed)
/// target, which keeps the `dm_target` and its table from being freed (see [`Anchor`]).
#[derive(Clone)]
pub struct TargetHandle {
    anchor: ARef<Anchor>,
}

impl TargetHandle {
    /// Raises a device-mapper event (wakes `dmsetup wait` and friends). May sleep. Raised after
    /// the table was unbound (while `dtr` waits for this handle), it wakes nobody.
    pub fn event(&self) {
        // SAFETY: `ti` and its table are live while the handle holds its reference (type
        // invariant); `dm_table_event` takes its own lock and may be called from process context.
        unsafe { bindings::dm_table_event((*self.anchor.ti()).table) };
    }
}

/// Visitor given to [`Target::iterate_devices`].
pub struct DeviceVisitor<'a> {
    ti: *mut bindings::dm_target,
    fun: bindings::iterate_devices_callout_fn,
    data: *mut ffi::c_void,
    _p: PhantomData<&'a ()>,
}

impl DeviceVisitor<'_> {
    /// Reports `dev` as used for `len` sectors from `start`. A non-zero answer of the callout
    /// (device-mapper's "found" or an error) stops the iteration and is passed back unchanged.
    pub fn visit(&mut self, dev: &Device, start: u64, len: u64) -> core::result::Result<(), Stop> {
        let Some(f) = self.fun else { return Ok(()) };
        // SAFETY: `fun`/`data` are device-mapper's callout and cookie for this call; `dev` is a
        // live `dm_dev` of this target.
        let r = unsafe { f(self.ti, dev.raw(), start, len, self.data) };
        if r != 0 {
            return Err(Stop(r));
        }
        Ok(())
    }
}

/// The non-zero value of a device callout, which ends [`Target::iterate_devices`].
#[derive(Clone, Copy, Debug)]
pub struct Stop(i32);

/// Queue limits given to [`Target::io_hints`].
pub struct QueueLimits<'a> {
    l: &'a mut bindings::queue_limits,
}

impl QueueLimits<'_> {
    /// Sets the optimal I/O size in bytes.
    pub fn set_io_opt(&mut self, bytes: u32) {
        self.l.io_opt = bytes;
    }

    /// Asks for stable pages (`BLK_FEAT_STABLE_WRITES`): the page cache does not modify a page
    /// while a write of it is in flight, so a target that reads a write's data more than once
    /// (to send a copy, and to write it locally) sees the same bytes each time. Inherited by
    /// the devices stacked above.
    pub fn require_stable_writes(&mut self) {
        // SAFETY: `l` is the queue limits device-mapper is computing, exclusively ours here.
        unsafe { bindings::dmcore_limits_stable_writes(self.l) };
    }

    /// Raises the logical (and physical) block size and `io_min` to at least `bytes`: for a
    /// target that remaps bios to a device the stacked limits do not include.
    pub fn raise_block_size(&mut self, bytes: u32) {
        self.l.logical_block_size = self.l.logical_block_size.max(bytes);
        self.l.physical_block_size = self.l.physical_block_size.max(bytes);
        self.l.io_min = self.l.io_min.max(bytes);
    }
}

/// A kernel module whose only job is registering the target type `T`:
///
/// ```ignore
/// type WbcacheModule = TargetModule<Wbcache>;
/// module! { type: WbcacheModule, name: "dm_wbcache", license: "GPL", alias: ["dm-wbcache"] }
/// ```
pub struct TargetModule<T: Target> {
    _reg: Registration<T>,
}

impl<T: Target> kernel::Module for TargetModule<T> {
    fn init(module: &'static ThisModule) -> Result<Self> {
        Ok(Self { _reg: Registration::new(module)? })
    }
}

/// A registered target type; unregistered when dropped (module exit).
///
/// # Invariants
///
/// `tt` was registered with `dm_register_target` and stays pinned until it is unregistered.
pub struct Registration<T: Target> {
    tt: Pin<KBox<Opaque<bindings::target_type>>>,
    _p: PhantomData<T>,
}

// SAFETY: the registration is only touched at module init and exit.
unsafe impl<T: Target> Send for Registration<T> {}
// SAFETY: `&Registration` gives no access to the target type.
unsafe impl<T: Target> Sync for Registration<T> {}

impl<T: Target> Registration<T> {
    /// Registers `T` with device-mapper.
    pub fn new(module: &'static ThisModule) -> Result<Self> {
        const {
            assert!(core::mem::align_of::<T::PerBio>() <= 8, "per-bio data alignment above 8");
        }
        let tt = bindings::target_type {
            features: T::FEATURES,
            name: T::NAME.as_char_ptr(),
            module: module.as_ptr(),
            version: T::VERSION,
            ctr: Some(ctr_callback::<T>),
            dtr: Some(dtr_callback::<T>),
            map: Some(map_callback::<T>),
            end_io: if T::HAS_END_IO { Some(end_io_callback::<T>) } else { None },
            presuspend: if T::HAS_PRESUSPEND { Some(presuspend_callback::<T>) } else { None },
            presuspend_undo: if T::HAS_PRESUSPEND_UNDO { Some(presuspend_undo_callback::<T>) } else { None },
            postsuspend: if T::HAS_POSTSUSPEND { Some(postsuspend_callback::<T>) } else { None },
            preresume: if T::HAS_PRERESUME { Some(preresume_callback::<T>) } else { None },
            resume: if T::HAS_RESUME { Some(resume_callback::<T>) } else { None },
            status: if T::HAS_STATUS { Some(status_callback::<T>) } else { None },
            message: if T::HAS_MESSAGE { Some(message_callback::<T>) } else { None },
            iterate_devices: if T::HAS_ITERATE_DEVICES { Some(iterate_devices_callback::<T>) } else { None },
            io_hints: if T::HAS_IO_HINTS { Some(io_hints_callback::<T>) } else { None },
            ..Default::default()
        };
        let tt = KBox::pin(Opaque::new(tt), GFP_KERNEL)?;
        // SAFETY: `tt` is a fully initialised target_type, pinned in memory until `Drop`
        // unregisters it; its name is a `'static` string.
        kernel::error::to_result(unsafe { bindings::dm_register_target(tt.get()) })?;
        // INVARIANT: registered above, and pinned.
        Ok(Self { tt, _p: PhantomData })
    }
}

impl<T: Target> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: registered (type invariant); device-mapper holds a module reference for every
        // live table using the type, so none is left when the module exits.
        unsafe { bindings::dm_unregister_target(self.tt.get()) };
    }
}

/// # Safety
///
/// `ti` must be a constructed target of type `T` (its `private` set by [`ctr_callback`]), and
/// `dtr` must not run during the returned borrow.
unsafe fn private<'a, T: Target>(ti: *mut bindings::dm_target) -> &'a T {
    // SAFETY: `private` holds an `Instance<T>` leaked by `ctr_callback` and reclaimed only in
    // `dtr_callback` (guaranteed by the caller not to run meanwhile).
    let inst = unsafe { &*((*ti).private as *const Instance<T>) };
    // SAFETY: a constructed target's instance holds its private data from before `private` is
    // set until `dtr` (type invariant of `Instance`).
    unsafe { inst.target.as_deref().unwrap_unchecked() }
}

unsafe extern "C" fn ctr_callback<T: Target>(
    ti: *mut bindings::dm_target,
    argc: ffi::c_uint,
    argv: *mut *mut ffi::c_char,
) -> ffi::c_int {
    // SAFETY: device-mapper calls `ctr` with a valid, exclusively owned `ti`.
    let Some(nn) = NonNull::new(ti) else { return -(bindings::EINVAL as i32) };
    // SAFETY: `ti` is valid; per-bio data must be sized before `map` can run.
    unsafe { (*ti).per_io_data_size = core::mem::size_of::<T::PerBio>() as u32 };
    let inst = KBox::pin_init(pin_init!(Instance::<T> { anchor <- Anchor::new(nn), target: None }), GFP_KERNEL);
    let Ok(mut inst) = inst else {
        // SAFETY: `ti` is valid; `error` keeps a `'static` string.
        unsafe { (*ti).error = kernel::c_str!("Cannot allocate").as_char_ptr() as *mut ffi::c_char };
        return ENOMEM.to_errno();
    };
    // INVARIANT: `ti` is valid and exclusively ours during this call; `inst.anchor` is its
    // anchor, freed only at the end of this call (on failure) or in `dtr_callback`.
    let mut ctx = CtrTarget { ti: nn, anchor: &inst.anchor, _p: PhantomData };
    // SAFETY: device-mapper passes `argc` valid strings that live for the whole call.
    let args = unsafe { Args::from_raw(argc, argv) };
    match T::ctr(&mut ctx, args) {
        Ok(p) => {
            // SAFETY: `target` is not structurally pinned (it is a `Pin<KBox<T>>` of its own);
            // the anchor is not moved.
            unsafe { inst.as_mut().get_unchecked_mut() }.target = Some(p);
            // SAFETY: ownership moves into `ti->private` until `dtr_callback`; the instance stays
            // pinned because it is only ever accessed through a shared reference until then.
            unsafe { (*ti).private = KBox::into_raw(Pin::into_inner_unchecked(inst)).cast() };
            0
        }
        Err(e) => {
            // What `ctr` built is dropped; references it handed out elsewhere must go before
            // device-mapper frees the table.
            inst.anchor.wait_unused(T::NAME, "failed ctr", "it");
            drop(inst);
            // SAFETY: `ti` is valid; `error` keeps a `'static` string.
            unsafe { (*ti).error = e.msg.as_char_ptr() as *mut ffi::c_char };
            e.err.to_errno()
        }
    }
}

unsafe extern "C" fn dtr_callback<T: Target>(ti: *mut bindings::dm_target) {
    // SAFETY: `dtr` runs once, after a successful `ctr` and after all I/O and other callbacks
    // have finished; `private` is the pointer `ctr_callback` leaked, reclaimed here once; the
    // instance was pinned there and is not moved out of its box.
    let mut inst = unsafe {
        let p = (*ti).private as *mut Instance<T>;
        (*ti).private = core::ptr::null_mut();
        Pin::new_unchecked(KBox::from_raw(p))
    };
    // The private data first (it drops the devices and handles it owns), then wait for the
    // references kept elsewhere: `ti` stays valid until this returns.
    // SAFETY: `target` is not structurally pinned; the anchor is not moved.
    drop(unsafe { inst.as_mut().get_unchecked_mut() }.target.take());
    inst.anchor.wait_unused(T::NAME, "dtr", "its private data");
    drop(inst);
}

unsafe extern "C" fn map_callback<T: Target>(ti: *mut bindings::dm_target, bio: *mut bindings::bio) -> ffi::c_int {
    // SAFETY: `map` is only called on constructed targets and never concurrently with `dtr`.
    let t = unsafe { private::<T>(ti) };
    // SAFETY: `bio` is a live bio device-mapper hands to this target, with
    // `per_io_data_size == size_of::<T::PerBio>()` bytes in front; we now own its completion.
    let bio_nn = unsafe { Bio::<T::PerBio>::from_dm_map(bio, (*ti).begin) };
    let Some(b) = bio_nn else { return bindings::DM_MAPIO_KILL as ffi::c_int };
    // SAFETY: `bio` is the bio being mapped; `ctx` lives until the end of this call.
    let ctx = unsafe { MapContext::new(bio) };
    // A bio returned for device-mapper to act on must be `bio` itself: anything else is a bio
    // the target owned, which device-mapper knows nothing of (it cannot submit, kill or requeue
    // it), while `bio` was consumed by the target. The foreign bio fails; `bio` is the target's.
    let own = |b: Bio<T::PerBio>, ret: ffi::c_int| -> ffi::c_int {
        let raw = b.into_raw();
        if raw == bio {
            return ret;
        }
        // SAFETY: `raw` is a bio the target owned and gave up.
        unsafe { Bio::<T::PerBio>::from_owned_raw(raw) }.end(BlkStatus::IOERR);
        kernel::pr_warn!("dmcore: {}: map returned a foreign bio\n", T::NAME);
        bindings::DM_MAPIO_SUBMITTED as ffi::c_int
    };
    match t.map(b, &ctx) {
        MapResult::Remapped(b) => own(b, bindings::DM_MAPIO_REMAPPED as ffi::c_int),
        MapResult::Submitted => bindings::DM_MAPIO_SUBMITTED as ffi::c_int,
        // Device-mapper completes a killed bio itself, and requeues a requeued one.
        MapResult::Kill(b) => own(b, bindings::DM_MAPIO_KILL as ffi::c_int),
        MapResult::Requeue(b) => own(b, bindings::DM_MAPIO_REQUEUE as ffi::c_int),
    }
}

unsafe extern "C" fn end_io_callback<T: Target>(
    ti: *mut bindings::dm_target,
    bio: *mut bindings::bio,
    error: *mut bindings::blk_status_t,
) -> ffi::c_int {
    // SAFETY: as in `map_callback`.
    let t = unsafe { private::<T>(ti) };
    // SAFETY: `bio` went through `map` of this target, so its per-bio data is initialised; the
    // borrowed view never completes it (device-mapper does after we return).
    let view = unsafe { Bio::<T::PerBio>::borrowed(bio, (*ti).begin) };
    // SAFETY: `error` points to the status device-mapper will complete the bio with.
    let mut st = BlkStatus(unsafe { *error });
    let r = t.end_io(&view, &mut st);
    // SAFETY: as above.
    unsafe { *error = st.0 };
    match r {
        EndIo::Done => bindings::DM_ENDIO_DONE as ffi::c_int,
        EndIo::Requeue => bindings::DM_ENDIO_REQUEUE as ffi::c_int,
    }
}

unsafe extern "C" fn presuspend_callback<T: Target>(ti: *mut bindings::dm_target) {
    // SAFETY: a constructed target; not concurrent with `dtr`.
    unsafe { private::<T>(ti) }.presuspend()
}

unsafe extern "C" fn presuspend_undo_callback<T: Target>(ti: *mut bindings::dm_target) {
    // SAFETY: as above.
    unsafe { private::<T>(ti) }.presuspend_undo()
}

unsafe extern "C" fn postsuspend_callback<T: Target>(ti: *mut bindings::dm_target) {
    // SAFETY: as above.
    unsafe { private::<T>(ti) }.postsuspend()
}

unsafe extern "C" fn preresume_callback<T: Target>(ti: *mut bindings::dm_target) -> ffi::c_int {
    // SAFETY: as above.
    match unsafe { private::<T>(ti) }.preresume() {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

unsafe extern "C" fn resume_callback<T: Target>(ti: *mut bindings::dm_target) {
    // SAFETY: as above.
    unsafe { private::<T>(ti) }.resume()
}

unsafe extern "C" fn status_callback<T: Target>(
    ti: *mut bindings::dm_target,
    ty: bindings::status_type_t,
    _flags: ffi::c_uint,
    result: *mut ffi::c_char,
    maxlen: ffi::c_uint,
) {
    let ty = match ty {
        bindings::status_type_t_STATUSTYPE_INFO => StatusType::Info,
        bindings::status_type_t_STATUSTYPE_TABLE => StatusType::Table,
        _ => StatusType::Ima,
    };
    // SAFETY: `result` has `maxlen` writable bytes for this call.
    let mut out = unsafe { StatusWriter::from_raw(result, maxlen) };
    // SAFETY: a constructed target; not concurrent with `dtr`.
    unsafe { private::<T>(ti) }.status(ty, &mut out)
}

unsafe extern "C" fn message_callback<T: Target>(
    ti: *mut bindings::dm_target,
    argc: ffi::c_uint,
    argv: *mut *mut ffi::c_char,
    result: *mut ffi::c_char,
    maxlen: ffi::c_uint,
) -> ffi::c_int {
    // SAFETY: device-mapper passes `argc` valid strings for the whole call.
    let args = unsafe { Args::from_raw(argc, argv) };
    // SAFETY: `result` has `maxlen` writable bytes for this call.
    let mut out = unsafe { StatusWriter::from_raw(result, maxlen) };
    // SAFETY: a constructed target; not concurrent with `dtr`.
    match unsafe { private::<T>(ti) }.message(args, &mut out) {
        // 1 tells device-mapper that `result` holds text for userspace.
        Ok(()) => i32::from(!out.is_empty()),
        Err(e) => e.to_errno(),
    }
}

unsafe extern "C" fn iterate_devices_callback<T: Target>(
    ti: *mut bindings::dm_target,
    fun: bindings::iterate_devices_callout_fn,
    data: *mut ffi::c_void,
) -> ffi::c_int {
    let mut v = DeviceVisitor { ti, fun, data, _p: PhantomData };
    // SAFETY: a constructed target; not concurrent with `dtr`.
    match unsafe { private::<T>(ti) }.iterate_devices(&mut v) {
        Ok(()) => 0,
        Err(Stop(r)) => r,
    }
}

unsafe extern "C" fn io_hints_callback<T: Target>(ti: *mut bindings::dm_target, limits: *mut bindings::queue_limits) {
    // SAFETY: `limits` is valid and exclusively ours for this call.
    let mut l = QueueLimits { l: unsafe { &mut *limits } };
    // SAFETY: a constructed target; not concurrent with `dtr`.
    unsafe { private::<T>(ti) }.io_hints(&mut l)
}
