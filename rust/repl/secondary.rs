// SPDX-License-Identifier: GPL-2.0

//! The secondary role: accept one authenticated primary and apply its stream to the data
//! device.
//!
//! Three long-running workers, each on its own workqueue:
//! - the **listener** accepts connections and runs the handshake (none while the target is
//!   suspended: a connection is closed at once). Only a peer that completes
//!   it (authenticated, with `auth`) replaces the current session, so a stray or hostile
//!   connection cannot disturb a working link;
//! - the **applier** serves the session: receives each frame, checks it (header bounds before
//!   the payload is read; CRC, MAC and sequence number after) and applies it. Writes are
//!   submitted asynchronously (dm-io), many at a time, each from its own receive buffer, as
//!   DRBD's receiver does. Order is kept where it matters: the first write of a new epoch, a
//!   write overlapping one in flight, and every other frame (flush barrier, marker) wait until
//!   every write before them has completed;
//! - the **acker** acknowledges, in stream order, the frames whose writes have completed: one
//!   cumulative `ACK` for all of them.
//!
//! Any malformed frame, or a failed write, ends the session (logged with its reason); the
//! target keeps working and the listener accepts the next connection.

use crate::dmcore::crc::KernelCrc32c;
use crate::dmcore::device::Device;
use crate::dmcore::dmio::{AsyncWriter, IoBuf, IoClient, IoFlags, Region, WriteDone};
use crate::dmcore::hmac::KernelHmac;
use crate::dmcore::net::{is_timeout, NetNs, Socket};
use crate::dmcore::sync::IrqSpinLock;
use crate::dmcore::target::TargetHandle;
use crate::dmcore::wq::{sleep_ms, Completion, WorkQueue};
use crate::link::{self, LinkError, Session};
use crate::primary::{ms_now, DATA_OFF};
use crate::wbrepl_core::marker::MarkerRecord;
use crate::wbrepl_core::parse::SocketAddrV4;
use crate::wbrepl_core::replmeta::SecSuper;
use crate::wbrepl_core::wire::{self, FrameType, Header, WRITE_FIXED};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use kernel::error::code::EIO;
use kernel::new_mutex;
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};
use kernel::workqueue::{impl_has_work, new_work, Work, WorkItem};

/// Where a received write frame's payload goes in its buffer: the data then starts at
/// `DATA_OFF`, page-aligned.
const FRAME_OFF: usize = DATA_OFF - WRITE_FIXED as usize;
/// Handshake step timeout.
const HANDSHAKE_MS: u32 = 5000;
/// Handshakes run at once, each by its own worker accepting on the listening socket: a peer that
/// holds a connection open without completing its handshake (for up to `HANDSHAKE_MS`) keeps one
/// worker busy, not the listener, so a real primary still connects in time.
const HANDSHAKERS: usize = 4;
/// Connections the kernel queues for accepting.
const BACKLOG: u32 = 16;
/// Nothing received for this long (the primary pings every few seconds): the session is dead.
const DEAD_MS: u32 = 15000;
/// Nothing sent to the primary for this long while a session is served: a `PONG` (the primary
/// takes a link that says nothing for its `DEAD_MS`, 12 s, for dead).
const KEEPALIVE_MS: u64 = 2000;
/// Writes in flight to the data device and none finished for this long, or one synchronous I/O
/// of the applier (`sync_io`) under way this long: the keepalives stop, so the primary gives the
/// link up `DEAD_MS` (its, 12 s) later instead of waiting for a hung disk forever (a `sync`
/// primary's writes would wait with it). As DRBD's ko-count bounds a peer's stuck write (7 x 6 s
/// by default). A disk that is only that slow (a flush of much dirty cache) costs the link too.
const STALL_MS: u64 = 30000;
/// Receive buffers: writes of up to `SMALL_DATA` bytes (the 4 KiB writes of a random workload)
/// take a small one, larger writes a large one (up to `wire::MAX_DATA`). Together they bound
/// the writes in flight: 128 x 20 KiB + 8 x 1028 KiB (vmalloc), 10.5 MiB per secondary, at load.
const SMALL_DATA: usize = 16 * 1024;
const N_SMALL: usize = 128;
const N_LARGE: usize = 8;
/// Frames received and not yet acknowledged, at most (writes in flight and the control frames
/// between them).
const RING: usize = 256;
/// Largest payload of a frame other than a write (`MARKER`: 80 bytes).
const CONTROL_MAX: usize = 128;
/// The secondary's superblock block on `meta_dev`.
const META_BYTES: usize = 4096;

struct Peer {
    sock: Arc<Socket>,
    session: Session,
    addr: SocketAddrV4,
}

/// Where acknowledgements go: the session being served (`gen`) and its next sequence number.
/// Under its mutex, so that frames sent by the acker (`ACK`s, keepalive `PONG`s) and by the
/// applier (`PONG`s while frozen) never interleave.
struct Out {
    peer: Arc<Peer>,
    gen: u32,
    tx: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// A write in flight.
    Writing,
    /// Applied (or a frame with nothing to apply): may be acknowledged.
    Done,
    /// A marker that was not recorded (the device is not a consistent image): acknowledged
    /// with `ACK_MARKER_IGNORED`, so that the primary does not count it.
    Ignored,
    /// The write failed: the session ends, nothing from here on is acknowledged.
    Failed,
}

/// One received frame, until it is acknowledged.
struct Slot {
    seq: u64,
    gen: u32,
    state: SlotState,
    sector: u64,
    sectors: u64,
    /// The buffer, once its write completed (for the acker to return to the pool).
    buf: Option<IoBuf>,
}

/// The frames received and not yet acknowledged, in stream order (a circular buffer of
/// `RING` slots, allocated at load).
struct Ring {
    slots: KVec<Option<Slot>>,
    head: usize,
    len: usize,
    /// Writes in flight.
    writing: usize,
    /// A write of this session failed (set by its completion): nothing from it on is
    /// acknowledged, no later frame is applied, and the session ends.
    failed: bool,
    /// A buffer handed back for a slot that no longer exists (cannot happen); kept here
    /// rather than freed in the completion's context.
    stray: Option<IoBuf>,
}

impl Ring {
    fn at(&self, i: usize) -> usize {
        let n = self.slots.len().max(1);
        (self.head + i).checked_rem(n).unwrap_or(0)
    }

    /// Appends `slot`; its index (the tag of its write's buffer), or `None` if full.
    fn push(&mut self, slot: Slot) -> Option<usize> {
        if self.len >= self.slots.len() {
            return None;
        }
        let i = self.at(self.len);
        if slot.state == SlotState::Writing {
            self.writing += 1;
        }
        *self.slots.get_mut(i)? = Some(slot);
        self.len += 1;
        Some(i)
    }

    /// Takes the oldest frame if it is no longer in flight.
    fn pop_finished(&mut self) -> Option<Slot> {
        if self.len == 0 {
            return None;
        }
        let h = self.head;
        let e = self.slots.get_mut(h)?;
        if e.as_ref()?.state == SlotState::Writing {
            return None;
        }
        let slot = e.take();
        self.head = self.at(1);
        self.len -= 1;
        slot
    }

    /// Whether a write in flight overlaps `sectors` sectors at `sector`.
    fn overlaps(&self, sector: u64, sectors: u64) -> bool {
        let end = sector.saturating_add(sectors);
        (0..self.len).any(|i| {
            self.slots.get(self.at(i)).and_then(|s| s.as_ref()).is_some_and(|s| {
                s.state == SlotState::Writing && s.sector < end && sector < s.sector.saturating_add(s.sectors)
            })
        })
    }
}

/// State shared with the write completions (interrupt context).
#[pin_data]
struct Pipe {
    #[pin]
    ring: IrqSpinLock<Ring>,
    /// A frame became acknowledgeable.
    #[pin]
    to_acker: Completion,
    /// A write completed or buffers were returned.
    #[pin]
    to_applier: Completion,
}

impl WriteDone for Pipe {
    fn write_done(&self, buf: IoBuf, ok: bool) {
        {
            let mut r = self.ring.lock();
            r.writing = r.writing.saturating_sub(1);
            if !ok {
                // Recorded here, not when the acker gets to the slot: a drain that sees no
                // write in flight must also see that one failed.
                r.failed = true;
            }
            let tag = buf.tag();
            match r.slots.get_mut(tag).and_then(|s| s.as_mut()) {
                Some(s) => {
                    s.state = if ok { SlotState::Done } else { SlotState::Failed };
                    s.buf = Some(buf);
                }
                // Cannot happen (a slot stays until its write is done).
                None => {
                    if r.stray.is_none() {
                        r.stray = Some(buf);
                    } else {
                        // Twice the impossible: freed here, in spite of the context.
                        drop(buf);
                    }
                }
            }
        }
        self.to_acker.complete();
        self.to_applier.complete();
    }
}

/// Idle buffers of one size: a stack in a vector allocated at load (the kernel's `KVec` of
/// 6.12 has no `pop`).
struct Stack {
    bufs: KVec<Option<IoBuf>>,
    n: usize,
}

impl Stack {
    fn new(count: usize, len: usize) -> Result<Self> {
        let mut bufs = KVec::with_capacity(count, GFP_KERNEL)?;
        for _ in 0..count {
            bufs.push(Some(IoBuf::new(len)?), GFP_KERNEL)?;
        }
        Ok(Self { bufs, n: count })
    }

    fn pop(&mut self) -> Option<IoBuf> {
        let i = self.n.checked_sub(1)?;
        let b = self.bufs.get_mut(i)?.take()?;
        self.n = i;
        Some(b)
    }

    /// Never more buffers come back than went out, so there is always room.
    fn push(&mut self, b: IoBuf) {
        if let Some(slot) = self.bufs.get_mut(self.n) {
            *slot = Some(b);
            self.n += 1;
        }
    }
}

/// Idle receive buffers.
struct Pools {
    small: Stack,
    large: Stack,
}

impl Pools {
    fn new() -> Result<Self> {
        Ok(Self {
            small: Stack::new(N_SMALL, DATA_OFF + SMALL_DATA)?,
            large: Stack::new(N_LARGE, DATA_OFF + wire::MAX_DATA as usize)?,
        })
    }

    fn take(&mut self, payload: usize) -> Option<IoBuf> {
        if payload <= WRITE_FIXED as usize + SMALL_DATA {
            self.small.pop()
        } else {
            self.large.pop()
        }
    }

    fn put(&mut self, b: IoBuf) {
        if b.len() > DATA_OFF + SMALL_DATA {
            self.large.push(b)
        } else {
            self.small.push(b)
        }
    }
}

/// A kernel-log rate limit: at most `BURST` lines per `INTERVAL_MS`, then one line saying how
/// many were suppressed (a peer that keeps connecting must not flood the log).
/// A kernel-log rate limit: at most `BURST` lines per `INTERVAL_MS`, then one line saying how
/// many were suppressed (a peer that keeps connecting must not flood the log).
#[derive(Default)]
pub(crate) struct LogLimit {
    start_ms: AtomicU64,
    count: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimit {
    const BURST: u64 = 10;
    const INTERVAL_MS: u64 = 5000;

    /// Whether a line may be logged now. Called from several workers (the handshakers, the
    /// applier): a race between them only blurs the count of one interval.
    pub(crate) fn allow(&self) -> bool {
        let now = ms_now();
        if now.saturating_sub(self.start_ms.load(Ordering::Relaxed)) >= Self::INTERVAL_MS {
            self.start_ms.store(now, Ordering::Relaxed);
            self.count.store(0, Ordering::Relaxed);
            let n = self.suppressed.swap(0, Ordering::Relaxed);
            if n > 0 {
                pr_warn!("repl: {} similar messages suppressed\n", n);
            }
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < Self::BURST {
            true
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) frames: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) resync_bytes: AtomicU64,
    pub(crate) sessions: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) durable_epoch: AtomicU64,
    /// Markers recorded.
    pub(crate) markers: AtomicU64,
    /// Markers not recorded (received while the device was inconsistent).
    pub(crate) markers_ignored: AtomicU64,
    /// The last marker recorded (durable with everything before it); 0: none.
    pub(crate) marker_id: AtomicU64,
    pub(crate) marker_time_ns: AtomicU64,
}

/// A marker's label.
pub(crate) type MarkerLabel = [u8; wire::LABEL_LEN];

#[pin_data]
pub(crate) struct Secondary {
    /// Keeps the consistency state across restarts (`SecSuper` in its first 4 KiB).
    meta: Option<Device>,
    #[pin]
    meta_buf: Mutex<KVVec<u8>>,
    meta_loaded: AtomicBool,
    /// The state last written to `meta_dev` successfully: 0 unknown (a write failed), 1
    /// inconsistent, 2 consistent.
    on_disk: AtomicU8,
    /// Suspended: no session is made or served (set by `postsuspend`, cleared by `resume`).
    suspended: AtomicBool,
    /// A primary was turned away during this suspend, and the log said so.
    turned_away_said: AtomicBool,
    /// The applier is serving a session (see `postsuspend`).
    serving: AtomicBool,
    pub(crate) sectors: u64,
    pub(crate) addr: SocketAddrV4,
    ns: NetNs,
    key: Option<KernelHmac>,
    /// The data device holds a consistent image (not in the middle of a resync).
    pub(crate) consistent: AtomicBool,
    /// First sector of the marker region.
    marker_start: u64,
    freeze_on_marker: bool,
    /// Thaw by itself after this long (0: only on `thaw <id>`).
    freeze_timeout_ms: u32,
    /// Frozen at this marker id (applying nothing until thawed); meaningful while `frozen`.
    pub(crate) frozen_id: AtomicU64,
    pub(crate) frozen: AtomicBool,
    frozen_since_ms: AtomicU64,
    /// The last marker recorded: its id and label together (status `marker`, `marker_label`).
    #[pin]
    pub(crate) marker_label: Mutex<(u64, MarkerLabel)>,
    #[pin]
    thaw: Completion,
    handle: TargetHandle,
    #[pin]
    pending: Mutex<Option<Arc<Peer>>>,
    #[pin]
    active: Mutex<Option<Arc<Peer>>>,
    #[pin]
    listener: Mutex<Option<Arc<Socket>>>,
    /// The connections whose handshakes the workers are running (one slot per worker).
    #[pin]
    handshaking: Mutex<[Option<Arc<Socket>>; HANDSHAKERS]>,
    /// Asynchronous writes to `data`, with the frames in flight (`Pipe`).
    #[pin]
    aio: AsyncWriter<Pipe>,
    #[pin]
    pools: Mutex<Pools>,
    /// Where acknowledgements go.
    #[pin]
    out: Mutex<Option<Out>>,
    /// When a frame was last sent to the primary (`ms_now`): see `keepalive`.
    last_tx_ms: AtomicU64,
    /// When the applier's synchronous I/O under way began (a marker's write and flush, a flush
    /// barrier, the consistency state on `meta_dev`: none of them is in the ring); 0: none.
    /// Counted for `STALL_MS` as a write in the ring is.
    sync_io_ms: AtomicU64,
    /// The session being served (its frames' slots carry it).
    gen: AtomicU32,
    /// Wakes the applier: a session was published, or the target is going.
    #[pin]
    wake: Completion,
    /// The listener's own retry waits (cut short at removal); apart from `wake`, so that
    /// neither worker consumes the other's wake-up.
    #[pin]
    listen_wake: Completion,
    stop: AtomicBool,
    pub(crate) stats: Stats,
    log: LogLimit,
    wq_listen: WorkQueue,
    wq_apply: WorkQueue,
    wq_ack: WorkQueue,
    #[pin]
    w_listen: Work<Secondary, 0>,
    #[pin]
    w_apply: Work<Secondary, 1>,
    #[pin]
    w_ack: Work<Secondary, 2>,
    /// The other handshake workers (`w_listen` is the first).
    #[pin]
    w_hs1: Work<Secondary, 3>,
    #[pin]
    w_hs2: Work<Secondary, 4>,
    #[pin]
    w_hs3: Work<Secondary, 5>,
}

impl_has_work! {
    impl HasWork<Self, 0> for Secondary { self.w_listen }
    impl HasWork<Self, 1> for Secondary { self.w_apply }
    impl HasWork<Self, 2> for Secondary { self.w_ack }
    impl HasWork<Self, 3> for Secondary { self.w_hs1 }
    impl HasWork<Self, 4> for Secondary { self.w_hs2 }
    impl HasWork<Self, 5> for Secondary { self.w_hs3 }
}

impl WorkItem<0> for Secondary {
    type Pointer = Arc<Secondary>;
    fn run(this: Arc<Secondary>) {
        this.run_listener();
    }
}

impl WorkItem<1> for Secondary {
    type Pointer = Arc<Secondary>;
    fn run(this: Arc<Secondary>) {
        this.run_applier();
    }
}

impl WorkItem<2> for Secondary {
    type Pointer = Arc<Secondary>;
    fn run(this: Arc<Secondary>) {
        this.run_acker();
    }
}

impl WorkItem<3> for Secondary {
    type Pointer = Arc<Secondary>;
    fn run(this: Arc<Secondary>) {
        this.run_handshaker(1);
    }
}

impl WorkItem<4> for Secondary {
    type Pointer = Arc<Secondary>;
    fn run(this: Arc<Secondary>) {
        this.run_handshaker(2);
    }
}

impl WorkItem<5> for Secondary {
    type Pointer = Arc<Secondary>;
    fn run(this: Arc<Secondary>) {
        this.run_handshaker(3);
    }
}

impl Secondary {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        data: Device,
        meta: Option<Device>,
        sectors: u64,
        addr: SocketAddrV4,
        key: Option<KernelHmac>,
        marker_sectors: u32,
        freeze_on_marker: bool,
        freeze_timeout_ms: Option<u32>,
        handle: TargetHandle,
    ) -> Result<Arc<Self>> {
        let pools = Pools::new()?;
        let meta_buf = KVVec::from_elem(0u8, if meta.is_some() { META_BYTES } else { 0 }, GFP_KERNEL)?;
        let mut slots = KVec::with_capacity(RING, GFP_KERNEL)?;
        for _ in 0..RING {
            slots.push(None, GFP_KERNEL)?;
        }
        let ring = Ring { slots, head: 0, len: 0, writing: 0, failed: false, stray: None };
        let client = IoClient::new()?;
        let wq_listen = WorkQueue::new(kernel::c_str!("repl_listen"), HANDSHAKERS as i32, false)?;
        let wq_apply = WorkQueue::new(kernel::c_str!("repl_apply"), 1, true)?;
        let wq_ack = WorkQueue::new(kernel::c_str!("repl_ack"), 1, true)?;
        Arc::pin_init(
            pin_init!(Secondary {
                meta,
                meta_buf <- new_mutex!(meta_buf),
                meta_loaded: AtomicBool::new(false),
                on_disk: AtomicU8::new(0),
                suspended: AtomicBool::new(false),
                turned_away_said: AtomicBool::new(false),
                serving: AtomicBool::new(false),
                sectors,
                addr,
                ns: NetNs::current(),
                key,
                consistent: AtomicBool::new(true),
                marker_start: sectors.saturating_sub(u64::from(marker_sectors)),
                freeze_on_marker,
                freeze_timeout_ms: freeze_timeout_ms.unwrap_or(0),
                frozen_id: AtomicU64::new(0),
                frozen: AtomicBool::new(false),
                frozen_since_ms: AtomicU64::new(0),
                marker_label <- new_mutex!((0, [0u8; wire::LABEL_LEN])),
                thaw <- Completion::new(),
                handle,
                pending <- new_mutex!(None),
                active <- new_mutex!(None),
                listener <- new_mutex!(None),
                handshaking <- new_mutex!([const { None }; HANDSHAKERS]),
                aio <- AsyncWriter::new(
                    client,
                    data,
                    pin_init!(Pipe {
                        ring <- IrqSpinLock::new(ring),
                        to_acker <- Completion::new(),
                        to_applier <- Completion::new(),
                    })
                ),
                pools <- new_mutex!(pools),
                out <- new_mutex!(None),
                last_tx_ms: AtomicU64::new(0),
                sync_io_ms: AtomicU64::new(0),
                gen: AtomicU32::new(0),
                wake <- Completion::new(),
                listen_wake <- Completion::new(),
                stop: AtomicBool::new(false),
                stats: Stats::default(),
                log: LogLimit::default(),
                wq_listen,
                wq_apply,
                wq_ack,
                w_listen <- new_work!("repl::listen"),
                w_apply <- new_work!("repl::apply"),
                w_ack <- new_work!("repl::ack"),
                w_hs1 <- new_work!("repl::handshake1"),
                w_hs2 <- new_work!("repl::handshake2"),
                w_hs3 <- new_work!("repl::handshake3"),
            }),
            GFP_KERNEL,
        )
    }

    pub(crate) fn start(this: &Arc<Self>) {
        let _ = this.wq_listen.enqueue::<Arc<Secondary>, 0>(this.clone());
        let _ = this.wq_apply.enqueue::<Arc<Secondary>, 1>(this.clone());
        let _ = this.wq_ack.enqueue::<Arc<Secondary>, 2>(this.clone());
        let _ = this.wq_listen.enqueue::<Arc<Secondary>, 3>(this.clone());
        let _ = this.wq_listen.enqueue::<Arc<Secondary>, 4>(this.clone());
        let _ = this.wq_listen.enqueue::<Arc<Secondary>, 5>(this.clone());
    }

    /// Stops both workers and closes every socket; returns once the workers have returned.
    pub(crate) fn stop(this: &Arc<Self>) {
        this.stop.store(true, Ordering::Release);
        if let Some(l) = this.listener.lock().clone() {
            l.shutdown();
        }
        for h in this.handshaking.lock().iter().flatten() {
            h.shutdown();
        }
        if let Some(p) = this.active.lock().clone() {
            p.sock.shutdown();
        }
        this.wake.complete_all();
        this.listen_wake.complete_all();
        this.thaw.complete_all();
        this.aio.handler().to_acker.complete_all();
        this.aio.handler().to_applier.complete_all();
        this.wq_listen.flush();
        // The applier returns only once every write it submitted has completed.
        this.wq_apply.flush();
        this.wq_ack.flush();
        *this.pending.lock() = None;
        *this.listener.lock() = None;
    }

    /// Before the first resume: loads the consistency state from `meta_dev` (a blank one is
    /// formatted, taken to be consistent).
    pub(crate) fn preresume(&self) -> Result {
        if let Some(meta) = &self.meta {
            if !self.meta_loaded.load(Ordering::Acquire) {
                let mut buf = self.meta_buf.lock();
                let region = Region { dev: meta, sector: 0, sectors: (META_BYTES / 512) as u64 };
                self.aio.client().read(region, &mut buf[..])?;
                match SecSuper::decode(&buf[..], &KernelCrc32c) {
                    Err(e) => {
                        pr_err!("repl {}: cannot use the metadata device: {}\n", meta, e.as_str());
                        return Err(EINVAL);
                    }
                    Ok(None) => {
                        pr_info!("repl {}: formatting the metadata device (the data device is taken to be consistent)\n", meta);
                        drop(buf);
                        self.save_state(true)?;
                    }
                    Ok(Some(sb)) if sb.sectors != self.sectors => {
                        pr_err!(
                            "repl {}: the metadata device belongs to a device of {} sectors (this one has {}); wipe it to start over\n",
                            meta,
                            sb.sectors,
                            self.sectors
                        );
                        return Err(EINVAL);
                    }
                    Ok(Some(sb)) => {
                        self.consistent.store(sb.consistent, Ordering::Release);
                        self.on_disk.store(if sb.consistent { 2 } else { 1 }, Ordering::Release);
                        pr_info!(
                            "repl {}: the data device is {}\n",
                            meta,
                            if sb.consistent { "consistent" } else { "inconsistent (a resync was under way): markers are ignored until a resync completes" }
                        );
                    }
                }
                self.meta_loaded.store(true, Ordering::Release);
            }
        }
        Ok(())
    }

    /// Resumed (every target's preresume succeeded): serve sessions again.
    pub(crate) fn resume(this: &Arc<Self>) {
        this.turned_away_said.store(false, Ordering::Relaxed);
        this.suspended.store(false, Ordering::SeqCst);
        this.wake.complete();
        Self::start(this);
    }

    /// After a suspend: the session ends and the applier waits (nothing is applied while the
    /// device is suspended, and a table loaded next finds the state saved).
    pub(crate) fn postsuspend(&self) {
        self.suspended.store(true, Ordering::SeqCst);
        // Handshakes under way are cut short (see `accept_loop`).
        for slot in self.handshaking.lock().iter_mut() {
            if let Some(h) = slot.take() {
                h.shutdown();
            }
        }
        while self.serving.load(Ordering::SeqCst) {
            // Again each time: the applier may have taken a session just before.
            if let Some(p) = self.active.lock().clone() {
                p.sock.shutdown();
            }
            // A frozen applier notices the shut-down socket at its next keepalive: now.
            self.thaw.complete();
            sleep_ms(10);
        }
        if self.meta_loaded.load(Ordering::Acquire) {
            if let Err(e) = self.save_state(self.consistent.load(Ordering::Acquire)) {
                pr_err!("repl: cannot save the state to the metadata device (error {})\n", e.to_errno());
            }
        }
    }

    /// Writes the consistency state to `meta_dev` (FUA), if there is one.
    fn save_state(&self, consistent: bool) -> Result {
        let Some(meta) = &self.meta else { return Ok(()) };
        let mut buf = self.meta_buf.lock();
        buf.fill(0);
        SecSuper { consistent, sectors: self.sectors }.encode(&KernelCrc32c, &mut buf[..]);
        let region = Region { dev: meta, sector: 0, sectors: (META_BYTES / 512) as u64 };
        let r = self.aio.client().write(&[region], &buf[..], IoFlags { fua: true, preflush: false });
        // A failed write may still have landed: then what is on disk is not known.
        self.on_disk.store(if r.is_err() { 0 } else if consistent { 2 } else { 1 }, Ordering::Release);
        r
    }

    /// Changes the consistency state: on `meta_dev` first (durable before anything that
    /// depends on it is applied), then in memory.
    fn set_consistent(&self, consistent: bool) -> Result<(), LinkError> {
        let want = if consistent { 2 } else { 1 };
        let on_disk_ok = self.meta.is_none() || self.on_disk.load(Ordering::Acquire) == want;
        if self.consistent.load(Ordering::Acquire) == consistent && on_disk_ok {
            return Ok(());
        }
        self.sync_io(|| self.save_state(consistent)).map_err(LinkError::Apply)?;
        self.consistent.store(consistent, Ordering::Release);
        Ok(())
    }

    /// Runs the applier's synchronous I/O `io`, timed for `STALL_MS` (see `sync_io_ms`).
    fn sync_io<T>(&self, io: impl FnOnce() -> T) -> T {
        self.sync_io_ms.store(ms_now().max(1), Ordering::Relaxed);
        let r = io();
        self.sync_io_ms.store(0, Ordering::Relaxed);
        r
    }

    /// The data device.
    pub(crate) fn data(&self) -> &Device {
        self.aio.device()
    }

    /// The peer's address, if a session is active.
    pub(crate) fn peer(&self) -> Option<SocketAddrV4> {
        self.active.lock().as_ref().map(|p| p.addr)
    }

    pub(crate) fn listening(&self) -> bool {
        self.listener.lock().is_some()
    }

    /// The first handshake worker: opens the listening socket, then accepts like the others.
    fn run_listener(&self) {
        let mut logged = false;
        let l = loop {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            match Socket::listen(&self.ns, self.addr, BACKLOG) {
                Ok(l) => break l,
                Err(e) => {
                    // For example the address is still held by the table being replaced.
                    if !logged {
                        pr_warn!("repl: cannot listen on {} (error {}); retrying\n", self.addr, e.to_errno());
                        logged = true;
                    }
                    self.listen_wake.reinit();
                    self.listen_wake.wait_timeout_ms(500);
                }
            }
        };
        let Ok(l) = Arc::new(l, GFP_KERNEL) else { return };
        *self.listener.lock() = Some(l.clone());
        self.accept_loop(&l, 0);
    }

    /// Handshake worker `k` (of `HANDSHAKERS`): once the listening socket is open, accepts on it.
    fn run_handshaker(&self, k: usize) {
        let l = loop {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            if let Some(l) = self.listener.lock().clone() {
                break l;
            }
            sleep_ms(100);
        };
        self.accept_loop(&l, k);
    }

    /// Accepts connections and runs their handshakes, one at a time (the other workers run
    /// theirs meanwhile); a primary that completes one becomes the session to serve.
    fn accept_loop(&self, l: &Socket, k: usize) {
        while !self.stop.load(Ordering::Acquire) {
            let s = match l.accept(1000) {
                Ok(s) => s,
                Err(e) if is_timeout(&e) => continue,
                Err(_) => {
                    sleep_ms(100);
                    continue;
                }
            };
            let addr = s.peer_addr().unwrap_or(SocketAddrV4 { ip: [0; 4], port: 0 });
            s.set_timeouts(HANDSHAKE_MS, HANDSHAKE_MS);
            let Ok(s) = Arc::new(s, GFP_KERNEL) else { continue };
            // Published, so that removing the target can cut a handshake short.
            if let Some(slot) = self.handshaking.lock().get_mut(k) {
                *slot = Some(s.clone());
            }
            if self.stop.load(Ordering::Acquire) {
                s.shutdown();
            }
            // Suspended (a table reload, or the target being removed), this side serves no
            // session: none is made. Turned away before the handshake, the primary counts no
            // connection and sends no resync into a session that would end unserved (leaving it
            // to report this side inconsistent). Read after the socket is published above, and
            // `postsuspend` takes published sockets and shuts them down after it sets
            // `suspended`: a handshake under way when the suspend comes is cut short. Only one
            // whose last frame (this side's) was already sent can complete on the primary,
            // which then counts a connection, as for a session the suspend ends.
            let r = if self.suspended.load(Ordering::SeqCst) {
                None
            } else {
                let inconsistent = !self.consistent.load(Ordering::Acquire);
                Some(link::handshake(&s, wire::Role::Secondary, self.sectors, self.key.as_ref(), inconsistent, HANDSHAKE_MS))
            };
            // Taken back; gone if `postsuspend` took it.
            let cut = self.handshaking.lock().get_mut(k).is_some_and(|slot| slot.take().is_none());
            let turned_away = cut || r.is_none() || (matches!(r, Some(Ok(_))) && self.suspended.load(Ordering::SeqCst));
            match r {
                Some(Ok(session)) if !turned_away => {
                    s.set_timeouts(DEAD_MS, DEAD_MS);
                    let Ok(p) = Arc::new(Peer { sock: s, session, addr }, GFP_KERNEL) else { continue };
                    // An authenticated primary replaces the current session (say, after it
                    // restarted while this side still had the old connection open). Only the
                    // session active before this one is published is shut down: the applier
                    // may take the new one at once. Under the `pending` lock, so that two
                    // handshakes completing together publish one after the other.
                    let mut pending = self.pending.lock();
                    let old = self.active.lock().clone();
                    if let Some(prev) = pending.replace(p) {
                        // Published but not yet taken: replaced by this one.
                        prev.sock.shutdown();
                    }
                    drop(pending);
                    if let Some(a) = old {
                        a.sock.shutdown();
                    }
                    self.wake.complete();
                }
                Some(Err(e)) if !turned_away => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    if self.log.allow() {
                        pr_warn!("repl: refused connection from {}: {}\n", addr, e);
                    }
                }
                // Not started, cut short or not served, because this side is suspended. Said
                // once per suspend (the primary retries every few seconds).
                _ => {
                    s.shutdown();
                    if !self.turned_away_said.swap(true, Ordering::Relaxed) {
                        pr_info!("repl: turned away the connection from {}: the device is suspended\n", addr);
                    }
                }
            }
        }
    }

    fn run_applier(&self) {
        while !self.stop.load(Ordering::Acquire) {
            // Frozen at a marker (the session that carried it may have ended): nothing is
            // applied, from any session, until the thaw.
            if self.frozen.load(Ordering::Acquire) {
                let _ = self.frozen_wait(false);
                continue;
            }
            self.wake.reinit();
            // Announced before `suspended` is checked, and `postsuspend` sets `suspended` before
            // it checks this: one of the two sees the other.
            self.serving.store(true, Ordering::SeqCst);
            if self.suspended.load(Ordering::SeqCst) {
                self.serving.store(false, Ordering::SeqCst);
                // Turned away at once: the primary sees the connection end (its writes go
                // local and dirty) rather than waiting for acknowledgements that never come.
                if let Some(p) = self.pending.lock().take() {
                    p.sock.shutdown();
                }
                self.wake.wait_timeout_ms(1000);
                continue;
            }
            let Some(p) = self.pending.lock().take() else {
                self.serving.store(false, Ordering::SeqCst);
                self.wake.wait_timeout_ms(1000);
                continue;
            };
            *self.active.lock() = Some(p.clone());
            if self.pending.lock().is_some() {
                // A newer session was published while this one was being taken: the newest
                // authenticated primary wins.
                p.sock.shutdown();
            }
            self.stats.sessions.fetch_add(1, Ordering::Relaxed);
            if self.log.allow() {
                pr_info!("repl: primary {} connected\n", p.addr);
            }
            let gen = self.gen.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
            // The handshake just spoke: the first keepalive is due 2 s from here.
            self.last_tx_ms.store(ms_now(), Ordering::Relaxed);
            *self.out.lock() = Some(Out { peer: p.clone(), gen, tx: p.session.tx_seq });
            let why = self.serve(&p, gen);
            p.sock.shutdown();
            self.end_session();
            *self.active.lock() = None;
            self.serving.store(false, Ordering::SeqCst);
            match why {
                LinkError::Stopped => {}
                LinkError::Closed => {
                    if self.log.allow() {
                        pr_info!("repl: primary {} closed the session\n", p.addr);
                    }
                }
                _ => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    if self.log.allow() {
                        pr_warn!("repl: session with {} ended: {}\n", p.addr, why);
                    }
                }
            }
        }
    }

    /// After a session: waits for its writes in flight (their buffers must come back), then
    /// forgets its unacknowledged frames. The primary resends or resyncs what it did not see
    /// acknowledged.
    fn end_session(&self) {
        *self.out.lock() = None;
        let pipe = self.aio.handler();
        loop {
            pipe.to_applier.reinit();
            self.reap(false);
            {
                // Nothing of this session is left (no write in flight): its failure, if any,
                // is forgotten with it.
                let mut r = pipe.ring.lock();
                if r.len == 0 {
                    r.failed = false;
                    break;
                }
            }
            pipe.to_applier.wait_timeout_ms(1000);
        }
    }

    fn run_acker(&self) {
        let pipe = self.aio.handler();
        // Since when writes have been in flight with none finishing (the last completion, or
        // when the acker first saw the ring busy; None: none in flight), and whether the
        // current stall was logged. Both start over with each session: the applier reaps what
        // a session leaves (`end_session`) without the acker seeing it, and a stall is not
        // carried over to writes that only began.
        let mut stalled_since = None;
        let mut said = false;
        let mut session = self.gen.load(Ordering::Acquire);
        while !self.stop.load(Ordering::Acquire) {
            pipe.to_acker.reinit();
            let gen = self.gen.load(Ordering::Acquire);
            if gen != session {
                session = gen;
                stalled_since = None;
                said = false;
            }
            if self.reap(true) != 0 {
                stalled_since = None;
                continue;
            }
            let now = ms_now();
            let ring_wait = if pipe.ring.lock().len == 0 {
                stalled_since = None;
                0
            } else {
                now.saturating_sub(*stalled_since.get_or_insert(now))
            };
            let sync = self.sync_io_ms.load(Ordering::Relaxed);
            let sync_wait = if sync == 0 { 0 } else { now.saturating_sub(sync) };
            if ring_wait.max(sync_wait) < STALL_MS {
                said = false;
                self.keepalive();
            } else if !said {
                said = true;
                pr_warn!(
                    "repl {}: a write or flush to the data or metadata device has waited {} s: no more keepalives, the primary will give the link up\n",
                    self.addr,
                    STALL_MS / 1000
                );
            }
            pipe.to_acker.wait_timeout_ms(1000);
        }
    }

    /// Takes the finished frames from the front of the ring, returns their buffers to the
    /// pools and, with `ack`, acknowledges them with one `ACK` (the highest sequence number:
    /// acknowledgements are cumulative). A failed write stops acknowledgements and ends the
    /// session. Returns how many frames were taken.
    fn reap(&self, ack: bool) -> usize {
        let pipe = self.aio.handler();
        let mut last = None;
        let mut gen_seen = None;
        let mut n = 0;
        let mut bytes = 0u64;
        let mut failed = false;
        let mut ack_flags = 0;
        loop {
            let (slot, stray) = {
                let mut r = pipe.ring.lock();
                let slot = r.pop_finished();
                failed |= r.failed;
                (slot, r.stray.take())
            };
            if let Some(b) = stray {
                self.pools.lock().put(b);
            }
            let Some(slot) = slot else { break };
            n += 1;
            gen_seen = Some(slot.gen);
            let ignored = slot.state == SlotState::Ignored;
            if !failed && (slot.state == SlotState::Done || ignored) {
                last = Some((slot.gen, slot.seq));
                if slot.buf.is_some() {
                    bytes += slot.sectors * 512;
                }
            }
            if let Some(b) = slot.buf {
                self.pools.lock().put(b);
            }
            if ignored {
                // Acknowledged on its own, flagged: the acknowledgement ends here (the rest is
                // taken by the next call).
                ack_flags = wire::ACK_MARKER_IGNORED;
                break;
            }
        }
        if n == 0 {
            return 0;
        }
        pipe.to_applier.complete();
        if let Some((gen, seq)) = last {
            self.stats.frames.fetch_add(n as u64, Ordering::Relaxed);
            self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
            if ack && !failed {
                let a = wire::Ack { seq, durable_epoch: self.stats.durable_epoch.load(Ordering::Relaxed) };
                if self.send_out(gen, FrameType::Ack, ack_flags, &a.encode()).is_err() {
                    failed = true;
                }
            }
        }
        if failed {
            // A failed write (the applier reports it) or a failed send.
            if let Some(gen) = gen_seen {
                self.shut_out(gen);
            }
        }
        n
    }

    /// Shuts down session `gen`'s socket, if it is still the one served, so that the applier
    /// stops receiving: after a failed write, or a failed send (a frame may be cut short).
    fn shut_out(&self, gen: u32) {
        if let Some(o) = self.out.lock().as_ref().filter(|o| o.gen == gen) {
            o.peer.sock.shutdown();
        }
    }

    /// Whether a write of the current session failed.
    fn failed(&self) -> bool {
        self.aio.handler().ring.lock().failed
    }

    /// Sends a frame on session `gen`, if it is still the one served.
    fn send_out(&self, gen: u32, ty: FrameType, flags: u16, payload: &[u8]) -> Result<(), LinkError> {
        let mut o = self.out.lock();
        let Some(o) = o.as_mut().filter(|o| o.gen == gen) else { return Ok(()) };
        link::send_frame(&o.peer.sock, ty, flags, o.tx, payload, o.peer.session.tx_mac.as_ref())?;
        o.tx += 1;
        self.last_tx_ms.store(ms_now(), Ordering::Relaxed);
        Ok(())
    }

    /// A `PONG` if a session is served and nothing was sent on it for `KEEPALIVE_MS`: the
    /// applier may wait long for the data device (a slow or stalled disk, a dm-thin pool
    /// breaking sharing after a snapshot) and then sends nothing, not even acknowledgements.
    /// A failed send ends the session, as a failed acknowledgement does.
    fn keepalive(&self) {
        if ms_now().saturating_sub(self.last_tx_ms.load(Ordering::Relaxed)) < KEEPALIVE_MS {
            return;
        }
        let Some(gen) = self.out.lock().as_ref().map(|o| o.gen) else { return };
        if self.send_out(gen, FrameType::Pong, 0, &0u64.to_le_bytes()).is_err() {
            self.shut_out(gen);
        }
    }

    /// The `thaw <id>` message.
    pub(crate) fn thaw(&self, id: u64) -> Result {
        if !self.frozen.load(Ordering::Acquire) || self.frozen_id.load(Ordering::Acquire) != id {
            return Err(EINVAL);
        }
        self.frozen.store(false, Ordering::Release);
        self.thaw.complete();
        Ok(())
    }

    /// A marker's frame was applied (every write before it has completed): flush, so that it
    /// and every write before it are durable, then record it and tell userspace (a dm event).
    fn record_marker(&self, id: u64, time_ns: u64, label: &MarkerLabel) -> Result<(), LinkError> {
        self.sync_io(|| self.aio.client().flush(self.data())).map_err(LinkError::Apply)?;
        *self.marker_label.lock() = (id, *label);
        self.stats.marker_id.store(id, Ordering::Release);
        self.stats.marker_time_ns.store(time_ns, Ordering::Release);
        self.stats.markers.fetch_add(1, Ordering::Relaxed);
        if self.freeze_on_marker {
            self.frozen_id.store(id, Ordering::Release);
            self.frozen_since_ms.store(ms_now(), Ordering::Release);
            self.frozen.store(true, Ordering::Release);
        }
        pr_info!(
            "repl: marker {} is durable{}\n",
            id,
            if self.freeze_on_marker { "; frozen until thawed" } else { "" }
        );
        self.handle.event();
        Ok(())
    }

    /// Frozen at a marker: apply nothing until `thaw <id>`, the freeze timeout or removal.
    /// With `session`, the primary is kept from declaring the link dead by a `PONG` every 2 s.
    fn frozen_wait(&self, session: bool) -> Result<(), LinkError> {
        let gen = self.gen.load(Ordering::Acquire);
        loop {
            self.thaw.reinit();
            if !self.frozen.load(Ordering::Acquire) || self.stop.load(Ordering::Acquire) {
                break;
            }
            let waited = ms_now().saturating_sub(self.frozen_since_ms.load(Ordering::Acquire));
            if self.freeze_timeout_ms != 0 && waited >= u64::from(self.freeze_timeout_ms) {
                self.frozen.store(false, Ordering::Release);
                pr_info!("repl: marker {}: freeze timeout, thawing\n", self.frozen_id.load(Ordering::Relaxed));
                break;
            }
            self.thaw.wait_timeout_ms(2000);
            if session {
                // On failure the session is gone, but the freeze holds: the applier waits for
                // the thaw before it serves another session.
                self.send_out(gen, FrameType::Pong, 0, &0u64.to_le_bytes())?;
            }
        }
        // Thawed (or removed): tell userspace.
        self.handle.event();
        Ok(())
    }

    /// Waits until `cond` holds on the ring (re-checked after every write completion or
    /// returned buffer). Fails if a write failed or the target is going.
    fn wait_ring(&self, cond: impl Fn(&Ring) -> bool) -> Result<(), LinkError> {
        let pipe = self.aio.handler();
        loop {
            pipe.to_applier.reinit();
            {
                // Both under one lock: a drain that finds no write in flight also finds out
                // whether one of them failed.
                let r = pipe.ring.lock();
                if r.failed {
                    return Err(LinkError::Apply(EIO));
                }
                if cond(&r) {
                    return Ok(());
                }
            }
            if self.stop.load(Ordering::Acquire) {
                return Err(LinkError::Stopped);
            }
            pipe.to_applier.wait_timeout_ms(1000);
        }
    }

    /// Waits until every write received so far has completed.
    fn drain(&self) -> Result<(), LinkError> {
        self.wait_ring(|r| r.writing == 0)
    }

    /// A frame with nothing (more) to apply: acknowledged in order, after the writes before it.
    fn push_done(&self, gen: u32, seq: u64) -> Result<(), LinkError> {
        self.push_finished(gen, seq, SlotState::Done)
    }

    /// As [`Self::push_done`], in `state` (`Done`, or `Ignored` for a marker not recorded).
    fn push_finished(&self, gen: u32, seq: u64, state: SlotState) -> Result<(), LinkError> {
        self.wait_ring(|r| r.len < r.slots.len())?;
        let slot = Slot { seq, gen, state, sector: 0, sectors: 0, buf: None };
        let _ = self.aio.handler().ring.lock().push(slot);
        self.aio.handler().to_acker.complete();
        Ok(())
    }

    /// A receive buffer for a write frame with a `payload`-byte payload (waits for one).
    fn take_buf(&self, payload: usize) -> Result<IoBuf, LinkError> {
        let pipe = self.aio.handler();
        loop {
            pipe.to_applier.reinit();
            if let Some(b) = self.pools.lock().take(payload) {
                return Ok(b);
            }
            if self.failed() {
                return Err(LinkError::Apply(EIO));
            }
            if self.stop.load(Ordering::Acquire) {
                return Err(LinkError::Stopped);
            }
            pipe.to_applier.wait_timeout_ms(1000);
        }
    }

    /// Serves one session until it ends; returns why.
    fn serve(&self, p: &Peer, gen: u32) -> LinkError {
        let mut rx = p.session.rx;
        // The epoch of the last write received: the first write of another epoch waits for
        // every write before it.
        let mut epoch = None;
        loop {
            if self.stop.load(Ordering::Acquire) {
                return LinkError::Stopped;
            }
            if self.failed() {
                return LinkError::Apply(EIO);
            }
            let r = link::recv_header_by(&p.sock, None).and_then(|(raw, h)| match h.ty {
                FrameType::Write | FrameType::ResyncWrite => self.apply_write(p, gen, &raw, h, &mut rx, &mut epoch),
                _ => self.apply_control(p, gen, &raw, h, &mut rx),
            });
            if let Err(e) = r {
                // A failed write makes the acker shut the socket down: that is the reason,
                // not the socket error it causes here.
                if self.failed() {
                    return LinkError::Apply(EIO);
                }
                return e;
            }
        }
    }

    /// Receives a write frame into a pooled buffer and submits it.
    fn apply_write(
        &self,
        p: &Peer,
        gen: u32,
        raw: &link::RawHeader,
        h: Header,
        rx: &mut wire::RxSeq,
        epoch: &mut Option<u64>,
    ) -> Result<(), LinkError> {
        let mut buf = self.take_buf(h.len as usize)?;
        // Received so that the data is page-aligned, as block I/O from it needs.
        let r = match buf.get_mut(FRAME_OFF..) {
            Some(b) => link::recv_payload_by(&p.sock, raw, h, rx, p.session.rx_mac.as_ref(), b, None)
                .and_then(|(h, payload)| Ok((h, wire::Write::decode(payload, self.sectors)?))),
            None => Err(LinkError::Wire(wire::WireError::BadLength)),
        };
        let (h, sector, w_epoch, len, marker) = match r {
            Ok((h, w)) => {
                // A marker record written into the marker region is recognised as well.
                let marker = if h.ty == FrameType::Write && w.sector >= self.marker_start {
                    MarkerRecord::decode(w.data, &KernelCrc32c).map(|m| (m.id, m.time_ns, m.label))
                } else {
                    None
                };
                (h, w.sector, w.epoch, w.data.len(), marker)
            }
            Err(e) => {
                self.pools.lock().put(buf);
                return Err(e);
            }
        };
        let sectors = len as u64 / 512;
        let flags = IoFlags { fua: h.flags & wire::WRITE_FUA != 0, preflush: false };
        if h.ty == FrameType::ResyncWrite {
            // Resync writes come in no particular order: the device is not a consistent image
            // from the first one on (on meta_dev before that write is applied).
            if let Err(e) = self.set_consistent(false) {
                self.pools.lock().put(buf);
                return Err(e);
            }
            self.stats.resync_bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
        let new_epoch = h.ty == FrameType::Write && epoch.is_some_and(|e| e != w_epoch);
        if h.ty == FrameType::Write {
            *epoch = Some(w_epoch);
        }
        let pipe = self.aio.handler();
        let ordered = new_epoch || marker.is_some() || pipe.ring.lock().overlaps(sector, sectors);
        let ready = if ordered { self.drain() } else { Ok(()) }.and_then(|()| self.wait_ring(|r| r.len < r.slots.len()));
        if let Err(e) = ready {
            self.pools.lock().put(buf);
            return Err(e);
        }
        let data = DATA_OFF..DATA_OFF + len;
        if let Some((id, t, label)) = marker {
            // In line: written, flushed and recorded before anything after it is applied.
            let region = Region { dev: self.data(), sector, sectors };
            let r = match buf.get(data) {
                Some(d) => self.sync_io(|| self.aio.client().write(&[region], d, flags)).map_err(LinkError::Apply),
                None => Err(LinkError::Wire(wire::WireError::BadLength)),
            };
            self.pools.lock().put(buf);
            r?;
            self.stats.bytes.fetch_add(len as u64, Ordering::Relaxed);
            self.marker(gen, h.seq, id, t, &label)
        } else {
            let slot = Slot { seq: h.seq, gen, state: SlotState::Writing, sector, sectors, buf: None };
            let Some(tag) = pipe.ring.lock().push(slot) else {
                // Cannot happen: room was waited for, and only this thread pushes.
                self.pools.lock().put(buf);
                return Err(LinkError::Apply(EIO));
            };
            buf.set_tag(tag);
            match self.aio.write(buf, data, sector, flags) {
                Ok(()) => Ok(()),
                Err((b, e)) => {
                    // Not submitted: the slot fails (the acker stops here), the buffer returns.
                    let mut r = pipe.ring.lock();
                    r.writing = r.writing.saturating_sub(1);
                    r.failed = true;
                    if let Some(s) = r.slots.get_mut(tag).and_then(|s| s.as_mut()) {
                        s.state = SlotState::Failed;
                    }
                    drop(r);
                    self.pools.lock().put(b);
                    Err(LinkError::Apply(e))
                }
            }
        }
    }

    /// A marker (a `MARKER` frame, or a record written into the marker region) after every
    /// write before it completed: recorded (flushed first), acknowledged, and with
    /// `freeze_on_marker` the applier freezes here. On an inconsistent device (a resync under
    /// way) it is not recorded, and its acknowledgement says so (`ACK_MARKER_IGNORED`): the
    /// primary must not count it as acknowledged, since no image of it can be taken.
    fn marker(&self, gen: u32, seq: u64, id: u64, time_ns: u64, label: &MarkerLabel) -> Result<(), LinkError> {
        // A marker marks a consistent point only on a consistent image.
        let recorded = if self.consistent.load(Ordering::Acquire) {
            self.record_marker(id, time_ns, label)?;
            true
        } else {
            self.stats.markers_ignored.fetch_add(1, Ordering::Relaxed);
            pr_warn!("repl: marker {} ignored: a resync is under way, the data device is not consistent\n", id);
            false
        };
        self.push_finished(gen, seq, if recorded { SlotState::Done } else { SlotState::Ignored })?;
        if recorded && self.frozen.load(Ordering::Acquire) {
            self.frozen_wait(true)?;
        }
        Ok(())
    }

    /// Any frame but a write: applied in line, after every write before it.
    fn apply_control(&self, p: &Peer, gen: u32, raw: &link::RawHeader, h: Header, rx: &mut wire::RxSeq) -> Result<(), LinkError> {
        let mut buf = [0u8; CONTROL_MAX];
        let (h, payload) = link::recv_payload_by(&p.sock, raw, h, rx, p.session.rx_mac.as_ref(), &mut buf, None)?;
        match h.ty {
            FrameType::Marker => {
                let m = wire::Marker::decode(payload)?;
                self.drain()?;
                self.marker(gen, h.seq, m.id, m.time_ns, &m.label)
            }
            FrameType::Barrier => {
                let epoch = payload.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
                self.drain()?;
                // The end of a resync is flushed too: consistent means durable.
                if h.flags & (wire::BARRIER_FLUSH | wire::BARRIER_RESYNC_DONE) != 0 {
                    self.sync_io(|| self.aio.client().flush(self.data())).map_err(LinkError::Apply)?;
                    if epoch > 0 {
                        self.stats.durable_epoch.store(epoch, Ordering::Relaxed);
                    }
                }
                if h.flags & wire::BARRIER_RESYNC_DONE != 0 {
                    self.set_consistent(true)?;
                    pr_info!("repl: resync from {} complete; the data device is consistent\n", p.addr);
                }
                self.push_done(gen, h.seq)
            }
            FrameType::Ping => self.push_done(gen, h.seq),
            FrameType::Close => Err(LinkError::Closed),
            t => Err(LinkError::Unexpected(t)),
        }
    }
}
