// SPDX-License-Identifier: GPL-2.0

//! wbrepl-core: logic shared by the kernel modules and the userspace tool.
//!
//! Everything here is `no_std`, allocation-free and free of `unsafe`, so it compiles unchanged
//! into the kernel modules (which include this directory as a module) and into the host crate,
//! where it is unit- and property-tested with cargo.

#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

#[macro_use]
pub mod error;
pub mod checkpoint;
pub mod marker;
pub mod parse;
pub mod replmeta;
pub mod replbook;
pub mod replstate;
pub mod table;
pub mod wbformat;
#[cfg(any(test, feature = "fuzz"))]
pub mod wbfuzz;
pub mod wbindex;
pub mod wbload;
pub mod wire;
