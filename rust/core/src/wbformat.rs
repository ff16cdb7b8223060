// SPDX-License-Identifier: GPL-2.0

//! On-disk format of a dm-wbcache cache device (`docs/wbcache.md`, "On-disk format").
//!
//! ```text
//! byte 0          superblock copy 0 (one 512-byte sector, in its own 4 KiB block)
//! byte 4096       superblock copy 1
//! byte 8192       entry table: one 32-byte entry per cache block, in 4 KiB metadata blocks
//! data_start      cache blocks (data_start is a multiple of max(4096, block_size))
//! ```
//!
//! Commits alternate between the two superblock copies (`seq` odd → copy 1), so a torn
//! superblock write leaves the other, older copy intact. Every superblock and every entry
//! carries a CRC-32C; entries are seeded with their own index, so an entry written to the wrong
//! place does not verify.
//!
//! All integers are little-endian. Decoding never panics and never trusts a length or an index
//! read from disk before checking it.

use crate::error::Error;

/// Magic number of a dm-wbcache superblock ("WBRCACHE").
pub const MAGIC: u64 = u64::from_le_bytes(*b"WBRCACHE");
/// On-disk format version written: 2, epochs of 64 bits (the superblock's may be 2^32 or more).
pub const VERSION: u32 = 2;
/// The previous format version, read and converted at load: written when epochs were 32-bit
/// counters (the superblock's epoch is below 2^32, and may have wrapped).
pub const VERSION_EPOCHS32: u32 = 1;
/// Added to the epoch of a version-1 superblock at load: every epoch (and marker id) from then
/// on is above every one the 32-bit counter could have handed out, even after it wrapped. The
/// low 32 bits, which entries keep, do not change.
pub const EPOCHS32_OFFSET: u64 = 1 << 32;
/// Bytes of a superblock image (one sector).
pub const SB_BYTES: usize = 512;
/// Distance between the two superblock copies, and the metadata block size.
pub const META_BLOCK: u64 = 4096;
/// Bytes of one entry.
pub const ENTRY_BYTES: usize = 32;
/// Entries per metadata block.
pub const ENTRIES_PER_META_BLOCK: u64 = META_BLOCK / ENTRY_BYTES as u64;
/// Byte offset of the entry table.
pub const META_START: u64 = 2 * META_BLOCK;

/// CRC-32C (Castagnoli), standard form (initial value and final xor `!0`), supplied by the
/// user of this crate: the kernel crypto API in the modules, the `crc32c` crate on the host.
pub trait Crc32c {
    /// Extends `crc` (the standard CRC-32C of some prefix, 0 for none) over `data`.
    fn append(&self, crc: u32, data: &[u8]) -> u32;
}

/// Where everything lives on a cache device of a given size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Cache block size in bytes.
    pub block_size: u32,
    /// Number of cache blocks.
    pub nr_blocks: u64,
    /// Byte offset of the first cache block.
    pub data_start: u64,
    /// Bytes of the entry table actually used (`nr_blocks * 32`, not rounded).
    pub meta_bytes: u64,
}

impl Geometry {
    /// Lays out a cache device of `cache_bytes` bytes with blocks of `block_size` bytes (a power
    /// of two, at least 512). Fails if not even one cache block fits.
    pub fn compute(cache_bytes: u64, block_size: u32) -> Result<Self, Error> {
        if !block_size.is_power_of_two() || block_size < 512 {
            return Err(err!("Invalid block size"));
        }
        let bs = u64::from(block_size);
        let align = bs.max(META_BLOCK);
        // First guess ignoring alignment, then shrink until it fits (at most a few steps: the
        // rounding costs less than two alignment units).
        let avail = cache_bytes.saturating_sub(META_START);
        let mut nr = avail / (bs + ENTRY_BYTES as u64);
        loop {
            if nr == 0 {
                return Err(err!("Cache device too small for one cache block"));
            }
            let meta = nr * ENTRY_BYTES as u64;
            let data_start = round_up(META_START + meta, align);
            match data_start.checked_add(nr * bs) {
                Some(end) if end <= cache_bytes => {
                    return Ok(Self { block_size, nr_blocks: nr, data_start, meta_bytes: meta })
                }
                _ => nr -= 1,
            }
        }
    }

    /// Number of 4 KiB metadata blocks holding the entry table.
    pub fn meta_blocks(&self) -> u64 {
        self.nr_blocks.div_ceil(ENTRIES_PER_META_BLOCK)
    }

    /// Byte offset of cache block `i`.
    pub fn block_offset(&self, i: u64) -> u64 {
        self.data_start + i * u64::from(self.block_size)
    }
}

fn round_up(v: u64, align: u64) -> u64 {
    v.div_ceil(align) * align
}

pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    if let Some(s) = b.get_mut(at..at + 8) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// The superblock.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | magic `WBRCACHE` |
/// | 8 | 4 | version (2; 1 is read and converted, see [`VERSION_EPOCHS32`]) |
/// | 12 | 4 | flags (0) |
/// | 16 | 4 | block size, bytes |
/// | 20 | 4 | reserved (0) |
/// | 24 | 8 | number of cache blocks |
/// | 32 | 8 | data start, bytes |
/// | 40 | 8 | cache device size at format, sectors |
/// | 48 | 8 | origin (target) size, sectors |
/// | 56 | 8 | commit sequence number |
/// | 64 | 8 | current epoch at that commit (64 bits) |
/// | 72 | 436 | zero |
/// | 508 | 4 | CRC-32C of bytes 0..508 |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Cache block size in bytes.
    pub block_size: u32,
    /// Number of cache blocks.
    pub nr_blocks: u64,
    /// Byte offset of the first cache block.
    pub data_start: u64,
    /// Cache device size in sectors when formatted.
    pub cache_sectors: u64,
    /// Target length in sectors when formatted.
    pub origin_sectors: u64,
    /// Commit sequence number: entries with a higher `seq` were not committed.
    pub seq: u64,
    /// Current epoch when this commit was made (for a version-1 superblock, the epoch stored
    /// plus [`EPOCHS32_OFFSET`]).
    pub epoch: u64,
}

/// What a superblock sector turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SbRead {
    /// All zero: a device nobody formatted (or that was zeroed on purpose to be formatted).
    Blank,
    /// A valid superblock.
    Valid(Superblock),
}

impl Superblock {
    /// Which copy a commit with sequence `seq` writes (byte offset on the cache device).
    pub fn offset_for(seq: u64) -> u64 {
        (seq & 1) * META_BLOCK
    }

    /// Encodes into `out` (at least [`SB_BYTES`] long; the rest is untouched).
    pub fn encode(&self, out: &mut [u8], crc: &impl Crc32c) {
        let Some(b) = out.get_mut(..SB_BYTES) else { return };
        b.fill(0);
        put64(b, 0, MAGIC);
        put32(b, 8, VERSION);
        put32(b, 16, self.block_size);
        put64(b, 24, self.nr_blocks);
        put64(b, 32, self.data_start);
        put64(b, 40, self.cache_sectors);
        put64(b, 48, self.origin_sectors);
        put64(b, 56, self.seq);
        put64(b, 64, self.epoch);
        let c = crc.append(0, &b[..SB_BYTES - 4]);
        put32(b, SB_BYTES - 4, c);
    }

    /// Decodes and checks one superblock sector. Geometry is checked against itself here
    /// (consistent with `cache_sectors`), and against the table by [`Superblock::check_table`].
    /// A version-1 superblock (32-bit epochs) is converted: its epoch plus [`EPOCHS32_OFFSET`].
    pub fn decode(b: &[u8], crc: &impl Crc32c) -> Result<SbRead, Error> {
        let Some(b) = b.get(..SB_BYTES) else { return Err(err!("Superblock buffer too short")) };
        if b.iter().all(|&x| x == 0) {
            return Ok(SbRead::Blank);
        }
        if le64(b, 0) != MAGIC {
            return Err(err!("Cache device holds no wbcache superblock (foreign data; zero its first 8 KiB to format it)"));
        }
        let version = le32(b, 8);
        if version != VERSION && version != VERSION_EPOCHS32 {
            return Err(err!("Unsupported wbcache metadata version"));
        }
        if crc.append(0, &b[..SB_BYTES - 4]) != le32(b, SB_BYTES - 4) {
            return Err(err!("Superblock checksum mismatch"));
        }
        if le32(b, 12) != 0 || le32(b, 20) != 0 || b[72..SB_BYTES - 4].iter().any(|&x| x != 0) {
            return Err(err!("Superblock has unknown flags or fields"));
        }
        let mut epoch = le64(b, 64);
        if version == VERSION_EPOCHS32 {
            if epoch > u64::from(u32::MAX) {
                return Err(err!("Superblock epoch is beyond 32 bits in a version-1 superblock"));
            }
            epoch += EPOCHS32_OFFSET;
        }
        let sb = Superblock {
            block_size: le32(b, 16),
            nr_blocks: le64(b, 24),
            data_start: le64(b, 32),
            cache_sectors: le64(b, 40),
            origin_sectors: le64(b, 48),
            seq: le64(b, 56),
            epoch,
        };
        let g = Geometry::compute(sb.cache_sectors.saturating_mul(512), sb.block_size)
            .map_err(|_| err!("Superblock geometry is invalid"))?;
        if g.nr_blocks != sb.nr_blocks || g.data_start != sb.data_start {
            return Err(err!("Superblock geometry is invalid"));
        }
        Ok(SbRead::Valid(sb))
    }

    /// Checks a decoded superblock against the table being resumed.
    pub fn check_table(&self, block_size: u32, cache_sectors: u64, origin_sectors: u64) -> Result<(), Error> {
        if self.block_size != block_size {
            return Err(err!("Cache was formatted with a different block size"));
        }
        if self.cache_sectors != cache_sectors {
            return Err(err!("Cache device size differs from when it was formatted"));
        }
        if self.origin_sectors != origin_sectors {
            return Err(err!("Target length differs from when the cache was formatted"));
        }
        Ok(())
    }
}

/// Picks the superblock to use from the two copies: the valid one with the higher `seq`. One
/// bad copy is tolerated (a torn commit); two bad copies, or a blank copy next to a valid one
/// that is not the first commit, are not.
pub fn choose_superblock(a: Result<SbRead, Error>, b: Result<SbRead, Error>) -> Result<SbRead, Error> {
    match (a, b) {
        (Ok(SbRead::Blank), Ok(SbRead::Blank)) => Ok(SbRead::Blank),
        (Ok(SbRead::Valid(x)), Ok(SbRead::Valid(y))) => {
            if x.block_size != y.block_size
                || x.nr_blocks != y.nr_blocks
                || x.cache_sectors != y.cache_sectors
                || x.origin_sectors != y.origin_sectors
            {
                return Err(err!("Superblock copies disagree on geometry"));
            }
            Ok(SbRead::Valid(if y.seq > x.seq { y } else { x }))
        }
        // Format writes copy 0 (seq 0) first; copy 1 may be blank only before commit 1.
        (Ok(SbRead::Valid(x)), Ok(SbRead::Blank)) if x.seq == 0 => Ok(SbRead::Valid(x)),
        (Ok(SbRead::Valid(x)), Err(_)) | (Err(_), Ok(SbRead::Valid(x))) => Ok(SbRead::Valid(x)),
        (Err(e), _) => Err(e),
        (_, Err(e)) => Err(e),
        _ => Err(err!("Superblock copies are inconsistent")),
    }
}

/// State of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryState {
    /// The cache block holds nothing. The other fields describe the version it last held
    /// (a tombstone: that version and older ones of the block are on the origin or superseded).
    Free,
    /// The cache block holds a dirty version of `block` written in `epoch`.
    Dirty,
}

/// One entry of the table (the on-disk image of one cache block).
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | origin block number |
/// | 8 | 8 | commit sequence number that made this version durable (0: never) |
/// | 16 | 4 | epoch of the version: its low 32 bits (the index keeps every version less than 2^31 epochs older than the current one) |
/// | 20 | 1 | state: 0 free, 1 dirty |
/// | 21 | 7 | zero |
/// | 28 | 4 | CRC-32C of (entry index as 8 bytes LE, bytes 0..28) |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Origin block number.
    pub block: u64,
    /// Sequence number of the commit that made the version durable.
    pub seq: u64,
    /// Epoch of the version: its low 32 bits (see `wbindex::EPOCH_WINDOW`).
    pub epoch: u32,
    /// Free or dirty.
    pub state: EntryState,
}

impl Entry {
    /// A free entry whose tombstone covers `seq` of block 0 (0: covers nothing).
    pub const fn free(seq: u64) -> Self {
        Self { block: 0, seq, epoch: 0, state: EntryState::Free }
    }

    fn crc(index: u64, b: &[u8], crc: &impl Crc32c) -> u32 {
        let c = crc.append(0, &index.to_le_bytes());
        crc.append(c, b.get(..ENTRY_BYTES - 4).unwrap_or(&[]))
    }

    /// Encodes entry number `index` into `out` (at least [`ENTRY_BYTES`] long).
    pub fn encode(&self, index: u64, out: &mut [u8], crc: &impl Crc32c) {
        let Some(b) = out.get_mut(..ENTRY_BYTES) else { return };
        b.fill(0);
        put64(b, 0, self.block);
        put64(b, 8, self.seq);
        put32(b, 16, self.epoch);
        b[20] = match self.state {
            EntryState::Free => 0,
            EntryState::Dirty => 1,
        };
        let c = Self::crc(index, b, crc);
        put32(b, ENTRY_BYTES - 4, c);
    }

    /// Decodes entry number `index`.
    pub fn decode(index: u64, b: &[u8], crc: &impl Crc32c) -> Result<Self, Error> {
        let Some(b) = b.get(..ENTRY_BYTES) else { return Err(err!("Entry buffer too short")) };
        if Self::crc(index, b, crc) != le32(b, ENTRY_BYTES - 4) {
            return Err(err!("Cache metadata entry checksum mismatch"));
        }
        if b[21..28].iter().any(|&x| x != 0) {
            return Err(err!("Cache metadata entry has unknown fields"));
        }
        let e = Entry {
            block: le64(b, 0),
            seq: le64(b, 8),
            epoch: le32(b, 16),
            state: match b[20] {
                0 => EntryState::Free,
                1 => EntryState::Dirty,
                _ => return Err(err!("Cache metadata entry has an invalid state")),
            },
        };
        Ok(e)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bitwise reference CRC-32C, so the core crate needs no checksum dependency of its own.
    pub(crate) struct RefCrc;

    impl Crc32c for RefCrc {
        fn append(&self, crc: u32, data: &[u8]) -> u32 {
            let mut c = !crc;
            for &byte in data {
                c ^= u32::from(byte);
                for _ in 0..8 {
                    c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
                }
            }
            !c
        }
    }

    #[test]
    fn reference_crc_matches_the_standard_check_value() {
        assert_eq!(RefCrc.append(0, b"123456789"), 0xE306_9283);
        assert_eq!(RefCrc.append(RefCrc.append(0, b"1234"), b"56789"), 0xE306_9283);
    }

    fn sb() -> Superblock {
        let g = Geometry::compute(64 << 20, 4096).unwrap();
        Superblock {
            block_size: 4096,
            nr_blocks: g.nr_blocks,
            data_start: g.data_start,
            cache_sectors: (64 << 20) / 512,
            origin_sectors: 1 << 21,
            seq: 7,
            epoch: 3,
        }
    }

    #[test]
    fn geometry_of_a_64mib_cache() {
        let g = Geometry::compute(64 << 20, 4096).unwrap();
        assert_eq!(g.data_start % 4096, 0);
        assert!(g.data_start >= META_START + g.nr_blocks * 32);
        assert!(g.block_offset(g.nr_blocks) <= 64 << 20);
        // Nearly everything is data: 32 bytes of metadata per 4 KiB block.
        assert!(g.nr_blocks >= 16250, "{}", g.nr_blocks);
        assert_eq!(g.meta_blocks(), g.nr_blocks.div_ceil(128));
    }

    #[test]
    fn geometry_refuses_tiny_devices_and_bad_block_sizes() {
        
        assert!(Geometry::compute(3 * 4096, 4096).is_err());
        assert!(Geometry::compute(4 * 4096, 4096).is_ok());
        assert!(Geometry::compute(1 << 20, 3000).is_err());
        assert!(Geometry::compute(1 << 20, 256).is_err());
        assert!(Geometry::compute(0, 4096).is_err());
    }

    #[test]
    fn superblock_round_trip_and_blank() {
        let mut b = [0u8; SB_BYTES];
        assert_eq!(Superblock::decode(&b, &RefCrc), Ok(SbRead::Blank));
        sb().encode(&mut b, &RefCrc);
        assert_eq!(Superblock::decode(&b, &RefCrc), Ok(SbRead::Valid(sb())));
    }

    /// Version 1 (32-bit epochs) is read, its epoch lifted by 2^32 (above every epoch the 32-bit
    /// counter handed out, wrapped or not); version 2 keeps 64 bits; others are refused.
    #[test]
    fn a_version_1_superblock_is_converted_and_64_bit_epochs_round_trip() {
        let mut b = [0u8; SB_BYTES];
        let mut big = sb();
        big.epoch = (1 << 32) + 5;
        big.encode(&mut b, &RefCrc);
        assert_eq!(le32(&b, 8), 2);
        assert_eq!(Superblock::decode(&b, &RefCrc), Ok(SbRead::Valid(big)));
        let v1 = |epoch: u64, version: u32| {
            let mut b = [0u8; SB_BYTES];
            sb().encode(&mut b, &RefCrc);
            put32(&mut b, 8, version);
            put64(&mut b, 64, epoch);
            let c = RefCrc.append(0, &b[..SB_BYTES - 4]);
            put32(&mut b, SB_BYTES - 4, c);
            Superblock::decode(&b, &RefCrc)
        };
        for e in [1u64, 3, 0xFFFF_FFFE, 0xFFFF_FFFF] {
            assert_eq!(v1(e, 1), Ok(SbRead::Valid(Superblock { epoch: e + (1 << 32), ..sb() })));
        }
        assert_eq!(v1(1 << 32, 1).unwrap_err().as_str(), "Superblock epoch is beyond 32 bits in a version-1 superblock");
        assert_eq!(v1(3, 3).unwrap_err().as_str(), "Unsupported wbcache metadata version");
    }

    #[test]
    fn superblock_refusals_are_specific() {
        let mut b = [0u8; SB_BYTES];
        sb().encode(&mut b, &RefCrc);
        let mut foreign = b;
        foreign[0] ^= 1;
        assert!(Superblock::decode(&foreign, &RefCrc).unwrap_err().as_str().contains("foreign"));
        let mut crcbad = b;
        crcbad[60] ^= 1;
        assert_eq!(Superblock::decode(&crcbad, &RefCrc).unwrap_err().as_str(), "Superblock checksum mismatch");
        let mut geo = sb();
        geo.nr_blocks += 1;
        geo.encode(&mut b, &RefCrc);
        assert_eq!(Superblock::decode(&b, &RefCrc).unwrap_err().as_str(), "Superblock geometry is invalid");
        assert!(sb().check_table(512, sb().cache_sectors, sb().origin_sectors).is_err());
        assert!(sb().check_table(4096, sb().cache_sectors + 8, sb().origin_sectors).is_err());
        assert!(sb().check_table(4096, sb().cache_sectors, 8).is_err());
        assert!(sb().check_table(4096, sb().cache_sectors, sb().origin_sectors).is_ok());
    }

    #[test]
    fn choosing_between_copies() {
        let a = sb();
        let mut b = sb();
        b.seq = 8;
        assert_eq!(choose_superblock(Ok(SbRead::Valid(a)), Ok(SbRead::Valid(b))), Ok(SbRead::Valid(b)));
        assert_eq!(choose_superblock(Ok(SbRead::Valid(b)), Ok(SbRead::Valid(a))), Ok(SbRead::Valid(b)));
        let bad = Err(err!("Superblock checksum mismatch"));
        assert_eq!(choose_superblock(bad, Ok(SbRead::Valid(a))), Ok(SbRead::Valid(a)));
        assert!(choose_superblock(bad, bad).is_err());
        assert_eq!(choose_superblock(Ok(SbRead::Blank), Ok(SbRead::Blank)), Ok(SbRead::Blank));
        assert!(choose_superblock(Ok(SbRead::Valid(a)), Ok(SbRead::Blank)).is_err());
        let mut first = sb();
        first.seq = 0;
        assert_eq!(choose_superblock(Ok(SbRead::Valid(first)), Ok(SbRead::Blank)), Ok(SbRead::Valid(first)));
        assert!(choose_superblock(Ok(SbRead::Blank), Ok(SbRead::Valid(a))).is_err());
        let mut other = sb();
        other.block_size = 8192;
        assert!(choose_superblock(Ok(SbRead::Valid(a)), Ok(SbRead::Valid(other))).is_err());
    }

    #[test]
    fn entry_is_bound_to_its_index() {
        let e = Entry { block: 42, seq: 9, epoch: 2, state: EntryState::Dirty };
        let mut b = [0u8; ENTRY_BYTES];
        e.encode(5, &mut b, &RefCrc);
        assert_eq!(Entry::decode(5, &b, &RefCrc), Ok(e));
        assert!(Entry::decode(6, &b, &RefCrc).is_err());
        assert!(Entry::decode(5, &[0u8; ENTRY_BYTES], &RefCrc).is_err(), "zeroed entries are not free entries");
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        prop_oneof![
            any::<u64>().prop_map(Entry::free),
            (any::<u64>(), any::<u64>(), any::<u32>())
                .prop_map(|(block, seq, epoch)| Entry { block, seq, epoch, state: EntryState::Dirty }),
        ]
    }

    proptest! {
        #[test]
        fn entry_round_trips(e in arb_entry(), index in any::<u64>()) {
            let mut b = [0u8; ENTRY_BYTES];
            e.encode(index, &mut b, &RefCrc);
            prop_assert_eq!(Entry::decode(index, &b, &RefCrc), Ok(e));
        }

        #[test]
        fn any_single_bit_flip_in_an_entry_is_detected(e in arb_entry(), index in any::<u64>(), bit in 0usize..ENTRY_BYTES * 8) {
            let mut b = [0u8; ENTRY_BYTES];
            e.encode(index, &mut b, &RefCrc);
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Entry::decode(index, &b, &RefCrc).is_err());
        }

        #[test]
        fn any_single_bit_flip_in_a_superblock_is_detected(bit in 0usize..SB_BYTES * 8) {
            let mut b = [0u8; SB_BYTES];
            sb().encode(&mut b, &RefCrc);
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(!matches!(Superblock::decode(&b, &RefCrc), Ok(SbRead::Valid(_))));
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), index in any::<u64>()) {
            let _ = Entry::decode(index, &bytes, &RefCrc);
            let _ = Superblock::decode(&bytes, &RefCrc);
        }

        #[test]
        fn geometry_always_fits(cache_bytes in 0u64..(1u64 << 40), shift in 9u32..17) {
            if let Ok(g) = Geometry::compute(cache_bytes, 1 << shift) {
                prop_assert!(g.nr_blocks > 0);
                prop_assert!(g.data_start >= META_START + g.nr_blocks * ENTRY_BYTES as u64);
                prop_assert_eq!(g.data_start % u64::from(g.block_size).max(META_BLOCK), 0);
                prop_assert!(g.block_offset(g.nr_blocks) <= cache_bytes);
                // Maximal: one more block would not fit.
                let more = g.nr_blocks + 1;
                let align = u64::from(g.block_size).max(META_BLOCK);
                let start = (META_START + more * ENTRY_BYTES as u64).div_ceil(align) * align;
                prop_assert!(start + more * u64::from(g.block_size) > cache_bytes);
            }
        }
    }
}
