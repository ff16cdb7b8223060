// SPDX-License-Identifier: GPL-2.0

//! Arguments of a table line or a `dmsetup message`, as handed over by device-mapper.

use super::bindings::ffi::c_char;
use kernel::str::CStr;

/// Replacement yielded for an argument that is not valid UTF-8: every token the targets accept is
/// ASCII, so it can only lead to a parse error, never to a wrong value.
pub const INVALID_UTF8: &str = "\u{fffd}";

/// The words of a table line (after the target name) or of a message.
///
/// An iterator of `&str`, so the parsers in `wbrepl-core` consume it directly.
///
/// # Invariants
///
/// Every pointer in `argv` points to a NUL-terminated string valid for `'a`.
pub struct Args<'a> {
    argv: &'a [*mut c_char],
    pos: usize,
}

impl<'a> Args<'a> {
    /// Wraps device-mapper's `argc`/`argv`.
    ///
    /// # Safety
    ///
    /// `argv` must point to `argc` valid pointers, each to a NUL-terminated string, all valid and
    /// unmodified for `'a` (device-mapper guarantees this for the duration of `ctr`/`message`).
    pub unsafe fn from_raw(argc: u32, argv: *mut *mut c_char) -> Self {
        let argv = if argc == 0 || argv.is_null() {
            &[][..]
        } else {
            // SAFETY: the caller guarantees `argv` points to `argc` pointers valid for `'a`.
            unsafe { core::slice::from_raw_parts(argv, argc as usize) }
        };
        // INVARIANT: guaranteed by the caller for each element.
        Self { argv, pos: 0 }
    }

    /// Builds arguments from C strings (for tests and for targets that re-parse their own words).
    pub fn from_cstrs(words: &'a [&'a CStr], storage: &'a mut [*mut c_char]) -> Self {
        let n = words.len().min(storage.len());
        for (slot, w) in storage.iter_mut().zip(words) {
            *slot = w.as_char_ptr() as *mut c_char;
        }
        // INVARIANT: each pointer comes from a `&'a CStr`, NUL-terminated and valid for `'a`.
        Self { argv: &storage[..n], pos: 0 }
    }

    /// Number of words not consumed yet.
    pub fn remaining(&self) -> usize {
        self.argv.len() - self.pos
    }

    /// Total number of words.
    pub fn len(&self) -> usize {
        self.argv.len()
    }

    /// Whether there are no words at all.
    pub fn is_empty(&self) -> bool {
        self.argv.is_empty()
    }

    /// The next word as a C string.
    pub fn next_cstr(&mut self) -> Option<&'a CStr> {
        let p = *self.argv.get(self.pos)?;
        self.pos += 1;
        // SAFETY: by the type invariant `p` is a valid NUL-terminated string for `'a`.
        Some(unsafe { CStr::from_char_ptr(p) })
    }
}

impl<'a> Iterator for Args<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        self.next_cstr().map(|c| c.to_str().unwrap_or(INVALID_UTF8))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining(), Some(self.remaining()))
    }
}
