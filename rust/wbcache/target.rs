// SPDX-License-Identifier: GPL-2.0

//! dm-wbcache target glue: the table line (`ctr`), suspend and resume hooks, status and
//! messages.

use super::*;

fn alloc_err(_: AllocError) -> CtrError {
    CtrError::new(kernel::c_str!("Cannot allocate the cache index"), ENOMEM)
}

#[vtable]
impl Target for Wbcache {
    const NAME: &'static CStr = kernel::c_str!("wbcache");
    const VERSION: [u32; 3] = [1, 0, 0];
    type PerBio = PerBio;

    fn ctr(ti: &mut CtrTarget<'_>, args: Args<'_>) -> Result<Pin<KBox<Self>>, CtrError> {
        let t = WbcacheTable::parse(&mut { args })?;
        let origin = ti
            .get_device_path(t.origin)
            .map_err(|e| CtrError::new(kernel::c_str!("Origin device lookup failed"), e))?;
        let cache = ti
            .get_device_path(t.cache)
            .map_err(|e| CtrError::new(kernel::c_str!("Cache device lookup failed"), e))?;
        if origin.same_as(&cache) {
            return Err(CtrError::inval(kernel::c_str!("Origin and cache must be different devices")));
        }
        if t.block_size < origin.logical_block_size() || t.block_size < cache.logical_block_size() {
            return Err(CtrError::inval(kernel::c_str!("Block size is below a device's logical block size")));
        }
        let block_sectors = u64::from(t.block_size >> 9);
        if ti.len().checked_rem(block_sectors) != Some(0) {
            return Err(CtrError::inval(kernel::c_str!("Target length must be a multiple of the block size")));
        }
        if ti.len() > origin.sectors() {
            return Err(CtrError::inval(kernel::c_str!("Origin device is smaller than the target")));
        }
        let origin_blocks = ti.len() / block_sectors;
        if origin_blocks >= MAX_ORIGIN_BLOCKS {
            return Err(CtrError::inval(kernel::c_str!("Origin has too many blocks for this block size")));
        }
        let geom = Geometry::compute(cache.sectors().saturating_mul(512), t.block_size)
            .map_err(|_| CtrError::inval(kernel::c_str!("Cache device too small for one cache block")))?;
        if geom.nr_blocks >= MAX_CACHE_BLOCKS {
            return Err(CtrError::inval(kernel::c_str!("Cache device has too many blocks for this block size")));
        }
        let nr = geom.nr_blocks as usize;
        let (nb, nw, nf) = Ix::storage_for(geom.nr_blocks);
        let ix = Index::new(
            KVVec::from_elem(Slot::default(), nr, GFP_KERNEL).map_err(alloc_err)?,
            KVVec::from_elem(0u32, nb, GFP_KERNEL).map_err(alloc_err)?,
            KVVec::from_elem(0u32, nf, GFP_KERNEL).map_err(alloc_err)?,
            KVVec::from_elem(0u64, nw, GFP_KERNEL).map_err(alloc_err)?,
            KVVec::from_elem(0u64, nw, GFP_KERNEL).map_err(alloc_err)?,
        )
        .map_err(CtrError::from)?;
        // The cache device is a volatile cache of our own: flushes and FUA must reach `map` even
        // when the origin has no write cache.
        ti.set_flush_supported();
        ti.set_num_flush_bios(1);
        ti.set_num_discard_bios(0);
        ti.set_num_write_zeroes_bios(0);
        let mode = t.opts.mode();
        let mut ix = ix;
        ix.set_ordered(mode == CacheMode::Ordered);
        // A secret hash key per table: no one can choose blocks that share a bucket.
        let mut key = [0u8; 8];
        dmcore::keys::random_bytes(&mut key);
        ix.set_hash_key(u64::from_ne_bytes(key)).map_err(CtrError::from)?;
        let inner = Inner {
            ix,
            gen: 0,
            slow: BioList::new(),
            flushes: BioList::new(),
            loaded: false,
            mode,
            high: t.opts.high(),
            low: t.opts.low(),
            wb_active: false,
            ages: [AgeMark::default(); AGE_MARKS],
            age_next: 0,
            cp: None,
            last_cp: None,
            suspending: false,
            drains: 0,
        };
        let scratch = WbScratch {
            slots: KVVec::from_elem(0u32, MAX_WB_BATCH, GFP_KERNEL).map_err(alloc_err)?,
            jobs: KVVec::from_elem((0u64, 0u64, 0u64), MAX_WB_BATCH, GFP_KERNEL).map_err(alloc_err)?,
        };
        let commit_buf = KVec::from_elem(0u8, META_RUN * META_BLOCK as usize, GFP_KERNEL).map_err(alloc_err)?;
        let slow_buf = KVec::from_elem(0u8, t.block_size as usize, GFP_KERNEL).map_err(alloc_err)?;
        let marker_buf = KVec::from_elem(0u8, (MARKER_SECTORS * 512) as usize, GFP_KERNEL).map_err(alloc_err)?;
        let dmio = IoClient::new().map_err(|e| CtrError::new(kernel::c_str!("Cannot create a dm-io client"), e))?;
        let kcopyd = Kcopyd::new().map_err(|e| CtrError::new(kernel::c_str!("Cannot create a kcopyd client"), e))?;
        let io_wq = WorkQueue::new(kernel::c_str!("wbcache_io"), 1, true)
            .map_err(|e| CtrError::new(kernel::c_str!("Cannot create a workqueue"), e))?;
        let wb_wq = WorkQueue::new(kernel::c_str!("wbcache_wb"), 1, true)
            .map_err(|e| CtrError::new(kernel::c_str!("Cannot create a workqueue"), e))?;
        let shared = Arc::pin_init(
            pin_init!(Shared {
                len: ti.len(),
                origin,
                cache,
                block_size: t.block_size,
                block_shift: block_sectors.trailing_zeros(),
                geom,
                origin_blocks,
                opts: t.opts,
                inner <- IrqSpinLock::new(inner),
                inflight: [AtomicU32::new(0), AtomicU32::new(0)],
                inflight_done <- Completion::new(),
                wake <- Completion::new(),
                space <- Completion::new(),
                commit_buf <- new_mutex!(commit_buf),
                slow_buf <- new_mutex!(slow_buf),
                wb_scratch <- new_mutex!(scratch),
                dmio,
                kcopyd,
                stop: AtomicBool::new(true),
                wb_failures: AtomicU64::new(0),
                cp_wake <- Completion::new(),
                marker_buf <- new_mutex!(marker_buf),
                meta_error: AtomicI32::new(0),
                wb_error: AtomicBool::new(false),
                origin_dirty: AtomicBool::new(false),
                stats: Stats::default(),
                io_work <- new_work!("wbcache::io"),
                wb_work <- new_work!("wbcache::wb"),
            }),
            GFP_KERNEL,
        )
        .map_err(|_| CtrError::new(kernel::c_str!("Cannot allocate"), ENOMEM))?;
        KBox::pin(Self { shared, io_wq, wb_wq }, GFP_KERNEL).map_err(|_| CtrError::new(kernel::c_str!("Cannot allocate"), ENOMEM))
    }

    fn map(&self, bio: Bio<PerBio>, ctx: &MapContext<'_>) -> MapResult<PerBio> {
        self.map_bio(bio, ctx)
    }

    fn end_io(&self, bio: &Bio<PerBio>, status: &mut BlkStatus) -> EndIo {
        self.end_io_bio(bio, status)
    }

    fn preresume(&self) -> Result {
        let loaded = self.shared.inner.lock().loaded;
        if !loaded {
            self.shared.load()?;
        }
        Ok(())
    }

    fn resume(&self) {
        self.shared.inner.lock().suspending = false;
        self.start_writeback();
    }

    fn presuspend(&self) {
        // Device-mapper waits for a running message before it suspends: end the checkpoint now
        // rather than let the suspend wait for its timeout, and start no other meanwhile.
        self.shared.abort_checkpoint(true);
    }

    fn presuspend_undo(&self) {
        // The suspend failed (e.g. freezing the file system above): checkpoints may start again.
        self.shared.inner.lock().suspending = false;
    }

    fn postsuspend(&self) {
        let sh = &*self.shared;
        self.stop_writeback();
        // A checkpoint in progress ends (it sees `stop` too): nothing stays held.
        sh.abort_checkpoint(true);
        if sh.opts.flush_on_suspend {
            if let Err(e) = sh.drain() {
                pr_err!("wbcache {}: flush on suspend failed ({:?})\n", sh.cache, e);
            }
        }
        // Leave the metadata current for a table that may be loaded next.
        if let Err(e) = sh.commit(false).and_then(|_| sh.settle()) {
            pr_err!("wbcache {}: metadata commit on suspend failed ({:?})\n", sh.cache, e);
        }
    }

    fn status(&self, ty: StatusType, out: &mut StatusWriter<'_>) {
        let sh = &*self.shared;
        let _ = match ty {
            StatusType::Info => {
                let (c, mode, epoch, oldest, loaded, cp, last_cp) = {
                    let g = sh.inner.lock();
                    (g.ix.counts(), g.mode, g.ix.epoch(), g.ix.oldest_dirty_epoch(), g.loaded, g.cp, g.last_cp)
                };
                let state = if !loaded {
                    "unloaded"
                } else if sh.failed() {
                    "failed"
                } else if sh.wb_error.load(Ordering::Relaxed) {
                    "degraded"
                } else {
                    "ok"
                };
                let s = &sh.stats;
                let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
                write!(
                    out,
                    "{} {} {} blocks {} free {} dirty {} writeback {} releasing {} epoch {} oldest_epoch {} \
                     read_hits {} read_misses {} write_hits {} write_misses {} write_through {} write_around {} \
                     slow_writes {} writebacks {} wb_errors {} flushes {} commits {} io_errors {} ",
                    state,
                    mode.as_str(),
                    sh.block_size,
                    c.total,
                    c.free,
                    c.dirty,
                    c.under_writeback,
                    c.releasing,
                    epoch,
                    oldest,
                    l(&s.read_hits),
                    l(&s.read_misses),
                    l(&s.write_hits),
                    l(&s.write_misses),
                    l(&s.write_through),
                    l(&s.write_around),
                    l(&s.slow_writes),
                    l(&s.writebacks),
                    l(&s.wb_errors),
                    l(&s.flushes),
                    l(&s.commits),
                    l(&s.io_errors),
                )
                .and_then(|_| match cp {
                    Some(c) => write!(
                        out,
                        "checkpoint {} cp_id {} cp_left {} cp_ms {} ",
                        c.mode.as_str(),
                        c.id,
                        c.left,
                        (ms_now() - c.start_ms).max(0)
                    ),
                    None => write!(out, "checkpoint idle cp_id - cp_left 0 cp_ms 0 "),
                })
                .and_then(|_| match last_cp {
                    Some((id, o, ms)) => write!(out, "last_cp {} last_cp_result {} last_cp_ms {}", id, o.as_str(), ms),
                    None => write!(out, "last_cp - last_cp_result - last_cp_ms 0"),
                })
            }
            StatusType::Table => write!(out, "{} {} {} {}", sh.origin, sh.cache, sh.block_size, sh.opts),
            StatusType::Ima => write!(
                out,
                "origin={},cache={},block_size={},mode={};",
                sh.origin,
                sh.cache,
                sh.block_size,
                sh.opts.mode().as_str()
            ),
        };
    }

    fn message(&self, mut args: Args<'_>, out: &mut StatusWriter<'_>) -> Result {
        let sh = &*self.shared;
        let verb = args.next().unwrap_or("");
        if verb == "checkpoint" {
            let req = CpRequest::parse(args).map_err(|e: CpArgError| {
                pr_warn!("wbcache {}: message 'checkpoint': {}\n", sh.cache, e.as_str());
                EINVAL
            })?;
            let report = sh.checkpoint(&req)?;
            let _ = write!(out, "{}", report);
            return Ok(());
        }
        let arg = args.next();
        if args.next().is_some() {
            pr_warn!("wbcache {}: message '{}': too many arguments\n", sh.cache, verb);
            return Err(EINVAL);
        }
        let no_arg = |a: Option<&str>| -> Result {
            if a.is_some() {
                pr_warn!("wbcache {}: message '{}' takes no argument\n", sh.cache, verb);
                return Err(EINVAL);
            }
            Ok(())
        };
        // The refusal of a message found (under `inner`) to conflict with a running checkpoint.
        // (It used to test again after the caller's lock hold, and answered success with nothing
        // done if the checkpoint had ended in between.)
        let busy = |what: &str| -> Result {
            pr_warn!("wbcache {}: message '{}': a checkpoint is in progress (abort it first)\n", sh.cache, what);
            Err(EBUSY)
        };
        match verb {
            "abort" => {
                no_arg(arg)?;
                if !sh.abort_checkpoint(false) {
                    pr_warn!("wbcache {}: message 'abort': no checkpoint in progress\n", sh.cache);
                    return Err(EINVAL);
                }
                let _ = write!(out, "aborting");
                Ok(())
            }
            "flush" => {
                no_arg(arg)?;
                {
                    // One lock hold: a checkpoint cannot start between the test and the count.
                    let mut g = sh.inner.lock();
                    if g.cp.is_some() {
                        drop(g);
                        return busy(verb);
                    }
                    if !g.loaded {
                        drop(g);
                        pr_warn!("wbcache {}: flush: the device was never resumed\n", sh.cache);
                        return Err(EBUSY);
                    }
                    g.drains += 1;
                }
                sh.drain_counted()?;
                let _ = write!(out, "flushed");
                Ok(())
            }
            "clear_stats" => {
                no_arg(arg)?;
                let s = &sh.stats;
                for c in [
                    &s.read_hits, &s.read_misses, &s.write_hits, &s.write_misses, &s.write_through, &s.write_around,
                    &s.slow_writes, &s.writebacks, &s.wb_errors, &s.flushes, &s.commits, &s.io_errors,
                ] {
                    c.store(0, Ordering::Relaxed);
                }
                Ok(())
            }
            "mode" => {
                let m = CacheMode::parse(arg.unwrap_or("")).map_err(|e| {
                    pr_warn!("wbcache {}: message 'mode': {}\n", sh.cache, e.as_str());
                    EINVAL
                })?;
                // Versions kept for older epochs stay until written back in any mode.
                let mut g = sh.inner.lock();
                if g.cp.is_some() {
                    drop(g);
                    return busy(verb);
                }
                g.mode = m;
                g.ix.set_ordered(m == CacheMode::Ordered);
                drop(g);
                sh.wake.complete();
                let _ = write!(out, "mode {}", m.as_str());
                Ok(())
            }
            "high_watermark" | "low_watermark" => {
                let v = match arg.map(parse_u32) {
                    Some(Ok(v)) if v <= 100 => v,
                    _ => {
                        pr_warn!("wbcache {}: message '{}': value must be 0..100\n", sh.cache, verb);
                        return Err(EINVAL);
                    }
                };
                let mut g = sh.inner.lock();
                let (high, low) = if verb == "high_watermark" { (v, g.low) } else { (g.high, v) };
                if low > high {
                    drop(g);
                    pr_warn!("wbcache {}: message '{}': low_watermark must not exceed high_watermark\n", sh.cache, verb);
                    return Err(EINVAL);
                }
                g.high = high;
                g.low = low;
                drop(g);
                sh.wake.complete();
                Ok(())
            }
            _ => {
                pr_warn!("wbcache {}: unrecognised message '{}'\n", sh.cache, verb);
                Err(EINVAL)
            }
        }
    }

    fn iterate_devices(&self, visit: &mut DeviceVisitor<'_>) -> core::result::Result<(), Stop> {
        // The origin backs the whole mapped range; the cache device is private to the target.
        visit.visit(&self.shared.origin, 0, self.shared.len)
    }

    fn io_hints(&self, limits: &mut QueueLimits<'_>) {
        limits.set_io_opt(self.shared.block_size);
        // Bios are remapped to the cache device too, which the stacked limits do not include.
        limits.raise_block_size(self.shared.cache.logical_block_size());
    }
}
