// SPDX-License-Identifier: GPL-2.0

//! Memory-allocation scopes.

use super::bindings;

/// While alive, every allocation of the current task behaves as `GFP_NOIO`: it cannot recurse
/// into block I/O (which could deadlock on the device being served). `memalloc_noio_save()`.
///
/// `!Send`: the scope belongs to the task that opened it.
pub struct NoIoScope {
    flags: u32,
    _not_send: core::marker::PhantomData<*mut ()>,
}

impl NoIoScope {
    /// Opens a scope.
    pub fn enter() -> Self {
        // SAFETY: no preconditions; the flags are restored by `Drop` in the same task.
        let flags = unsafe { bindings::dmcore_memalloc_noio_save() };
        Self { flags, _not_send: core::marker::PhantomData }
    }
}

impl Drop for NoIoScope {
    fn drop(&mut self) {
        // SAFETY: `flags` came from the matching save in this task (the type is `!Send`).
        unsafe { bindings::dmcore_memalloc_noio_restore(self.flags) };
    }
}

/// `GFP_NOIO`, for C allocators that take flags (the 6.12 `kernel::alloc::Flags` cannot express it).
pub const GFP_NOIO: bindings::gfp_t = bindings::DMCORE_GFP_NOIO;
