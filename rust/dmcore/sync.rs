// SPDX-License-Identifier: GPL-2.0

//! A spinlock that disables local interrupts while held (`spin_lock_irqsave`).
//!
//! Bio completions (`end_io`) can run in hard-interrupt context, so state shared between `map`
//! and `end_io` needs a lock that a completion on the same CPU cannot interrupt. The kernel
//! crate of 6.12 only has the plain `spin_lock` variant.

use super::bindings;
use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use kernel::prelude::*;
use kernel::types::Opaque;

/// Data protected by an interrupt-safe spinlock. Critical sections must not sleep.
#[pin_data]
pub struct IrqSpinLock<T> {
    #[pin]
    lock: Opaque<bindings::spinlock_t>,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `T` to one thread at a time; `T: Send` suffices.
unsafe impl<T: Send> Send for IrqSpinLock<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for IrqSpinLock<T> {}

impl<T> IrqSpinLock<T> {
    /// An initialiser for a lock holding `data`.
    pub fn new(data: T) -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: `spin_lock_init` fully initialises the pinned slot.
            lock <- Opaque::ffi_init(|slot| unsafe { bindings::dmcore_spin_lock_init(slot) }),
            data: UnsafeCell::new(data),
        })
    }

    /// Takes the lock, disabling local interrupts until the guard is dropped.
    pub fn lock(&self) -> IrqGuard<'_, T> {
        // SAFETY: the lock was initialised by `new` and is pinned.
        let flags = unsafe { bindings::dmcore_spin_lock_irqsave(self.lock.get()) };
        // INVARIANT: the lock is held with these saved flags.
        IrqGuard { lock: self, flags, _not_send: PhantomData }
    }
}

/// Access to the data of a held [`IrqSpinLock`].
///
/// # Invariants
///
/// `lock` is held by this guard, taken with `spin_lock_irqsave` that saved `flags`.
pub struct IrqGuard<'a, T> {
    lock: &'a IrqSpinLock<T>,
    flags: kernel::ffi::c_ulong,
    // The lock must be released on the CPU (and in the context) that took it.
    _not_send: PhantomData<*mut ()>,
}

impl<T> Deref for IrqGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the lock is held (type invariant), so nobody else accesses the data.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for IrqGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above, and `&mut self` makes this access unique.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for IrqGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the lock is held with `flags` (type invariant); it is released exactly once.
        unsafe { bindings::dmcore_spin_unlock_irqrestore(self.lock.lock.get(), self.flags) };
    }
}
