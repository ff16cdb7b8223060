// SPDX-License-Identifier: GPL-2.0

//! dm-repl's metadata device (`meta_dev`). A primary's: a superblock and the persistent dirty
//! bitmap ([`MetaSuper`]). A secondary's: one superblock with its consistency state
//! ([`SecSuper`]).
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 4096 | superblock (below), zero-padded |
//! | 4096 | `bitmap_bytes` rounded up to 4096 | dirty bitmap: u64 little-endian words, bit `r % 64` of word `r / 64` = region `r` |
//!
//! Superblock: magic `WBRPRMT1` (8), version u32 (1), flags u32 (bit 0: clean), device
//! sectors u64, region shift u32, zero u32, bitmap bytes u64, CRC-32C of bytes 0..40 u32.
//!
//! While a primary is active the superblock says *not clean*: found so at load, the primary
//! went down without saving its bitmap (a crash), and every region is resynced. A clean
//! superblock comes with a bitmap that holds every region that may differ from the secondary.

use crate::error::Error;
use crate::wbformat::{le32, le64, Crc32c};

/// Superblock magic.
pub const META_MAGIC: [u8; 8] = *b"WBRPRMT1";
/// Format version.
pub const META_VERSION: u32 = 1;
/// Bytes of the superblock block (the bitmap starts after it).
pub const SUPER_BYTES: usize = 4096;
const FLAG_CLEAN: u32 = 1;
const CRC_AT: usize = 40;

/// The superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaSuper {
    /// The bitmap is complete (orderly shutdown or suspend).
    pub clean: bool,
    /// Device size in sectors.
    pub sectors: u64,
    /// Region size: `1 << region_shift` sectors.
    pub region_shift: u32,
}

impl MetaSuper {
    /// Bytes of the bitmap for this geometry (whole u64 words).
    pub fn bitmap_bytes(&self) -> u64 {
        self.sectors.div_ceil(1u64 << self.region_shift).div_ceil(64) * 8
    }

    /// Bytes of metadata device needed: superblock plus bitmap, in 4 KiB blocks.
    pub fn device_bytes(&self) -> u64 {
        SUPER_BYTES as u64 + self.bitmap_bytes().div_ceil(4096) * 4096
    }

    /// Encodes into the first bytes of `out` (at least 44; the caller zeroes the rest).
    pub fn encode(&self, crc: &impl Crc32c, out: &mut [u8]) {
        let Some(o) = out.get_mut(..CRC_AT + 4) else { return };
        o.fill(0);
        o[0..8].copy_from_slice(&META_MAGIC);
        o[8..12].copy_from_slice(&META_VERSION.to_le_bytes());
        o[12..16].copy_from_slice(&(if self.clean { FLAG_CLEAN } else { 0 }).to_le_bytes());
        o[16..24].copy_from_slice(&self.sectors.to_le_bytes());
        o[24..28].copy_from_slice(&self.region_shift.to_le_bytes());
        o[32..40].copy_from_slice(&self.bitmap_bytes().to_le_bytes());
        let c = crc.append(0, &o[..CRC_AT]);
        o[CRC_AT..CRC_AT + 4].copy_from_slice(&c.to_le_bytes());
    }

    /// Decodes a superblock from its whole block (`SUPER_BYTES`): `Ok(None)` for a device that
    /// was never formatted (all zero), an error for a damaged or foreign one (data that is not
    /// ours is never formatted over).
    pub fn decode(block: &[u8], crc: &impl Crc32c) -> Result<Option<Self>, Error> {
        let b = block.get(..CRC_AT + 4).ok_or(err!("Metadata superblock truncated"))?;
        if b[0..8] == SEC_MAGIC {
            return Err(err!("Metadata device holds a secondary's metadata"));
        }
        if b[0..8] != META_MAGIC {
            return blank_or_foreign(block);
        }
        if crc.append(0, &b[..CRC_AT]) != le32(b, CRC_AT) {
            return Err(err!("Metadata superblock checksum mismatch"));
        }
        if le32(b, 8) != META_VERSION {
            return Err(err!("Metadata version not supported"));
        }
        let flags = le32(b, 12);
        if flags & !FLAG_CLEAN != 0 || le32(b, 28) != 0 {
            return Err(err!("Metadata superblock has unknown flags"));
        }
        let s = Self { clean: flags & FLAG_CLEAN != 0, sectors: le64(b, 16), region_shift: le32(b, 24) };
        if s.region_shift > 40 || s.bitmap_bytes() != le64(b, 32) {
            return Err(err!("Metadata superblock geometry is invalid"));
        }
        Ok(Some(s))
    }
}

/// A superblock block without our magic: blank when all zero, else someone else's data.
fn blank_or_foreign<T>(block: &[u8]) -> Result<Option<T>, Error> {
    if block.iter().all(|&x| x == 0) {
        Ok(None)
    } else {
        Err(err!("Metadata device holds foreign data (not dm-repl metadata); zero its first 4 KiB to format it"))
    }
}

/// A secondary's superblock magic.
pub const SEC_MAGIC: [u8; 8] = *b"WBRPSMT1";
const SEC_FLAG_CONSISTENT: u32 = 1;
const SEC_CRC_AT: usize = 24;

/// A secondary's superblock: magic `WBRPSMT1` (8), version u32 (1), flags u32 (bit 0:
/// consistent), device sectors u64, CRC-32C of bytes 0..24 u32; the rest of the 4 KiB block
/// zero.
///
/// *Consistent* is cleared on disk before the first resync write of a resync is applied and set
/// again once the resync is complete and flushed, so a secondary that restarts in the middle of
/// a resync knows its device is not a consistent image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecSuper {
    /// The data device holds a consistent image (no resync under way).
    pub consistent: bool,
    /// Device size in sectors.
    pub sectors: u64,
}

impl SecSuper {
    /// Encodes into the first bytes of `out` (at least 28; the caller zeroes the rest).
    pub fn encode(&self, crc: &impl Crc32c, out: &mut [u8]) {
        let Some(o) = out.get_mut(..SEC_CRC_AT + 4) else { return };
        o.fill(0);
        o[0..8].copy_from_slice(&SEC_MAGIC);
        o[8..12].copy_from_slice(&META_VERSION.to_le_bytes());
        o[12..16].copy_from_slice(&(if self.consistent { SEC_FLAG_CONSISTENT } else { 0 }).to_le_bytes());
        o[16..24].copy_from_slice(&self.sectors.to_le_bytes());
        let c = crc.append(0, &o[..SEC_CRC_AT]);
        o[SEC_CRC_AT..SEC_CRC_AT + 4].copy_from_slice(&c.to_le_bytes());
    }

    /// Decodes a secondary's superblock from its whole block: `Ok(None)` for a device that was
    /// never formatted (all zero), an error for a damaged or foreign one or for a primary's
    /// metadata.
    pub fn decode(block: &[u8], crc: &impl Crc32c) -> Result<Option<Self>, Error> {
        let b = block.get(..SEC_CRC_AT + 4).ok_or(err!("Metadata superblock truncated"))?;
        if b[0..8] == META_MAGIC {
            return Err(err!("Metadata device holds a primary's metadata"));
        }
        if b[0..8] != SEC_MAGIC {
            return blank_or_foreign(block);
        }
        if crc.append(0, &b[..SEC_CRC_AT]) != le32(b, SEC_CRC_AT) {
            return Err(err!("Metadata superblock checksum mismatch"));
        }
        if le32(b, 8) != META_VERSION {
            return Err(err!("Metadata version not supported"));
        }
        let flags = le32(b, 12);
        if flags & !SEC_FLAG_CONSISTENT != 0 {
            return Err(err!("Metadata superblock has unknown flags"));
        }
        Ok(Some(Self { consistent: flags & SEC_FLAG_CONSISTENT != 0, sectors: le64(b, 16) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wbformat::tests::RefCrc;

    #[test]
    fn superblock_round_trips_and_damage_is_refused() {
        let s = MetaSuper { clean: true, sectors: 1 << 21, region_shift: 7 };
        assert_eq!(s.bitmap_bytes(), 2048);
        assert_eq!(s.device_bytes(), 8192);
        let mut b = [0u8; 512];
        s.encode(&RefCrc, &mut b);
        assert_eq!(MetaSuper::decode(&b, &RefCrc), Ok(Some(s)));
        let active = MetaSuper { clean: false, ..s };
        active.encode(&RefCrc, &mut b);
        assert_eq!(MetaSuper::decode(&b, &RefCrc), Ok(Some(active)));
        assert_eq!(MetaSuper::decode(&[0u8; 512], &RefCrc), Ok(None), "unformatted");
        // The magic's bits too: a block that is neither all zero nor ours is foreign.
        for i in 0..(CRC_AT + 4) * 8 {
            let mut t = b;
            t[i / 8] ^= 1 << (i % 8);
            assert!(MetaSuper::decode(&t, &RefCrc).is_err(), "bit {i}");
        }
        assert!(MetaSuper::decode(&b[..20], &RefCrc).is_err());
    }

    #[test]
    fn secondary_superblock_round_trips_and_damage_is_refused() {
        for consistent in [true, false] {
            let s = SecSuper { consistent, sectors: 123456 };
            let mut b = [0u8; 512];
            s.encode(&RefCrc, &mut b);
            assert_eq!(SecSuper::decode(&b, &RefCrc), Ok(Some(s)));
            for i in 0..(SEC_CRC_AT + 4) * 8 {
                let mut t = b;
                t[i / 8] ^= 1 << (i % 8);
                assert!(SecSuper::decode(&t, &RefCrc).is_err(), "bit {i}");
            }
        }
        assert_eq!(SecSuper::decode(&[0u8; 512], &RefCrc), Ok(None), "unformatted");
        // A primary's metadata is not taken for a secondary's (nor the other way round).
        let mut p = [0u8; 512];
        MetaSuper { clean: true, sectors: 1 << 21, region_shift: 7 }.encode(&RefCrc, &mut p);
        assert!(SecSuper::decode(&p, &RefCrc).is_err());
        let mut q = [0u8; 512];
        SecSuper { consistent: true, sectors: 8 }.encode(&RefCrc, &mut q);
        assert!(MetaSuper::decode(&q, &RefCrc).is_err());
        assert!(SecSuper::decode(&b""[..], &RefCrc).is_err());
    }

    /// Someone else's data (a file system, a partition table, one stray byte anywhere in the
    /// block) is refused, never formatted over as if blank.
    #[test]
    fn foreign_data_is_not_taken_for_blank() {
        let mut ext4 = [0u8; SUPER_BYTES];
        ext4[1024 + 56..1024 + 58].copy_from_slice(&0xef53u16.to_le_bytes());
        let mut mbr = [0u8; SUPER_BYTES];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        let mut stray = [0u8; SUPER_BYTES];
        stray[SUPER_BYTES - 1] = 1;
        for b in [&ext4, &mbr, &stray, &[0xffu8; SUPER_BYTES]] {
            let m = MetaSuper::decode(b, &RefCrc);
            assert!(m.as_ref().is_err_and(|e| e.as_str().contains("foreign data")), "{m:?}");
            let s = SecSuper::decode(b, &RefCrc);
            assert!(s.as_ref().is_err_and(|e| e.as_str().contains("foreign data")), "{s:?}");
        }
        assert_eq!(MetaSuper::decode(&[0u8; SUPER_BYTES], &RefCrc), Ok(None));
        assert_eq!(SecSuper::decode(&[0u8; SUPER_BYTES], &RefCrc), Ok(None));
    }
}
