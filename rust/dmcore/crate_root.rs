// SPDX-License-Identifier: GPL-2.0

// The preamble of every wbrepl kernel module's root file, pulled in with
// `include!("../dmcore/crate_root.rs")` (paths below are relative to this file).
//
// dmcore is the only code with `unsafe`; it and rust/core are compiled into each module as
// private modules (see `mod.rs`). Not every module uses every item, hence the allowances. The
// including crate root declares `#![deny(unsafe_code)]` for its own code.

#[allow(unsafe_code, dead_code, unreachable_pub, unused_imports, unused_macros)]
#[path = "mod.rs"]
mod dmcore;

#[allow(dead_code, unreachable_pub, unused_attributes)]
#[path = "../core/src/lib.rs"]
mod wbrepl_core;

// rust/core refers to its own modules as `crate::<module>` (its crate root on the host).
#[allow(unused_imports)]
use wbrepl_core::{checkpoint, error, marker, parse, replbook, replmeta, replstate, table, wbformat, wbindex, wbload, wire};
