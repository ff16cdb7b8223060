// SPDX-License-Identifier: GPL-2.0

//! dm-wbcache checkpoints (`docs/checkpoints.md`): drain the closed epoch, then write the
//! marker record into the marker region of the origin.

use super::*;

impl Shared {
    /// The `checkpoint` message (`docs/checkpoints.md`): closes the current epoch N, writes
    /// back every block of epochs up to N while new writes are held in the cache (`hold`,
    /// `ordered`) or written through (`writethrough`), then writes the marker record with
    /// `PREFLUSH|FUA` into the marker region of the origin, before any newer block can reach
    /// it. Ends cleanly (nothing held, no marker) on timeout, `abort`, suspend or error.
    pub(super) fn checkpoint(&self, req: &CpRequest) -> Result<CpReport> {
        let start = ms_now();
        if self.len.saturating_add(MARKER_SECTORS) > self.origin.sectors() {
            pr_warn!(
                "wbcache {}: checkpoint: no marker region: the target must end at least {} sectors before the end of the origin\n",
                self.cache,
                MARKER_SECTORS
            );
            return Err(EINVAL);
        }
        let (id, saved_mode) = {
            let mut g = self.inner.lock();
            let refuse = if !g.loaded || self.stop.load(Ordering::SeqCst) {
                Some(("the device is suspended (or was never resumed)", EBUSY))
            } else if g.suspending {
                Some(("the device is being suspended", EBUSY))
            } else if g.cp.is_some() {
                Some(("another checkpoint is in progress", EBUSY))
            } else if g.drains > 0 {
                // It would write back the writes this checkpoint holds as soon as it ends.
                Some(("a flush (writeback of everything) is in progress", EBUSY))
            } else if self.failed() {
                Some(("the cache has failed", EIO))
            } else if req.mode == CpMode::Ordered && g.mode != CacheMode::Ordered {
                Some(("mode ordered needs the cache in ordered mode", EINVAL))
            } else if req.mode == CpMode::Writethrough && g.mode == CacheMode::Ordered {
                // New writes would reach the origin before older epochs are written back: a
                // crash meanwhile would leave it off an epoch boundary.
                Some(("the cache is in ordered mode: writing through would break its epoch order (use checkpoint ordered or hold)", EINVAL))
            } else if req.mode == CpMode::Hold && g.mode == CacheMode::Writethrough {
                Some(("the cache is in writethrough mode: new writes cannot be held (use checkpoint writethrough)", EINVAL))
            } else {
                None
            };
            // The marker id: the epoch closed (64 bits, so ids only grow). None only when the
            // oldest dirty data is about 2^31 epochs old (writeback failing for days).
            let closed = match refuse {
                Some(r) => Err(r),
                None => g.ix.close_epoch().ok_or((
                    "the oldest cached data is 2^31 epochs old (is writeback failing?): no epoch closes until it is written back",
                    EBUSY,
                )),
            };
            let id = match closed {
                Ok(id) => id,
                Err((why, e)) => {
                    drop(g);
                    pr_warn!("wbcache {}: checkpoint refused: {}\n", self.cache, why);
                    return Err(e);
                }
            };
            g.ix.set_wb_limit(Some(id));
            let saved_mode = g.mode;
            if req.mode == CpMode::Writethrough {
                g.mode = CacheMode::Writethrough;
                g.ix.set_ordered(false);
            }
            g.cp = Some(CpState { mode: req.mode, id, start_ms: start, left: 0, abort: false });
            (id, saved_mode)
        };
        let errors_before = self.wb_failures.load(Ordering::Relaxed);
        let deadline = start + i64::from(req.timeout_ms);
        let mut blocks = None;
        // The new epoch on disk first, so that marker ids never repeat after a crash.
        let committed = self.commit(true).map_err(|e| (CpOutcome::Failed, e, "the metadata commit failed"));
        let drained = committed.and_then(|()| loop {
            self.cp_wake.reinit();
            self.wake.complete();
            let left = self.count_upto(id);
            blocks.get_or_insert(left);
            let abort = {
                let mut g = self.inner.lock();
                g.cp.as_mut().is_some_and(|c| {
                    c.left = left;
                    c.abort
                })
            };
            if left == 0 {
                break Ok(());
            }
            if abort || self.stop.load(Ordering::SeqCst) {
                break Err((CpOutcome::Aborted, ecanceled(), "aborted"));
            }
            if self.failed() || self.wb_failures.load(Ordering::Relaxed) != errors_before {
                break Err((CpOutcome::Failed, EIO, "writeback to the origin failed"));
            }
            if ms_now() >= deadline {
                break Err((CpOutcome::Timeout, etimedout(), "timed out"));
            }
            // A signal to the process that sent the message (Ctrl-C) ends the checkpoint.
            if self.cp_wake.wait_interruptible_timeout_ms(CP_POLL_MS).is_err() {
                break Err((CpOutcome::Aborted, EINTR, "interrupted by a signal"));
            }
        });
        let drain_ms = ms_now() - start;
        let result = drained.and_then(|()| {
            self.write_marker(id, &req.label)
                .map_err(|e| (CpOutcome::Failed, e, "the marker write failed (a dm-repl primary refuses markers while it is not replicating)"))
        });
        let total_ms = ms_now() - start;
        let outcome = match &result {
            Ok(()) => CpOutcome::Ok,
            Err((o, _, _)) => *o,
        };
        {
            let mut g = self.inner.lock();
            g.ix.set_wb_limit(None);
            g.mode = saved_mode;
            g.ix.set_ordered(saved_mode == CacheMode::Ordered);
            // Writeback stops being due for this checkpoint (`g.cp`) in the same lock hold as
            // its limit is lifted: a round that looks after this hold finds nothing forced, one
            // that looked before scans under the limit (`WbScan` keeps it).
            g.cp = None;
            g.last_cp = Some((id, outcome, total_ms.max(0) as u64));
        }
        // Held blocks may go now.
        self.wake.complete();
        match result {
            Ok(()) => Ok(CpReport {
                id,
                mode: req.mode,
                label: req.label,
                blocks: blocks.unwrap_or(0),
                drain_ms: drain_ms.max(0) as u64,
                marker_ms: (total_ms - drain_ms).max(0) as u64,
                total_ms: total_ms.max(0) as u64,
            }),
            Err((_, e, why)) => {
                pr_warn!("wbcache {}: checkpoint {}: {} after {} ms; no marker, nothing held any more\n", self.cache, id, why, total_ms);
                Err(e)
            }
        }
    }

    /// Asks the checkpoint in progress, if any, to end; returns whether there was one. With
    /// `suspending`, no other starts until `resume` (checked under the same lock hold as the
    /// refusals in [`Shared::checkpoint`], so none slips in between).
    pub(super) fn abort_checkpoint(&self, suspending: bool) -> bool {
        let found = {
            let mut g = self.inner.lock();
            g.suspending |= suspending;
            g.cp.as_mut().map(|c| c.abort = true).is_some()
        };
        self.cp_wake.complete();
        found
    }

    /// Data-holding versions of epochs up to `limit`, counted in steps of the index lock.
    pub(super) fn count_upto(&self, limit: u64) -> u64 {
        let (mut n, mut pos) = (0, 0);
        loop {
            let g = self.inner.lock();
            let (c, next) = g.ix.count_upto(limit, pos, SCAN_STEP);
            n += c;
            pos = next;
            if u64::from(next) >= g.ix.len() {
                return n;
            }
        }
    }

    /// Writes marker record `id` into the marker region of the origin, `PREFLUSH|FUA`: durable,
    /// after everything that completed before it.
    pub(super) fn write_marker(&self, id: u64, label: &[u8; LABEL_LEN]) -> Result {
        let mut buf = self.marker_buf.lock();
        buf.fill(0);
        let rec = MarkerRecord { id, time_ns: real_time_ns(), label: *label };
        let first: &mut [u8; RECORD_LEN] = buf.get_mut(..RECORD_LEN).and_then(|b| b.try_into().ok()).ok_or(EINVAL)?;
        rec.encode(&KernelCrc32c, first);
        // Re-checked here: the origin may have been resized since the request.
        let sector = self.origin.sectors().checked_sub(MARKER_SECTORS).filter(|&s| s >= self.len).ok_or(EINVAL)?;
        let region = Region { dev: &self.origin, sector, sectors: MARKER_SECTORS };
        self.dmio.write(&[region], &buf[..], IoFlags { preflush: true, fua: true })
    }
}
