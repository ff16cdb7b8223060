// SPDX-License-Identifier: GPL-2.0

//! CRC-32C from the kernel (`crc32c()`, lib/libcrc32c: the crypto API's "crc32c" transform,
//! hardware-accelerated where the CPU has it), for the codecs of `rust/core`.

use super::bindings;
use crate::wbrepl_core::wbformat::Crc32c;

/// The kernel's CRC-32C, in the standard form `rust/core` expects.
#[derive(Clone, Copy, Default)]
pub struct KernelCrc32c;

impl Crc32c for KernelCrc32c {
    fn append(&self, crc: u32, data: &[u8]) -> u32 {
        // The kernel function neither inverts its seed nor its result.
        let mut c = !crc;
        for chunk in data.chunks(1 << 30) {
            // SAFETY: `chunk` is a valid byte range of the given length.
            c = unsafe { bindings::crc32c(c, chunk.as_ptr().cast(), chunk.len() as u32) };
        }
        !c
    }
}
