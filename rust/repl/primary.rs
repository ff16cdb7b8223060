// SPDX-License-Identifier: GPL-2.0

//! The primary role: every write is written locally and sent, in order, to the secondary.
//!
//! Three long-running workers, each on its own `WQ_MEM_RECLAIM` workqueue:
//! - the **connector** connects (with backoff) and runs the handshake;
//! - the **sender** takes the bios `map` queued, in arrival order: for each it copies the data,
//!   submits the local write (a clone) and sends the frame; between bios it sends resync writes
//!   of dirty regions and keepalive pings;
//! - the **receiver** reads acknowledgements and completes the bios that waited for them.
//!
//! A bio completes when its local write is done and its network part is: sent (`async`) or
//! acknowledged (`sync`). On disconnection every frame not acknowledged marks its regions dirty
//! and the waiting bios complete (the link is degraded, the data is safe locally); while
//! disconnected writes go to the local device only and mark their regions dirty. After a
//! reconnection the sender resyncs the dirty regions.

use crate::dmcore::bio::{Bio, BioList, BioSet, BlkStatus, CloneDone, Op};
use crate::dmcore::device::Device;
use crate::dmcore::dmio::{IoClient, Region};
use crate::dmcore::hmac::KernelHmac;
use crate::dmcore::net::{econnreset, enotconn, etimedout, NetNs, Socket};
use crate::dmcore::sync::IrqSpinLock;
use crate::dmcore::crc::KernelCrc32c;
use crate::dmcore::wq::{real_time_ns, Completion, WorkQueue};
use crate::link::{self, LinkError};
use crate::wbrepl_core::parse::SocketAddrV4;
use crate::wbrepl_core::marker::{MarkerRecord, RECORD_LEN};
use crate::wbrepl_core::replstate::{DirtyMap, Entry, Kind, Window};
use crate::wbrepl_core::wire::{self, FrameType, RxSeq, WRITE_FIXED};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use kernel::new_mutex;
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};
use kernel::time::Ktime;
use kernel::workqueue::{impl_has_work, new_work, Work, WorkItem};

/// Largest data a frame (and so a bio) carries: `max_io_len`.
pub(crate) const MAX_IO_SECTORS: u32 = wire::MAX_DATA / 512;
/// Where a frame's data starts in the send buffer: page-aligned, as block I/O into the buffer
/// (a resync read) needs it; the write frame's fixed part sits just before it.
pub(crate) const DATA_OFF: usize = 4096;
const FRAME_OFF: usize = DATA_OFF - WRITE_FIXED as usize;
/// Dirty-map granularity: 64 KiB regions.
pub(crate) const REGION_SHIFT: u32 = 7;
/// Connection attempt timeout.
const CONNECT_MS: u32 = 3000;
/// Handshake step timeout.
const HANDSHAKE_MS: u32 = 5000;
/// A ping is sent after this long without frames.
const PING_MS: u64 = 3000;
/// Nothing received for this long (pings are acknowledged): the link is dead.
const DEAD_MS: u32 = 12000;
/// Reconnection backoff bounds.
const BACKOFF_MIN_MS: u32 = 100;
const BACKOFF_MAX_MS: u32 = 5000;
/// Under load, one resync frame goes out per this many writes.
const RESYNC_EVERY: u32 = 8;
/// A connection that lasted this long resets the backoff.
const STABLE_MS: u64 = 10000;

/// Per-bio data: the frame the bio is in, on which connection (0: none).
#[derive(Clone, Copy, Default)]
pub(crate) struct PerBio {
    seq: u64,
    gen: u32,
    status: u8,
}

type PBio = Bio<PerBio>;

pub(crate) fn ms_now() -> u64 {
    Ktime::ktime_get().to_ms().max(0) as u64
}

/// One connection to the secondary.
struct Conn {
    sock: Socket,
    mac: Option<KernelHmac>,
    rx: RxSeq,
    gen: u32,
    dead: AtomicBool,
}

/// State shared with bio completions (interrupt context): under an IRQ-safe lock.
struct State {
    incoming: BioList<PerBio>,
    win: Window<PBio, KVVec<Entry<PBio>>>,
    dirty: DirtyMap<KVVec<u64>>,
    /// Current connection generation (0: disconnected).
    gen: u32,
    /// A resync has started and its end is not acknowledged: the secondary is inconsistent.
    resyncing: bool,
    /// Sequence number of the `BARRIER` that ends the resync, once sent.
    resync_done_seq: Option<u64>,
    /// Next region the resync looks at.
    resync_cursor: u64,
    /// Regions the current resync has sent.
    resync_sent: u64,
    /// Dirty regions when the current resync started.
    resync_total: u64,
    acked_seq: u64,
    /// A `marker <label>` message waiting for the sender.
    marker_req: Option<wire::Marker>,
    /// Its outcome: 0 sent, or a negative errno.
    marker_result: i32,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) frames_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) frames_acked: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) resync_bytes: AtomicU64,
    /// The last marker sent (a marker-region write or a `MARKER` frame); 0: none yet.
    pub(crate) marker_id: AtomicU64,
}

#[pin_data]
pub(crate) struct Primary {
    pub(crate) data: Device,
    pub(crate) sectors: u64,
    pub(crate) addr: SocketAddrV4,
    ns: NetNs,
    key: Option<KernelHmac>,
    pub(crate) sync: bool,
    max_bytes: u64,
    /// First sector of the marker region.
    marker_start: u64,
    #[pin]
    st: IrqSpinLock<State>,
    #[pin]
    conn: Mutex<Option<Arc<Conn>>>,
    #[pin]
    buf: Mutex<KVVec<u8>>,
    /// Wakes the sender: bios queued, window space, connection change, stop.
    #[pin]
    wake: Completion,
    /// Wakes the connector: disconnection, stop.
    #[pin]
    conn_wake: Completion,
    /// Signalled when the last local write in flight completes.
    #[pin]
    local_idle: Completion,
    /// Signalled when a requested marker frame was sent (or could not be).
    #[pin]
    marker_done: Completion,
    #[pin]
    marker_lock: Mutex<()>,
    local_inflight: AtomicU32,
    bs: BioSet,
    dmio: IoClient,
    stop: AtomicBool,
    next_gen: AtomicU32,
    pub(crate) stats: Stats,
    wq_conn: WorkQueue,
    wq_send: WorkQueue,
    wq_recv: WorkQueue,
    #[pin]
    w_conn: Work<Primary, 0>,
    #[pin]
    w_send: Work<Primary, 1>,
    #[pin]
    w_recv: Work<Primary, 2>,
}

impl_has_work! {
    impl HasWork<Self, 0> for Primary { self.w_conn }
    impl HasWork<Self, 1> for Primary { self.w_send }
    impl HasWork<Self, 2> for Primary { self.w_recv }
}

impl WorkItem<0> for Primary {
    type Pointer = Arc<Primary>;
    fn run(this: Arc<Primary>) {
        this.run_connector(&this);
    }
}

impl WorkItem<1> for Primary {
    type Pointer = Arc<Primary>;
    fn run(this: Arc<Primary>) {
        this.run_sender(&this);
    }
}

impl WorkItem<2> for Primary {
    type Pointer = Arc<Primary>;
    fn run(this: Arc<Primary>) {
        this.run_receiver();
    }
}

/// What the status line shows.
pub(crate) struct Snapshot {
    pub(crate) connected: bool,
    pub(crate) inflight: usize,
    pub(crate) inflight_bytes: u64,
    pub(crate) lag_ms: u64,
    pub(crate) dirty_regions: u64,
    pub(crate) resync: Option<(u64, u64)>,
    pub(crate) peer_data: &'static str,
}

impl Primary {
    /// Builds the shared state. `max_inflight_kb` bounds the window's data.
    pub(crate) fn new(
        data: Device,
        sectors: u64,
        addr: SocketAddrV4,
        key: Option<KernelHmac>,
        sync: bool,
        max_inflight_kb: u32,
        marker_sectors: u32,
    ) -> Result<Arc<Self>> {
        let frames = (max_inflight_kb as usize / 4).clamp(64, 65536);
        let mut slots = KVVec::with_capacity(frames, GFP_KERNEL)?;
        for _ in 0..frames {
            slots.push(Entry::default_of(), GFP_KERNEL)?;
        }
        let words = KVVec::from_elem(0u64, DirtyMap::<KVVec<u64>>::words_for(sectors, REGION_SHIFT), GFP_KERNEL)?;
        let dirty = DirtyMap::new(words, sectors, REGION_SHIFT).ok_or(EINVAL)?;
        let st = State {
            incoming: BioList::new(),
            win: Window::new(slots, 1),
            dirty,
            gen: 0,
            resyncing: false,
            resync_done_seq: None,
            resync_cursor: 0,
            resync_sent: 0,
            resync_total: 0,
            acked_seq: 0,
            marker_req: None,
            marker_result: 0,
        };
        let buf = KVVec::from_elem(0u8, DATA_OFF + wire::MAX_DATA as usize, GFP_KERNEL)?;
        let bs = BioSet::new(64)?;
        let dmio = IoClient::new()?;
        // One workqueue per long-running worker, so that none waits for another.
        let wq_conn = WorkQueue::new(kernel::c_str!("repl_conn"), 1, true)?;
        let wq_send = WorkQueue::new(kernel::c_str!("repl_send"), 1, true)?;
        let wq_recv = WorkQueue::new(kernel::c_str!("repl_recv"), 1, true)?;
        let me = Arc::pin_init(
            pin_init!(Primary {
                data,
                sectors,
                addr,
                ns: NetNs::current(),
                key,
                sync,
                max_bytes: u64::from(max_inflight_kb) * 1024,
                marker_start: sectors.saturating_sub(u64::from(marker_sectors)),
                st <- IrqSpinLock::new(st),
                conn <- new_mutex!(None),
                buf <- new_mutex!(buf),
                wake <- Completion::new(),
                conn_wake <- Completion::new(),
                local_idle <- Completion::new(),
                marker_done <- Completion::new(),
                marker_lock <- new_mutex!(()),
                local_inflight: AtomicU32::new(0),
                bs,
                dmio,
                stop: AtomicBool::new(false),
                next_gen: AtomicU32::new(1),
                stats: Stats::default(),
                wq_conn,
                wq_send,
                wq_recv,
                w_conn <- new_work!("repl::conn"),
                w_send <- new_work!("repl::send"),
                w_recv <- new_work!("repl::recv"),
            }),
            GFP_KERNEL,
        )?;
        Ok(me)
    }

    /// Starts the workers (idempotent: a queued or running worker is not queued twice).
    pub(crate) fn start(this: &Arc<Self>) {
        let _ = this.wq_conn.enqueue::<Arc<Primary>, 0>(this.clone());
        let _ = this.wq_send.enqueue::<Arc<Primary>, 1>(this.clone());
    }

    /// Stops the workers and drops the connection; returns once they all have. The owner
    /// (the target) then holds the last reference, so the workqueues are never destroyed from
    /// one of their own workers.
    pub(crate) fn stop(this: &Arc<Self>) {
        this.stop.store(true, Ordering::Release);
        this.wake.complete_all();
        this.conn_wake.complete_all();
        // The sender returns once nothing is queued (a target is destroyed without I/O).
        this.wq_send.flush();
        if let Some(c) = this.current() {
            // An orderly goodbye, so the secondary knows this was not a failure.
            let _ = this.send_counted(&c, FrameType::Close, 0, Kind::Other, 0, 0, &0u32.to_le_bytes());
            this.disconnect(&c, &LinkError::Stopped);
        }
        this.wq_conn.flush();
        // The connector may have connected meanwhile.
        if let Some(c) = this.current() {
            this.disconnect(&c, &LinkError::Stopped);
        }
        this.wq_recv.flush();
    }

    /// `map` of a write or flush: queued for the sender, in arrival order.
    pub(crate) fn queue(&self, bio: PBio) {
        self.st.lock().incoming.push(bio);
        self.wake.complete();
    }

    /// The `marker <label>` message: a `MARKER` frame in the stream, after every write that
    /// completed before this call. Waits until it is sent; returns its id.
    pub(crate) fn inject_marker(&self, label: [u8; wire::LABEL_LEN]) -> Result<u64> {
        let _one = self.marker_lock.lock();
        let id = self.stats.marker_id.load(Ordering::Relaxed) + 1;
        let m = wire::Marker { id, time_ns: real_time_ns(), label };
        {
            let mut g = self.st.lock();
            if g.gen == 0 {
                return Err(enotconn());
            }
            g.marker_req = Some(m);
            g.marker_result = 1;
        }
        self.marker_done.reinit();
        self.wake.complete();
        let mut waited = 0;
        loop {
            let r = self.st.lock().marker_result;
            if r <= 0 {
                return if r == 0 { Ok(id) } else { Err(Error::from_errno(r)) };
            }
            if waited >= 10000 {
                let mut g = self.st.lock();
                g.marker_req = None;
                g.marker_result = 0;
                return Err(etimedout());
            }
            self.marker_done.wait_timeout_ms(100);
            waited += 100;
        }
    }

    /// Sends a requested marker frame (sender only).
    fn send_marker(&self, c: Option<&Conn>) {
        let Some(m) = self.st.lock().marker_req.take() else { return };
        let r = match c {
            Some(c) => match self.send_counted(c, FrameType::Marker, 0, Kind::Other, 0, 0, &m.encode()) {
                Ok(_) => {
                    self.stats.marker_id.fetch_max(m.id, Ordering::Relaxed);
                    0
                }
                Err(e) => {
                    self.disconnect(c, &e);
                    enotconn().to_errno()
                }
            },
            None => enotconn().to_errno(),
        };
        self.st.lock().marker_result = r;
        self.marker_done.complete();
    }

    /// The `resync` message: every region is resynced (a full synchronisation).
    pub(crate) fn resync_all(&self) {
        let mut g = self.st.lock();
        g.dirty.mark_all();
        g.resync_cursor = 0;
        drop(g);
        self.wake.complete();
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let now = ms_now();
        let g = self.st.lock();
        let peer_data = if g.resyncing {
            "inconsistent"
        } else if g.dirty.count() > 0 {
            "behind"
        } else {
            "consistent"
        };
        Snapshot {
            connected: g.gen != 0,
            inflight: g.win.len(),
            inflight_bytes: g.win.bytes(),
            lag_ms: g.win.front().map_or(0, |e| now.saturating_sub(e.sent_ms)),
            dirty_regions: g.dirty.count(),
            resync: g.resyncing.then_some((g.resync_sent, g.resync_total.max(g.resync_sent))),
            peer_data,
        }
    }

    fn current(&self) -> Option<Arc<Conn>> {
        self.conn.lock().clone()
    }

    fn local_finished(&self) {
        if self.local_inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.local_idle.complete();
        }
    }

    // --- connector

    fn run_connector(&self, this: &Arc<Self>) {
        let mut backoff = BACKOFF_MIN_MS;
        let mut last_err: Option<i32> = None;
        let mut since: Option<u64> = None;
        while !self.stop.load(Ordering::Acquire) {
            self.conn_wake.reinit();
            if self.current().is_some() {
                self.conn_wake.wait_timeout_ms(1000);
                continue;
            }
            if let Some(t) = since.take() {
                // Lost a connection. One that failed soon after it was made (say, the peer
                // cannot apply what it gets) is retried with backoff, not in a tight loop.
                if ms_now().saturating_sub(t) < STABLE_MS {
                    self.conn_wake.wait_timeout_ms(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX_MS);
                } else {
                    backoff = BACKOFF_MIN_MS;
                }
                continue;
            }
            match self.connect() {
                Ok(c) => {
                    since = Some(ms_now());
                    last_err = None;
                    if self.install(c) {
                        // The previous connection's receiver has returned or soon will (its
                        // socket is shut down); the ordered workqueue runs this one after it.
                        let _ = self.wq_recv.enqueue::<Arc<Primary>, 2>(this.clone());
                    }
                }
                Err(e) => {
                    // Log each new kind of failure once, not every retry.
                    let code = match e {
                        LinkError::Io(x) => x.to_errno(),
                        LinkError::Wire(w) => 1000 + w as i32,
                        _ => 2000,
                    };
                    if last_err != Some(code) {
                        pr_warn!("repl: cannot connect to {}: {}; retrying\n", self.addr, e);
                        last_err = Some(code);
                    }
                    self.conn_wake.wait_timeout_ms(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX_MS);
                }
            }
        }
    }

    fn connect(&self) -> Result<Conn, LinkError> {
        let sock = Socket::connect(&self.ns, self.addr, CONNECT_MS)?;
        sock.set_timeouts(HANDSHAKE_MS, HANDSHAKE_MS);
        let s = link::handshake(&sock, wire::Role::Primary, self.sectors, self.key.as_ref())?;
        sock.set_timeouts(DEAD_MS, DEAD_MS);
        let gen = self.next_gen.fetch_add(1, Ordering::Relaxed).max(1);
        Ok(Conn { sock, mac: s.mac, rx: s.rx, gen, dead: AtomicBool::new(false) })
    }

    fn install(&self, c: Conn) -> bool {
        let first_seq = if c.mac.is_some() { 2 } else { 1 };
        let Ok(c) = Arc::new(c, GFP_KERNEL) else { return false };
        {
            let mut g = self.st.lock();
            g.win.reset(first_seq);
            g.gen = c.gen;
            g.acked_seq = first_seq - 1;
            g.resync_cursor = 0;
            g.resync_done_seq = None;
        }
        *self.conn.lock() = Some(c.clone());
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        pr_info!("repl: connected to {} (protocol {})\n", self.addr, if self.sync { "sync" } else { "async" });
        self.wake.complete();
        true
    }

    fn disconnect(&self, c: &Conn, why: &LinkError) {
        if c.dead.swap(true, Ordering::AcqRel) {
            return;
        }
        c.sock.shutdown();
        if !self.stop.load(Ordering::Acquire) {
            pr_warn!("repl: connection to {} lost: {}\n", self.addr, why);
        }
        {
            let mut cur = self.conn.lock();
            if cur.as_ref().is_some_and(|x| x.gen == c.gen) {
                *cur = None;
            }
        }
        let mut done = BioList::new();
        {
            let mut g = self.st.lock();
            if g.gen == c.gen {
                let State { win, dirty, .. } = &mut *g;
                win.drain(|mut e| {
                    if matches!(e.kind, Kind::Write | Kind::Resync) && !e.acked {
                        dirty.mark(e.sector, u64::from(e.sectors));
                    }
                    if let Some(b) = e.held.take() {
                        done.push(b);
                    }
                });
                g.gen = 0;
            }
        }
        while let Some(b) = done.pop() {
            let st = BlkStatus::from_raw(b.data().status);
            b.end(st);
        }
        self.wake.complete();
        self.conn_wake.complete();
    }

    // --- sender

    fn run_sender(&self, this: &Arc<Self>) {
        let mut buf = self.buf.lock();
        let mut gen = 0;
        let mut epoch = 1u64;
        let mut last_tx = ms_now();
        let mut since_resync = 0u32;
        loop {
            self.wake.reinit();
            let conn = self.current().filter(|c| !c.dead.load(Ordering::Acquire));
            if let Some(c) = &conn {
                if c.gen != gen {
                    // A new connection: epochs restart, a pending resync is counted anew.
                    gen = c.gen;
                    epoch = 1;
                    let mut g = self.st.lock();
                    if g.dirty.count() > 0 && !g.resyncing {
                        g.resync_total = g.dirty.count();
                        g.resync_sent = 0;
                    }
                }
            }
            self.send_marker(conn.as_deref());
            let bio = self.st.lock().incoming.pop();
            match bio {
                Some(b) => {
                    self.handle(this, b, conn.as_deref(), &mut buf, &mut epoch);
                    last_tx = ms_now();
                    // Under a steady workload the queue is never empty: interleave the resync.
                    since_resync += 1;
                    if since_resync >= RESYNC_EVERY {
                        since_resync = 0;
                        if let Some(c) = &conn {
                            if let Err(e) = self.resync_step(c, &mut buf) {
                                self.disconnect(c, &e);
                            }
                        }
                    }
                }
                None => {
                    if self.stop.load(Ordering::Acquire) {
                        break;
                    }
                    let Some(c) = conn else {
                        self.wake.wait_timeout_ms(1000);
                        continue;
                    };
                    match self.resync_step(&c, &mut buf) {
                        Ok(true) => {
                            last_tx = ms_now();
                            continue;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            self.disconnect(&c, &e);
                            continue;
                        }
                    }
                    if ms_now().saturating_sub(last_tx) >= PING_MS {
                        if let Err(e) = self.send_counted(&c, FrameType::Ping, 0, Kind::Other, 0, 0, &0u64.to_le_bytes()) {
                            self.disconnect(&c, &e);
                        }
                        last_tx = ms_now();
                    }
                    self.wake.wait_timeout_ms(PING_MS as u32);
                }
            }
        }
    }

    /// Waits until the window has room for `bytes` on `c` (or `c` is gone: then `false`).
    fn wait_room(&self, c: &Conn, bytes: u64) -> bool {
        loop {
            self.wake.reinit();
            {
                let g = self.st.lock();
                if g.gen != c.gen {
                    return false;
                }
                if g.win.fits(bytes, self.max_bytes) {
                    return true;
                }
            }
            self.wake.wait_timeout_ms(100);
        }
    }

    /// Pushes a window entry for the next frame and sends it; `Err` ends the connection.
    #[allow(clippy::too_many_arguments)]
    fn send_counted(
        &self,
        c: &Conn,
        ty: FrameType,
        flags: u16,
        kind: Kind,
        sector: u64,
        sectors: u32,
        payload: &[u8],
    ) -> Result<u64, LinkError> {
        let seq = {
            let mut g = self.st.lock();
            if g.gen != c.gen {
                return Err(LinkError::Io(econnreset()));
            }
            let seq = g.win.next_seq();
            let e = Entry { seq, kind, sector, sectors, sent_ms: ms_now(), local_done: true, net_done: true, ..Entry::default_of() };
            if !g.win.push(e) {
                return Err(LinkError::Io(ENOSPC));
            }
            seq
        };
        link::send_frame(&c.sock, ty, flags, seq, payload, c.mac.as_ref())?;
        self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    fn handle(&self, this: &Arc<Self>, mut bio: PBio, c: Option<&Conn>, buf: &mut KVVec<u8>, epoch: &mut u64) {
        let op = bio.op();
        let sector = bio.target_sector();
        let sectors = bio.sectors();
        let is_write = op == Op::Write;
        if is_write {
            self.stats.writes.fetch_add(1, Ordering::Relaxed);
        }
        let bytes = u64::from(sectors) * 512;
        let c = c.filter(|c| self.wait_room(c, bytes));
        let Some(c) = c else {
            // Disconnected: local only, and the regions differ from the secondary now.
            if is_write {
                self.st.lock().dirty.mark(sector, u64::from(sectors));
            }
            *bio.data_mut() = PerBio::default();
            self.local_inflight.fetch_add(1, Ordering::AcqRel);
            bio.submit_clone(&self.bs, &self.data, sector, this.clone());
            return;
        };
        let (ty, flags, range) = if is_write {
            let w = wire::Write { sector, epoch: *epoch, data: &[] };
            let mut fixed = [0u8; WRITE_FIXED as usize];
            w.encode_fixed(&mut fixed);
            let Some(out) = buf.get_mut(FRAME_OFF..DATA_OFF + bytes as usize) else {
                // Larger than max_io_len allows: cannot happen; fail the bio rather than guess.
                bio.end(BlkStatus::IOERR);
                return;
            };
            out[..WRITE_FIXED as usize].copy_from_slice(&fixed);
            bio.copy_to(&mut out[WRITE_FIXED as usize..]);
            if sector >= self.marker_start {
                if let Some(m) = out.get(WRITE_FIXED as usize..WRITE_FIXED as usize + RECORD_LEN).and_then(|r| MarkerRecord::decode(r, &KernelCrc32c)) {
                    self.stats.marker_id.fetch_max(m.id, Ordering::Relaxed);
                }
            }
            (FrameType::Write, if bio.is_fua() { wire::WRITE_FUA } else { 0 }, FRAME_OFF..DATA_OFF + bytes as usize)
        } else {
            buf[..8].copy_from_slice(&epoch.to_le_bytes());
            (FrameType::Barrier, wire::BARRIER_FLUSH, 0..8)
        };
        // The window entry exists before the local write can complete.
        let seq = {
            let mut g = self.st.lock();
            if g.gen != c.gen {
                None
            } else {
                let seq = g.win.next_seq();
                let kind = if is_write { Kind::Write } else { Kind::Barrier };
                let e = Entry { seq, kind, sector, sectors, sent_ms: ms_now(), ..Entry::default_of() };
                g.win.push(e).then_some(seq)
            }
        };
        let Some(seq) = seq else {
            // Lost the connection meanwhile: as disconnected.
            if is_write {
                self.st.lock().dirty.mark(sector, u64::from(sectors));
            }
            *bio.data_mut() = PerBio::default();
            self.local_inflight.fetch_add(1, Ordering::AcqRel);
            bio.submit_clone(&self.bs, &self.data, sector, this.clone());
            return;
        };
        *bio.data_mut() = PerBio { seq, gen: c.gen, status: 0 };
        self.local_inflight.fetch_add(1, Ordering::AcqRel);
        bio.submit_clone(&self.bs, &self.data, sector, this.clone());
        match link::send_frame(&c.sock, ty, flags, seq, &buf[range], c.mac.as_ref()) {
            Ok(()) => {
                self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
                if ty == FrameType::Barrier {
                    *epoch += 1;
                }
                if !self.sync {
                    self.net_done(c.gen, seq);
                }
            }
            Err(e) => self.disconnect(c, &e),
        }
    }

    /// The network part of frame `seq` is done (async: sent).
    fn net_done(&self, gen: u32, seq: u64) {
        let mut g = self.st.lock();
        if g.gen != gen {
            return;
        }
        let Some(e) = g.win.get_mut(seq) else { return };
        e.net_done = true;
        let held = e.held.take();
        drop(g);
        if let Some(b) = held {
            let st = BlkStatus::from_raw(b.data().status);
            b.end(st);
        }
    }

    /// One resync frame: the next run of dirty regions, read after every local write in
    /// flight has completed (so the read sees them; later writes are sent after it). `Ok(true)`
    /// if something was sent.
    fn resync_step(&self, c: &Conn, buf: &mut KVVec<u8>) -> Result<bool, LinkError> {
        let rs = 1u64 << REGION_SHIFT;
        let max_regions = u64::from(wire::MAX_DATA / 512) / rs;
        let run = {
            let g = self.st.lock();
            if g.gen != c.gen {
                return Ok(false);
            }
            if g.dirty.count() == 0 {
                if g.resyncing && g.resync_done_seq.is_none() {
                    drop(g);
                    // Every resync write is before this barrier: once it is applied, the
                    // secondary is consistent again.
                    let seq = self.send_counted(
                        c,
                        FrameType::Barrier,
                        wire::BARRIER_FLUSH | wire::BARRIER_RESYNC_DONE,
                        Kind::Barrier,
                        0,
                        0,
                        &0u64.to_le_bytes(),
                    )?;
                    self.st.lock().resync_done_seq = Some(seq);
                    return Ok(true);
                }
                return Ok(false);
            }
            if !g.win.fits(max_regions * rs * 512, self.max_bytes) {
                return Ok(false);
            }
            g.dirty.next_run(g.resync_cursor, max_regions)
        };
        let Some((first, n)) = run else { return Ok(false) };
        // Wait for local writes in flight (only the sender submits them, and it is here).
        loop {
            self.local_idle.reinit();
            if self.local_inflight.load(Ordering::Acquire) == 0 {
                break;
            }
            self.local_idle.wait_timeout_ms(100);
        }
        let sector = first * rs;
        let sectors = (n * rs).min(self.sectors - sector);
        let end = DATA_OFF + sectors as usize * 512;
        let w = wire::Write { sector, epoch: 0, data: &[] };
        let mut fixed = [0u8; WRITE_FIXED as usize];
        w.encode_fixed(&mut fixed);
        buf[FRAME_OFF..DATA_OFF].copy_from_slice(&fixed);
        self.dmio
            .read(Region { dev: &self.data, sector, sectors }, &mut buf[DATA_OFF..end])
            .map_err(LinkError::Apply)?;
        let seq = {
            let mut g = self.st.lock();
            if g.gen != c.gen {
                return Ok(false);
            }
            // Cleared when sent: an unacknowledged resync write marks its regions dirty again
            // if the connection drops.
            g.dirty.clear(first, n);
            g.resync_cursor = first + n;
            g.resyncing = true;
            g.resync_done_seq = None;
            g.resync_sent += n;
            let seq = g.win.next_seq();
            let e = Entry {
                seq,
                kind: Kind::Resync,
                sector,
                sectors: sectors as u32,
                sent_ms: ms_now(),
                local_done: true,
                net_done: true,
                ..Entry::default_of()
            };
            if !g.win.push(e) {
                g.dirty.mark(sector, sectors);
                return Ok(false);
            }
            seq
        };
        link::send_frame(&c.sock, FrameType::ResyncWrite, 0, seq, &buf[FRAME_OFF..end], c.mac.as_ref())?;
        self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
        self.stats.resync_bytes.fetch_add(sectors * 512, Ordering::Relaxed);
        Ok(true)
    }

    // --- receiver

    fn run_receiver(&self) {
        let Some(c) = self.current() else { return };
        let mut rx = c.rx;
        let mut buf = [0u8; 64];
        let r = loop {
            if self.stop.load(Ordering::Acquire) {
                break LinkError::Stopped;
            }
            let (h, p) = match link::recv_frame(&c.sock, &mut rx, c.mac.as_ref(), &mut buf) {
                Ok(x) => x,
                Err(e) => break e,
            };
            match h.ty {
                FrameType::Ack => {
                    let a = match wire::Ack::decode(p) {
                        Ok(a) => a,
                        Err(e) => break e.into(),
                    };
                    if let Err(e) = self.acked(&c, a.seq) {
                        break e;
                    }
                }
                FrameType::Pong => {}
                t => break LinkError::Unexpected(t),
            }
        };
        self.disconnect(&c, &r);
    }

    fn acked(&self, c: &Conn, seq: u64) -> Result<(), LinkError> {
        let mut done = BioList::new();
        {
            let mut g = self.st.lock();
            if g.gen != c.gen {
                return Ok(());
            }
            let before = g.acked_seq;
            if !g.win.ack(seq, self.sync, |b| done.push(b)) {
                return Err(LinkError::Wire(wire::WireError::BadField));
            }
            let State { win, resyncing, resync_done_seq, .. } = &mut *g;
            win.retire(|e| {
                if e.kind == Kind::Barrier && Some(e.seq) == *resync_done_seq {
                    *resyncing = false;
                    *resync_done_seq = None;
                }
            });
            if seq > before {
                g.acked_seq = seq;
                self.stats.frames_acked.fetch_add(seq - before, Ordering::Relaxed);
            }
        }
        while let Some(b) = done.pop() {
            let st = BlkStatus::from_raw(b.data().status);
            b.end(st);
        }
        self.wake.complete();
        Ok(())
    }
}

impl CloneDone<PerBio> for Primary {
    fn clone_done(&self, mut parent: PBio, status: BlkStatus) {
        let d = *parent.data();
        if d.gen != 0 {
            let mut g = self.st.lock();
            if g.gen == d.gen {
                if let Some(e) = g.win.get_mut(d.seq) {
                    e.local_done = true;
                    if !e.net_done {
                        parent.data_mut().status = status.to_raw();
                        e.held = Some(parent);
                        drop(g);
                        self.local_finished();
                        return;
                    }
                    let State { win, resyncing, resync_done_seq, .. } = &mut *g;
                    win.retire(|e| {
                        if e.kind == Kind::Barrier && Some(e.seq) == *resync_done_seq {
                            *resyncing = false;
                            *resync_done_seq = None;
                        }
                    });
                }
            }
        }
        parent.end(status);
        self.local_finished();
    }
}
