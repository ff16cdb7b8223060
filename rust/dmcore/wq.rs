// SPDX-License-Identifier: GPL-2.0

//! Owned workqueues and completions.
//!
//! Work items themselves come from `kernel::workqueue` (`Work`, `WorkItem`, `impl_has_work!`);
//! a [`WorkQueue`] derefs to `kernel::workqueue::Queue` for enqueueing.

use super::bindings;
use core::ops::Deref;
use core::ptr::NonNull;
use kernel::error::{code::*, Result};
use kernel::prelude::*;
use kernel::str::CStr;
use kernel::types::Opaque;
use kernel::workqueue::Queue;

/// A workqueue owned by a target, created with `WQ_MEM_RECLAIM` (it has a rescuer thread, so
/// work needed to make progress on I/O runs even when memory is short). Destroying it (drop)
/// drains it first.
///
/// # Invariants
///
/// `wq` was returned by `alloc_workqueue` and is destroyed only in `Drop`.
pub struct WorkQueue {
    wq: NonNull<bindings::workqueue_struct>,
}

// SAFETY: workqueues may be used from any thread.
unsafe impl Send for WorkQueue {}
// SAFETY: as above; all operations go through the thread-safe C API.
unsafe impl Sync for WorkQueue {}

impl WorkQueue {
    /// Creates a workqueue named `name` that runs at most `max_active` items at once per CPU
    /// (0: the default), optionally ordered (one item at a time, in queueing order).
    pub fn new(name: &CStr, max_active: i32, ordered: bool) -> Result<Self> {
        let mut flags = bindings::wq_flags_WQ_MEM_RECLAIM;
        let max = if ordered {
            flags |= bindings::wq_flags_WQ_UNBOUND | bindings::wq_flags___WQ_ORDERED;
            1
        } else {
            max_active
        };
        // SAFETY: `"%s"` with a NUL-terminated argument; the name is copied by the callee.
        let wq = unsafe { bindings::alloc_workqueue(kernel::c_str!("%s").as_char_ptr(), flags, max, name.as_char_ptr()) };
        // INVARIANT: non-null result of `alloc_workqueue`.
        Ok(Self { wq: NonNull::new(wq).ok_or(ENOMEM)? })
    }

    /// Waits until every item queued so far has run.
    pub fn flush(&self) {
        // SAFETY: `wq` is live (type invariant).
        unsafe { bindings::__flush_workqueue(self.wq.as_ptr()) };
    }
}

impl Deref for WorkQueue {
    type Target = Queue;

    fn deref(&self) -> &Queue {
        // SAFETY: `wq` is live while `self` is borrowed.
        unsafe { Queue::from_raw(self.wq.as_ptr()) }
    }
}

impl Drop for WorkQueue {
    fn drop(&mut self) {
        // SAFETY: `wq` is live and destroyed exactly once; `destroy_workqueue` drains it.
        unsafe { bindings::destroy_workqueue(self.wq.as_ptr()) };
    }
}

/// A one-shot event (`struct completion`): `complete` wakes waiters, now and later.
///
/// Must be pinned (it embeds a wait queue): create it with `KBox::pin_init(Completion::new())`
/// or as a `#[pin]` field.
#[pin_data]
pub struct Completion {
    #[pin]
    c: Opaque<bindings::completion>,
}

// SAFETY: completions are designed to be signalled and waited on from different threads.
unsafe impl Send for Completion {}
// SAFETY: as above.
unsafe impl Sync for Completion {}

impl Completion {
    /// An initialiser for a not-yet-completed completion.
    pub fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: `init_completion` fully initialises the pinned slot.
            c <- Opaque::ffi_init(|slot| unsafe { bindings::dmcore_init_completion(slot) }),
        })
    }

    /// Signals completion, waking all current and future waiters. Callable from any context.
    pub fn complete_all(&self) {
        // SAFETY: initialised by `new` and pinned.
        unsafe { bindings::complete_all(self.c.get()) };
    }

    /// Wakes one waiter (or lets the next wait pass).
    pub fn complete(&self) {
        // SAFETY: as above.
        unsafe { bindings::complete(self.c.get()) };
    }

    /// Waits up to `ms` milliseconds; returns whether it was completed.
    pub fn wait_timeout_ms(&self, ms: u32) -> bool {
        let j = kernel::time::msecs_to_jiffies(ms);
        // SAFETY: as above.
        unsafe { bindings::wait_for_completion_timeout(self.c.get(), j) != 0 }
    }

    /// Waits up to `ms` milliseconds, or until a signal is pending for the calling task
    /// (`EINTR`); `Ok` tells whether it was completed.
    pub fn wait_interruptible_timeout_ms(&self, ms: u32) -> Result<bool> {
        let j = kernel::time::msecs_to_jiffies(ms);
        // SAFETY: as above.
        let r = unsafe { bindings::wait_for_completion_interruptible_timeout(self.c.get(), j) };
        if r < 0 {
            return Err(EINTR);
        }
        Ok(r != 0)
    }

    /// Makes it not completed again (`reinit_completion`), so that it can be used as an event:
    /// reinit, check the condition, then wait.
    pub fn reinit(&self) {
        // SAFETY: initialised by `new` and pinned.
        unsafe { bindings::dmcore_reinit_completion(self.c.get()) };
    }

    /// Whether it has been completed (and not consumed by a `wait`).
    pub fn is_done(&self) -> bool {
        // SAFETY: as above.
        unsafe { bindings::completion_done(self.c.get()) }
    }
}

/// Sleeps for about `ms` milliseconds (`msleep`). Process context only.
pub fn sleep_ms(ms: u32) {
    // SAFETY: `msleep` may be called from any sleepable context, which is documented above.
    unsafe { bindings::msleep(ms) };
}

/// Wall-clock time in nanoseconds since the Unix epoch (`ktime_get_real_ns`), for timestamps
/// shown to people; never for measuring intervals.
pub fn real_time_ns() -> u64 {
    // SAFETY: no preconditions; callable from any context.
    unsafe { bindings::dmcore_real_time_ns() }
}
