// SPDX-License-Identifier: GPL-2.0

//! Block I/O between kernel buffers and device regions (`dm-io`).
//!
//! C header: [`include/linux/dm-io.h`](srctree/include/linux/dm-io.h)
//!
//! [`IoClient`] does synchronous I/O, for metadata and the slow paths of targets, always from
//! process context (it sleeps). [`AsyncWriter`] submits writes from owned buffers ([`IoBuf`])
//! and hands each buffer back to a handler when its write completes, so that many writes can
//! be in flight (a replication secondary applying a stream). dm-io allocates from its own
//! mempools (GFP_NOIO), so neither can recurse into I/O.

use super::bindings;
use super::device::Device;
use super::wq::Completion;
use core::ops::{Deref, DerefMut, Range};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use kernel::error::{code::*, Error, Result};
use kernel::prelude::*;

/// A range of sectors on a device.
#[derive(Clone, Copy)]
pub struct Region<'a> {
    /// The device.
    pub dev: &'a Device,
    /// First sector.
    pub sector: u64,
    /// Length in sectors.
    pub sectors: u64,
}

impl Region<'_> {
    pub(crate) fn raw(&self) -> bindings::dm_io_region {
        bindings::dm_io_region { bdev: self.dev.bdev(), sector: self.sector, count: self.sectors }
    }
}

/// Extra request flags.
#[derive(Clone, Copy, Debug, Default)]
pub struct IoFlags {
    /// `REQ_FUA`: durable on completion.
    pub fua: bool,
    /// `REQ_PREFLUSH`: flush the device's volatile cache first.
    pub preflush: bool,
}

/// A dm-io client: private mempools for one user.
///
/// # Invariants
///
/// `c` came from `dm_io_client_create` and is destroyed only in `Drop`.
pub struct IoClient {
    c: NonNull<bindings::dm_io_client>,
}

// SAFETY: a dm-io client may be used from any thread; its pools are thread-safe.
unsafe impl Send for IoClient {}
// SAFETY: as above.
unsafe impl Sync for IoClient {}

impl IoClient {
    /// Creates a client (may sleep).
    pub fn new() -> Result<Self> {
        // SAFETY: no preconditions.
        let c = unsafe { bindings::dm_io_client_create() };
        let c = kernel::error::from_err_ptr(c)?;
        // INVARIANT: a successful `dm_io_client_create`.
        Ok(Self { c: NonNull::new(c).ok_or(ENOMEM)? })
    }

    fn run(&self, opf: u32, regions: &mut [bindings::dm_io_region], buf: *mut u8) -> Result {
        let mut req = self.request(opf, buf);
        let mut errs: kernel::ffi::c_ulong = 0;
        // SAFETY: no preconditions.
        let prio = unsafe { bindings::dmcore_ioprio_default() };
        // SAFETY: `req` describes a buffer that the callers below checked to cover every region
        // (or no buffer, for an empty flush); synchronous I/O (`notify.fn_` is NULL) keeps it
        // borrowed until completion. `regions` are valid for the call.
        let r = unsafe {
            bindings::dm_io(&mut req, regions.len() as u32, regions.as_mut_ptr(), &mut errs, prio)
        };
        kernel::error::to_result(r)?;
        if errs != 0 {
            return Err(EIO);
        }
        Ok(())
    }

    /// A request for `buf` (NULL: none) without a notifier (synchronous).
    fn request(&self, opf: u32, buf: *mut u8) -> bindings::dm_io_request {
        let mem = if buf.is_null() {
            bindings::dm_io_memory { type_: bindings::dm_io_mem_type_DM_IO_KMEM, ..Default::default() }
        } else {
            // SAFETY: any pointer may be asked whether it is a vmalloc address.
            let vm = unsafe { bindings::dmcore_is_vmalloc_addr(buf as *const _) };
            let mut m = bindings::dm_io_memory {
                type_: if vm { bindings::dm_io_mem_type_DM_IO_VMA } else { bindings::dm_io_mem_type_DM_IO_KMEM },
                ..Default::default()
            };
            if vm {
                m.ptr.vma = buf.cast();
            } else {
                m.ptr.addr = buf.cast();
            }
            m
        };
        bindings::dm_io_request {
            bi_opf: opf,
            mem,
            notify: bindings::dm_io_notify { fn_: None, context: core::ptr::null_mut() },
            client: self.c.as_ptr(),
        }
    }

    fn opf(write: bool, flags: IoFlags) -> u32 {
        let mut opf = if write { bindings::req_op_REQ_OP_WRITE } else { bindings::req_op_REQ_OP_READ };
        if flags.fua {
            opf |= bindings::DMCORE_REQ_FUA;
        }
        if flags.preflush {
            opf |= bindings::DMCORE_REQ_PREFLUSH;
        }
        opf
    }

    /// Reads `region` into `buf`, which must be exactly the region's size.
    pub fn read(&self, region: Region<'_>, buf: &mut [u8]) -> Result {
        if region.sectors.checked_mul(512) != Some(buf.len() as u64) || buf.is_empty() {
            return Err(EINVAL);
        }
        self.run(Self::opf(false, IoFlags::default()), &mut [region.raw()], buf.as_mut_ptr())
    }

    /// Writes `buf` to each of `regions` (at most 8), each exactly `buf`'s size.
    pub fn write(&self, regions: &[Region<'_>], buf: &[u8], flags: IoFlags) -> Result {
        let mut raw: [bindings::dm_io_region; 8] = core::array::from_fn(|_| bindings::dm_io_region::default());
        if regions.is_empty() || regions.len() > raw.len() || buf.is_empty() {
            return Err(EINVAL);
        }
        for (r, out) in regions.iter().zip(raw.iter_mut()) {
            if r.sectors.checked_mul(512) != Some(buf.len() as u64) {
                return Err(EINVAL);
            }
            *out = r.raw();
        }
        // dm-io only reads from the buffer for a write; the `*mut` is an artefact of its API.
        self.run(Self::opf(true, flags), &mut raw[..regions.len()], buf.as_ptr() as *mut u8)
    }

    /// Flushes `dev`'s volatile write cache (an empty `REQ_PREFLUSH` write).
    pub fn flush(&self, dev: &Device) -> Result {
        let region = Region { dev, sector: 0, sectors: 0 };
        self.run(Self::opf(true, IoFlags { preflush: true, fua: false }), &mut [region.raw()], core::ptr::null_mut())
    }
}

impl Drop for IoClient {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once; no I/O is in flight: synchronous I/O has
        // returned, and an `AsyncWriter` waits for its writes before its client is dropped.
        unsafe { bindings::dm_io_client_destroy(self.c.as_ptr()) };
    }
}

/// A kernel buffer for [`AsyncWriter`]: owned by its user while idle, by the writer while a
/// write from it is in flight, and handed back by [`WriteDone::write_done`].
///
/// `tag` is the user's (say, which slot the write belongs to); it travels with the buffer.
pub struct IoBuf {
    inner: KBox<IoBufInner>,
}

struct IoBufInner {
    data: VVec<u8>,
    tag: usize,
    /// While in flight: the `AsyncWriter` that submitted it (type-erased).
    owner: *const kernel::ffi::c_void,
}

// SAFETY: `owner` is only dereferenced by the completion callback, which is allowed to run on
// any CPU; the buffer itself is plain memory.
unsafe impl Send for IoBuf {}

impl IoBuf {
    /// A zeroed, page-aligned buffer of `len` bytes (`vmalloc`: no high-order allocation, and
    /// no rounding up to a power of two).
    pub fn new(len: usize) -> Result<Self> {
        let data = VVec::from_elem(0u8, len, GFP_KERNEL)?;
        Ok(Self { inner: KBox::new(IoBufInner { data, tag: 0, owner: core::ptr::null() }, GFP_KERNEL)? })
    }

    /// The user's tag.
    pub fn tag(&self) -> usize {
        self.inner.tag
    }

    /// Sets the user's tag.
    pub fn set_tag(&mut self, tag: usize) {
        self.inner.tag = tag;
    }
}

impl Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.inner.data
    }
}

impl DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.inner.data
    }
}

/// What an [`AsyncWriter`] calls when a write completes.
pub trait WriteDone: Send + Sync {
    /// The write from `buf` finished (`ok`: without error). Runs in the completion context,
    /// which may be a hard interrupt or another atomic context: it must not sleep or allocate,
    /// and must not drop `buf` (freeing vmalloc memory may sleep outside interrupt context):
    /// keep it for process context to reuse or free.
    fn write_done(&self, buf: IoBuf, ok: bool);
}

/// Asynchronous writes to one device through dm-io, each from an [`IoBuf`], with a handler
/// `H` that gets each buffer back on completion.
///
/// # Invariants
///
/// `inflight` is one more than the number of writes submitted and not yet notified, until
/// `drop` takes its own count away. Each in-flight `IoBuf` holds a pointer to `self`, which is
/// pinned and outlives them: `drop` waits for the last one (the notifier's `complete_all` on
/// `idle` is its last access to `self`) before any field, the device among them, is dropped.
#[pin_data(PinnedDrop)]
pub struct AsyncWriter<H: WriteDone> {
    client: IoClient,
    dev: Device,
    #[pin]
    handler: H,
    inflight: AtomicUsize,
    #[pin]
    idle: Completion,
}

unsafe extern "C" fn notify_write<H: WriteDone>(error: kernel::ffi::c_ulong, ctx: *mut kernel::ffi::c_void) {
    // SAFETY: `ctx` is the `IoBufInner` that `AsyncWriter::write` leaked with `KBox::into_raw`
    // for this write, notified exactly once; ownership comes back here.
    let mut inner = unsafe { KBox::from_raw(ctx as *mut IoBufInner) };
    let owner = core::mem::replace(&mut inner.owner, core::ptr::null());
    // SAFETY: `owner` is the pinned `AsyncWriter<H>` that submitted the write; by its type
    // invariant it outlives its in-flight writes, and this write counts in `inflight` until the
    // `fetch_sub` below.
    let w = unsafe { &*(owner as *const AsyncWriter<H>) };
    w.handler.write_done(IoBuf { inner }, error == 0);
    if w.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
        // Only after `drop` gave up its own count: `drop` waits for this.
        w.idle.complete_all();
    }
}

impl<H: WriteDone> AsyncWriter<H> {
    /// A writer to `dev` with its own dm-io client and `handler`. It keeps `dev` open until
    /// its last write has completed.
    pub fn new(client: IoClient, dev: Device, handler: impl PinInit<H>) -> impl PinInit<Self> {
        pin_init!(Self {
            client,
            dev,
            handler <- handler,
            // INVARIANT: no write in flight; the one is `drop`'s.
            inflight: AtomicUsize::new(1),
            idle <- Completion::new(),
        })
    }

    /// The completion handler (shared state for the user).
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The synchronous client, for I/O that must be done in line.
    pub fn client(&self) -> &IoClient {
        &self.client
    }

    /// The device written to.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// Writes `buf[range]` to the device at `sector`, asynchronously: the handler gets `buf`
    /// back when the write is done. `range` must start on a sector boundary and be a whole
    /// number of sectors (`EINVAL` otherwise, with the buffer returned). Process context
    /// (dm-io may sleep waiting for its mempools).
    pub fn write(
        &self,
        mut buf: IoBuf,
        range: Range<usize>,
        sector: u64,
        flags: IoFlags,
    ) -> core::result::Result<(), (IoBuf, Error)> {
        let len = range.end.saturating_sub(range.start);
        if range.end > buf.len() || len == 0 || len % 512 != 0 || range.start % 512 != 0 {
            return Err((buf, EINVAL));
        }
        let mut region = Region { dev: &self.dev, sector, sectors: len as u64 / 512 }.raw();
        let ptr = buf.inner.data[range.start..].as_mut_ptr();
        let mut req = self.client.request(IoClient::opf(true, flags), ptr);
        req.notify = bindings::dm_io_notify {
            fn_: Some(notify_write::<H>),
            context: core::ptr::null_mut(),
        };
        buf.inner.owner = self as *const Self as *const kernel::ffi::c_void;
        self.inflight.fetch_add(1, Ordering::AcqRel);
        let raw = KBox::into_raw(buf.inner);
        req.notify.context = raw.cast();
        // SAFETY: no preconditions.
        let prio = unsafe { bindings::dmcore_ioprio_default() };
        // SAFETY: the buffer (checked above to hold `range`, which `region` matches) is owned by
        // the request until `notify_write` takes it back; `self` outlives the write (type
        // invariant, counted in `inflight` above). `region` is read during the call. An
        // asynchronous dm_io that fails returns an error without notifying.
        let r = unsafe { bindings::dm_io(&mut req, 1, &mut region, core::ptr::null_mut(), prio) };
        if r != 0 {
            // SAFETY: not submitted, so not notified: `raw` is still ours, from `into_raw`.
            let inner = unsafe { KBox::from_raw(raw) };
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            return Err((IoBuf { inner }, Error::from_errno(r)));
        }
        Ok(())
    }

    /// Writes submitted and not yet completed.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire).saturating_sub(1)
    }
}

#[pinned_drop]
impl<H: WriteDone> PinnedDrop for AsyncWriter<H> {
    fn drop(self: Pin<&mut Self>) {
        // Give up our count; if writes are still in flight, the last notifier completes `idle`
        // (its last access to `self`), and the wait returns only once it released it.
        if self.inflight.fetch_sub(1, Ordering::AcqRel) != 1 {
            while !self.idle.wait_timeout_ms(1000) {}
        }
    }
}
