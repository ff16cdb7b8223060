// SPDX-License-Identifier: GPL-2.0

//! Output buffers for `status` and `message` results (`DMEMIT`).

use super::bindings::ffi::c_char;
use core::fmt;

/// Writes formatted text into a device-mapper result buffer, like `DMEMIT`.
///
/// The text is always NUL-terminated. When it does not fit, as much as fits is kept and the rest
/// dropped; device-mapper then sees a full buffer and userspace retries with a larger one.
///
/// # Invariants
///
/// `buf` points to `cap` writable bytes (or `cap == 0`); `len < cap` whenever `cap > 0`, and
/// `buf[len] == 0`.
pub struct StatusWriter<'a> {
    buf: *mut u8,
    cap: usize,
    len: usize,
    truncated: bool,
    _p: core::marker::PhantomData<&'a mut [u8]>,
}

impl<'a> StatusWriter<'a> {
    /// Wraps device-mapper's `result`/`maxlen`.
    ///
    /// # Safety
    ///
    /// `result` must point to `maxlen` bytes writable for `'a` and not otherwise accessed
    /// during `'a`.
    pub unsafe fn from_raw(result: *mut c_char, maxlen: u32) -> Self {
        let cap = if result.is_null() { 0 } else { maxlen as usize };
        if cap > 0 {
            // SAFETY: `result` has at least one writable byte.
            unsafe { *result = 0 };
        }
        // INVARIANT: `len == 0` and the first byte is NUL (when there is one).
        Self { buf: result.cast(), cap, len: 0, truncated: false, _p: core::marker::PhantomData }
    }

    /// Wraps a Rust buffer.
    pub fn new(buf: &'a mut [u8]) -> Self {
        let cap = buf.len();
        if let Some(b) = buf.first_mut() {
            *b = 0;
        }
        // INVARIANT: `buf` is a unique borrow of `cap` bytes; `len == 0`, first byte NUL.
        Self { buf: buf.as_mut_ptr(), cap, len: 0, truncated: false, _p: core::marker::PhantomData }
    }

    /// Bytes written, without the NUL.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether some output was dropped for lack of space.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The text written so far.
    pub fn as_bytes(&self) -> &[u8] {
        if self.cap == 0 {
            return &[];
        }
        // SAFETY: by the type invariant the first `len` bytes are initialised and ours.
        unsafe { core::slice::from_raw_parts(self.buf, self.len) }
    }
}

impl fmt::Write for StatusWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.cap == 0 {
            self.truncated |= !s.is_empty();
            return Ok(());
        }
        let room = self.cap - 1 - self.len;
        let n = s.len().min(room);
        self.truncated |= n < s.len();
        // SAFETY: `len + n + 1 <= cap`, so the copy and the terminator stay inside the buffer,
        // which `s` cannot overlap (we hold it exclusively).
        unsafe {
            core::ptr::copy_nonoverlapping(s.as_ptr(), self.buf.add(self.len), n);
            self.len += n;
            *self.buf.add(self.len) = 0;
        }
        Ok(())
    }
}
