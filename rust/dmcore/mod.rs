// SPDX-License-Identifier: GPL-2.0

//! dmcore: safe abstractions for writing device-mapper targets in Rust on Linux 6.12.
//!
//! This directory is the only place in wbrepl that touches C bindings or contains `unsafe`. The
//! targets (`rust/wbcache`, `rust/repl`) use the safe types exported here:
//!
//! - [`target`]: a [`target::Target`] trait turned into a registered `struct target_type`;
//! - [`bio`]: [`bio::Bio`], a bio handed to a target, whose completion is a type rule;
//! - [`device`]: [`device::Device`], a `dm_get_device` reference;
//! - [`args`] / [`status`]: table-line and message arguments, `DMEMIT`-style output;
//! - [`wq`]: owned workqueues (`WQ_MEM_RECLAIM`) and completions;
//! - [`sync`]: a spinlock usable from bio completion (interrupt) context;
//! - [`dmio`] / [`kcopyd`]: synchronous block I/O on buffers (`dm-io`) and batched device-to-device
//!   copies (`dm-kcopyd`);
//! - [`crc`]: CRC-32C from the kernel crypto library for `rust/core`'s codecs;
//! - [`hmac`]: HMAC-SHA256 from the kernel crypto API for `rust/core`'s wire MACs;
//! - [`keys`]: shared secrets from the kernel keyring, and random bytes;
//! - [`errno`]: error codes `kernel::error::code` lacks on 6.12;
//! - [`net`]: kernel TCP sockets in a network namespace, safe on the I/O path;
//! - [`kunit`]: a KUnit suite made of Rust functions.
//!
//! Each kernel module includes this directory as a private module, through
//! `include!("../dmcore/crate_root.rs")` at the top of its root file, like a static library: Rust
//! generics cannot cross module boundaries, and 6.12 has no way to share a Rust crate between
//! out-of-tree modules.

pub mod args;
pub mod bindings;
pub mod bio;
pub mod crc;
pub mod device;
pub mod hmac;
pub mod dmio;
pub mod errno;
pub mod kcopyd;
pub mod keys;
pub mod kunit;
pub mod mem;
pub mod net;
pub mod status;
pub mod sync;
pub mod target;
pub mod wq;
