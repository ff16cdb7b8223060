// SPDX-License-Identifier: GPL-2.0

//! Synchronous block I/O between kernel buffers and device regions (`dm-io`).
//!
//! C header: [`include/linux/dm-io.h`](srctree/include/linux/dm-io.h)
//!
//! Used for metadata and for the slow paths of targets, always from process context (it
//! sleeps). dm-io allocates from its own mempools (GFP_NOIO), so it cannot recurse into I/O.

use super::bindings;
use super::device::Device;
use core::ptr::NonNull;
use kernel::error::{code::*, Result};

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
        let mut req = bindings::dm_io_request {
            bi_opf: opf,
            mem,
            notify: bindings::dm_io_notify { fn_: None, context: core::ptr::null_mut() },
            client: self.c.as_ptr(),
        };
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
        // SAFETY: created in `new`, destroyed once; no I/O is in flight (all I/O is synchronous).
        unsafe { bindings::dm_io_client_destroy(self.c.as_ptr()) };
    }
}
