// SPDX-License-Identifier: GPL-2.0

//! Devices a target maps to (`dm_get_device` / `dm_put_device`).

use super::bindings;
use super::target::Anchor;
use core::fmt;
use core::ptr::NonNull;
use kernel::types::ARef;

/// A device referenced by a table line, released when dropped.
///
/// A `Device` may be moved anywhere (an `Arc` shared with work items, say), but the target's
/// `dtr` waits until every `Device` of the target is dropped: keep them in the private data, or
/// in work its `Drop` ends. Dropping one may sleep (`dm_put_device` takes the table's lock).
///
/// # Invariants
///
/// `dev` was obtained from `dm_get_device(ti, ..)` and not yet put, where `ti` is `anchor`'s
/// target: the counted reference `anchor` keeps `ti` and its table from being freed (dmcore's
/// `dtr` waits for it), so `dev` stays in the table's device list until `Drop` puts it.
/// Devices are only created by [`super::target::CtrTarget::get_device`].
pub struct Device {
    dev: NonNull<bindings::dm_dev>,
    anchor: ARef<Anchor>,
}

// SAFETY: a `dm_dev` reference may be used and released from any thread.
unsafe impl Send for Device {}
// SAFETY: `&Device` only reads immutable fields of the `dm_dev` and its `block_device`.
unsafe impl Sync for Device {}

impl Device {
    /// # Safety
    ///
    /// `dev` must come from a successful `dm_get_device(ti, ..)`, where `ti` is `anchor`'s
    /// target, whose reference is transferred to the new object.
    pub(super) unsafe fn from_raw(dev: NonNull<bindings::dm_dev>, anchor: ARef<Anchor>) -> Self {
        // INVARIANT: guaranteed by the caller; `anchor` keeps `ti` alive (see `Anchor`).
        Self { dev, anchor }
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
        // SAFETY: by the type invariants the reference is live and `anchor.ti()` is the live
        // target that got it; it is put exactly once, here, before `anchor` is released.
        unsafe { bindings::dm_put_device(self.anchor.ti(), self.dev.as_ptr()) };
    }
}
