// SPDX-License-Identifier: GPL-2.0

//! Batched device-to-device copies (`dm-kcopyd`).
//!
//! C header: [`include/linux/dm-kcopyd.h`](srctree/include/linux/dm-kcopyd.h)

use super::bindings;
use super::device::Device;
use super::dmio::Region;
use super::mem::NoIoScope;
use super::wq::Completion;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use kernel::error::{code::*, Result};
use kernel::prelude::*;

/// A kcopyd client.
///
/// # Invariants
///
/// `kc` came from `dm_kcopyd_client_create` and is destroyed only in `Drop`.
pub struct Kcopyd {
    kc: NonNull<bindings::dm_kcopyd_client>,
}

// SAFETY: kcopyd clients accept jobs from any thread.
unsafe impl Send for Kcopyd {}
// SAFETY: as above.
unsafe impl Sync for Kcopyd {}

#[pin_data]
struct Batch {
    /// Jobs submitted and not yet notified, plus one while the submitter is still submitting.
    remaining: AtomicUsize,
    /// Jobs in flight (for the window).
    inflight: AtomicUsize,
    failed: AtomicBool,
    /// Signalled at every job's end (room in the window).
    #[pin]
    slot: Completion,
    /// Signalled once every job has ended.
    #[pin]
    done: Completion,
}

unsafe extern "C" fn notify(read_err: kernel::ffi::c_int, write_err: kernel::ffi::c_ulong, ctx: *mut kernel::ffi::c_void) {
    // SAFETY: `ctx` is the pinned `Batch` of `copy_all`, which waits until every job has
    // notified (`done`) before it frees the batch; `remaining` only reaches zero, and `done` is
    // only signalled, after this notifier's last other access.
    let b = unsafe { &*(ctx as *const Batch) };
    if read_err != 0 || write_err != 0 {
        b.failed.store(true, Ordering::Relaxed);
    }
    b.inflight.fetch_sub(1, Ordering::AcqRel);
    b.slot.complete();
    if b.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
        b.done.complete_all();
    }
}

impl Kcopyd {
    /// Creates a client (may sleep).
    pub fn new() -> Result<Self> {
        // SAFETY: a NULL throttle is allowed.
        let kc = unsafe { bindings::dm_kcopyd_client_create(core::ptr::null_mut()) };
        let kc = kernel::error::from_err_ptr(kc)?;
        // INVARIANT: a successful `dm_kcopyd_client_create`.
        Ok(Self { kc: NonNull::new(kc).ok_or(ENOMEM)? })
    }

    /// Copies from `from` to `to` for each `(from sector, to sector, sectors)` job, with at
    /// most `window` copies in flight at any time (a new one starts as soon as one ends), and
    /// waits for all of them. Fails with `EIO` if any copy failed (which ones is not reported:
    /// callers retry the batch).
    pub fn copy_all(&self, from: &Device, to: &Device, jobs: &[(u64, u64, u64)], window: usize) -> Result {
        if jobs.is_empty() {
            return Ok(());
        }
        if jobs.iter().any(|j| j.2 == 0) {
            return Err(EINVAL);
        }
        // Writeback frees cache space: its allocations must not wait for I/O.
        let _noio = NoIoScope::enter();
        let window = window.max(1);
        let batch = KBox::pin_init(
            pin_init!(Batch {
                // One extra count held by this function until every job is submitted, so that
                // `done` cannot fire early.
                remaining: AtomicUsize::new(jobs.len() + 1),
                inflight: AtomicUsize::new(0),
                failed: AtomicBool::new(false),
                slot <- Completion::new(),
                done <- Completion::new(),
            }),
            GFP_KERNEL,
        )?;
        let ctx = &*batch as *const Batch as *mut kernel::ffi::c_void;
        let mut submitted = 0;
        for &(f, t, sectors) in jobs {
            loop {
                // Re-armed before the check: an end after the check still wakes the wait.
                batch.slot.reinit();
                if batch.inflight.load(Ordering::Acquire) < window {
                    break;
                }
                batch.slot.wait_timeout_ms(1000);
            }
            if batch.failed.load(Ordering::Relaxed) {
                // The batch fails anyway: submit no more (the ones in flight are waited for).
                break;
            }
            batch.inflight.fetch_add(1, Ordering::AcqRel);
            submitted += 1;
            let mut from = Region { dev: from, sector: f, sectors }.raw();
            let mut to = Region { dev: to, sector: t, sectors }.raw();
            // SAFETY: the client is live; `from`/`to` are read during the call; `ctx` stays
            // valid until every job has notified, because we wait for that below.
            unsafe { bindings::dm_kcopyd_copy(self.kc.as_ptr(), &mut from, 1, &mut to, 0, Some(notify), ctx) };
        }
        // Jobs never submitted, and this function's own count. No early return above this
        // point once a job is submitted: the batch must outlive every notifier.
        let unsent = jobs.len() - submitted + 1;
        if batch.remaining.fetch_sub(unsent, Ordering::AcqRel) == unsent {
            batch.done.complete_all();
        }
        // Wait on the completion, not on the counter: `complete_all` is the last access to the
        // batch by the notifier, and a wait returns only after it released the completion.
        while !batch.done.wait_timeout_ms(1000) {}
        if batch.failed.load(Ordering::Relaxed) {
            return Err(EIO);
        }
        Ok(())
    }
}

impl Drop for Kcopyd {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once; `copy_all` never returns with jobs in
        // flight.
        unsafe { bindings::dm_kcopyd_client_destroy(self.kc.as_ptr()) };
    }
}
