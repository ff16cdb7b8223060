// SPDX-License-Identifier: GPL-2.0

//! dmcore_kunit: KUnit suites for rust/dmcore, run when the module is loaded, and the
//! `dmcore_test` target that the guest tests drive through dmsetup.
//!
//! They exercise the abstractions against the real kernel: real bios and pages, real
//! workqueues and completions, real TCP sockets over the guest's loopback interface (which
//! must be up before loading), and device-mapper argument/result buffers.

#![deny(unsafe_code)]

use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use kernel::prelude::*;
use kernel::sync::Arc;

include!("crate_root.rs");

use dmcore::args::{Args, INVALID_UTF8};
use dmcore::bio::{Bio, BioSet, BlkStatus, CloneDone, MapContext, Op};
use dmcore::crc::KernelCrc32c;
use dmcore::device::Device;
use dmcore::hmac::KernelHmac;
use dmcore::kunit::{kcheck, kcheck_eq, kunit_suite, Test, TestBio, TestOp};
use dmcore::net::{NetNs, Socket};
use dmcore::status::StatusWriter;
use dmcore::sync::IrqSpinLock;
use dmcore::target::{
    CtrError, CtrTarget, DeviceVisitor, EndIo, MapResult, Registration, StatusType, Stop, Target, TargetHandle,
};
use dmcore::wq::{Completion, WorkQueue};
use wbrepl_core::parse::SocketAddrV4;
use wbrepl_core::table::{ReplTable, Role};
use wbrepl_core::wbformat::Crc32c;
use wbrepl_core::wire::{FrameType, Hmac, RxSeq, WireError, HEADER_LEN};

module! {
    type: DmcoreKunit,
    name: "dmcore_kunit",
    author: "wbrepl developers",
    description: "KUnit tests for wbrepl's dmcore abstractions",
    license: "GPL",
}

/// Loading the module runs the KUnit suites (below) and registers the `dmcore_test` target.
struct DmcoreKunit {
    _target: Registration<TestTarget>,
}

impl kernel::Module for DmcoreKunit {
    fn init(module: &'static ThisModule) -> Result<Self> {
        Ok(Self { _target: Registration::new(module)? })
    }
}

// ------------------------------------------------------------------------------------------
// `dmcore_test`: a target exercising every dmcore hook against the real device-mapper core,
// driven by tests/guest/60-dmcore-target.sh.
//
//   <start> <len> dmcore_test <dev> [split <sectors>] [clone] [stash | stash_requeue]
//                                   [late_event <ms>] [fail] [leak]
//
// I/O is remapped to <dev>. With `split`, `map` accepts only that many sectors of a larger bio
// (device-mapper sends the rest as a new bio); with `clone`, writes carrying data are cloned
// onto <dev> (Bio::submit_clone) and completed when the clone is. With `late_event`, ctr gives
// a clone of its TargetHandle to a work item on the *system* workqueue (which the target's Drop
// does not wait for): once the target's private data is gone (or the failed ctr returned) it
// sleeps <ms> ms, raises an event with the handle and drops it, so dmcore's dtr (or failed ctr)
// must wait for it. With `fail`, ctr fails after building everything (the handle given away).
// With `leak`, ctr leaks a 4 KiB allocation on purpose: the known leak that proves the debug
// kernel's kmemleak check (tests/guest/debug-kmemleak.sh) finds one in our modules.
// Status INFO counts every callback; each bio carries a sequence number in its per-bio data
// from `map` to `end_io`, which checks it. Messages:
//   fail_next <n>            end_io turns the next n successful completions into errors
//   event                    raises a device-mapper event (`dmsetup wait` returns)
//   connect <a.b.c.d:port> <timeout_ms>
//                            kernel TCP connect from the sender's network namespace, send
//                            "hello dmcore", answer "connected <local addr>" or "error <errno>"

#[derive(Clone, Copy, Default)]
struct TestPerBio {
    seq: u64,
}

#[derive(Default)]
struct Calls {
    map: AtomicU64,
    end_io: AtomicU64,
    perbio_bad: AtomicU64,
    injected: AtomicU64,
    presuspend: AtomicU64,
    postsuspend: AtomicU64,
    preresume: AtomicU64,
    resume: AtomicU64,
    partial: AtomicU64,
    cloned: AtomicU64,
    stashed: AtomicU64,
}

/// Completes the parent of each clone (see `Bio::submit_clone`).
struct CloneCounter {
    done: AtomicU64,
}

impl CloneDone<TestPerBio> for CloneCounter {
    fn clone_done(&self, parent: Bio<TestPerBio>, status: BlkStatus) -> Option<(Bio<TestPerBio>, BlkStatus)> {
        self.done.fetch_add(1, Ordering::Relaxed);
        Some((parent, status))
    }
}

/// What `clone` mode needs: the pool and the completion context (which the target keeps a
/// reference to, so a clone completion never drops the last one).
struct Cloning {
    pool: BioSet,
    done: Arc<CloneCounter>,
}

/// `stash` mode: each write is kept (its completion owned by the target) and the one kept
/// before it is returned from `map` to be killed (or requeued): a bio other than the one being
/// mapped, which dmcore must fail itself rather than hand to device-mapper.
#[pin_data]
struct Stash {
    #[pin]
    kept: IrqSpinLock<Option<Bio<TestPerBio>>>,
    requeue: bool,
}

/// Completes its completion when dropped: tells a `late_event` work item that the target's
/// private data (or the failed ctr's locals) is gone.
struct Gone(Arc<Completion>);

impl Drop for Gone {
    fn drop(&mut self) {
        self.0.complete_all();
    }
}

/// The `late_event` work item: outlives the target's private data by `ms` milliseconds, then
/// raises an event with its own handle and drops it (the last reference dtr waits for).
fn late_event(gone: Arc<Completion>, handle: TargetHandle, ms: u32) {
    while !gone.wait_timeout_ms(10_000) {}
    dmcore::wq::sleep_ms(ms);
    handle.event();
    pr_info!("dmcore_test: late event raised {ms} ms after the target's data went\n");
    drop(handle);
}

struct TestTarget {
    dev: Device,
    len: u64,
    split: u32,
    cloning: Option<Cloning>,
    stash: Option<Pin<KBox<Stash>>>,
    handle: TargetHandle,
    /// `late_event <ms>`: the delay, and the signal to its work item (dropped with the target).
    late: Option<(u32, Gone)>,
    seq: AtomicU64,
    fail_next: AtomicU64,
    calls: Calls,
}

impl TestTarget {
    /// Completes the bio `stash` mode keeps, if any (successfully: nothing was written).
    fn release(&self) {
        let kept = self.stash.as_ref().and_then(|st| st.kept.lock().take());
        if let Some(b) = kept {
            b.end(BlkStatus::OK);
        }
    }
}

#[vtable]
impl Target for TestTarget {
    const NAME: &'static CStr = kernel::c_str!("dmcore_test");
    const VERSION: [u32; 3] = [1, 0, 0];
    type PerBio = TestPerBio;

    fn ctr(ti: &mut CtrTarget<'_>, mut args: Args<'_>) -> Result<Pin<KBox<Self>>, CtrError> {
        let Some(path) = args.next() else {
            return Err(CtrError::inval(kernel::c_str!("dmcore_test takes one device")));
        };
        let (mut split, mut clone, mut stash, mut late, mut fail, mut leak) = (0, false, None, None, false, false);
        while let Some(word) = args.next() {
            match (word, split, clone) {
                ("late_event", _, _) if late.is_none() => match args.next().map(wbrepl_core::parse::parse_u32) {
                    Some(Ok(ms)) => late = Some(ms),
                    _ => return Err(CtrError::inval(kernel::c_str!("dmcore_test: invalid late_event"))),
                },
                ("fail", _, _) if !fail => fail = true,
                ("leak", _, _) if !leak => leak = true,
                ("stash" | "stash_requeue", _, _) if stash.is_none() => stash = Some(word == "stash_requeue"),
                ("split", 0, _) => match args.next().map(wbrepl_core::parse::parse_u32) {
                    Some(Ok(n)) if n > 0 => split = n,
                    _ => return Err(CtrError::inval(kernel::c_str!("dmcore_test: invalid split"))),
                },
                ("clone", _, false) => clone = true,
                _ => return Err(CtrError::inval(kernel::c_str!("dmcore_test: unknown or repeated option"))),
            }
        }
        let nomem = CtrError::new(kernel::c_str!("Cannot allocate"), ENOMEM);
        if leak {
            // Test-only: nothing keeps the pointer, so kmemleak reports it (with this ctr in
            // its allocation backtrace) once it is a few seconds old.
            let lost = KVec::<u8>::from_elem(0x5a, 4096, GFP_KERNEL).map_err(|_| nomem)?;
            core::mem::forget(lost);
        }
        let cloning = if clone {
            Some(Cloning {
                pool: BioSet::new(64).map_err(|_| nomem)?,
                done: Arc::new(CloneCounter { done: AtomicU64::new(0) }, GFP_KERNEL).map_err(|_| nomem)?,
            })
        } else {
            None
        };
        let stash = match stash {
            Some(requeue) => Some(
                KBox::pin_init(pin_init!(Stash { kept <- IrqSpinLock::new(None), requeue }), GFP_KERNEL).map_err(|_| nomem)?,
            ),
            None => None,
        };
        let dev = ti
            .get_device_path(path)
            .map_err(|e| CtrError::new(kernel::c_str!("dmcore_test: device lookup failed"), e))?;
        ti.set_num_flush_bios(1);
        let handle = ti.handle();
        let late = match late {
            Some(ms) => {
                let gone = Arc::pin_init(Completion::new(), GFP_KERNEL).map_err(|_| nomem)?;
                let (g, h) = (gone.clone(), handle.clone());
                kernel::workqueue::system()
                    .try_spawn(GFP_KERNEL, move || late_event(g, h, ms))
                    .map_err(|_| nomem)?;
                Some((ms, Gone(gone)))
            }
            None => None,
        };
        if fail {
            // `late` (and with it the signal to the work item) is dropped on the way out.
            return Err(CtrError::inval(kernel::c_str!("dmcore_test: failing as asked")));
        }
        let me = Self {
            dev,
            len: ti.len(),
            split,
            cloning,
            stash,
            handle,
            late,
            seq: AtomicU64::new(0),
            fail_next: AtomicU64::new(0),
            calls: Calls::default(),
        };
        KBox::pin(me, GFP_KERNEL).map_err(|_| CtrError::new(kernel::c_str!("Cannot allocate"), ENOMEM))
    }

    fn map(&self, mut bio: Bio<TestPerBio>, ctx: &MapContext<'_>) -> MapResult<TestPerBio> {
        self.calls.map.fetch_add(1, Ordering::Relaxed);
        if bio.data().seq != 0 {
            // Per-bio data must arrive initialised to its default.
            self.calls.perbio_bad.fetch_add(1, Ordering::Relaxed);
        }
        bio.data_mut().seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        if self.split != 0 && bio.has_data() && bio.sectors() > self.split {
            self.calls.partial.fetch_add(1, Ordering::Relaxed);
            bio.accept_partial(ctx, self.split);
        }
        if let Some(st) = self.stash.as_ref().filter(|_| bio.op() == Op::Write && bio.has_data()) {
            self.calls.stashed.fetch_add(1, Ordering::Relaxed);
            let prev = st.kept.lock().replace(bio);
            return match prev {
                None => MapResult::Submitted,
                Some(p) if st.requeue => MapResult::Requeue(p),
                Some(p) => MapResult::Kill(p),
            };
        }
        let sector = bio.target_sector();
        if let Some(c) = self.cloning.as_ref().filter(|_| bio.op() == Op::Write && bio.has_data()) {
            self.calls.cloned.fetch_add(1, Ordering::Relaxed);
            bio.submit_clone(&c.pool, &self.dev, sector, c.done.clone());
            return MapResult::Submitted;
        }
        bio.remap(&self.dev, sector);
        MapResult::Remapped(bio)
    }

    fn end_io(&self, bio: &Bio<TestPerBio>, status: &mut BlkStatus) -> EndIo {
        self.calls.end_io.fetch_add(1, Ordering::Relaxed);
        if bio.data().seq == 0 || bio.data().seq > self.seq.load(Ordering::Relaxed) {
            self.calls.perbio_bad.fetch_add(1, Ordering::Relaxed);
        }
        let take = self.fail_next.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if status.is_ok() && take.is_ok() {
            self.calls.injected.fetch_add(1, Ordering::Relaxed);
            *status = BlkStatus::IOERR;
        }
        EndIo::Done
    }

    fn presuspend(&self) {
        self.calls.presuspend.fetch_add(1, Ordering::Relaxed);
        // A suspend waits for the bios in flight: the kept one completes first.
        self.release();
    }

    fn postsuspend(&self) {
        self.calls.postsuspend.fetch_add(1, Ordering::Relaxed);
    }

    fn preresume(&self) -> Result {
        self.calls.preresume.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn resume(&self) {
        self.calls.resume.fetch_add(1, Ordering::Relaxed);
    }

    fn status(&self, ty: StatusType, out: &mut StatusWriter<'_>) {
        use core::fmt::Write;
        let c = &self.calls;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = match ty {
            StatusType::Info => write!(
                out,
                "map {} end_io {} perbio_bad {} injected {} presuspend {} postsuspend {} preresume {} resume {} partial {} cloned {} clones_done {} stashed {}",
                l(&c.map), l(&c.end_io), l(&c.perbio_bad), l(&c.injected),
                l(&c.presuspend), l(&c.postsuspend), l(&c.preresume), l(&c.resume), l(&c.partial),
                l(&c.cloned), self.cloning.as_ref().map_or(0, |k| l(&k.done.done)), l(&c.stashed),
            ),
            StatusType::Table => {
                let _ = write!(out, "{}", self.dev);
                if self.split != 0 {
                    let _ = write!(out, " split {}", self.split);
                }
                if self.cloning.is_some() {
                    let _ = write!(out, " clone");
                }
                if let Some(st) = &self.stash {
                    let _ = write!(out, " {}", if st.requeue { "stash_requeue" } else { "stash" });
                }
                if let Some((ms, _)) = &self.late {
                    let _ = write!(out, " late_event {ms}");
                }
                Ok(())
            }
            StatusType::Ima => Ok(()),
        };
    }

    fn message(&self, mut args: Args<'_>, out: &mut StatusWriter<'_>) -> Result {
        use core::fmt::Write;
        match (args.next(), args.next(), args.next(), args.next()) {
            (Some("fail_next"), Some(n), None, None) => {
                let n = wbrepl_core::parse::parse_u64(n).map_err(|_| EINVAL)?;
                self.fail_next.store(n, Ordering::Relaxed);
                Ok(())
            }
            (Some("release"), None, None, None) => {
                self.release();
                Ok(())
            }
            (Some("event"), None, None, None) => {
                self.handle.event();
                Ok(())
            }
            (Some("connect"), Some(addr), Some(ms), None) => {
                let addr = wbrepl_core::parse::parse_ipv4_port(addr).map_err(|_| EINVAL)?;
                let ms = wbrepl_core::parse::parse_u32(ms).map_err(|_| EINVAL)?;
                let ns = NetNs::current();
                let r = Socket::connect(&ns, addr, ms).and_then(|s| {
                    s.send_all(b"hello dmcore")?;
                    s.local_addr()
                });
                let _ = match r {
                    Ok(local) => write!(out, "connected {local}"),
                    Err(e) => write!(out, "error {}", e.to_errno()),
                };
                Ok(())
            }
            _ => Err(EINVAL),
        }
    }

    fn iterate_devices(&self, visit: &mut DeviceVisitor<'_>) -> core::result::Result<(), Stop> {
        visit.visit(&self.dev, 0, self.len)
    }
}

// ------------------------------------------------------------------------------------------
// arguments and result buffers

fn args_iterate(t: &mut Test) {
    let words = [kernel::c_str!("primary"), kernel::c_str!("/dev/x"), kernel::c_str!("1.2.3.4:5"), kernel::c_str!("0")];
    let mut storage = [core::ptr::null_mut(); 4];
    let mut a = Args::from_cstrs(&words, &mut storage);
    kcheck_eq!(t, a.len(), 4);
    kcheck_eq!(t, a.remaining(), 4);
    kcheck_eq!(t, a.next(), Some("primary"));
    kcheck_eq!(t, a.remaining(), 3);
    kcheck_eq!(t, a.next_cstr().map(|c| c.as_bytes()), Some(&b"/dev/x"[..]));
    kcheck_eq!(t, a.next(), Some("1.2.3.4:5"));
    kcheck_eq!(t, a.next(), Some("0"));
    kcheck_eq!(t, a.next(), None);
    kcheck_eq!(t, a.remaining(), 0);
}

fn args_feed_core_parsers(t: &mut Test) {
    let words = [kernel::c_str!("secondary"), kernel::c_str!("/dev/x"), kernel::c_str!("10.0.0.2:7789"), kernel::c_str!("3"), kernel::c_str!("protocol"), kernel::c_str!("sync"), kernel::c_str!("freeze_on_marker")];
    let mut storage = [core::ptr::null_mut(); 7];
    let r = ReplTable::parse(&mut Args::from_cstrs(&words, &mut storage));
    kcheck!(t, r.is_ok());
    if let Ok(tab) = r {
        kcheck_eq!(t, tab.role, Role::Secondary);
        kcheck_eq!(t, tab.addr, SocketAddrV4 { ip: [10, 0, 0, 2], port: 7789 });
        kcheck!(t, tab.opts.freeze_on_marker);
    }
    // A core parse error becomes a ctr error with the same text and -EINVAL.
    let bad = [kernel::c_str!("primary"), kernel::c_str!("/dev/x"), kernel::c_str!("10.0.0.2:99999"), kernel::c_str!("0")];
    let mut storage = [core::ptr::null_mut(); 4];
    match ReplTable::parse(&mut Args::from_cstrs(&bad, &mut storage)) {
        Ok(_) => t.fail(concat!(file!(), "\0"), line!(), "bad port accepted\0"),
        Err(e) => {
            let c = CtrError::from(e);
            kcheck_eq!(t, c.msg.as_bytes(), e.as_str().as_bytes());
            kcheck_eq!(t, c.err.to_errno(), EINVAL.to_errno());
        }
    }
}

fn args_invalid_utf8(t: &mut Test) {
    let Ok(not_utf8) = CStr::from_bytes_with_nul(b"\xff\xfe\0") else { return };
    let bad = [kernel::c_str!("4096"), not_utf8];
    let mut storage = [core::ptr::null_mut(); 2];
    let mut a = Args::from_cstrs(&bad, &mut storage);
    kcheck_eq!(t, a.next(), Some("4096"));
    let w = a.next();
    kcheck_eq!(t, w, Some(INVALID_UTF8));
    kcheck!(t, wbrepl_core::parse::parse_u32(w.unwrap_or("")).is_err());
}

fn status_writer_truncates(t: &mut Test) {
    use core::fmt::Write;
    let mut buf = [0xaau8; 8];
    let mut w = StatusWriter::new(&mut buf);
    let _ = write!(w, "hello {}", "world");
    kcheck!(t, w.truncated());
    kcheck_eq!(t, w.as_bytes(), &b"hello w"[..]);
    kcheck_eq!(t, buf[7], 0);

    let mut buf = [0xaau8; 6];
    let mut w = StatusWriter::new(&mut buf);
    let _ = write!(w, "12345");
    kcheck!(t, !w.truncated());
    kcheck_eq!(t, w.len(), 5);
    let _ = write!(w, "");
    kcheck!(t, !w.truncated());
    let _ = write!(w, "6");
    kcheck!(t, w.truncated());
    kcheck_eq!(t, buf, *b"12345\0");

    let mut empty: [u8; 0] = [];
    let mut w = StatusWriter::new(&mut empty);
    let _ = write!(w, "x");
    kcheck!(t, w.truncated());
    kcheck_eq!(t, w.len(), 0);
}

kunit_suite!(ARGS_SUITE, "dmcore_args", "dmcore_kunit", [
    args_iterate,
    args_feed_core_parsers,
    args_invalid_utf8,
    status_writer_truncates,
]);

// ------------------------------------------------------------------------------------------
// bios

fn pattern(i: usize, j: usize) -> u8 {
    (i * 31 + j * 7 + (j >> 8)) as u8
}

const RANGES: [(u32, u32); 3] = [(512, 3584), (0, 4096), (0, 512)];

fn bio_op_and_flags(t: &mut Test) {
    let w = TestOp { write: true, fua: true, preflush: false };
    let Ok(mut tb) = TestBio::new(w, 2048, &RANGES, pattern) else {
        return t.fail(concat!(file!(), "\0"), line!(), "TestBio::new failed\0");
    };
    if let Some(b) = tb.take() {
        kcheck_eq!(t, b.op(), Op::Write);
        kcheck!(t, b.is_write());
        kcheck!(t, b.is_fua());
        kcheck!(t, !b.is_preflush());
        kcheck!(t, b.has_data());
        kcheck_eq!(t, b.sector(), 2048);
        kcheck_eq!(t, b.target_sector(), 2048);
        kcheck_eq!(t, b.size(), 8192);
        kcheck_eq!(t, b.sectors(), 16);
        b.end(BlkStatus::OK);
    }
    let r = TestOp { write: false, fua: false, preflush: true };
    let Ok(mut tb) = TestBio::new(r, 8, &RANGES[..1], pattern) else {
        return t.fail(concat!(file!(), "\0"), line!(), "TestBio::new failed\0");
    };
    if let Some(b) = tb.take() {
        kcheck_eq!(t, b.op(), Op::Read);
        kcheck!(t, !b.is_write());
        kcheck!(t, b.is_preflush());
        kcheck!(t, !b.is_fua());
        kcheck_eq!(t, b.size(), 3584);
        b.end(BlkStatus::OK);
    }
}

fn bio_segments_and_copy(t: &mut Test) {
    let Ok(mut tb) = TestBio::new(TestOp { write: true, ..Default::default() }, 0, &RANGES, pattern) else {
        return t.fail(concat!(file!(), "\0"), line!(), "TestBio::new failed\0");
    };
    let Some(b) = tb.take() else { return };
    let mut lens = [0u32; 4];
    let mut n = 0;
    for s in b.segments() {
        if n < lens.len() {
            lens[n] = s.len();
        }
        n += 1;
    }
    kcheck_eq!(t, n, 3);
    kcheck_eq!(t, lens, [3584, 4096, 512, 0]);
    let mut buf = KVec::from_elem(0u8, 9000, GFP_KERNEL).unwrap_or_default();
    let got = b.copy_to(&mut buf);
    kcheck_eq!(t, got, 8192);
    let mut bad = 0;
    let mut pos = 0;
    for (i, &(off, len)) in RANGES.iter().enumerate() {
        for j in off as usize..(off + len) as usize {
            if buf.get(pos) != Some(&pattern(i, j)) {
                bad += 1;
            }
            pos += 1;
        }
    }
    kcheck_eq!(t, bad, 0);
    // A short destination takes only what fits.
    let mut small = [0u8; 100];
    kcheck_eq!(t, b.copy_to(&mut small), 100);
    kcheck_eq!(t, small[99], pattern(0, 512 + 99));
    b.end(BlkStatus::OK);
}

fn bio_advance_is_honoured(t: &mut Test) {
    let Ok(mut tb) = TestBio::new(TestOp { write: true, ..Default::default() }, 0, &RANGES, pattern) else {
        return t.fail(concat!(file!(), "\0"), line!(), "TestBio::new failed\0");
    };
    // 1024 bytes in: the first segment now starts mid-page (bi_bvec_done != 0).
    tb.advance(1024);
    let Some(b) = tb.take() else { return };
    kcheck_eq!(t, b.size(), 8192 - 1024);
    kcheck_eq!(t, b.sector(), 2);
    let first = b.segments().next().map(|s| (s.offset(), s.len()));
    kcheck_eq!(t, first, Some((512 + 1024, 3584 - 1024)));
    let mut one = [0u8; 1];
    b.copy_to(&mut one);
    kcheck_eq!(t, one[0], pattern(0, 512 + 1024));
    b.end(BlkStatus::OK);
}

fn bio_copy_from_fills_pages(t: &mut Test) {
    let Ok(mut tb) = TestBio::new(TestOp::default(), 0, &RANGES, |_, _| 0) else {
        return t.fail(concat!(file!(), "\0"), line!(), "TestBio::new failed\0");
    };
    let Some(mut b) = tb.take() else { return };
    let mut src = KVec::from_elem(0u8, 8192, GFP_KERNEL).unwrap_or_default();
    for (k, v) in src.iter_mut().enumerate() {
        *v = (k % 251) as u8;
    }
    kcheck_eq!(t, b.copy_from(&src), 8192);
    b.end(BlkStatus::OK);
    kcheck_eq!(t, tb.page_byte(0, 511), 0);
    kcheck_eq!(t, tb.page_byte(0, 512), 0);
    kcheck_eq!(t, tb.page_byte(0, 513), 1);
    kcheck_eq!(t, tb.page_byte(1, 0), (3584 % 251) as u8);
    kcheck_eq!(t, tb.page_byte(2, 511), (8191 % 251) as u8);
    kcheck_eq!(t, tb.page_byte(2, 512), 0);
}

fn bio_completes_exactly_once(t: &mut Test) {
    let Ok(mut tb) = TestBio::new(TestOp::default(), 0, &RANGES[..1], pattern) else {
        return t.fail(concat!(file!(), "\0"), line!(), "TestBio::new failed\0");
    };
    if let Some(b) = tb.take() {
        b.end(BlkStatus::NOSPC);
    }
    kcheck!(t, tb.take().is_none());
    kcheck_eq!(t, tb.completions().count.load(Ordering::SeqCst), 1);
    kcheck_eq!(t, tb.completions().status.load(Ordering::SeqCst), u32::from(BlkStatus::NOSPC.0));
}

fn bio_dropped_is_failed(t: &mut Test) {
    let Ok(mut tb) = TestBio::new(TestOp::default(), 0, &RANGES[..1], pattern) else {
        return t.fail(concat!(file!(), "\0"), line!(), "TestBio::new failed\0");
    };
    drop(tb.take());
    kcheck_eq!(t, tb.completions().count.load(Ordering::SeqCst), 1);
    kcheck_eq!(t, BlkStatus::IOERR.to_errno(), EIO.to_errno());
    let st = tb.completions().status.load(Ordering::SeqCst);
    kcheck!(t, st != 0);
}

fn blk_status_errno(t: &mut Test) {
    kcheck_eq!(t, BlkStatus::OK.to_errno(), 0);
    kcheck!(t, BlkStatus::OK.is_ok());
    kcheck_eq!(t, BlkStatus::from_error(EIO), BlkStatus::IOERR);
    kcheck_eq!(t, BlkStatus::from_error(ENOSPC), BlkStatus::NOSPC);
    kcheck_eq!(t, BlkStatus::NOSPC.to_errno(), ENOSPC.to_errno());
    kcheck_eq!(t, BlkStatus::TIMEOUT.to_errno(), -(110));
}

kunit_suite!(BIO_SUITE, "dmcore_bio", "dmcore_kunit", [
    bio_op_and_flags,
    bio_segments_and_copy,
    bio_advance_is_honoured,
    bio_copy_from_fills_pages,
    bio_completes_exactly_once,
    bio_dropped_is_failed,
    blk_status_errno,
]);

// ------------------------------------------------------------------------------------------
// workqueues and completions

fn workqueue_runs_items(t: &mut Test) {
    let (Ok(wq), Ok(done)) = (WorkQueue::new(kernel::c_str!("dmcore_test"), 0, false), Arc::pin_init(Completion::new(), GFP_KERNEL)) else {
        return t.fail(concat!(file!(), "\0"), line!(), "setup failed\0");
    };
    let d = done.clone();
    kcheck!(t, wq.try_spawn(GFP_KERNEL, move || d.complete_all()).is_ok());
    kcheck!(t, done.wait_timeout_ms(5000));
    kcheck!(t, done.is_done());
}

fn ordered_workqueue_keeps_order(t: &mut Test) {
    struct Order {
        next: AtomicU32,
        wrong: AtomicBool,
    }
    let (Ok(wq), Ok(done), Ok(order)) = (
        WorkQueue::new(kernel::c_str!("dmcore_test_ordered"), 0, true),
        Arc::pin_init(Completion::new(), GFP_KERNEL),
        Arc::new(Order { next: AtomicU32::new(0), wrong: AtomicBool::new(false) }, GFP_KERNEL),
    ) else {
        return t.fail(concat!(file!(), "\0"), line!(), "setup failed\0");
    };
    const N: u32 = 32;
    for i in 0..N {
        let (o, d) = (order.clone(), done.clone());
        let r = wq.try_spawn(GFP_KERNEL, move || {
            if o.next.fetch_add(1, Ordering::SeqCst) != i {
                o.wrong.store(true, Ordering::SeqCst);
            }
            if i == N - 1 {
                d.complete_all();
            }
        });
        kcheck!(t, r.is_ok());
    }
    kcheck!(t, done.wait_timeout_ms(5000));
    wq.flush();
    kcheck_eq!(t, order.next.load(Ordering::SeqCst), N);
    kcheck!(t, !order.wrong.load(Ordering::SeqCst));
}

fn completion_waits_and_times_out(t: &mut Test) {
    let Ok(c) = KBox::pin_init(Completion::new(), GFP_KERNEL) else {
        return t.fail(concat!(file!(), "\0"), line!(), "setup failed\0");
    };
    kcheck!(t, !c.is_done());
    kcheck!(t, !c.wait_timeout_ms(20));
    c.complete();
    kcheck!(t, c.is_done());
    kcheck!(t, c.wait_timeout_ms(20));
    // `complete` lets one wait through; the next one times out again.
    kcheck!(t, !c.wait_timeout_ms(20));
    c.complete_all();
    kcheck!(t, c.wait_timeout_ms(20));
    kcheck!(t, c.wait_timeout_ms(20));
}

kunit_suite!(SYNC_SUITE, "dmcore_sync", "dmcore_kunit", [
    workqueue_runs_items,
    ordered_workqueue_keeps_order,
    completion_waits_and_times_out,
]);

// ------------------------------------------------------------------------------------------
// sockets (over the guest's loopback interface)

const LOOPBACK_ANY: SocketAddrV4 = SocketAddrV4 { ip: [127, 0, 0, 1], port: 0 };

fn loopback(port: u16) -> SocketAddrV4 {
    SocketAddrV4 { port, ..LOOPBACK_ANY }
}

fn socket_round_trip(t: &mut Test) {
    let ns = NetNs::current();
    let Ok(listener) = Socket::listen(&ns, LOOPBACK_ANY, 4) else {
        return t.fail(concat!(file!(), "\0"), line!(), "listen failed\0");
    };
    let port = listener.local_addr().map(|a| a.port).unwrap_or(0);
    kcheck!(t, port != 0);
    let Ok(client) = Socket::connect(&ns, loopback(port), 2000) else {
        return t.fail(concat!(file!(), "\0"), line!(), "connect failed\0");
    };
    let Ok(server) = listener.accept(2000) else {
        return t.fail(concat!(file!(), "\0"), line!(), "accept failed\0");
    };
    kcheck_eq!(t, server.peer_addr().ok(), client.local_addr().ok());
    // 1 MiB, far beyond the socket buffers: the sender (a work item) and the receiver (this
    // thread) must run concurrently for it to get through.
    const LEN: usize = 1 << 20;
    let (Ok(wq), Ok(done), Ok(mut data)) = (
        WorkQueue::new(kernel::c_str!("dmcore_test_net"), 0, false),
        Arc::pin_init(Completion::new(), GFP_KERNEL),
        KVec::with_capacity(LEN, GFP_KERNEL),
    ) else {
        return t.fail(concat!(file!(), "\0"), line!(), "setup failed\0");
    };
    for k in 0..LEN {
        let _ = data.push((k * 13 + (k >> 12)) as u8, GFP_KERNEL);
    }
    let result = Arc::new(AtomicI32::new(1), GFP_KERNEL);
    let Ok(result) = result else { return };
    let (d, r) = (done.clone(), result.clone());
    let spawned = wq.try_spawn(GFP_KERNEL, move || {
        let res = client.send_all(&data);
        r.store(res.map_or_else(|e| e.to_errno(), |()| 0), Ordering::SeqCst);
        drop(client);
        d.complete_all();
    });
    kcheck!(t, spawned.is_ok());
    let mut got = KVec::from_elem(0u8, LEN, GFP_KERNEL).unwrap_or_default();
    kcheck!(t, server.recv_exact(&mut got).is_ok());
    kcheck!(t, done.wait_timeout_ms(10_000));
    kcheck_eq!(t, result.load(Ordering::SeqCst), 0);
    let mut bad = 0;
    for (k, v) in got.iter().enumerate() {
        if *v != (k * 13 + (k >> 12)) as u8 {
            bad += 1;
        }
    }
    kcheck_eq!(t, bad, 0);
    // The client is gone: the next receive sees the end of the stream.
    let mut one = [0u8; 1];
    kcheck_eq!(t, server.recv_exact(&mut one).map_err(|e| e.to_errno()), Err(-(dmcore::bindings::ECONNRESET as i32)));
}

fn socket_connect_refused(t: &mut Test) {
    let ns = NetNs::current();
    // A port that was just free: listen, note the port, close.
    let port = match Socket::listen(&ns, LOOPBACK_ANY, 1).and_then(|l| l.local_addr()) {
        Ok(a) => a.port,
        Err(_) => return t.fail(concat!(file!(), "\0"), line!(), "listen failed\0"),
    };
    let r = Socket::connect(&ns, loopback(port), 2000).map(|_| ()).map_err(|e| e.to_errno());
    kcheck_eq!(t, r, Err(-111)); // ECONNREFUSED
}

fn socket_timeouts(t: &mut Test) {
    let ns = NetNs::current();
    let Ok(listener) = Socket::listen(&ns, LOOPBACK_ANY, 1) else {
        return t.fail(concat!(file!(), "\0"), line!(), "listen failed\0");
    };
    let r = listener.accept(50).map(|_| ()).map_err(|e| e.to_errno());
    kcheck_eq!(t, r, Err(-110)); // ETIMEDOUT
    let port = listener.local_addr().map(|a| a.port).unwrap_or(0);
    let (Ok(client), Ok(server)) = (Socket::connect(&ns, loopback(port), 2000), listener.accept(2000)) else {
        return t.fail(concat!(file!(), "\0"), line!(), "connect/accept failed\0");
    };
    server.set_timeouts(0, 50);
    let mut buf = [0u8; 4];
    kcheck_eq!(t, server.recv_exact(&mut buf).map_err(|e| e.to_errno()), Err(-110));
    kcheck!(t, client.send_all(b"ping").is_ok());
    kcheck!(t, server.recv_exact(&mut buf).is_ok());
    kcheck_eq!(t, &buf, b"ping");
    // Shutdown from our side ends a peer's blocked receive.
    client.shutdown();
    kcheck!(t, server.recv_exact(&mut buf).is_err());
}

kunit_suite!(NET_SUITE, "dmcore_net", "dmcore_kunit", [
    socket_round_trip,
    socket_connect_refused,
    socket_timeouts,
]);

// ------------------------------------------------------------------------------------------
// crypto: the kernel implementations behind rust/core's traits, and a wire frame sealed and
// opened with them

fn crc32c_check_value(t: &mut Test) {
    kcheck_eq!(t, KernelCrc32c.append(0, b"123456789"), 0xE306_9283u32);
    // In pieces: the same as in one go.
    kcheck_eq!(t, KernelCrc32c.append(KernelCrc32c.append(0, b"1234"), b"56789"), 0xE306_9283u32);
}

fn hmac_sha256_rfc4231(t: &mut Test) {
    // RFC 4231, test case 2.
    let Ok(k) = KernelHmac::new(b"Jefe") else {
        return t.fail(concat!(file!(), "\0"), line!(), "hmac(sha256) allocation failed\0");
    };
    let want: [u8; 32] = [
        0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95, 0x75, 0xc7, 0x5a, 0x00,
        0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9, 0x64, 0xec, 0x38, 0x43,
    ];
    let whole: [&[u8]; 1] = [b"what do ya want for nothing?"];
    let split: [&[u8]; 2] = [b"what do ya ", b"want for nothing?"];
    let too_many: [&[u8]; 9] = [b""; 9];
    kcheck_eq!(t, k.mac(&whole), Some(want));
    kcheck_eq!(t, k.mac(&split), Some(want));
    kcheck_eq!(t, k.mac(&too_many), None);
}

fn wire_frame_with_kernel_crypto(t: &mut Test) {
    let (Ok(a), Ok(b)) = (KernelHmac::new(&[7u8; 32]), KernelHmac::new(&[8u8; 32])) else {
        return t.fail(concat!(file!(), "\0"), line!(), "hmac(sha256) allocation failed\0");
    };
    let payload = [0x5au8; 8];
    let mut hdr = [0u8; HEADER_LEN];
    kcheck!(t, wire::seal(&mut hdr, FrameType::Ping, 0, 0, &payload, &KernelCrc32c, Some(&a)).is_ok());
    let mut rx = RxSeq::new();
    kcheck!(t, wire::open(&hdr, &payload, &mut rx, &KernelCrc32c, Some(&a)).is_ok());
    kcheck_eq!(t, wire::open(&hdr, &payload, &mut rx, &KernelCrc32c, Some(&a)), Err(WireError::BadSeq));
    let mut rx = RxSeq::new();
    kcheck_eq!(t, wire::open(&hdr, &payload, &mut rx, &KernelCrc32c, Some(&b)), Err(WireError::BadMac));
    let mut bad = payload;
    bad[3] ^= 0x10;
    kcheck_eq!(t, wire::open(&hdr, &bad, &mut rx, &KernelCrc32c, Some(&a)), Err(WireError::BadCrc));
}

kunit_suite!(CRYPTO_SUITE, "dmcore_crypto", "dmcore_kunit", [
    crc32c_check_value,
    hmac_sha256_rfc4231,
    wire_frame_with_kernel_crypto,
]);
