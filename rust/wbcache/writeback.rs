// SPDX-License-Identifier: GPL-2.0

//! dm-wbcache writeback: the background worker, what is due between the watermarks, and
//! draining (the `flush` message, `flush_on_suspend`).

use super::*;

impl Shared {
    pub(super) fn tick_ms(&self) -> u32 {
        match self.opts.max_age_ms {
            Some(a) => (a / 4).clamp(10, AUTOCOMMIT_MS),
            None => AUTOCOMMIT_MS,
        }
    }

    pub(super) fn run_wb(&self) {
        while !self.stop.load(Ordering::Acquire) {
            // Wake-ups from now on start another round; older ones are covered by this one.
            self.wake.reinit();
            self.writeback_round(false);
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            let t = if self.inner.lock().forced() { 10 } else { self.tick_ms() };
            self.wake.wait_timeout_ms(t);
        }
    }

    /// What is due for writeback now: `None` nothing, `Some((None, n))` any `n` blocks,
    /// `Some((Some(s), n))` versions committed at or before commit `s` (`max_age`). Between the
    /// watermarks `n` stops at the low one (a batch does not overshoot it).
    pub(super) fn due(&self, g: &mut Inner) -> Option<(Option<u64>, usize)> {
        let c = g.ix.counts();
        if c.dirty == 0 {
            g.wb_active = false;
            return None;
        }
        let pct = c.dirty * 100 / c.total.max(1);
        if pct >= u64::from(g.high) {
            g.wb_active = true;
        } else if pct < u64::from(g.low) || g.low == 0 && pct == 0 {
            g.wb_active = false;
        }
        // No free block left: writes are waiting for space, whatever the watermarks say; or a
        // drain or a checkpoint is running (`forced`); or a write waits for a block's oldest
        // version to go (it holds MAX_VERSIONS); or the oldest dirty data is
        // more than 2^30 epochs old (the index keeps the low 32 bits of epochs, sound while
        // every version is less than 2^31 old: `Index::epochs_need_writeback`).
        if c.free == 0
            || g.forced()
            || g.mode == CacheMode::Writethrough
            || g.ix.needs_writeback_now()
            || g.ix.epochs_need_writeback()
        {
            return Some((None, MAX_WB_BATCH));
        }
        if g.wb_active {
            // Down to just below the low watermark (1 % of the cache under it), so that writeback
            // stops there and the next round waits for the high one: not a string of tiny
            // rounds (each a commit, a scan and an origin flush) hovering at the low one.
            let low = c.total * u64::from(g.low) / 100;
            let n = c.dirty.saturating_sub(low) + c.total / 100 + 1;
            return Some((None, n.min(MAX_WB_BATCH as u64) as usize));
        }
        let age = i64::from(self.opts.max_age_ms?);
        let now = ms_now();
        let seq = g.ages.iter().filter(|a| a.seq != 0 && now - a.ms >= age).map(|a| a.seq).max()?;
        Some((Some(seq), MAX_WB_BATCH))
    }

    /// Commits, then writes back what is due, batch by batch. `inline`: called by a drain
    /// while the worker is stopped (suspended device).
    pub(super) fn writeback_round(&self, inline: bool) {
        let mut scratch = self.wb_scratch.lock();
        let WbScratch { slots, jobs } = &mut *scratch;
        let mut recommitted = false;
        loop {
            if (!inline && self.stop.load(Ordering::Acquire)) || self.failed() {
                return;
            }
            if self.commit(false).is_err() {
                return;
            }
            let (mut scan, due_all, limit) = {
                let mut g = self.inner.lock();
                let Some((max_seq, limit)) = self.due(&mut g) else { return };
                (g.ix.scan_begin(max_seq), max_seq.is_none(), limit)
            };
            let out = slots.get_mut(..limit).unwrap_or(&mut []);
            // The scan covers every slot: in bounded steps, so interrupts are never off long.
            while !self.inner.lock().ix.scan_step(&mut scan, out, SCAN_STEP) {}
            let n = {
                let mut g = self.inner.lock();
                let n = scan.found;
                if n == 0 {
                    let ordered = g.mode == CacheMode::Ordered;
                    if ordered && due_all && g.ix.oldest_dirty_epoch() == g.ix.epoch() && g.ix.wb_limit().is_none() {
                        // Everything dirty is in the open epoch: close it so it can go.
                        if g.ix.close_epoch().is_some() {
                            continue;
                        }
                    }
                    // What is dirty may just need committing first (once per round).
                    if g.ix.needs_commit() && !recommitted {
                        recommitted = true;
                        continue;
                    }
                    return;
                }
                for (&i, j) in slots.iter().take(n).zip(jobs.iter_mut()) {
                    *j = (self.slot_sector(i), g.ix.block_of(i) << self.block_shift, self.block_sectors());
                }
                n
            };
            let nj = merge_copies(jobs.get_mut(..n).unwrap_or(&mut []), MAX_COPY_SECTORS);
            let r = self
                .kcopyd
                .copy_all(&self.cache, &self.origin, jobs.get(..nj).unwrap_or(&[]), self.opts.jobs() as usize)
                .and_then(|_| self.dmio.flush(&self.origin));
            // In pieces: interrupts stay off for a bounded time.
            for piece in slots.get(..n).unwrap_or(&[]).chunks(256) {
                let mut g = self.inner.lock();
                for &i in piece {
                    g.ix.writeback_done(i, r.is_ok());
                }
            }
            if let Err(e) = r {
                self.stats.wb_errors.fetch_add(1, Ordering::Relaxed);
                self.wb_failures.fetch_add(1, Ordering::Relaxed);
                if !self.wb_error.swap(true, Ordering::Relaxed) {
                    pr_err!("wbcache {}: writeback to the origin failed ({:?}); the blocks stay dirty and are retried\n", self.cache, e);
                }
                return;
            }
            self.wb_error.store(false, Ordering::Relaxed);
            self.stats.writebacks.fetch_add(n as u64, Ordering::Relaxed);
            self.space.complete();
            self.cp_wake.complete();
        }
    }

    /// Writes everything back (`flush_on_suspend`).
    pub(super) fn drain(&self) -> Result {
        self.inner.lock().drains += 1;
        self.drain_counted()
    }

    /// Writes everything back, the caller having counted the drain in `Inner::drains` (the
    /// `flush` message does so in the lock hold that checks for a checkpoint).
    pub(super) fn drain_counted(&self) -> Result {
        let r = self.drain_wait();
        self.inner.lock().drains -= 1;
        r.and_then(|_| self.settle())
    }

    pub(super) fn drain_wait(&self) -> Result {
        let errors_before = self.wb_failures.load(Ordering::Relaxed);
        loop {
            self.space.reinit();
            self.wake.complete();
            if self.failed() {
                return Err(EIO);
            }
            if self.wb_failures.load(Ordering::Relaxed) != errors_before {
                return Err(EIO);
            }
            if self.inner.lock().ix.counts().dirty == 0 {
                return Ok(());
            }
            if self.stop.load(Ordering::Acquire) {
                // No writeback worker (suspended): do the rounds here.
                self.writeback_round(true);
                if self.inner.lock().ix.counts().dirty != 0 && self.wb_failures.load(Ordering::Relaxed) == errors_before {
                    sleep_ms(1);
                }
                continue;
            }
            self.space.wait_timeout_ms(50);
        }
    }
}
