// SPDX-License-Identifier: GPL-2.0

//! dm-wbcache bio paths: the fast path (`map`, `end_io`) and the slow path, an ordered worker
//! for partial, FUA and write-through writes, writes waiting for space, and flushes.

use super::*;

impl Shared {
    pub(super) fn run_io(&self) {
        // Writes waiting for space, retried together whenever writeback frees some (so that a
        // queue of them does not wait one after another), and since when.
        let mut waiting = BioList::<PerBio>::new();
        let mut since = 0;
        loop {
            let (flushes, bio) = {
                let mut g = self.inner.lock();
                (g.flushes.take(), g.slow.pop())
            };
            let had_flushes = !flushes.is_empty();
            if had_flushes {
                self.process_flushes(flushes);
            }
            match bio {
                Some(b) => {
                    self.stats.slow_writes.fetch_add(1, Ordering::Relaxed);
                    if let Some(b) = self.slow_write(b) {
                        if waiting.is_empty() {
                            since = ms_now();
                        }
                        waiting.push(b);
                    }
                }
                None if had_flushes => {}
                None if waiting.is_empty() => break,
                None => {
                    let fail = self.failed() || self.give_up_waiting(since);
                    if !fail {
                        self.wait_space();
                    }
                    let mut retry = waiting.take();
                    while let Some(b) = retry.pop() {
                        if fail {
                            self.stats.io_errors.fetch_add(1, Ordering::Relaxed);
                            b.end(BlkStatus::IOERR);
                        } else if let Some(b) = self.slow_write(b) {
                            waiting.push(b);
                        }
                    }
                }
            }
        }
    }

    /// Completes flushes from above: a commit makes the cache durable, and the origin is flushed
    /// if a write to it alone completed since the last such flush (see `origin_dirty`).
    pub(super) fn process_flushes(&self, mut list: BioList<PerBio>) {
        let mut r = self.commit(false);
        if r.is_ok() && self.origin_dirty.swap(false, Ordering::AcqRel) {
            r = self.dmio.flush(&self.origin);
        }
        let status = match r {
            Ok(()) => BlkStatus::OK,
            Err(_) => BlkStatus::IOERR,
        };
        while let Some(b) = list.pop() {
            b.end(status);
        }
    }

    /// Waits (briefly) for writeback to free blocks; the caller re-checks. Completes the flushes
    /// queued meanwhile, so that they do not wait behind this write.
    pub(super) fn wait_space(&self) {
        self.space.reinit();
        self.wake.complete();
        let flushes = self.inner.lock().flushes.take();
        if !flushes.is_empty() {
            self.process_flushes(flushes);
        }
        self.space.wait_timeout_ms(100);
    }

    /// Whether a write waiting for space should give up: writeback has been failing for as long
    /// as the write has waited, and at least `WAIT_SPACE_MAX_MS`.
    pub(super) fn give_up_waiting(&self, since: i64) -> bool {
        self.wb_error.load(Ordering::Relaxed) && ms_now() - since >= WAIT_SPACE_MAX_MS
    }

    /// Handles one write the fast path could not; returns it when it must wait for space.
    pub(super) fn slow_write(&self, mut bio: Bio<PerBio>) -> Option<Bio<PerBio>> {
        let ts = bio.target_sector();
        let block = ts >> self.block_shift;
        let off = ts & (self.block_sectors() - 1);
        let len = bio.size() as usize;
        let fua = bio.is_fua();
        let full = off == 0 && len == self.block_size as usize;
        let mut buf = self.slow_buf.lock();
        loop {
            if self.failed() {
                self.stats.io_errors.fetch_add(1, Ordering::Relaxed);
                bio.end(BlkStatus::IOERR);
                return None;
            }
            let mut g = self.inner.lock();
            let wt = g.mode == CacheMode::Writethrough;
            if wt && g.ix.uncached_run(block, 1) == 1 {
                drop(g);
                self.write_to_origin(&mut bio, 1, &self.stats.write_through);
                bio.submit_remapped();
                return None;
            }
            if wt && g.ix.under_writeback(block) {
                // A copy of an older version is on its way to the origin: it could land after
                // this write. Wait for it.
                drop(g);
                sleep_ms(1);
                continue;
            }
            let (slot, src) = match g.ix.map_write(block, full) {
                WriteMap::Slot(i) => (i, None),
                WriteMap::NeedsCopy(src) => match g.ix.alloc(block) {
                    Some(i) => (i, Some(src)),
                    None => return Some(bio),
                },
                WriteMap::NoSpace if full && g.mode == CacheMode::Writeback && g.cp.is_none() && g.ix.uncached_run(block, 1) == 1 => {
                    // Nothing of it is cached: to the origin directly (see `map`).
                    drop(g);
                    self.write_to_origin(&mut bio, 1, &self.stats.write_around);
                    bio.submit_remapped();
                    return None;
                }
                // Out of room, or the block holds MAX_VERSIONS versions (ordered mode, or a
                // checkpoint, keeps one per epoch): wait for writeback, which `due` makes run.
                WriteMap::NoSpace | WriteMap::TooManyVersions => return Some(bio),
                WriteMap::Busy => {
                    drop(g);
                    sleep_ms(1);
                    continue;
                }
            };
            if wt {
                // Older versions are not written back while this write is in flight, and are
                // released when it completes (the origin then has this one).
                g.ix.mark_write_through(slot);
            }
            let gen = g.gen;
            self.io_enter(gen);
            drop(g);
            if src.is_none() && !wt && !fua {
                // Nothing to merge or copy (it only waited for space, or is a partial write
                // over a complete version): submit it like the fast path, asynchronously.
                *bio.data_mut() = PerBio { slot, blocks: 1, flags: gen_flag(gen) | PB_SLOT_WRITE };
                bio.remap(&self.cache, self.slot_sector(slot) + off);
                bio.submit_remapped();
                return None;
            }
            let r = self.write_slot(&mut bio, &mut buf, slot, src, block, off, len, wt, fua);
            self.inner.lock().ix.write_done(slot, r.is_ok());
            self.io_exit(gen);
            let r = if r.is_ok() && fua { self.commit(false) } else { r };
            if r.is_err() {
                self.stats.io_errors.fetch_add(1, Ordering::Relaxed);
            }
            bio.end(if r.is_ok() { BlkStatus::OK } else { BlkStatus::IOERR });
            return None;
        }
    }

    /// Writes `data` to the cache region, and to the origin region too in write-through
    /// (`wt`). A failed write to the cache alone fails the cache (see `end_io`).
    pub(super) fn write_block(&self, regions: &[Region<'_>; 2], wt: bool, data: &[u8], flags: IoFlags) -> Result {
        let r = self.dmio.write(if wt { &regions[..] } else { &regions[..1] }, data, flags);
        if let (Err(e), false) = (r, wt) {
            self.latch_failure(e, "a data write to the cache device");
        }
        r
    }

    /// Points a write over `blocks` blocks at the origin alone (write-through, or a full cache
    /// in writeback mode), counting them in `counter`. The caller checked that the cache has
    /// nothing of them ([`Index::uncached_run`]), so nothing cached can shadow them, now or
    /// after a crash, and cut the bio to them. Once it completes (`end_io`), the next flush from
    /// above flushes the origin too.
    pub(super) fn write_to_origin(&self, bio: &mut Bio<PerBio>, blocks: u32, counter: &AtomicU64) {
        counter.fetch_add(u64::from(blocks), Ordering::Relaxed);
        bio.data_mut().flags |= PB_ORIGIN;
        let ts = bio.target_sector();
        bio.remap(&self.origin, ts);
    }

    /// Writes the bio's data to slot `slot` (and the origin in write-through). `src`: a new
    /// slot for a partial write, built from this version (a slot, or the origin when `None`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write_slot(
        &self,
        bio: &mut Bio<PerBio>,
        buf: &mut KVec<u8>,
        slot: u32,
        src: Option<Option<u32>>,
        block: u64,
        off: u64,
        len: usize,
        wt: bool,
        fua: bool,
    ) -> Result {
        let flags = IoFlags { fua, preflush: false };
        let bs = self.block_size as usize;
        match src {
            None => {
                // The whole bio goes to its place in the slot.
                let data = buf.get_mut(..len).ok_or(EINVAL)?;
                bio.copy_to(data);
                let sectors = len as u64 / 512;
                let cache = self.slot_region(slot, off, sectors);
                let origin = Region { dev: &self.origin, sector: (block << self.block_shift) + off, sectors };
                let regions = [cache, origin];
                self.write_block(&regions, wt, data, flags)
            }
            Some(from) => {
                let whole = buf.get_mut(..bs).ok_or(EINVAL)?;
                let src_region = match from {
                    Some(i) => self.slot_region(i, 0, self.block_sectors()),
                    None => Region { dev: &self.origin, sector: block << self.block_shift, sectors: self.block_sectors() },
                };
                self.dmio.read(src_region, whole)?;
                let o = (off * 512) as usize;
                let part = whole.get_mut(o..o + len).ok_or(EINVAL)?;
                bio.copy_to(part);
                let cache = self.slot_region(slot, 0, self.block_sectors());
                let origin = Region { dev: &self.origin, sector: block << self.block_shift, sectors: self.block_sectors() };
                let regions = [cache, origin];
                self.write_block(&regions, wt, whole, flags)
            }
        }
    }
}

impl Wbcache {
    /// The fast path ([`Target::map`]): remaps what it can, queues the rest for the slow path.
    pub(super) fn map_bio(&self, mut bio: Bio<PerBio>, ctx: &MapContext<'_>) -> MapResult<PerBio> {
        let sh = &*self.shared;
        let ts = bio.target_sector();
        let block = ts >> sh.block_shift;
        let off = ts & (sh.block_sectors() - 1);
        match bio.op() {
            Op::Flush => {
                sh.stats.flushes.fetch_add(1, Ordering::Relaxed);
                let mut g = sh.inner.lock();
                if g.mode == CacheMode::Ordered {
                    // A flush from above closes the epoch: everything completed before it is in
                    // this epoch or an older one. (Not while the oldest dirty data is about 2^31
                    // epochs old, see `Index::close_epoch`: then this flush's writes share the
                    // open epoch with the next ones, a coarser boundary but still one.)
                    let _ = g.ix.close_epoch();
                }
                g.flushes.push(bio);
                drop(g);
                self.kick_io();
                MapResult::Submitted
            }
            Op::Read => {
                let bs = sh.block_sectors();
                let last = (ts + u64::from(bio.sectors()).max(1) - 1) >> sh.block_shift;
                let want = (last - block + 1).min(MAX_RUN);
                let g = sh.inner.lock();
                // One run: consecutive cached blocks in consecutive slots, or uncached blocks.
                let first = g.ix.lookup_read(block);
                let mut n = 1;
                while n < want {
                    let next = g.ix.lookup_read(block + n);
                    let same = match (first, next) {
                        (Some(i), Some(j)) => u64::from(j) == u64::from(i) + n,
                        (None, None) => true,
                        _ => false,
                    };
                    if !same {
                        break;
                    }
                    n += 1;
                }
                let gen = g.gen;
                if first.is_some() {
                    sh.io_enter(gen);
                }
                drop(g);
                bio.accept_partial(ctx, (((block + n) * bs) - ts).min(u64::from(u32::MAX)) as u32);
                match first {
                    Some(i) => {
                        *bio.data_mut() = PerBio { slot: i, blocks: 0, flags: gen_flag(gen) };
                        sh.stats.read_hits.fetch_add(n, Ordering::Relaxed);
                        let s = sh.slot_sector(i) + off;
                        bio.remap(&sh.cache, s);
                    }
                    None => {
                        sh.stats.read_misses.fetch_add(n, Ordering::Relaxed);
                        bio.remap(&sh.origin, ts);
                    }
                }
                MapResult::Remapped(bio)
            }
            Op::Write => {
                if sh.failed() {
                    return MapResult::Kill(bio);
                }
                let bs = sh.block_sectors();
                let sectors = u64::from(bio.sectors());
                // Whole blocks the bio covers from its start (0: it starts or ends inside one).
                let whole = if off == 0 { (sectors >> sh.block_shift).min(MAX_RUN) } else { 0 };
                let mut g = sh.inner.lock();
                let wt = g.mode == CacheMode::Writethrough;
                if wt {
                    // Blocks the cache has nothing of go to the origin alone (partial ones too).
                    let last = (ts + sectors.max(1) - 1) >> sh.block_shift;
                    let touched = (last - block + 1).min(MAX_RUN);
                    let n = g.ix.uncached_run(block, touched as u32);
                    if n > 0 {
                        drop(g);
                        bio.accept_partial(ctx, (((block + u64::from(n)) * bs) - ts).min(u64::from(u32::MAX)) as u32);
                        sh.write_to_origin(&mut bio, n, &sh.stats.write_through);
                        return MapResult::Remapped(bio);
                    }
                }
                if whole == 0 || wt || bio.is_fua() {
                    // The slow path takes one block at a time: device-mapper sends the rest of
                    // the bio as another.
                    bio.accept_partial(ctx, (bs - off).min(sectors) as u32);
                    g.slow.push(bio);
                    drop(g);
                    self.kick_io();
                    return MapResult::Submitted;
                }
                if g.mode == CacheMode::Writeback && g.cp.is_none() {
                    // Full or nearly: the last free blocks are kept for new versions of cached
                    // blocks; blocks the cache has nothing of go to the origin directly (as
                    // dm-writecache does once it is full). Others wait for writeback. Not
                    // during a checkpoint: nothing new may reach the origin before its marker.
                    let c = g.ix.counts();
                    if c.free < (c.total / RESERVE_DIV).max(1) {
                        let n = g.ix.uncached_run(block, whole as u32);
                        if n > 0 {
                            drop(g);
                            bio.accept_partial(ctx, (u64::from(n) * bs) as u32);
                            sh.write_to_origin(&mut bio, n, &sh.stats.write_around);
                            return MapResult::Remapped(bio);
                        }
                    }
                }
                let r = g.ix.map_write_run(block, whole as u32);
                match r.map {
                    WriteMap::Slot(i) => {
                        let gen = g.gen;
                        sh.io_enter(gen);
                        drop(g);
                        bio.accept_partial(ctx, (u64::from(r.blocks) * bs) as u32);
                        sh.stats.write_hits.fetch_add(u64::from(r.hits), Ordering::Relaxed);
                        sh.stats.write_misses.fetch_add(u64::from(r.blocks - r.hits), Ordering::Relaxed);
                        *bio.data_mut() = PerBio { slot: i, blocks: r.blocks, flags: gen_flag(gen) | PB_SLOT_WRITE };
                        let s = sh.slot_sector(i);
                        bio.remap(&sh.cache, s);
                        MapResult::Remapped(bio)
                    }
                    _ => {
                        bio.accept_partial(ctx, bs as u32);
                        g.slow.push(bio);
                        drop(g);
                        self.kick_io();
                        MapResult::Submitted
                    }
                }
            }
            // Discards and write-zeroes are not enabled (num_*_bios = 0).
            _ => MapResult::Kill(bio),
        }
    }

    /// [`Target::end_io`]: completes the index side of a remapped bio.
    pub(super) fn end_io_bio(&self, bio: &Bio<PerBio>, status: &mut BlkStatus) -> EndIo {
        let sh = &*self.shared;
        let p = *bio.data();
        if p.flags & PB_ORIGIN != 0 {
            // Before the completion goes up: a flush issued after it sees the flag.
            sh.origin_dirty.store(true, Ordering::Release);
        }
        if p.flags & PB_SLOT_WRITE != 0 {
            if !status.is_ok() {
                // The cache device no longer takes writes: stop using it for them (as
                // dm-writecache does), rather than hold dirty data it may not have.
                sh.latch_failure(EIO, "a data write to the cache device");
            }
            let mut g = sh.inner.lock();
            for k in 0..p.blocks {
                g.ix.write_done(p.slot.saturating_add(k), status.is_ok());
            }
        }
        if p.flags & PB_GEN0 != 0 {
            sh.io_exit(0);
        } else if p.flags & PB_GEN1 != 0 {
            sh.io_exit(1);
        }
        if !status.is_ok() {
            sh.stats.io_errors.fetch_add(1, Ordering::Relaxed);
        }
        EndIo::Done
    }
}
