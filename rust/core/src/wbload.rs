// SPDX-License-Identifier: GPL-2.0

//! Loading a dm-wbcache cache device's metadata: the steps the kernel takes at the first resume
//! of a table, shared with the host, where [`load_image`] runs them on a whole image in memory
//! (the structure-aware fuzzer of the metadata predicts the kernel's verdict with it, and the
//! host tests check it on every kind of damage).
//!
//! Order (the kernel's `Shared::load`): both superblock copies are decoded and one is chosen
//! ([`superblock_for_table`]); a blank device is formatted; otherwise the index is cleared
//! ([`Index::load_begin`] and its steps), every entry is decoded and loaded in entry order
//! ([`load_raw_entry`]: the first refusal ends the load) and the load is finished
//! ([`Index::load_finish_step`]).

use crate::error::Error;
use crate::wbformat::{choose_superblock, Crc32c, Entry, Geometry, SbRead, Superblock, ENTRY_BYTES, META_START, SB_BYTES};
use crate::wbindex::{Index, LoadReport, LoadState, Slot};
use core::fmt;
use core::ops::DerefMut;

/// Why a load refused a cache device: an error of the superblocks (`entry` is `None`) or of
/// metadata entry `entry`. Displayed as the kernel logs it after "cannot use the cache device: ".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadError {
    /// The entry refused, if the refusal is an entry's.
    pub entry: Option<u64>,
    /// What is wrong.
    pub error: Error,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.entry {
            Some(i) => write!(f, "metadata entry {}: {}", i, self.error.as_str()),
            None => f.write_str(self.error.as_str()),
        }
    }
}

impl From<Error> for LoadError {
    fn from(error: Error) -> Self {
        Self { entry: None, error }
    }
}

/// The superblock copies of a cache device, for a table with this block size, cache device
/// size and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SbChoice {
    /// Blank (to be formatted), or the superblock whose commit is loaded.
    pub sb: SbRead,
    /// One copy was unreadable and the other is used (the kernel logs a warning with this).
    pub other_unreadable: Option<Error>,
}

/// Decodes both superblock copies (`a`, `b`: their first [`SB_BYTES`] bytes at least), chooses
/// one ([`choose_superblock`]) and checks it against the table ([`Superblock::check_table`]).
pub fn superblock_for_table(
    a: &[u8],
    b: &[u8],
    crc: &impl Crc32c,
    block_size: u32,
    cache_sectors: u64,
    origin_sectors: u64,
) -> Result<SbChoice, LoadError> {
    let a = Superblock::decode(a, crc);
    let b = Superblock::decode(b, crc);
    let other_unreadable = if a.is_err() != b.is_err() { a.err().or(b.err()) } else { None };
    let sb = choose_superblock(a, b)?;
    if let SbRead::Valid(s) = &sb {
        s.check_table(block_size, cache_sectors, origin_sectors)?;
    }
    Ok(SbChoice { sb, other_unreadable })
}

/// Decodes entry `i` from its on-disk bytes and loads it into `ix` (one bounded step of a load,
/// see [`Index::load_entry`]).
pub fn load_raw_entry<S, B, M>(
    ix: &mut Index<S, B, M>,
    st: &mut LoadState,
    i: u64,
    raw: &[u8],
    crc: &impl Crc32c,
    origin_blocks: u64,
) -> Result<(), LoadError>
where
    S: DerefMut<Target = [Slot]>,
    B: DerefMut<Target = [u32]>,
    M: DerefMut<Target = [u64]>,
{
    let i32 = u32::try_from(i).map_err(|_| LoadError { entry: Some(i), error: err!("Cache metadata entry index out of range") })?;
    Entry::decode(i, raw, crc)
        .and_then(|e| ix.load_entry(st, i32, e, origin_blocks))
        .map_err(|error| LoadError { entry: Some(i), error })
}

/// What [`load_image`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageLoad {
    /// Both superblock copies blank: the kernel formats the device.
    Blank,
    /// The metadata of commit `seq` was loaded.
    Loaded {
        /// The commit loaded.
        seq: u64,
        /// What the load found.
        report: LoadReport,
        /// Dirty blocks after the load (what the kernel logs).
        dirty: u64,
        /// The epoch new writes start.
        epoch: u64,
        /// Steps of `budget` the load took in all (clearing and finishing; one per entry besides).
        steps: u64,
    },
}

/// Loads a whole cache device image `image` (its metadata area at least: the superblock copies
/// and the entry table) into `ix` as the kernel does, for a table with blocks of `block_size`
/// bytes over a cache device of `cache_sectors` sectors and an origin (target length) of
/// `origin_sectors` sectors; the clearing and finishing steps have a budget of `budget` slots.
/// `ix` must have been made for that geometry's number of blocks.
pub fn load_image<S, B, M>(
    ix: &mut Index<S, B, M>,
    image: &[u8],
    crc: &impl Crc32c,
    block_size: u32,
    cache_sectors: u64,
    origin_sectors: u64,
    budget: u32,
) -> Result<ImageLoad, LoadError>
where
    S: DerefMut<Target = [Slot]>,
    B: DerefMut<Target = [u32]>,
    M: DerefMut<Target = [u64]>,
{
    let geom = Geometry::compute(cache_sectors.saturating_mul(512), block_size)?;
    if geom.nr_blocks != ix.len() {
        return Err(err!("Cache index storage has the wrong size").into());
    }
    let sb_at = |k: u64| image.get((k * 4096) as usize..(k * 4096) as usize + SB_BYTES).unwrap_or(&[]);
    let choice = superblock_for_table(sb_at(0), sb_at(1), crc, block_size, cache_sectors, origin_sectors)?;
    let sb = match choice.sb {
        SbRead::Blank => return Ok(ImageLoad::Blank),
        SbRead::Valid(sb) => sb,
    };
    let origin_blocks = origin_sectors / (u64::from(block_size) / 512);
    let mut steps = 1;
    let mut st = ix.load_begin(sb.seq, sb.epoch);
    while !ix.load_begin_step(&mut st, budget) {
        steps += 1;
    }
    for i in 0..geom.nr_blocks {
        let at = (META_START + i * ENTRY_BYTES as u64) as usize;
        let raw = image.get(at..at + ENTRY_BYTES).unwrap_or(&[]);
        load_raw_entry(ix, &mut st, i, raw, crc, origin_blocks)?;
    }
    steps += 1;
    while !ix.load_finish_step(&mut st, budget) {
        steps += 1;
    }
    Ok(ImageLoad::Loaded { seq: sb.seq, report: st.report, dirty: ix.counts().dirty, epoch: ix.epoch(), steps })
}
