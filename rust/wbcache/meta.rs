// SPDX-License-Identifier: GPL-2.0

//! dm-wbcache metadata: commits (barrier, metadata blocks, superblock), loading and
//! formatting the cache device (`docs/wbcache.md`, "Crash safety" and "On-disk format").

use super::*;

impl Shared {
    /// Makes everything completed so far durable (see `Index::barrier_begin`). With `force`,
    /// commits even when nothing changed. Every hold of the index lock does bounded work: the
    /// barrier itself is O(1), and the slots it marks free, the search for the metadata blocks
    /// to write, their images and the slots freed at the end go in steps.
    pub(super) fn commit(&self, force: bool) -> Result {
        let mut buf = self.commit_buf.lock();
        if self.failed() {
            return Err(EIO);
        }
        let (k, old) = {
            let mut g = self.inner.lock();
            if !force && !g.ix.needs_commit() {
                return Ok(());
            }
            let k = g.ix.barrier_begin();
            let old = g.gen;
            g.gen ^= 1;
            (k, old)
        };
        while !self.inner.lock().ix.barrier_step(SCAN_STEP) {}
        loop {
            self.inflight_done.reinit();
            if self.inflight.get(old).is_none_or(|c| c.load(Ordering::Acquire) == 0) {
                break;
            }
            self.inflight_done.wait_timeout_ms(100);
        }
        if self.failed() {
            // A write this commit waited for failed (the cache latched it): write nothing more.
            self.inner.lock().ix.commit_end(k, false);
            while !self.inner.lock().ix.commit_end_step(SCAN_STEP) {}
            return Err(EIO);
        }
        let r = self.write_meta_blocks(&mut buf).and_then(|_| self.write_superblock(&mut buf, k));
        {
            let mut g = self.inner.lock();
            g.ix.commit_end(k, r.is_ok());
            if r.is_ok() {
                let n = g.age_next;
                if let Some(a) = g.ages.get_mut(n % AGE_MARKS) {
                    *a = AgeMark { seq: k, ms: ms_now() };
                }
                g.age_next = n.wrapping_add(1);
            }
        }
        while !self.inner.lock().ix.commit_end_step(SCAN_STEP) {}
        match r {
            Ok(()) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.space.complete();
                Ok(())
            }
            Err(e) => {
                self.latch_failure(e, "metadata commit");
                Err(e)
            }
        }
    }

    /// Commits until released blocks are durably free (at most three commits).
    pub(super) fn settle(&self) -> Result {
        for _ in 0..3 {
            let busy = {
                let g = self.inner.lock();
                g.ix.counts().releasing > 0 || g.ix.needs_commit()
            };
            if !busy {
                break;
            }
            self.commit(true)?;
        }
        Ok(())
    }

    pub(super) fn encode_meta_block(&self, ix: &Ix, m: u64, out: &mut [u8]) {
        out.fill(0);
        let first = m * ENTRIES_PER_META_BLOCK;
        let last = (first + ENTRIES_PER_META_BLOCK).min(ix.len());
        for (n, i) in (first..last).enumerate() {
            if let Some(dst) = out.get_mut(n * ENTRY_BYTES..(n + 1) * ENTRY_BYTES) {
                ix.image(i as u32).encode(i, dst, &KernelCrc32c);
            }
        }
    }

    pub(super) fn meta_region(&self, first: u64, count: usize) -> Region<'_> {
        Region { dev: &self.cache, sector: (META_START + first * META_BLOCK) / 512, sectors: count as u64 * (META_BLOCK / 512) }
    }

    /// The next metadata block (≥ `from`) the commit in progress writes, looked for in bounded
    /// holds of the index lock.
    fn next_commit_block(&self, from: u64) -> Option<u64> {
        let mut from = from;
        loop {
            match self.inner.lock().ix.find_commit_block(from, SCAN_STEP) {
                CommitBlock::Write(b) => return Some(b),
                CommitBlock::Continue(f) => from = f,
                CommitBlock::Done => return None,
            }
        }
    }

    /// Writes every metadata block of the commit in progress, in runs of contiguous blocks.
    pub(super) fn write_meta_blocks(&self, buf: &mut KVec<u8>) -> Result {
        let mb = META_BLOCK as usize;
        let mut from = 0;
        loop {
            let Some(first) = self.next_commit_block(from) else { break };
            let mut n = 0;
            // One metadata block per hold of the index lock (interrupts are off meanwhile).
            while n < META_RUN {
                let g = self.inner.lock();
                if g.ix.find_commit_block(first + n as u64, 1) != CommitBlock::Write(first + n as u64) {
                    break;
                }
                if let Some(out) = buf.get_mut(n * mb..(n + 1) * mb) {
                    self.encode_meta_block(&g.ix, first + n as u64, out);
                }
                n += 1;
            }
            let data = buf.get(..n * mb).ok_or(EINVAL)?;
            self.dmio.write(&[self.meta_region(first, n)], data, IoFlags::default())?;
            from = first + n as u64;
        }
        Ok(())
    }

    pub(super) fn superblock(&self, seq: u64, epoch: u64) -> Superblock {
        Superblock {
            block_size: self.block_size,
            nr_blocks: self.geom.nr_blocks,
            data_start: self.geom.data_start,
            cache_sectors: self.cache.sectors(),
            origin_sectors: self.len,
            seq,
            epoch,
        }
    }

    /// Writes superblock copy `seq & 1` with PREFLUSH (everything before is durable first) and
    /// FUA.
    pub(super) fn write_superblock(&self, buf: &mut KVec<u8>, seq: u64) -> Result {
        let epoch = self.inner.lock().ix.epoch();
        let out = buf.get_mut(..META_BLOCK as usize).ok_or(EINVAL)?;
        out.fill(0);
        self.superblock(seq, epoch).encode(out, &KernelCrc32c);
        let region = Region { dev: &self.cache, sector: Superblock::offset_for(seq) / 512, sectors: META_BLOCK / 512 };
        self.dmio.write(&[region], out, IoFlags { preflush: true, fua: true })
    }

    /// Reads superblock copy `copy` (its 4 KiB block: the cache device's logical blocks may be
    /// that large) into `buf`.
    pub(super) fn read_superblock(&self, buf: &mut KVec<u8>, copy: u64) -> Result {
        let b = buf.get_mut(..META_BLOCK as usize).ok_or(EINVAL)?;
        self.dmio.read(Region { dev: &self.cache, sector: copy * META_BLOCK / 512, sectors: META_BLOCK / 512 }, b)
    }

    /// Reads and validates the metadata, or formats a blank cache device. Runs at the first
    /// resume of a table (never in the constructor: an older table may still be live). The
    /// steps and the refusals are `wbrepl_core::wbload`'s (host-tested there, and the fuzzer of
    /// `tests/guest/87-wbcache-metafuzz.sh` predicts this function's verdict with them).
    pub(super) fn load(&self) -> Result {
        let mut buf = self.commit_buf.lock();
        let mut copies = [[0u8; SB_BYTES]; 2];
        for (k, c) in copies.iter_mut().enumerate() {
            self.read_superblock(&mut buf, k as u64)?;
            c.copy_from_slice(buf.get(..SB_BYTES).ok_or(EINVAL)?);
        }
        let refuse = |e: LoadError| {
            pr_err!("wbcache {}: cannot use the cache device: {}\n", self.cache, e);
            EINVAL
        };
        let choice = superblock_for_table(&copies[0], &copies[1], &KernelCrc32c, self.block_size, self.cache.sectors(), self.len)
            .map_err(refuse)?;
        if let Some(e) = choice.other_unreadable {
            pr_warn!("wbcache {}: one superblock copy is unreadable ({}); using the other\n", self.cache, e.as_str());
        }
        let sb = match choice.sb {
            SbRead::Blank => return self.format(&mut buf),
            SbRead::Valid(sb) => sb,
        };
        // Every step below is one bounded hold of the index lock (interrupts are off meanwhile):
        // the work of a load grows with the cache, and is done in pieces.
        let mut st = self.inner.lock().ix.load_begin(sb.seq, sb.epoch);
        while !self.inner.lock().ix.load_begin_step(&mut st, SCAN_STEP) {}
        let mb = META_BLOCK as usize;
        let total = self.geom.meta_blocks();
        let mut first = 0;
        while first < total {
            let n = (total - first).min(META_RUN as u64) as usize;
            let data = buf.get_mut(..n * mb).ok_or(EINVAL)?;
            self.dmio.read(self.meta_region(first, n), data)?;
            // One entry (a walk of one hash chain) per hold of the index lock.
            for k in 0..n as u64 * ENTRIES_PER_META_BLOCK {
                let i = first * ENTRIES_PER_META_BLOCK + k;
                if i >= self.geom.nr_blocks {
                    break;
                }
                let off = k as usize * ENTRY_BYTES;
                let raw = data.get(off..off + ENTRY_BYTES).ok_or(EINVAL)?;
                let r = load_raw_entry(&mut self.inner.lock().ix, &mut st, i, raw, &KernelCrc32c, self.origin_blocks);
                r.map_err(refuse)?;
            }
            first += n as u64;
        }
        while !self.inner.lock().ix.load_finish_step(&mut st, SCAN_STEP) {}
        let rep = st.report;
        let (dirty, epoch) = {
            let mut g = self.inner.lock();
            g.loaded = true;
            (g.ix.counts().dirty, g.ix.epoch())
        };
        pr_info!(
            "wbcache {}: loaded commit {}: {} dirty blocks, {} discarded, {} entries of an incomplete commit ignored; epoch {}\n",
            self.cache, sb.seq, dirty, rep.discarded, rep.ignored, epoch
        );
        Ok(())
    }

    pub(super) fn format(&self, buf: &mut KVec<u8>) -> Result {
        let mb = META_BLOCK as usize;
        let total = self.geom.meta_blocks();
        // In bounded holds of the index lock, as the load.
        let mut st = self.inner.lock().ix.format_begin();
        while !self.inner.lock().ix.format_step(&mut st, SCAN_STEP) {}
        let mut first = 0;
        while first < total {
            let n = (total - first).min(META_RUN as u64) as usize;
            {
                let g = self.inner.lock();
                for k in 0..n {
                    if let Some(out) = buf.get_mut(k * mb..(k + 1) * mb) {
                        self.encode_meta_block(&g.ix, first + k as u64, out);
                    }
                }
            }
            self.dmio.write(&[self.meta_region(first, n)], buf.get(..n * mb).ok_or(EINVAL)?, IoFlags::default())?;
            first += n as u64;
        }
        // Both superblock copies, seq 0; copy 0 first (a valid copy 0 next to a blank copy 1 is
        // a format interrupted after its first superblock, which loads).
        for copy in [0u64, 1] {
            let out = buf.get_mut(..mb).ok_or(EINVAL)?;
            out.fill(0);
            self.superblock(0, 1).encode(out, &KernelCrc32c);
            let region = Region { dev: &self.cache, sector: copy * META_BLOCK / 512, sectors: META_BLOCK / 512 };
            self.dmio.write(&[region], out, IoFlags { preflush: true, fua: true })?;
        }
        self.inner.lock().loaded = true;
        pr_info!("wbcache {}: formatted: {} blocks of {} bytes\n", self.cache, self.geom.nr_blocks, self.block_size);
        Ok(())
    }
}
