// SPDX-License-Identifier: GPL-2.0

//! Module-local bindings: what `kernel::bindings` lacks on 6.12 (`linux/device-mapper.h`, the
//! dmcore shim and a few constants).
//!
//! `bindings_generated.rs` is produced by bindgen at build time (see `Kbuild`) with
//! `--no-recursive-allowlist`, so every type it does not allowlist resolves to the kernel crate's
//! own definition through the glob import below. It depends on the kernel configuration and is
//! never committed.

#![allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    missing_docs,
    clippy::all,
    unreachable_pub,
    improper_ctypes,
    unsafe_op_in_unsafe_fn
)]

pub use kernel::bindings::*;
pub use kernel::ffi;

include!("bindings_generated.rs");
