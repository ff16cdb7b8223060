// SPDX-License-Identifier: GPL-2.0

//! The secondary role: accept one authenticated primary and apply its stream to the data
//! device, in order.
//!
//! Two long-running workers, each on its own workqueue:
//! - the **listener** accepts connections and runs the handshake. Only a peer that completes
//!   it (authenticated, with `auth`) replaces the current session, so a stray or hostile
//!   connection cannot disturb a working link;
//! - the **applier** serves the session: receives each frame, checks it (header bounds before
//!   the payload is read; CRC, MAC and sequence number after), applies it and acknowledges it.
//!   Frames are applied one at a time in stream order, which keeps every epoch boundary;
//!   a flush barrier flushes the data device before it is acknowledged.
//!
//! Any malformed frame ends the session (logged with its reason); the target keeps working
//! and the listener accepts the next connection.

use crate::dmcore::crc::KernelCrc32c;
use crate::dmcore::device::Device;
use crate::dmcore::target::TargetHandle;
use crate::dmcore::dmio::{IoClient, IoFlags, Region};
use crate::dmcore::hmac::KernelHmac;
use crate::dmcore::net::{is_timeout, NetNs, Socket};
use crate::dmcore::wq::{Completion, WorkQueue};
use crate::link::{self, LinkError, Session};
use crate::primary::{ms_now, DATA_OFF};
use crate::wbrepl_core::parse::SocketAddrV4;
use crate::wbrepl_core::marker::MarkerRecord;
use crate::wbrepl_core::wire::{self, FrameType};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use kernel::new_mutex;
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};
use kernel::workqueue::{impl_has_work, new_work, Work, WorkItem};

/// Where a received frame's payload goes in the buffer: a write's data then starts at
/// `DATA_OFF`, page-aligned.
const FRAME_OFF: usize = DATA_OFF - wire::WRITE_FIXED as usize;
/// Handshake step timeout.
const HANDSHAKE_MS: u32 = 5000;
/// Nothing received for this long (the primary pings every few seconds): the session is dead.
const DEAD_MS: u32 = 15000;

struct Peer {
    sock: Arc<Socket>,
    session: Session,
    addr: SocketAddrV4,
}

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

    /// Whether a line may be logged now. Called from one worker at a time.
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
    /// The last marker recorded (durable with everything before it); 0: none.
    pub(crate) marker_id: AtomicU64,
    pub(crate) marker_time_ns: AtomicU64,
}

#[pin_data]
pub(crate) struct Secondary {
    pub(crate) data: Device,
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
    #[pin]
    thaw: Completion,
    handle: TargetHandle,
    #[pin]
    pending: Mutex<Option<Arc<Peer>>>,
    #[pin]
    active: Mutex<Option<Arc<Peer>>>,
    #[pin]
    listener: Mutex<Option<Arc<Socket>>>,
    /// The connection whose handshake the listener is running.
    #[pin]
    handshaking: Mutex<Option<Arc<Socket>>>,
    #[pin]
    buf: Mutex<KVVec<u8>>,
    /// Wakes the applier: a session was published, or the target is going.
    #[pin]
    wake: Completion,
    /// The listener's own retry waits (cut short at removal); apart from `wake`, so that
    /// neither worker consumes the other's wake-up.
    #[pin]
    listen_wake: Completion,
    dmio: IoClient,
    stop: AtomicBool,
    pub(crate) stats: Stats,
    log: LogLimit,
    wq_listen: WorkQueue,
    wq_apply: WorkQueue,
    #[pin]
    w_listen: Work<Secondary, 0>,
    #[pin]
    w_apply: Work<Secondary, 1>,
}

impl_has_work! {
    impl HasWork<Self, 0> for Secondary { self.w_listen }
    impl HasWork<Self, 1> for Secondary { self.w_apply }
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

impl Secondary {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        data: Device,
        sectors: u64,
        addr: SocketAddrV4,
        key: Option<KernelHmac>,
        marker_sectors: u32,
        freeze_on_marker: bool,
        freeze_timeout_ms: Option<u32>,
        handle: TargetHandle,
    ) -> Result<Arc<Self>> {
        let buf = KVVec::from_elem(0u8, FRAME_OFF + wire::MAX_PAYLOAD as usize, GFP_KERNEL)?;
        let dmio = IoClient::new()?;
        let wq_listen = WorkQueue::new(kernel::c_str!("repl_listen"), 1, true)?;
        let wq_apply = WorkQueue::new(kernel::c_str!("repl_apply"), 1, true)?;
        Arc::pin_init(
            pin_init!(Secondary {
                data,
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
                thaw <- Completion::new(),
                handle,
                pending <- new_mutex!(None),
                active <- new_mutex!(None),
                listener <- new_mutex!(None),
                handshaking <- new_mutex!(None),
                buf <- new_mutex!(buf),
                wake <- Completion::new(),
                listen_wake <- Completion::new(),
                dmio,
                stop: AtomicBool::new(false),
                stats: Stats::default(),
                log: LogLimit::default(),
                wq_listen,
                wq_apply,
                w_listen <- new_work!("repl::listen"),
                w_apply <- new_work!("repl::apply"),
            }),
            GFP_KERNEL,
        )
    }

    pub(crate) fn start(this: &Arc<Self>) {
        let _ = this.wq_listen.enqueue::<Arc<Secondary>, 0>(this.clone());
        let _ = this.wq_apply.enqueue::<Arc<Secondary>, 1>(this.clone());
    }

    /// Stops both workers and closes every socket; returns once the workers have returned.
    pub(crate) fn stop(this: &Arc<Self>) {
        this.stop.store(true, Ordering::Release);
        if let Some(l) = this.listener.lock().clone() {
            l.shutdown();
        }
        if let Some(h) = this.handshaking.lock().clone() {
            h.shutdown();
        }
        if let Some(p) = this.active.lock().clone() {
            p.sock.shutdown();
        }
        this.wake.complete_all();
        this.listen_wake.complete_all();
        this.thaw.complete_all();
        this.wq_listen.flush();
        this.wq_apply.flush();
        *this.pending.lock() = None;
        *this.listener.lock() = None;
    }

    /// The peer's address, if a session is active.
    pub(crate) fn peer(&self) -> Option<SocketAddrV4> {
        self.active.lock().as_ref().map(|p| p.addr)
    }

    pub(crate) fn listening(&self) -> bool {
        self.listener.lock().is_some()
    }

    fn run_listener(&self) {
        let mut logged = false;
        let l = loop {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            match Socket::listen(&self.ns, self.addr, 4) {
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
        if self.stop.load(Ordering::Acquire) {
            return;
        }
        while !self.stop.load(Ordering::Acquire) {
            let s = match l.accept(1000) {
                Ok(s) => s,
                Err(e) if is_timeout(&e) => continue,
                Err(_) => {
                    self.listen_wake.reinit();
                    self.listen_wake.wait_timeout_ms(100);
                    continue;
                }
            };
            let addr = s.peer_addr().unwrap_or(SocketAddrV4 { ip: [0; 4], port: 0 });
            s.set_timeouts(HANDSHAKE_MS, HANDSHAKE_MS);
            let Ok(s) = Arc::new(s, GFP_KERNEL) else { continue };
            // Published, so that removing the target can cut a handshake short.
            *self.handshaking.lock() = Some(s.clone());
            if self.stop.load(Ordering::Acquire) {
                s.shutdown();
            }
            let r = link::handshake(&s, wire::Role::Secondary, self.sectors, self.key.as_ref(), HANDSHAKE_MS);
            *self.handshaking.lock() = None;
            match r {
                Ok(session) => {
                    s.set_timeouts(DEAD_MS, DEAD_MS);
                    let Ok(p) = Arc::new(Peer { sock: s, session, addr }, GFP_KERNEL) else { continue };
                    // An authenticated primary replaces the current session (say, after it
                    // restarted while this side still had the old connection open). Only the
                    // session active before this one is published is shut down: the applier
                    // may take the new one at once.
                    let old = self.active.lock().clone();
                    *self.pending.lock() = Some(p);
                    if let Some(a) = old {
                        a.sock.shutdown();
                    }
                    self.wake.complete();
                }
                Err(e) => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    if self.log.allow() {
                        pr_warn!("repl: refused connection from {}: {}\n", addr, e);
                    }
                }
            }
        }
    }

    fn run_applier(&self) {
        let mut buf = self.buf.lock();
        while !self.stop.load(Ordering::Acquire) {
            // Frozen at a marker (the session that carried it may have ended): nothing is
            // applied, from any session, until the thaw.
            if self.frozen.load(Ordering::Acquire) {
                let _ = self.frozen_wait(None);
                continue;
            }
            self.wake.reinit();
            let Some(p) = self.pending.lock().take() else {
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
            let why = self.serve(&p, &mut buf);
            p.sock.shutdown();
            *self.active.lock() = None;
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

    /// The `thaw <id>` message.
    pub(crate) fn thaw(&self, id: u64) -> Result {
        if !self.frozen.load(Ordering::Acquire) || self.frozen_id.load(Ordering::Acquire) != id {
            return Err(EINVAL);
        }
        self.frozen.store(false, Ordering::Release);
        self.thaw.complete();
        Ok(())
    }

    /// A marker's frame was applied: flush, so that it and every write before it are durable,
    /// then record it and tell userspace (a dm event).
    fn record_marker(&self, id: u64, time_ns: u64) -> Result<(), LinkError> {
        self.dmio.flush(&self.data).map_err(LinkError::Apply)?;
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
    /// The primary is kept from declaring the link dead by a `PONG` every 2 s.
    fn frozen_wait(&self, mut p: Option<(&Peer, &mut u64)>) -> Result<(), LinkError> {
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
            if let Some((peer, tx)) = p.as_mut() {
                let r = link::send_frame(&peer.sock, FrameType::Pong, 0, **tx, &0u64.to_le_bytes(), peer.session.mac.as_ref());
                if let Err(e) = r {
                    // The session is gone, but the freeze holds: the applier waits for the
                    // thaw before it serves another session.
                    return Err(e);
                }
                **tx += 1;
            }
        }
        // Thawed (or removed): tell userspace.
        self.handle.event();
        Ok(())
    }

    fn ack(&self, p: &Peer, tx: &mut u64, seq: u64) -> Result<(), LinkError> {
        let a = wire::Ack { seq, durable_epoch: self.stats.durable_epoch.load(Ordering::Relaxed) };
        link::send_frame(&p.sock, FrameType::Ack, 0, *tx, &a.encode(), p.session.mac.as_ref())?;
        *tx += 1;
        Ok(())
    }

    /// Serves one session until it ends; returns why.
    fn serve(&self, p: &Peer, buf: &mut KVVec<u8>) -> LinkError {
        let mut rx = p.session.rx;
        let mut tx = p.session.tx_seq;
        loop {
            if self.stop.load(Ordering::Acquire) {
                return LinkError::Stopped;
            }
            // Received so that a write's data is page-aligned, as block I/O from it needs.
            let (h, payload) = match link::recv_frame(&p.sock, &mut rx, p.session.mac.as_ref(), &mut buf[FRAME_OFF..]) {
                Ok(x) => x,
                Err(e) => return e,
            };
            let mut marker = None;
            let r = match h.ty {
                FrameType::Write | FrameType::ResyncWrite => {
                    let w = match wire::Write::decode(payload, self.sectors) {
                        Ok(w) => w,
                        Err(e) => return e.into(),
                    };
                    if h.ty == FrameType::ResyncWrite {
                        // Resync writes come in no particular order.
                        self.consistent.store(false, Ordering::Release);
                        self.stats.resync_bytes.fetch_add(w.data.len() as u64, Ordering::Relaxed);
                    }
                    let flags = IoFlags { fua: h.flags & wire::WRITE_FUA != 0, preflush: false };
                    let region = Region { dev: &self.data, sector: w.sector, sectors: w.data.len() as u64 / 512 };
                    if h.ty == FrameType::Write && w.sector >= self.marker_start {
                        marker = MarkerRecord::decode(w.data, &KernelCrc32c).map(|m| (m.id, m.time_ns));
                    }
                    self.dmio.write(&[region], w.data, flags).map_err(LinkError::Apply).map(|()| {
                        self.stats.bytes.fetch_add(w.data.len() as u64, Ordering::Relaxed);
                    })
                }
                FrameType::Marker => match wire::Marker::decode(payload) {
                    Ok(m) => {
                        marker = Some((m.id, m.time_ns));
                        Ok(())
                    }
                    Err(e) => return e.into(),
                },
                FrameType::Barrier => {
                    let epoch = payload.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
                    let mut r = Ok(());
                    if h.flags & wire::BARRIER_FLUSH != 0 {
                        r = self.dmio.flush(&self.data).map_err(LinkError::Apply);
                        if r.is_ok() && epoch > 0 {
                            self.stats.durable_epoch.store(epoch, Ordering::Relaxed);
                        }
                    }
                    if r.is_ok() && h.flags & wire::BARRIER_RESYNC_DONE != 0 {
                        self.consistent.store(true, Ordering::Release);
                        pr_info!("repl: resync from {} complete; the data device is consistent\n", p.addr);
                    }
                    r
                }
                FrameType::Ping => Ok(()),
                FrameType::Close => return LinkError::Closed,
                t => return LinkError::Unexpected(t),
            };
            // A marker marks a consistent point only on a consistent image.
            if let Some((id, _)) = marker {
                if !self.consistent.load(Ordering::Acquire) {
                    pr_warn!("repl: marker {} ignored: a resync is under way, the data device is not consistent\n", id);
                    marker = None;
                }
            }
            let r = r.and_then(|()| match marker {
                Some((id, t)) => self.record_marker(id, t),
                None => Ok(()),
            });
            if let Err(e) = r {
                return e;
            }
            self.stats.frames.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.ack(p, &mut tx, h.seq) {
                return e;
            }
            if marker.is_some() && self.frozen.load(Ordering::Acquire) {
                if let Err(e) = self.frozen_wait(Some((p, &mut tx))) {
                    return e;
                }
            }
        }
    }
}
