// SPDX-License-Identifier: GPL-2.0

//! HMAC-SHA256 from the kernel crypto API (the `hmac(sha256)` shash transform, accelerated
//! where the CPU has it), for the MACs of `rust/core`'s wire protocol.

use super::bindings;
use crate::wbrepl_core::wire::{Hmac, MAC_LEN};
use core::ptr::NonNull;
use kernel::error::{to_result, Result};

/// Most parts one MAC covers (the shim hashes at most this many).
const MAX_PARTS: usize = 8;

/// A keyed HMAC-SHA256 transform.
///
/// # Invariants
///
/// `tfm` is a `struct crypto_shash` allocated and keyed by `dmcore_hmac_sha256_new`, owned by
/// this object and freed only by its `Drop`. It is only read after creation (each digest uses
/// its own descriptor on the stack), so it may be used from several threads at once.
pub struct KernelHmac {
    tfm: NonNull<core::ffi::c_void>,
}

// SAFETY: the transform is not tied to a thread, and after creation it is only read (see the
// type invariants); the crypto API allows concurrent digests with separate descriptors.
unsafe impl Send for KernelHmac {}
// SAFETY: as above.
unsafe impl Sync for KernelHmac {}

impl KernelHmac {
    /// Allocates a transform keyed with `key`. May sleep (process context only).
    pub fn new(key: &[u8]) -> Result<Self> {
        let keylen = u32::try_from(key.len()).map_err(|_| kernel::error::code::EINVAL)?;
        let mut tfm: *mut core::ffi::c_void = core::ptr::null_mut();
        // SAFETY: `key` is valid for `keylen` bytes; `tfm` is a valid place for the result.
        to_result(unsafe { bindings::dmcore_hmac_sha256_new(key.as_ptr(), keylen, &mut tfm) })?;
        let tfm = NonNull::new(tfm).ok_or(kernel::error::code::ENOMEM)?;
        // INVARIANT: allocated and keyed by the shim, owned from now on.
        Ok(Self { tfm })
    }
}

impl Hmac for KernelHmac {
    fn mac(&self, parts: &[&[u8]]) -> Option<[u8; MAC_LEN]> {
        if parts.len() > MAX_PARTS {
            return None;
        }
        let mut ptrs = [core::ptr::null::<u8>(); MAX_PARTS];
        let mut lens = [0u32; MAX_PARTS];
        for ((p, l), part) in ptrs.iter_mut().zip(lens.iter_mut()).zip(parts) {
            *p = part.as_ptr();
            *l = u32::try_from(part.len()).ok()?;
        }
        let mut out = [0u8; MAC_LEN];
        // SAFETY: `tfm` is a live keyed transform (type invariant); the first `parts.len()`
        // entries of `ptrs`/`lens` describe valid byte ranges; `out` has room for the 32-byte
        // digest.
        let r = unsafe {
            bindings::dmcore_hmac_sha256_digest(
                self.tfm.as_ptr(),
                ptrs.as_ptr(),
                lens.as_ptr(),
                parts.len() as u32,
                out.as_mut_ptr(),
            )
        };
        (r == 0).then_some(out)
    }
}

impl Drop for KernelHmac {
    fn drop(&mut self) {
        // SAFETY: owned transform (type invariant), freed once, here.
        unsafe { bindings::dmcore_hmac_sha256_free(self.tfm.as_ptr()) };
    }
}
