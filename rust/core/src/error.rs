// SPDX-License-Identifier: GPL-2.0

//! Errors with a fixed, human-readable message.

use core::fmt;

/// An error carrying a static message, such as a table-line error that becomes `ti->error`.
///
/// The message is stored NUL-terminated so the kernel can hand it to device-mapper as a C string
/// without copying; [`Error::as_str`] gives it without the NUL.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Error(&'static str);

/// Builds an [`Error`] from a string literal (appending the NUL terminator).
///
/// Crate-internal (textually scoped through `#[macro_use] mod error`): the kernel modules
/// include this crate's files through `include!`, where exported macros cannot be imported.
macro_rules! err {
    ($msg:literal) => {
        $crate::error::Error::from_nul_terminated(concat!($msg, "\0"))
    };
}

impl Error {
    /// Wraps a NUL-terminated literal; use the [`err!`] macro instead of calling this.
    ///
    /// A string that is not NUL-terminated, or that has an interior NUL, is replaced by a generic
    /// message (this is a programming error, caught by the unit tests).
    pub const fn from_nul_terminated(msg: &'static str) -> Self {
        let b = msg.as_bytes();
        let mut i = 0;
        while i + 1 < b.len() {
            if b[i] == 0 {
                return Error("invalid error message\0");
            }
            i += 1;
        }
        if b.is_empty() || b[b.len() - 1] != 0 {
            return Error("invalid error message\0");
        }
        Error(msg)
    }

    /// The message without its NUL terminator.
    pub fn as_str(&self) -> &'static str {
        // Never panics (kernel code): the terminator is guaranteed by construction.
        self.0.strip_suffix('\0').unwrap_or(self.0)
    }

    /// The message with its NUL terminator (for C).
    pub fn as_bytes_with_nul(&self) -> &'static [u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?})", self.as_str())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let e = err!("Invalid block size");
        assert_eq!(e.as_str(), "Invalid block size");
        assert_eq!(e.as_bytes_with_nul(), b"Invalid block size\0");
        assert_eq!(std::format!("{e}"), "Invalid block size");
    }

    #[test]
    fn malformed_messages_are_replaced() {
        assert_eq!(Error::from_nul_terminated("no nul").as_str(), "invalid error message");
        assert_eq!(Error::from_nul_terminated("a\0b\0").as_str(), "invalid error message");
        assert_eq!(Error::from_nul_terminated("").as_str(), "invalid error message");
    }
}
