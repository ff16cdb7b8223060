// SPDX-License-Identifier: GPL-2.0

//! Devices a target maps to (`dm_get_device` / `dm_put_device`).

use super::bindings;
use core::fmt;
use core::ptr::NonNull;

/// A device referenced by a table line, released when dropped.
///
/// # Invariants
///
/// `dev` was obtained from `dm_get_device(ti, ..)` and not yet put; `ti` is the target that
/// got it. Devices are only created by [`super::target::CtrTarget::get_device`] and owned by
/// the target's private data, which device-mapper drops (in `dtr`) before it frees `ti`.
pub struct Device {
    dev: NonNull<bindings::dm_dev>,
    ti: NonNull<bindings::dm_target>,
}

// SAFETY: a `dm_dev` reference may be used and released from any thread.
unsafe impl Send for Device {}
// SAFETY: `&Device` only reads immutable fields of the `dm_dev` and its `block_device`.
unsafe impl Sync for Device {}

impl Device {
    /// # Safety
    ///
    /// `dev` must come from a successful `dm_get_device(ti, ..)` whose reference is transferred
    /// to the new object, and `ti` must outlive it (see the type invariants).
    pub(crate) unsafe fn from_raw(dev: NonNull<bindings::dm_dev>, ti: NonNull<bindings::dm_target>) -> Self {
        // INVARIANT: guaranteed by the caller.
        Self { dev, ti }
    }

    pub(crate) fn raw(&self) -> *mut bindings::dm_dev {
        self.dev.as_ptr()
    }

    pub(crate) fn bdev(&self) -> *mut bindings::block_device {
        // SAFETY: `dev` is a live `dm_dev` (type invariant); `bdev` is set for its lifetime.
        unsafe { (*self.dev.as_ptr()).bdev }
    }

    /// Size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        // SAFETY: `bdev()` is a live block device while we hold the reference.
        unsafe { (*self.bdev()).bd_nr_sectors }
    }

    /// Device number, `(major, minor)`.
    pub fn devt(&self) -> (u32, u32) {
        // SAFETY: as in `sectors`.
        let d = unsafe { (*self.bdev()).bd_dev };
        (d >> 20, d & ((1 << 20) - 1))
    }

    /// Logical block size in bytes.
    pub fn logical_block_size(&self) -> u32 {
        // SAFETY: `bd_disk` and its queue live as long as the open block device.
        unsafe { (*(*(*self.bdev()).bd_disk).queue).limits.logical_block_size }
    }

    /// Flushes the device's volatile write cache (`blkdev_issue_flush`): every write completed
    /// before the call is durable when it returns. Sleeps.
    pub fn flush(&self) -> kernel::error::Result {
        // SAFETY: `bdev()` is an open block device while we hold the reference.
        kernel::error::to_result(unsafe { bindings::blkdev_issue_flush(self.bdev()) })
    }

    /// Whether both refer to the same block device.
    pub fn same_as(&self, other: &Device) -> bool {
        self.devt() == other.devt()
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ma, mi) = self.devt();
        write!(f, "{ma}:{mi}")
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: by the type invariants the reference is live and `ti` is the target that got
        // it; it is put exactly once, here.
        unsafe { bindings::dm_put_device(self.ti.as_ptr(), self.dev.as_ptr()) };
    }
}
