// SPDX-License-Identifier: GPL-2.0

//! Shared secrets from the kernel keyring (as dm-crypt takes its keys), and random bytes.

use super::bindings;
use kernel::alloc::{flags::GFP_KERNEL, KVec};
use kernel::error::{code::*, Error, Result};
use kernel::str::CStr;

/// Longest secret accepted, in bytes.
pub const MAX_SECRET: usize = 1024;

/// A secret copied out of a key; zeroed when dropped.
pub struct Secret {
    bytes: KVec<u8>,
    len: usize,
}

impl Secret {
    /// Reads the `user` (or else `logon`) key with description `desc`, searched in the calling
    /// task's keyrings (`request_key`). Process context only; call from a table load, so the
    /// key is looked up in the keyrings of the process loading the table.
    pub fn from_keyring(desc: &CStr) -> Result<Self> {
        let mut bytes = KVec::from_elem(0u8, MAX_SECRET, GFP_KERNEL)?;
        // SAFETY: `desc` is NUL-terminated; `bytes` has room for `MAX_SECRET` bytes.
        let r = unsafe { bindings::dmcore_read_key(desc.as_char_ptr(), bytes.as_mut_ptr(), MAX_SECRET as u32) };
        if r < 0 {
            let mut s = Self { bytes, len: 0 };
            s.wipe();
            return Err(Error::from_errno(r));
        }
        if r == 0 {
            return Err(EINVAL);
        }
        Ok(Self { bytes, len: (r as usize).min(MAX_SECRET) })
    }

    /// The secret.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }

    fn wipe(&mut self) {
        for b in self.bytes.iter_mut() {
            // SAFETY: `b` is a valid, exclusive reference; the volatile write keeps the
            // compiler from dropping the wipe as a dead store.
            unsafe { core::ptr::write_volatile(b, 0) };
        }
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.wipe();
    }
}

/// Fills `buf` with random bytes from the kernel's CRNG (`get_random_bytes`).
pub fn random_bytes(buf: &mut [u8]) {
    // SAFETY: `buf` is valid for writes of its length.
    unsafe { bindings::dmcore_random_bytes(buf.as_mut_ptr(), buf.len() as u32) };
}
