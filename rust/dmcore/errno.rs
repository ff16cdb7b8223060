// SPDX-License-Identifier: GPL-2.0

//! Error codes that `kernel::error::code` does not declare on 6.12.

use super::bindings;
use kernel::error::Error;

fn from(errno: u32) -> Error {
    Error::from_errno(-(errno as i32))
}

/// `ECONNRESET`: the peer closed, or the connection was reset.
pub fn econnreset() -> Error {
    from(bindings::ECONNRESET)
}

/// `ENOTCONN`: there is no connection.
pub fn enotconn() -> Error {
    from(bindings::ENOTCONN)
}

/// `ETIMEDOUT`: the operation did not finish in time.
pub fn etimedout() -> Error {
    from(bindings::ETIMEDOUT)
}

/// `ECANCELED`: the operation was cancelled.
pub fn ecanceled() -> Error {
    from(bindings::ECANCELED)
}
