// SPDX-License-Identifier: GPL-2.0

//! A structure-aware generator of dm-wbcache cache device images (test support: built for the
//! host tests and, with the `fuzz` feature, for `tests/tools`' `wbmetafuzz`, never for the
//! kernel). Every image has valid checksums and one kind of damage in its contents ([`Flaw`]),
//! or none, over a random but well-formed history: superblock copies of two consecutive
//! commits, free entries, tombstones and dirty versions (several of some blocks, in several
//! epochs, near or far from the superblock's, some past 2^32). [`Flaw::expected`] says what a
//! load must do with it: load it, format the device, or refuse it with one exact message.
//!
//! The host test below loads every image with [`crate::wbload::load_image`] (the kernel's load
//! steps) and checks that; `tests/guest/87-wbcache-metafuzz.sh` resumes the kernel target on the
//! same images and checks that it does what `load_image` does.

use crate::error::Error;
use crate::wbformat::{Crc32c, Entry, EntryState, Geometry, Superblock, ENTRY_BYTES, MAGIC, META_BLOCK, META_START, SB_BYTES, VERSION_EPOCHS32};

/// A small deterministic generator (SplitMix64): the same seed gives the same image.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let z = (self.0 ^ (self.0 >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 for `n` = 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

/// The kind of damage in an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flaw {
    /// None: a well-formed history.
    None,
    /// Dirty entries of the commit after the superblock's (a torn commit): ignored.
    IncompleteCommit,
    /// Several versions of one block in one epoch (a correct writer leaves one): the older are
    /// discarded.
    SameEpochVersions,
    /// This many dirty versions of one block (more than 32 are refused; a correct writer
    /// leaves at most 32).
    OneBlock(u32),
    /// Tombstones of one block everywhere, and of blocks with no version.
    Tombstones,
    /// Dirty versions of epochs far older than the superblock's (up to 2^30), and newer ones
    /// (a superblock behind its entries: loadable, the next epoch follows the newest).
    FarEpochs,
    /// Two dirty versions 2^31 or more epochs apart (a correct writer keeps them less than 2^31
    /// apart; every reading of the low 32 bits of their epochs relies on it).
    EpochSpread,
    /// Only superblock copy 0 valid at commit 0, copy 1 blank: a format interrupted between
    /// its two superblock writes.
    FreshFormat,
    /// One superblock copy damaged (a torn commit): the other is used.
    OneCopyDamaged,
    /// Version-1 superblocks (32-bit epochs): converted, their epoch plus 2^32.
    V1Superblock,
    /// Both superblock copies blank: the device is formatted.
    Blank,
    /// An entry naming a block beyond the origin.
    BeyondOrigin,
    /// A dirty entry of a commit two or more after the superblock's.
    NewerThanSuperblock,
    /// A dirty entry of no commit (sequence number 0).
    DirtyNoCommit,
    /// An entry whose state byte is neither free nor dirty.
    BadState,
    /// An entry with non-zero reserved bytes.
    UnknownFields,
    /// Superblocks whose geometry does not follow from their cache size.
    SbGeometry,
    /// Superblocks of another block size.
    SbBlockSize,
    /// Superblocks of another cache device size.
    SbCacheSize,
    /// Superblocks of another target length.
    SbOriginSize,
    /// Superblocks with non-zero flags or reserved bytes.
    SbUnknownFields,
    /// Superblocks of an unknown format version.
    SbVersion,
    /// Version-1 superblocks with an epoch beyond 32 bits.
    SbV1Epoch,
    /// Two valid superblock copies of different geometry.
    SbCopiesDisagree,
    /// Copy 1 blank next to a copy 0 of a commit after the first.
    SbBlankCopy,
    /// No wbcache superblock at all (another program's data).
    SbForeign,
}

/// What a load must do with an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Load it.
    Loads,
    /// Format the device (both superblock copies blank).
    Formats,
    /// Refuse it with this message.
    Refused(&'static str),
}

/// Every kind of flaw, for a generator choosing one per image (`OneBlock`'s count is drawn).
pub const FLAWS: [Flaw; 26] = [
    Flaw::None,
    Flaw::IncompleteCommit,
    Flaw::SameEpochVersions,
    Flaw::OneBlock(0),
    Flaw::Tombstones,
    Flaw::FarEpochs,
    Flaw::EpochSpread,
    Flaw::FreshFormat,
    Flaw::OneCopyDamaged,
    Flaw::V1Superblock,
    Flaw::Blank,
    Flaw::BeyondOrigin,
    Flaw::NewerThanSuperblock,
    Flaw::DirtyNoCommit,
    Flaw::BadState,
    Flaw::UnknownFields,
    Flaw::SbGeometry,
    Flaw::SbBlockSize,
    Flaw::SbCacheSize,
    Flaw::SbOriginSize,
    Flaw::SbUnknownFields,
    Flaw::SbVersion,
    Flaw::SbV1Epoch,
    Flaw::SbCopiesDisagree,
    Flaw::SbBlankCopy,
    Flaw::SbForeign,
];

impl Flaw {
    /// A short name (for counts per kind).
    pub fn name(&self) -> &'static str {
        match self {
            Flaw::None => "none",
            Flaw::IncompleteCommit => "incomplete-commit",
            Flaw::SameEpochVersions => "same-epoch-versions",
            Flaw::OneBlock(_) => "one-block",
            Flaw::Tombstones => "tombstones",
            Flaw::FarEpochs => "far-epochs",
            Flaw::EpochSpread => "epoch-spread",
            Flaw::FreshFormat => "fresh-format",
            Flaw::OneCopyDamaged => "one-copy-damaged",
            Flaw::V1Superblock => "v1-superblock",
            Flaw::Blank => "blank",
            Flaw::BeyondOrigin => "beyond-origin",
            Flaw::NewerThanSuperblock => "newer-than-superblock",
            Flaw::DirtyNoCommit => "dirty-no-commit",
            Flaw::BadState => "bad-state",
            Flaw::UnknownFields => "unknown-fields",
            Flaw::SbGeometry => "sb-geometry",
            Flaw::SbBlockSize => "sb-block-size",
            Flaw::SbCacheSize => "sb-cache-size",
            Flaw::SbOriginSize => "sb-origin-size",
            Flaw::SbUnknownFields => "sb-unknown-fields",
            Flaw::SbVersion => "sb-version",
            Flaw::SbV1Epoch => "sb-v1-epoch",
            Flaw::SbCopiesDisagree => "sb-copies-disagree",
            Flaw::SbBlankCopy => "sb-blank-copy",
            Flaw::SbForeign => "sb-foreign",
        }
    }

    /// What a load must do with an image of this flaw.
    pub fn expected(&self) -> Expected {
        use Expected::*;
        match self {
            Flaw::None
            | Flaw::IncompleteCommit
            | Flaw::SameEpochVersions
            | Flaw::Tombstones
            | Flaw::FarEpochs
            | Flaw::FreshFormat
            | Flaw::OneCopyDamaged
            | Flaw::V1Superblock => Loads,
            Flaw::OneBlock(k) if *k as usize <= crate::wbindex::MAX_LOADED_VERSIONS => Loads,
            Flaw::OneBlock(_) => Refused("Cache metadata has more than 32 versions of one block"),
            Flaw::Blank => Formats,
            Flaw::BeyondOrigin => Refused("Cache metadata names a block beyond the origin"),
            Flaw::NewerThanSuperblock => Refused("Cache metadata entry is newer than the superblock allows"),
            Flaw::DirtyNoCommit => Refused("Cache metadata has a dirty entry of no commit"),
            Flaw::EpochSpread => Refused("Cache metadata has versions 2^31 or more epochs apart"),
            Flaw::BadState => Refused("Cache metadata entry has an invalid state"),
            Flaw::UnknownFields => Refused("Cache metadata entry has unknown fields"),
            Flaw::SbGeometry => Refused("Superblock geometry is invalid"),
            Flaw::SbBlockSize => Refused("Cache was formatted with a different block size"),
            Flaw::SbCacheSize => Refused("Cache device size differs from when it was formatted"),
            Flaw::SbOriginSize => Refused("Target length differs from when the cache was formatted"),
            Flaw::SbUnknownFields => Refused("Superblock has unknown flags or fields"),
            Flaw::SbVersion => Refused("Unsupported wbcache metadata version"),
            Flaw::SbV1Epoch => Refused("Superblock epoch is beyond 32 bits in a version-1 superblock"),
            Flaw::SbCopiesDisagree => Refused("Superblock copies disagree on geometry"),
            Flaw::SbBlankCopy => Refused("Superblock copies are inconsistent"),
            Flaw::SbForeign => {
                Refused("Cache device holds no wbcache superblock (foreign data; zero its first 8 KiB to format it)")
            }
        }
    }
}

/// The table a generated image is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    /// Cache block size, bytes.
    pub block_size: u32,
    /// Cache device size, sectors.
    pub cache_sectors: u64,
    /// Target length (the origin), sectors.
    pub origin_sectors: u64,
}

impl Table {
    /// Where the metadata lives on the cache device.
    pub fn geometry(&self) -> Result<Geometry, Error> {
        Geometry::compute(self.cache_sectors.saturating_mul(512), self.block_size)
    }

    /// Bytes of the metadata area an image covers: the superblock copies and the entry table,
    /// rounded up to whole 4 KiB blocks.
    pub fn metadata_bytes(&self) -> Result<usize, Error> {
        let g = self.geometry()?;
        Ok((META_START + g.nr_blocks * ENTRY_BYTES as u64).div_ceil(META_BLOCK) as usize * META_BLOCK as usize)
    }

    fn origin_blocks(&self) -> u64 {
        self.origin_sectors / (u64::from(self.block_size) / 512).max(1)
    }
}

/// At most this many dirty versions of a block in a well-formed history (the load's bound).
const PER_BLOCK: usize = crate::wbindex::MAX_LOADED_VERSIONS;
/// Blocks that may have several versions.
const HOT: usize = 48;

/// Writes image number `seed` for table `t` into `out` (at least [`Table::metadata_bytes`]
/// long; all of it is written); returns its flaw.
pub fn generate(seed: u64, t: &Table, out: &mut [u8], crc: &impl Crc32c) -> Result<Flaw, Error> {
    let g = t.geometry()?;
    let len = t.metadata_bytes()?;
    let out = out.get_mut(..len).ok_or(err!("Image buffer too short"))?;
    out.fill(0);
    let mut r = Rng::new(seed);
    let mut flaw = FLAWS[r.below(FLAWS.len() as u64) as usize];
    let nr = g.nr_blocks;
    let origin_blocks = t.origin_blocks().max(1);

    // The superblock's commit and epoch: small, just below 2^32, above it, or far above.
    let seq = 1 + r.below(1000);
    // (Version 1 needs an epoch below 2^32; two versions 2^31 apart one at least 2^30 in.)
    let kind = match flaw {
        Flaw::V1Superblock => r.below(2),
        Flaw::EpochSpread => 1 + r.below(3),
        _ => r.below(4),
    };
    let epoch = match kind {
        0 => 2 + r.below(1000),
        1 => (1u64 << 32) - 1 - r.below(20),
        2 => (1u64 << 32) + r.below(1000),
        _ => (1u64 << 40) + r.below(1 << 20),
    };
    let near_epoch = |r: &mut Rng| {
        let back = if r.chance(80) { 16 } else { 1 << 20 };
        epoch.saturating_sub(r.below(back)) as u32
    };

    // Entries: blank, tombstones and dirty versions; the hot blocks may have several versions,
    // every other block at most one, and a few blocks are kept for the flaws.
    let need = HOT as u64 + nr + 16;
    if origin_blocks <= need || nr < 2 {
        return Err(err!("Table too small for the image generator"));
    }
    let hot_base = r.below(origin_blocks - need);
    let hot = |k: u64| hot_base + k;
    let single_base = hot_base + HOT as u64;
    let spare = |k: u64| single_base + nr + k;
    let mut per_hot = [0usize; HOT];
    let put = |out: &mut [u8], i: u64, e: &Entry| {
        let at = (META_START + i * ENTRY_BYTES as u64) as usize;
        if let Some(b) = out.get_mut(at..at + ENTRY_BYTES) {
            e.encode(i, b, crc);
        }
    };
    for i in 0..nr {
        let kind = r.below(10);
        let (block, hot_k) = if r.chance(60) {
            let k = r.below(HOT as u64);
            (hot(k), Some(k as usize))
        } else {
            (single_base + i, None)
        };
        let e = if kind < 4 {
            Entry::free(0)
        } else if kind < 6 {
            Entry { block, seq: 1 + r.below(seq), epoch: near_epoch(&mut r), state: EntryState::Free }
        } else {
            if hot_k.and_then(|k| per_hot.get(k)).is_some_and(|&c| c >= PER_BLOCK) {
                Entry::free(0)
            } else {
                if let Some(c) = hot_k.and_then(|k| per_hot.get_mut(k)) {
                    *c += 1;
                }
                Entry { block, seq: 1 + r.below(seq), epoch: near_epoch(&mut r), state: EntryState::Dirty }
            }
        };
        put(out, i, &e);
    }

    // Entry damage, at one to three places (every one of them the same kind).
    let places = 1 + r.below(3);
    let at = |r: &mut Rng| r.below(nr);
    match flaw {
        Flaw::IncompleteCommit => {
            for _ in 0..1 + r.below(nr.min(64)) {
                let i = at(&mut r);
                let e = Entry { block: hot(r.below(HOT as u64)), seq: seq + 1, epoch: near_epoch(&mut r), state: EntryState::Dirty };
                put(out, i, &e);
            }
        }
        Flaw::SameEpochVersions => {
            // A block of its own (no other versions), several versions in one epoch.
            let b = spare(0);
            let ep = near_epoch(&mut r);
            for _ in 0..2 + r.below(8) {
                let e = Entry { block: b, seq: 1 + r.below(seq), epoch: ep, state: EntryState::Dirty };
                put(out, at(&mut r), &e);
            }
        }
        Flaw::OneBlock(_) => {
            // Up to every entry; a block of its own.
            let k = match r.below(3) {
                0 => 1 + r.below(PER_BLOCK as u64),
                1 => PER_BLOCK as u64 + 1,
                _ => 1 + r.below(nr),
            }
            .min(nr);
            flaw = Flaw::OneBlock(k as u32);
            let b = spare(1);
            let start = r.below(nr - k + 1);
            for n in 0..k {
                let e = Entry { block: b, seq: 1 + r.below(seq), epoch: near_epoch(&mut r), state: EntryState::Dirty };
                put(out, start + n, &e);
            }
        }
        Flaw::Tombstones => {
            let b = hot(r.below(HOT as u64));
            for _ in 0..1 + r.below(nr) {
                let block = if r.chance(50) { b } else { r.below(origin_blocks) };
                let e = Entry { block, seq: 1 + r.below(seq), epoch: near_epoch(&mut r), state: EntryState::Free };
                put(out, at(&mut r), &e);
            }
        }
        Flaw::FarEpochs => {
            for _ in 0..1 + r.below(nr.min(PER_BLOCK as u64)) {
                let b = spare(2 + r.below(8));
                // Older by up to 2^30, or newer by up to 2^29: less than 2^31 apart in all.
                let ep = if r.chance(70) { epoch.wrapping_sub(r.below(1 << 30)) } else { epoch.wrapping_add(1 + r.below(1 << 29)) };
                let e = Entry { block: b, seq: 1 + r.below(seq), epoch: ep as u32, state: EntryState::Dirty };
                put(out, at(&mut r), &e);
            }
        }
        Flaw::EpochSpread => {
            // 2^30 and more above the superblock's, and 2^30 and more below it.
            let (i, j) = (at(&mut r), at(&mut r));
            let j = if j == i { (i + 1) % nr } else { j };
            let up = epoch.wrapping_add((1 << 30) + r.below(1 << 29));
            let down = epoch.wrapping_sub((1 << 30) + r.below(1 << 29));
            put(out, i, &Entry { block: spare(2), seq: 1 + r.below(seq), epoch: up as u32, state: EntryState::Dirty });
            put(out, j, &Entry { block: spare(3), seq: 1 + r.below(seq), epoch: down as u32, state: EntryState::Dirty });
        }
        Flaw::BeyondOrigin => {
            for _ in 0..places {
                let block = match r.below(3) {
                    0 => origin_blocks,
                    1 => origin_blocks + r.below(1 << 40),
                    _ => r.next() | (1 << 63),
                };
                let state = if r.chance(50) { EntryState::Dirty } else { EntryState::Free };
                let e = Entry { block, seq: 1 + r.below(seq), epoch: near_epoch(&mut r), state };
                put(out, at(&mut r), &e);
            }
        }
        Flaw::NewerThanSuperblock => {
            for _ in 0..places {
                let s = if r.chance(50) { seq + 2 + r.below(1000) } else { u64::MAX - r.below(1000) };
                let e = Entry { block: r.below(origin_blocks), seq: s, epoch: near_epoch(&mut r), state: EntryState::Dirty };
                put(out, at(&mut r), &e);
            }
        }
        Flaw::DirtyNoCommit => {
            for _ in 0..places {
                let e = Entry { block: r.below(origin_blocks), seq: 0, epoch: near_epoch(&mut r), state: EntryState::Dirty };
                put(out, at(&mut r), &e);
            }
        }
        Flaw::BadState | Flaw::UnknownFields => {
            for _ in 0..places {
                let i = at(&mut r);
                let off = (META_START + i * ENTRY_BYTES as u64) as usize;
                if let Some(b) = out.get_mut(off..off + ENTRY_BYTES) {
                    if flaw == Flaw::BadState {
                        b[20] = 2 + r.below(254) as u8;
                    } else {
                        b[21 + r.below(7) as usize] = 1 + r.below(255) as u8;
                    }
                    reseal_entry(i, b, crc);
                }
            }
        }
        _ => {}
    }

    // Superblocks: the commit `seq` in its copy, the one before it in the other.
    let sb = Superblock {
        block_size: t.block_size,
        nr_blocks: g.nr_blocks,
        data_start: g.data_start,
        cache_sectors: t.cache_sectors,
        origin_sectors: t.origin_sectors,
        seq,
        epoch,
    };
    let prev = Superblock { seq: seq - 1, epoch: epoch.saturating_sub(r.below(3)), ..sb };
    let mut copies = [sb, prev];
    if seq & 1 == 1 {
        copies.swap(0, 1);
    }
    let other_geometry = |sb: &Superblock, r: &mut Rng, what: u64| -> Superblock {
        // Self-consistent, but another block size, cache size or target length.
        let mut s = *sb;
        match what {
            0 => {
                s.block_size = if sb.block_size == 4096 { 512 << r.below(3) } else { 4096 };
            }
            1 => s.cache_sectors = sb.cache_sectors + 8 * (1 + r.below(1 << 16)),
            _ => s.origin_sectors = sb.origin_sectors + 8 * (1 + r.below(1 << 16)),
        }
        if let Ok(g) = Geometry::compute(s.cache_sectors.saturating_mul(512), s.block_size) {
            s.nr_blocks = g.nr_blocks;
            s.data_start = g.data_start;
        }
        s
    };
    let mut raw = [[0u8; SB_BYTES]; 2];
    for (k, c) in copies.iter().enumerate() {
        c.encode(&mut raw[k], crc);
    }
    match flaw {
        Flaw::FreshFormat => {
            Superblock { seq: 0, epoch: 1, ..sb }.encode(&mut raw[0], crc);
            raw[1] = [0; SB_BYTES];
            // A format writes every entry free before its superblocks.
            out.get_mut(META_START as usize..).unwrap_or(&mut []).fill(0);
            for i in 0..nr {
                put(out, i, &Entry::free(0));
            }
        }
        Flaw::OneCopyDamaged => {
            // The copy of the commit before (the one not loaded): torn.
            let k = (seq & 1 == 0) as usize;
            let byte = r.below(SB_BYTES as u64) as usize;
            raw[k][byte] ^= 1 << r.below(8);
        }
        Flaw::Blank => raw = [[0; SB_BYTES]; 2],
        Flaw::V1Superblock => {
            for c in raw.iter_mut() {
                c[8..12].copy_from_slice(&VERSION_EPOCHS32.to_le_bytes());
                reseal_sb(c, crc);
            }
        }
        Flaw::SbGeometry => {
            for c in raw.iter_mut() {
                let (off, d) = if r.chance(50) { (24, 1 + r.below(100)) } else { (32, 512 * (1 + r.below(100))) };
                let v = crate::wbformat::le64(c, off).wrapping_add(d);
                c[off..off + 8].copy_from_slice(&v.to_le_bytes());
                reseal_sb(c, crc);
            }
        }
        Flaw::SbBlockSize | Flaw::SbCacheSize | Flaw::SbOriginSize => {
            let what = match flaw {
                Flaw::SbBlockSize => 0,
                Flaw::SbCacheSize => 1,
                _ => 2,
            };
            let o = other_geometry(&copies[0], &mut r, what);
            for (k, c) in copies.iter().enumerate() {
                let s = Superblock { seq: c.seq, epoch: c.epoch, ..o };
                s.encode(&mut raw[k], crc);
            }
        }
        Flaw::SbUnknownFields => {
            for c in raw.iter_mut() {
                let off = match r.below(3) {
                    0 => 12 + r.below(4) as usize,
                    1 => 20 + r.below(4) as usize,
                    _ => 72 + r.below((SB_BYTES - 4 - 72) as u64) as usize,
                };
                c[off] = 1 + r.below(255) as u8;
                reseal_sb(c, crc);
            }
        }
        Flaw::SbVersion => {
            for c in raw.iter_mut() {
                let v = match r.below(3) {
                    0 => 0,
                    1 => 3 + r.below(100) as u32,
                    _ => r.next() as u32 | 0x100,
                };
                c[8..12].copy_from_slice(&v.to_le_bytes());
                reseal_sb(c, crc);
            }
        }
        Flaw::SbV1Epoch => {
            for c in raw.iter_mut() {
                c[8..12].copy_from_slice(&VERSION_EPOCHS32.to_le_bytes());
                let e = (1u64 << 32) + r.below(1 << 40);
                c[64..72].copy_from_slice(&e.to_le_bytes());
                reseal_sb(c, crc);
            }
        }
        Flaw::SbCopiesDisagree => {
            let what = 1 + r.below(2);
            let o = other_geometry(&copies[1], &mut r, what);
            Superblock { seq: copies[1].seq, epoch: copies[1].epoch, ..o }.encode(&mut raw[1], crc);
        }
        Flaw::SbBlankCopy => {
            Superblock { seq: 2 * (1 + r.below(500)), ..sb }.encode(&mut raw[0], crc);
            raw[1] = [0; SB_BYTES];
        }
        Flaw::SbForeign => {
            for c in raw.iter_mut() {
                for b in c.iter_mut() {
                    *b = r.next() as u8;
                }
                if crate::wbformat::le64(c, 0) == MAGIC {
                    c[0] ^= 1;
                }
            }
        }
        _ => {}
    }
    for (k, c) in raw.iter().enumerate() {
        let at = k * META_BLOCK as usize;
        if let Some(d) = out.get_mut(at..at + SB_BYTES) {
            d.copy_from_slice(c);
        }
    }
    Ok(flaw)
}

/// Recomputes an entry's checksum over its (changed) bytes.
fn reseal_entry(i: u64, b: &mut [u8], crc: &impl Crc32c) {
    let c = crc.append(crc.append(0, &i.to_le_bytes()), b.get(..ENTRY_BYTES - 4).unwrap_or(&[]));
    if let Some(s) = b.get_mut(ENTRY_BYTES - 4..ENTRY_BYTES) {
        s.copy_from_slice(&c.to_le_bytes());
    }
}

/// Recomputes a superblock's checksum over its (changed) bytes.
fn reseal_sb(b: &mut [u8], crc: &impl Crc32c) {
    let c = crc.append(0, b.get(..SB_BYTES - 4).unwrap_or(&[]));
    if let Some(s) = b.get_mut(SB_BYTES - 4..SB_BYTES) {
        s.copy_from_slice(&c.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    /// The `crc32c` crate (hardware CRC-32C): the images are large, the bitwise reference slow.
    struct RefCrc;
    impl Crc32c for RefCrc {
        fn append(&self, crc: u32, data: &[u8]) -> u32 {
            crc32c::crc32c_append(crc, data)
        }
    }
    use crate::wbindex::{Index, Slot};
    use crate::wbload::{load_image, ImageLoad};
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    type Ix = Index<Vec<Slot>, Vec<u32>, Vec<u64>>;

    fn index(nr: u64) -> Ix {
        let (nb, nw, nf) = Ix::storage_for(nr);
        Index::new(vec![Slot::default(); nr as usize], vec![0; nb], vec![0; nf], vec![0; nw], vec![0; nw]).unwrap()
    }

    /// The tables the images are made for: small and large caches (up to 16 000 entries), 512-
    /// byte and 4 KiB blocks.
    const TABLES: [Table; 4] = [
        Table { block_size: 4096, cache_sectors: 512, origin_sectors: 1 << 24 },
        Table { block_size: 512, cache_sectors: 1024, origin_sectors: 1 << 24 },
        Table { block_size: 4096, cache_sectors: 16384, origin_sectors: 1 << 30 },
        Table { block_size: 512, cache_sectors: 16384, origin_sectors: 1 << 30 },
    ];

    /// Loads image `seed` for table `t` as the kernel does and checks the outcome against the
    /// image's flaw; returns the flaw.
    fn check(seed: u64, t: &Table) -> Flaw {
        let mut img = vec![0u8; t.metadata_bytes().unwrap()];
        let flaw = generate(seed, t, &mut img, &RefCrc).unwrap();
        let nr = t.geometry().unwrap().nr_blocks;
        let mut ix = index(nr);
        let budget = 64;
        let got = load_image(&mut ix, &img, &RefCrc, t.block_size, t.cache_sectors, t.origin_sectors, budget);
        match (flaw.expected(), got) {
            (Expected::Loads, Ok(ImageLoad::Loaded { steps, dirty, epoch, seq, .. })) => {
                ix.check_invariants().unwrap_or_else(|e| panic!("seed {seed} {flaw:?}: {}", e.as_str()));
                assert_eq!(dirty, ix.counts().dirty);
                assert!(epoch > 1 && seq < 1002, "seed {seed} {flaw:?}: epoch {epoch}, commit {seq}");
                // Bounded work: about 2.6 steps per slot to clear, one per slot to finish.
                assert!(steps <= 4 * nr / u64::from(budget) + 4, "seed {seed}: {steps} steps for {nr} slots");
            }
            (Expected::Formats, Ok(ImageLoad::Blank)) => {}
            (Expected::Refused(text), Err(e)) => assert_eq!(e.error.as_str(), text, "seed {seed} {flaw:?}"),
            (want, got) => panic!("seed {seed} {flaw:?}: expected {want:?}, got {got:?}"),
        }
        flaw
    }

    /// Every kind of image comes out of the generator, and each does what its kind says (a
    /// deterministic sweep, so that no kind is missed by chance).
    #[test]
    fn every_kind_of_metadata_damage_is_loaded_or_refused_as_it_should() {
        assert_eq!(RefCrc.append(0, b"123456789"), 0xE306_9283, "the CRC-32C check value");
        let mut seen = std::collections::BTreeMap::new();
        for seed in 0..1500u64 {
            let t = &TABLES[(seed % 4) as usize];
            let f = check(seed, t);
            *seen.entry(f.name()).or_insert(0u32) += 1;
        }
        assert_eq!(seen.len(), FLAWS.len(), "{seen:?}");
        assert!(seen.values().all(|&n| n >= 20), "{seen:?}");
    }

    proptest! {
        // 500 cases in `make test`; `make test-long` sets PROPTEST_CASES higher.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(500),
            ..ProptestConfig::default()
        })]

        #[test]
        fn any_generated_image_is_loaded_or_refused_as_it_should(seed in any::<u64>(), t in 0usize..4) {
            check(seed, &TABLES[t]);
        }
    }
}
