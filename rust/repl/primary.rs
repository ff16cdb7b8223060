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
use crate::dmcore::dmio::{IoClient, IoFlags, Region};
use crate::dmcore::hmac::KernelHmac;
use crate::dmcore::errno::{econnreset, enotconn, etimedout};
use crate::dmcore::net::{NetNs, Socket};
use crate::dmcore::sync::IrqSpinLock;
use crate::dmcore::crc::KernelCrc32c;
use crate::dmcore::wq::{real_time_ns, Completion, WorkQueue};
use crate::link::{self, LinkError};
use crate::wbrepl_core::parse::SocketAddrV4;
use crate::wbrepl_core::marker::{MarkerRecord, RECORD_LEN};
use crate::wbrepl_core::replmeta::{MetaSuper, SUPER_BYTES};
use crate::wbrepl_core::replbook::Book;
use crate::wbrepl_core::replstate::{DirtyMap, Entry, Kind, RunSearch};
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
/// Bitmap words copied per hold of the state lock when the bitmap is loaded or saved.
const BITMAP_STEP: usize = 512;
/// Window frames a bitmap save scans per hold of the state lock.
const WINDOW_STEP: usize = 256;
/// Bitmap words looked at per hold of the state lock when the resync looks for dirty regions.
const SEARCH_WORDS: usize = 1024;
/// Window slots writes leave free, for control frames (pings, barriers, markers, close).
const RESERVED_SLOTS: usize = 8;
/// A flush barrier goes out at most this often when writes were sent since the last one, so
/// that what the secondary applied becomes durable there (see `Book`, rust/core/src/replbook.rs).
const FLUSH_EVERY_MS: u64 = 1000;
/// The window full for this long: the primary goes ahead (see `wait_room`).
const CONGESTED_MS: u64 = 10000;
/// Send buffer room kept free for control frames (barriers, markers, pings), so that they never
/// block on a peer that stopped reading (see `sock_room`).
const SEND_RESERVE: u64 = 64 * 1024;
/// Buffer memory a frame may take beyond twice its bytes (its header's packet; see
/// `frame_need`).
const FRAME_SLACK: u64 = 4096;
/// Send buffer every connection starts with (TCP's default maximum, `tcp_wmem[2]`): room for
/// the largest frame (`frame_need` of 1 MiB), a resync frame and the reserve, so that
/// `sock_room` can admit any frame while the buffer is not full.
const SNDBUF_MIN: u32 = 4 << 20;
/// Bytes of one dirty-map region (the smallest resync frame's data).
const RESYNC_REGION_BYTES: u64 = 512 << REGION_SHIFT;
/// Under load, one resync frame goes out per this many writes.
const RESYNC_EVERY: u32 = 8;
/// A connection that lasted this long resets the backoff.
const STABLE_MS: u64 = 10000;

/// Send buffer memory a frame of `bytes` may take. The buffer counts memory, not bytes: each
/// packet queued costs about 900 bytes beyond its data. With segmentation offload (the usual
/// case) packets carry up to 64 KiB and a frame takes little more than its bytes; without it
/// (IPsec without offload, TCP-MD5) a packet per MSS, up to 1.6 times the bytes; and a
/// frame's header goes in a send of its own.
fn frame_need(bytes: u64) -> u64 {
    2 * bytes + FRAME_SLACK
}

/// The largest frame (bytes of data, 0 if none fits) whose `frame_need` fits in `free` bytes
/// of send buffer memory with `SEND_RESERVE` left over: the inverse of `frame_need`, for sizing
/// resync frames.
fn frame_room(free: i64) -> u64 {
    (free.max(0) as u64).saturating_sub(SEND_RESERVE + FRAME_SLACK) / 2
}

/// Whether a frame of `bytes` (and then `extra` bytes of buffer memory) fits in `c`'s send
/// buffer with `SEND_RESERVE` left over, so that sending it cannot block on a peer that
/// stopped reading. An empty buffer takes any frame (the kernel sends at least that much
/// without waiting only if the buffer is large enough, which `SNDBUF_MIN` sees to unless TCP
/// memory pressure shrank it).
fn sock_room(c: &Conn, bytes: u64, extra: u64) -> bool {
    let (free, queued) = c.sock.send_space();
    // Not through `frame_room`: a frame of 0 bytes (the barrier of an empty flush) needs room
    // too, or a run of flushes could eat the reserve and block the sender.
    queued == 0 || free.max(0) as u64 >= frame_need(bytes).saturating_add(extra).saturating_add(SEND_RESERVE)
}

/// Per-bio data: the frame the bio is in, on which connection (0: none).
#[derive(Clone, Copy, Default)]
pub(crate) struct PerBio {
    seq: u64,
    /// The epoch its frame was sent in (0: not sent).
    epoch: u64,
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
    /// MAC keys (with `auth`): of our frames, and of the secondary's.
    tx_mac: Option<KernelHmac>,
    rx_mac: Option<KernelHmac>,
    rx: RxSeq,
    /// Sequence number of our first frame after the handshake.
    first_seq: u64,
    gen: u32,
    dead: AtomicBool,
    /// The secondary reported an interrupted resync (`HELLO_INCONSISTENT`).
    peer_inconsistent: bool,
}

/// State shared with bio completions (interrupt context): under an IRQ-safe lock.
struct State {
    incoming: BioList<PerBio>,
    /// The window, the dirty map and the maps of regions not yet durable at the secondary: the
    /// bookkeeping of `rust/core/src/replbook.rs` (host-tested there), bounded work per call.
    book: Book<PBio, KVVec<Entry<PBio>>, KVVec<u64>>,
    /// Current connection generation (0: disconnected).
    gen: u32,
    /// Ahead of the secondary on this connection (see `wait_room`).
    ahead: bool,
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

impl State {
    /// Retires what can be retired from the window's front (`Book::retire`); a marker it
    /// retires counts as acknowledged. Returns the write data bytes retired.
    fn retire(&mut self, marker_acked: &AtomicU64) -> u64 {
        let r = self.book.retire();
        if let Some(id) = r.marker {
            marker_acked.fetch_max(id, Ordering::Relaxed);
        }
        r.bytes
    }

    /// The connection is gone: every frame in the window marks its regions dirty (the unstable
    /// maps are then folded in by the caller, [`Primary::fold_unstable`], holding
    /// `bitmap_lock`); the bios that were waiting for the network go to `done`.
    fn drain(&mut self, done: &mut BioList<PerBio>) {
        self.book.drain(|b| done.push(b));
        self.gen = 0;
        self.ahead = false;
    }
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) frames_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) frames_acked: AtomicU64,
    /// Write data bytes acknowledged (and retired).
    pub(crate) bytes_acked: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) connects: AtomicU64,
    /// Times the primary went ahead (the window stayed full).
    pub(crate) congested: AtomicU64,
    /// The last marker sent (a marker-region write or a `MARKER` frame); 0: none yet.
    pub(crate) marker_id: AtomicU64,
    /// The last marker the secondary acknowledged (recorded, durable); 0: none yet.
    pub(crate) marker_acked: AtomicU64,
    /// Marker-region writes refused because they could not be replicated in order.
    pub(crate) markers_refused: AtomicU64,
    /// The last marker the secondary acknowledged as *not recorded* (`ACK_MARKER_IGNORED`: it
    /// was resyncing, so no image of it exists); 0: none.
    pub(crate) marker_ignored: AtomicU64,
}

#[pin_data]
pub(crate) struct Primary {
    pub(crate) data: Device,
    /// Superblock and persistent dirty bitmap (`meta_dev`).
    pub(crate) meta: Option<Device>,
    pub(crate) sectors: u64,
    pub(crate) addr: SocketAddrV4,
    ns: NetNs,
    #[pin]
    meta_buf: Mutex<KVVec<u8>>,
    meta_loaded: AtomicBool,
    /// The dirty bitmap covers every region that may differ from the secondary: read from a
    /// clean superblock, or all of it after a crash (not after a format, nor without meta_dev).
    bitmap_trusted: AtomicBool,
    /// Suspended: no reconnection until resumed.
    suspended: AtomicBool,
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
    /// Serialises whole-bitmap operations (saving it, draining the window into it, marking
    /// everything) so that a save sees each region either dirty or still in flight.
    #[pin]
    bitmap_lock: Mutex<()>,
    local_inflight: AtomicU32,
    /// The epoch new writes are sent in (DRBD's transfer-log epoch). It ends, and the next
    /// write starts a new one, when a write sent in it completes (see `end_sent`) or a flush
    /// barrier is sent. The secondary applies the writes of one epoch in any order, but every
    /// frame before the first write of an epoch before that write: so a write submitted after
    /// another completed is applied after it.
    epoch: AtomicU64,
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
    pub(crate) ahead: bool,
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
        meta: Option<Device>,
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
        let nw = DirtyMap::<KVVec<u64>>::words_for(sectors, REGION_SHIFT);
        let map = || -> Result<DirtyMap<KVVec<u64>>> {
            DirtyMap::new(KVVec::from_elem(0u64, nw, GFP_KERNEL)?, sectors, REGION_SHIFT).ok_or(EINVAL)
        };
        // The dirty map, and those of regions applied but not yet durable (see `Book`).
        let (dirty, unst_old, unst_new, unst_spare) = (map()?, map()?, map()?, map()?);
        let book = Book::new(slots, 1, dirty, unst_old, unst_new, unst_spare).ok_or(EINVAL)?;
        let st = State {
            incoming: BioList::new(),
            book,
            gen: 0,
            ahead: false,
            resync_cursor: 0,
            resync_sent: 0,
            resync_total: 0,
            acked_seq: 0,
            marker_req: None,
            marker_result: 0,
        };
        let buf = KVVec::from_elem(0u8, DATA_OFF + wire::MAX_DATA as usize, GFP_KERNEL)?;
        let geom = MetaSuper { clean: false, sectors, region_shift: REGION_SHIFT };
        let meta_len = if meta.is_some() { geom.device_bytes() as usize } else { 0 };
        if let Some(m) = &meta {
            if m.sectors() * 512 < geom.device_bytes() {
                return Err(ENOSPC);
            }
        }
        let meta_buf = KVVec::from_elem(0u8, meta_len, GFP_KERNEL)?;
        let bs = BioSet::new(64)?;
        let dmio = IoClient::new()?;
        // One workqueue per long-running worker, so that none waits for another.
        let wq_conn = WorkQueue::new(kernel::c_str!("repl_conn"), 1, true)?;
        let wq_send = WorkQueue::new(kernel::c_str!("repl_send"), 1, true)?;
        let wq_recv = WorkQueue::new(kernel::c_str!("repl_recv"), 1, true)?;
        let me = Arc::pin_init(
            pin_init!(Primary {
                data,
                meta,
                sectors,
                meta_buf <- new_mutex!(meta_buf),
                meta_loaded: AtomicBool::new(false),
                bitmap_trusted: AtomicBool::new(false),
                suspended: AtomicBool::new(false),
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
                bitmap_lock <- new_mutex!(()),
                local_inflight: AtomicU32::new(0),
                epoch: AtomicU64::new(1),
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

    /// Before a resume: the first time, loads the dirty bitmap from `meta_dev` (a superblock
    /// that is not clean means the primary went down without saving it: every region is
    /// resynced); every time, marks the superblock active. No write is accepted before this.
    pub(crate) fn preresume(&self) -> Result {
        let Some(meta) = &self.meta else {
            self.suspended.store(false, Ordering::Release);
            self.conn_wake.complete();
            return Ok(());
        };
        let mut buf = self.meta_buf.lock();
        let geom = MetaSuper { clean: false, sectors: self.sectors, region_shift: REGION_SHIFT };
        if !self.meta_loaded.load(Ordering::Acquire) {
            self.dmio.read(Region { dev: meta, sector: 0, sectors: (SUPER_BYTES / 512) as u64 }, &mut buf[..SUPER_BYTES])?;
            match MetaSuper::decode(&buf[..SUPER_BYTES], &KernelCrc32c) {
                Err(e) => {
                    pr_err!("repl {}: cannot use the metadata device: {}\n", meta, e.as_str());
                    return Err(EINVAL);
                }
                Ok(None) => {
                    pr_info!("repl {}: formatting the metadata device; the devices are taken to be in sync (message 'resync' if not)\n", meta);
                }
                Ok(Some(sb)) if sb.sectors != self.sectors || sb.region_shift != REGION_SHIFT => {
                    pr_err!(
                        "repl {}: the metadata device belongs to a device of {} sectors (this one has {}); wipe it to start over\n",
                        meta,
                        sb.sectors,
                        self.sectors
                    );
                    return Err(EINVAL);
                }
                Ok(Some(sb)) if !sb.clean => {
                    pr_warn!("repl {}: the primary went down without saving its dirty bitmap: the whole device will be resynced\n", meta);
                    self.mark_all_dirty();
                    self.bitmap_trusted.store(true, Ordering::Release);
                }
                Ok(Some(_)) => {
                    let bytes = geom.device_bytes() as usize - SUPER_BYTES;
                    let region = Region { dev: meta, sector: (SUPER_BYTES / 512) as u64, sectors: (bytes / 512) as u64 };
                    self.dmio.read(region, &mut buf[SUPER_BYTES..])?;
                    let words = self.st.lock().book.dirty().word_count();
                    for piece in (0..words).step_by(BITMAP_STEP) {
                        // A bounded piece per lock hold (interrupts are off while it is held).
                        let mut g = self.st.lock();
                        for i in piece..(piece + BITMAP_STEP).min(words) {
                            let at = SUPER_BYTES + i * 8;
                            let w = buf.get(at..at + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
                            g.book.dirty_mut().merge_word(i, w);
                        }
                    }
                    let n = self.st.lock().book.dirty().count();
                    self.bitmap_trusted.store(true, Ordering::Release);
                    pr_info!("repl {}: loaded the dirty bitmap: {} KiB to resync\n", meta, n << (REGION_SHIFT - 1));
                }
            }
            self.meta_loaded.store(true, Ordering::Release);
        }
        // Active: a crash from now on means a full resync.
        self.write_super(meta, &mut buf, geom)?;
        self.suspended.store(false, Ordering::Release);
        self.conn_wake.complete();
        Ok(())
    }

    /// After a suspend (also before the target is destroyed): saves the dirty bitmap, with
    /// every frame not yet acknowledged counted dirty, and marks the superblock clean. Until
    /// resumed, the primary does not reconnect.
    pub(crate) fn postsuspend(&self) {
        self.suspended.store(true, Ordering::Release);
        let Some(meta) = &self.meta else {
            let (dirty, inflight) = {
                let g = self.st.lock();
                (g.book.unconfirmed_regions(), g.book.win().len())
            };
            if dirty > 0 || inflight > 0 {
                pr_warn!(
                    "repl {}: suspended with {} KiB to resync and {} frames unconfirmed, and no meta_dev to keep them: a table loaded next starts clean (message 'resync' there)\n",
                    self.data,
                    dirty << (REGION_SHIFT - 1),
                    inflight
                );
            }
            return;
        };
        if !self.meta_loaded.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self.save_meta(meta) {
            pr_err!("repl {}: saving the dirty bitmap failed ({}); the next load resyncs everything\n", meta, e.to_errno());
        }
    }

    /// Ends a bitmap snapshot (`Book::save_end`): what was acknowledged meanwhile retires now.
    fn end_saving(&self) {
        let bytes = {
            let mut g = self.st.lock();
            let r = g.book.save_end();
            if let Some(id) = r.marker {
                self.stats.marker_acked.fetch_max(id, Ordering::Relaxed);
            }
            r.bytes
        };
        self.stats.bytes_acked.fetch_add(bytes, Ordering::Relaxed);
        self.wake.complete();
    }

    /// Clears the stale spare map (`Book::clear_spare_step`), a bounded piece per lock hold;
    /// then a durable map that waited for it is swapped out. Process context (the sender).
    fn clear_spare(&self) {
        while self.st.lock().book.clear_spare_step(BITMAP_STEP) {}
    }

    /// After a disconnection drained the window (`State::drain`): every region applied but not
    /// known durable at the secondary becomes dirty (`Book::fold_step`), a bounded piece per
    /// lock hold. The caller holds `bitmap_lock`; the maps are not otherwise touched meanwhile
    /// (no connection: nothing retires or is pushed).
    fn fold_unstable(&self) {
        while self.st.lock().book.fold_step(BITMAP_STEP) {}
    }

    fn save_meta(&self, meta: &Device) -> Result {
        let _b = self.bitmap_lock.lock();
        let mut buf = self.meta_buf.lock();
        let geom = MetaSuper { clean: true, sectors: self.sectors, region_shift: REGION_SHIFT };
        let bitmap = &mut buf[SUPER_BYTES..];
        bitmap.fill(0);
        // A consistent snapshot, though taken in pieces (`Book::save_begin`): while it is taken,
        // no frame retires from the window (an acknowledgement between the copy of a region's
        // word and the window scan below would otherwise move it from the window to a map
        // already copied, and save it clean though it may not be durable at the secondary) and
        // no resync frame is pushed (which clears dirty bits and fills the window).
        // Disconnections and new connections wait for `bitmap_lock`.
        self.st.lock().book.save_begin();
        // Bounded pieces per lock hold (interrupts are off while it is held): the words, then
        // the frames in flight, which are not known durable either.
        while self.st.lock().book.save_words(BITMAP_STEP, |j, w| {
            if let Some(b) = bitmap.get_mut(j * 8..j * 8 + 8) {
                b.copy_from_slice(&w.to_le_bytes());
            }
        }) {}
        while self.st.lock().book.save_window(WINDOW_STEP, |r| {
            let at = (r / 64) as usize * 8;
            if let Some(b) = bitmap.get_mut(at..at + 8) {
                let w = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) | (1 << (r % 64));
                b.copy_from_slice(&w.to_le_bytes());
            }
        }) {}
        self.end_saving();
        let bytes = geom.device_bytes() as usize - SUPER_BYTES;
        self.dmio.write(
            &[Region { dev: meta, sector: (SUPER_BYTES / 512) as u64, sectors: (bytes / 512) as u64 }],
            &buf[SUPER_BYTES..],
            IoFlags { fua: true, preflush: false },
        )?;
        self.write_super(meta, &mut buf, geom)
    }

    /// Writes the superblock `sb` (PREFLUSH + FUA: everything written before it is durable
    /// first, and it is durable on return).
    fn write_super(&self, meta: &Device, buf: &mut KVVec<u8>, sb: MetaSuper) -> Result {
        let block = &mut buf[..SUPER_BYTES];
        block.fill(0);
        sb.encode(&KernelCrc32c, block);
        self.dmio.write(
            &[Region { dev: meta, sector: 0, sectors: (SUPER_BYTES / 512) as u64 }],
            block,
            IoFlags { fua: true, preflush: true },
        )
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
            if g.ahead || g.book.resyncing() || g.book.dirty().count() > 0 {
                // The secondary is behind or inconsistent: a marker now would not mark a
                // consistent point.
                return Err(EBUSY);
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
            // Markers come from a message, at any rate: one that would eat into the reserve
            // kept for control frames waits for the secondary to read (`EBUSY`, try again).
            Some(c) if !sock_room(c, wire::Marker::LEN as u64, 0) => EBUSY.to_errno(),
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
        let _b = self.bitmap_lock.lock();
        self.mark_all_dirty();
        self.st.lock().resync_cursor = 0;
        self.wake.complete();
    }

    /// Marks every region dirty, in bounded pieces of the state lock (interrupts are off while
    /// it is held). Pieces are safe: marking more than needed only resyncs more.
    fn mark_all_dirty(&self) {
        let words = self.st.lock().book.dirty().word_count();
        for piece in (0..words).step_by(BITMAP_STEP) {
            self.st.lock().book.dirty_mut().mark_words(piece, BITMAP_STEP);
        }
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let now = ms_now();
        let g = self.st.lock();
        let peer_data = if g.book.resyncing() {
            "inconsistent"
        } else if g.book.dirty().count() > 0 {
            "behind"
        } else {
            "consistent"
        };
        Snapshot {
            connected: g.gen != 0,
            ahead: g.gen != 0 && g.ahead,
            inflight: g.book.win().len(),
            inflight_bytes: g.book.win().bytes(),
            lag_ms: g.book.win().front().map_or(0, |e| now.saturating_sub(e.sent_ms)),
            dirty_regions: g.book.dirty().count(),
            resync: g.book.resyncing().then_some((g.resync_sent, g.resync_total.max(g.resync_sent))),
            peer_data,
        }
    }

    fn current(&self) -> Option<Arc<Conn>> {
        self.conn.lock().clone()
    }

    /// A bio whose write was sent is completed: if it was sent in the current epoch, the epoch
    /// ends here, before the completion is visible above (writes submitted from now on go in
    /// the next epoch).
    fn end_sent(&self, b: PBio, st: BlkStatus) {
        self.close_epoch(b.data().epoch);
        b.end(st);
    }

    fn close_epoch(&self, e: u64) {
        if e != 0 {
            let _ = self.epoch.compare_exchange(e, e.wrapping_add(1), Ordering::AcqRel, Ordering::Relaxed);
        }
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
            if self.current().is_some() || self.suspended.load(Ordering::Acquire) {
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
        let s = link::handshake(&sock, wire::Role::Primary, self.sectors, self.key.as_ref(), false, HANDSHAKE_MS)?;
        sock.set_timeouts(DEAD_MS, DEAD_MS);
        sock.prepare_checked_sends(SNDBUF_MIN);
        let gen = self.next_gen.fetch_add(1, Ordering::Relaxed).max(1);
        Ok(Conn {
            sock,
            tx_mac: s.tx_mac,
            rx_mac: s.rx_mac,
            rx: s.rx,
            first_seq: s.tx_seq,
            gen,
            dead: AtomicBool::new(false),
            peer_inconsistent: s.peer_inconsistent,
        })
    }

    fn install(&self, c: Conn) -> bool {
        let first_seq = c.first_seq;
        let Ok(c) = Arc::new(c, GFP_KERNEL) else { return false };
        let mut done = BioList::new();
        let mut installed = true;
        {
            let _b = self.bitmap_lock.lock();
            // A secondary in the middle of a resync, and no bitmap that says what differs: all
            // of it (marked in pieces, before the state is switched below).
            let all = c.peer_inconsistent && !self.bitmap_trusted.load(Ordering::Acquire) && !self.st.lock().book.resyncing();
            if all {
                self.mark_all_dirty();
            }
            let drained = {
                let mut g = self.st.lock();
                let d = !g.book.win().is_empty();
                if d {
                    // Cannot happen (a disconnection drains before the connector may connect),
                    // but never drop frames that were not confirmed.
                    g.drain(&mut done);
                }
                d
            };
            if drained {
                self.fold_unstable();
            }
            let mut g = self.st.lock();
            // A secondary that reports itself consistent clears a stale resync flag: no new
            // write reaches it before this connection's first resync frame (issue 13, item 6);
            // one that reports an interrupted resync this table did not run is resynced (a
            // trusted bitmap has every region that may differ dirty, marked above otherwise),
            // ending with the resync-done barrier. See `Book::connect`.
            match g.book.connect(first_seq, c.peer_inconsistent) {
                None => installed = false,
                Some(started) => {
                    g.gen = c.gen;
                    g.ahead = false;
                    g.acked_seq = first_seq - 1;
                    g.resync_cursor = 0;
                    if started {
                        g.resync_total = g.book.dirty().count();
                        g.resync_sent = 0;
                        pr_info!(
                            "repl: {} reports an interrupted resync: resyncing {}\n",
                            self.addr,
                            if all { "the whole device" } else { "the dirty regions" }
                        );
                    }
                }
            }
        }
        while let Some(b) = done.pop() {
            let st = BlkStatus::from_raw(b.data().status);
            self.end_sent(b, st);
        }
        if !installed {
            // Cannot happen (the window was drained and folded above).
            return false;
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
        let mut done = BioList::new();
        {
            // Drained before `conn` is cleared: until then the connector cannot install (and
            // reset the window for) a new connection.
            let _b = self.bitmap_lock.lock();
            let drained = {
                let mut g = self.st.lock();
                let ours = g.gen == c.gen;
                if ours {
                    g.drain(&mut done);
                }
                ours
            };
            if drained {
                self.fold_unstable();
            }
        }
        {
            let mut cur = self.conn.lock();
            if cur.as_ref().is_some_and(|x| x.gen == c.gen) {
                *cur = None;
            }
        }
        while let Some(b) = done.pop() {
            let st = BlkStatus::from_raw(b.data().status);
            self.end_sent(b, st);
        }
        self.wake.complete();
        self.conn_wake.complete();
    }

    // --- sender

    fn run_sender(&self, this: &Arc<Self>) {
        let mut buf = self.buf.lock();
        let mut gen = 0;
        let mut last_tx = ms_now();
        let mut last_flush = ms_now();
        let mut since_resync = 0u32;
        loop {
            self.wake.reinit();
            self.clear_spare();
            let conn = self.current().filter(|c| !c.dead.load(Ordering::Acquire));
            if let Some(c) = &conn {
                if c.gen != gen {
                    // A new connection: a pending resync is counted anew.
                    gen = c.gen;
                    let mut g = self.st.lock();
                    if g.book.dirty().count() > 0 && !g.book.resyncing() {
                        g.resync_total = g.book.dirty().count();
                        g.resync_sent = 0;
                    }
                }
            }
            self.send_marker(conn.as_deref());
            let bio = self.st.lock().incoming.pop();
            match bio {
                Some(b) => {
                    self.handle(this, b, conn.as_deref(), &mut buf, since_resync + 1 >= RESYNC_EVERY);
                    last_tx = ms_now();
                    if let Some(c) = &conn {
                        self.maybe_flush(c, &mut last_flush);
                    }
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
                    self.maybe_flush(&c, &mut last_flush);
                    // A ping only on an idle link: acknowledgements of frames in flight show
                    // the peer is alive, and the receiver times out if they stop.
                    let (idle, unflushed) = {
                        let g = self.st.lock();
                        (g.book.win().is_empty(), g.book.unflushed())
                    };
                    if idle && ms_now().saturating_sub(last_tx) >= PING_MS {
                        if let Err(e) = self.send_counted(&c, FrameType::Ping, 0, Kind::Other, 0, 0, &0u64.to_le_bytes()) {
                            self.disconnect(&c, &e);
                        }
                        last_tx = ms_now();
                    }
                    self.wake.wait_timeout_ms(if unflushed { FLUSH_EVERY_MS as u32 } else { PING_MS as u32 });
                }
            }
        }
    }

    /// Sends a flush barrier when writes were sent since the last one, none is in flight and
    /// `FLUSH_EVERY_MS` passed: once it is acknowledged, what the secondary applied before it
    /// is durable there and no longer needs resyncing after a disconnection.
    fn maybe_flush(&self, c: &Conn, last: &mut u64) {
        let due = {
            let g = self.st.lock();
            g.gen == c.gen && g.book.flush_due() && g.book.win().len() + 1 < g.book.win().capacity()
        };
        if !due || ms_now().saturating_sub(*last) < FLUSH_EVERY_MS {
            return;
        }
        *last = ms_now();
        let epoch = self.epoch.load(Ordering::Acquire);
        match self.send_counted(c, FrameType::Barrier, wire::BARRIER_FLUSH, Kind::Barrier, 0, 0, &epoch.to_le_bytes()) {
            Ok(_) => self.close_epoch(epoch),
            Err(e) => self.disconnect(c, &e),
        }
    }

    /// Waits until the window has room for `bytes` on `c`; `false` if the write is not to be
    /// sent: `c` is gone, or the primary is *ahead*. When the window stays full for
    /// `CONGESTED_MS` ("a full queue past a limit"), the primary goes ahead, as DRBD's
    /// `on-congestion pull-ahead`: it keeps the connection, but writes go to the local device
    /// only and mark their regions dirty, until every frame sent is acknowledged; then the
    /// dirty regions are resynced.
    ///
    /// A full send buffer counts as a full window: a secondary that stopped reading (frozen at
    /// a marker) fills the TCP buffers long before the window, and a send into a full buffer
    /// would block the sender, and with it every write, until the send timeout dropped the
    /// link.
    ///
    /// With `resync_owed` (a resync frame is next in turn), the write also leaves room for one
    /// resync region in the send buffer, so that small writes cannot take all of it and starve
    /// the resync.
    fn wait_room(&self, c: &Conn, bytes: u64, resync_owed: bool) -> bool {
        let start = ms_now();
        let mut socket_full;
        loop {
            self.wake.reinit();
            {
                let mut g = self.st.lock();
                if g.gen != c.gen {
                    return false;
                }
                if g.ahead {
                    if !g.book.win().is_empty() {
                        return false;
                    }
                    g.ahead = false;
                    drop(g);
                    pr_info!("repl: {} caught up; replicating writes again, resyncing the rest\n", self.addr);
                    continue;
                }
                let window = g.book.win().fits(bytes, self.max_bytes) && g.book.win().len() + RESERVED_SLOTS < g.book.win().capacity();
                let extra = if resync_owed && g.book.dirty().count() > 0 {
                    frame_need(RESYNC_REGION_BYTES)
                } else {
                    0
                };
                if window && sock_room(c, bytes, extra) {
                    return true;
                }
                socket_full = window;
                if ms_now().saturating_sub(start) >= CONGESTED_MS {
                    g.ahead = true;
                    drop(g);
                    self.stats.congested.fetch_add(1, Ordering::Relaxed);
                    pr_warn!(
                        "repl: {} has not acknowledged for {} s with the send {} full: going ahead (writes stay local and are resynced later)\n",
                        self.addr,
                        CONGESTED_MS / 1000,
                        if socket_full { "buffer" } else { "window" }
                    );
                    return false;
                }
            }
            // Acknowledgements wake us; TCP freeing buffer space does not, so poll it each tick.
            self.wake.wait_timeout_ms(if socket_full { 1 } else { 100 });
        }
    }

    /// Pushes a window entry for the next frame and sends it; `Err` ends the connection.
    /// Control frames need no room check: `sock_room` keeps `SEND_RESERVE` free for them.
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
            let seq = g.book.win().next_seq();
            // (Every barrier sent here flushes: `Book::push` tracks it as a flush barrier.)
            let e = Entry { seq, kind, sector, sectors, sent_ms: ms_now(), local_done: true, net_done: true, ..Entry::default_of() };
            let pushed = if ty == FrameType::Barrier && flags & wire::BARRIER_RESYNC_DONE != 0 {
                // Recorded before the frame is sent: its acknowledgement may come at once.
                g.book.push_resync_done(e)
            } else {
                g.book.push(e)
            };
            if !pushed {
                return Err(LinkError::Io(ENOSPC));
            }
            if ty == FrameType::Marker {
                // Before the frame is sent: its acknowledgement may come at once.
                if let Ok(m) = wire::Marker::decode(payload) {
                    g.book.set_marker_unacked(Some((seq, m.id)));
                }
            }
            seq
        };
        link::send_frame(&c.sock, ty, flags, seq, payload, c.tx_mac.as_ref())?;
        self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    /// The id of the marker record a write into the marker region carries, if any.
    fn marker_in(&self, bio: &PBio) -> Option<u64> {
        if bio.target_sector() < self.marker_start {
            return None;
        }
        let mut rec = [0u8; RECORD_LEN];
        if bio.copy_to(&mut rec) != RECORD_LEN {
            return None;
        }
        MarkerRecord::decode(&rec, &KernelCrc32c).map(|m| m.id)
    }

    /// Fails a marker write that cannot reach the secondary in order (no connection, going
    /// ahead, behind or resyncing): written locally only, it would mark nothing, and whoever
    /// wrote it (a checkpoint) must know.
    fn refuse_marker(&self, bio: PBio, id: u64, why: &str) {
        self.stats.markers_refused.fetch_add(1, Ordering::Relaxed);
        pr_warn!("repl: marker {} refused (I/O error): {}\n", id, why);
        bio.end(BlkStatus::IOERR);
    }

    fn handle(&self, this: &Arc<Self>, mut bio: PBio, c: Option<&Conn>, buf: &mut KVVec<u8>, resync_owed: bool) {
        let op = bio.op();
        let sector = bio.target_sector();
        let sectors = bio.sectors();
        let is_write = op == Op::Write;
        if is_write {
            self.stats.writes.fetch_add(1, Ordering::Relaxed);
        }
        let marker = if is_write { self.marker_in(&bio) } else { None };
        let bytes = u64::from(sectors) * 512;
        let c = c.filter(|c| self.wait_room(c, bytes, resync_owed));
        let Some(c) = c else {
            match marker {
                Some(id) => self.refuse_marker(bio, id, "not connected to the secondary, or going ahead of it"),
                None => self.submit_local(this, bio, is_write),
            }
            return;
        };
        let epoch = self.epoch.load(Ordering::Acquire);
        let (ty, flags, range) = if is_write {
            let w = wire::Write { sector, epoch, data: &[] };
            let mut fixed = [0u8; WRITE_FIXED as usize];
            w.encode_fixed(&mut fixed);
            let Some(out) = buf.get_mut(FRAME_OFF..DATA_OFF + bytes as usize) else {
                // Larger than max_io_len allows: cannot happen; fail the bio rather than guess.
                bio.end(BlkStatus::IOERR);
                return;
            };
            out[..WRITE_FIXED as usize].copy_from_slice(&fixed);
            bio.copy_to(&mut out[WRITE_FIXED as usize..]);
            (FrameType::Write, if bio.is_fua() { wire::WRITE_FUA } else { 0 }, FRAME_OFF..DATA_OFF + bytes as usize)
        } else {
            buf[..8].copy_from_slice(&epoch.to_le_bytes());
            (FrameType::Barrier, wire::BARRIER_FLUSH, 0..8)
        };
        // The window entry exists before the local write can complete.
        let seq = {
            let mut g = self.st.lock();
            let refuse = if g.gen != c.gen {
                Some("not connected to the secondary")
            } else if g.ahead {
                Some("going ahead of a congested secondary")
            } else if g.book.resyncing() || g.book.dirty().count() > 0 {
                Some("the secondary is behind or resyncing")
            } else {
                None
            };
            if let (Some(id), Some(why)) = (marker, refuse) {
                drop(g);
                self.refuse_marker(bio, id, why);
                return;
            }
            if g.gen != c.gen || !g.book.may_send_write() {
                // Lost the connection meanwhile; or regions are dirty and the resync has not
                // started: the secondary still holds a consistent older image, and a write
                // applied now (before the resync marks it inconsistent) would break that.
                // Such writes stay local and dirty until the first resync frame is out.
                None
            } else {
                let seq = g.book.win().next_seq();
                let kind = if is_write { Kind::Write } else { Kind::Barrier };
                let e = Entry { seq, kind, sector, sectors, sent_ms: ms_now(), ..Entry::default_of() };
                let pushed = g.book.push(e);
                if pushed {
                    if let Some(id) = marker {
                        // Before the frame is sent: its acknowledgement may come at once.
                        g.book.set_marker_unacked(Some((seq, id)));
                    }
                }
                pushed.then_some(seq)
            }
        };
        let Some(seq) = seq else {
            self.submit_local(this, bio, is_write);
            return;
        };
        *bio.data_mut() = PerBio { seq, epoch: if is_write { epoch } else { 0 }, gen: c.gen, status: 0 };
        self.local_inflight.fetch_add(1, Ordering::AcqRel);
        bio.submit_clone(&self.bs, &self.data, sector, this.clone());
        match link::send_frame(&c.sock, ty, flags, seq, &buf[range], c.tx_mac.as_ref()) {
            Ok(()) => {
                self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
                if let Some(id) = marker {
                    self.stats.marker_id.fetch_max(id, Ordering::Relaxed);
                }
                if ty == FrameType::Barrier {
                    self.close_epoch(epoch);
                }
                if !self.sync {
                    self.net_done(c.gen, seq);
                }
            }
            Err(e) => self.disconnect(c, &e),
        }
    }

    /// A write (or flush) that is not sent: to the local device only; a write's regions now
    /// differ from the secondary.
    fn submit_local(&self, this: &Arc<Self>, mut bio: PBio, is_write: bool) {
        let sector = bio.target_sector();
        if is_write {
            self.st.lock().book.dirty_mut().mark(sector, u64::from(bio.sectors()));
        }
        *bio.data_mut() = PerBio::default();
        self.local_inflight.fetch_add(1, Ordering::AcqRel);
        bio.submit_clone(&self.bs, &self.data, sector, this.clone());
    }

    /// The network part of frame `seq` is done (async: sent).
    fn net_done(&self, gen: u32, seq: u64) {
        let mut g = self.st.lock();
        if g.gen != gen {
            return;
        }
        let Some(e) = g.book.entry_mut(seq) else { return };
        e.net_done = true;
        let held = e.held.take();
        // (An acknowledgement may have come before this: the entry may retire now.)
        let bytes = g.retire(&self.stats.marker_acked);
        drop(g);
        self.stats.bytes_acked.fetch_add(bytes, Ordering::Relaxed);
        if let Some(b) = held {
            let st = BlkStatus::from_raw(b.data().status);
            self.end_sent(b, st);
        }
    }

    /// One resync frame: the next run of dirty regions, read after every local write in
    /// flight has completed (so the read sees them; later writes are sent after it). `Ok(true)`
    /// if something was sent.
    fn resync_step(&self, c: &Conn, buf: &mut KVVec<u8>) -> Result<bool, LinkError> {
        let rs = 1u64 << REGION_SHIFT;
        let max_regions = u64::from(wire::MAX_DATA / 512) / rs;
        let (room, cursor) = {
            let mut g = self.st.lock();
            if g.gen != c.gen || g.book.saving() {
                return Ok(false);
            }
            if g.ahead {
                if !g.book.win().is_empty() {
                    return Ok(false);
                }
                g.ahead = false;
            }
            if g.book.dirty().count() == 0 {
                if g.book.resync_done_due() {
                    drop(g);
                    // Every resync write is before this barrier: once it is applied, the
                    // secondary is consistent again (`send_counted` records it as the
                    // resync-done barrier as it pushes it).
                    self.send_counted(
                        c,
                        FrameType::Barrier,
                        wire::BARRIER_FLUSH | wire::BARRIER_RESYNC_DONE,
                        Kind::Barrier,
                        0,
                        0,
                        &0u64.to_le_bytes(),
                    )?;
                    return Ok(true);
                }
                return Ok(false);
            }
            // Sized to the room left in the window, so that the resync always progresses.
            if g.book.win().len() + RESERVED_SLOTS >= g.book.win().capacity() {
                return Ok(false);
            }
            let room = if g.book.win().is_empty() {
                max_regions
            } else {
                (self.max_bytes.saturating_sub(g.book.win().bytes()) / (rs * 512)).min(max_regions)
            };
            // And to the send buffer's room: a resync frame must not block either.
            let (free, queued) = c.sock.send_space();
            let fits = frame_room(free) / (rs * 512);
            let room = room.min(if queued == 0 { fits.max(1) } else { fits });
            if room == 0 {
                return Ok(false);
            }
            (room, g.resync_cursor)
        };
        // The next dirty run from the cursor (then from 0), in bounded steps of the lock.
        let mut from = cursor;
        let mut wrapped = false;
        let (first, n) = loop {
            let g = self.st.lock();
            if g.gen != c.gen {
                return Ok(false);
            }
            match g.book.dirty().find_run(from, room, SEARCH_WORDS) {
                RunSearch::Found(first, n) => break (first, n),
                RunSearch::From(next) => from = next,
                RunSearch::End if !wrapped && cursor > 0 => {
                    wrapped = true;
                    from = 0;
                }
                RunSearch::End => return Ok(false),
            }
        };
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
            let seq = g.book.win().next_seq();
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
            // Its regions are clean when it is pushed (an unacknowledged resync write marks them
            // dirty again if the connection drops), and a resync is under way. Refused while a
            // bitmap save takes its snapshot: the data read is dropped, the regions stay dirty.
            if !g.book.push_resync(e) {
                return Ok(false);
            }
            g.resync_cursor = first + n;
            g.resync_sent += n;
            seq
        };
        link::send_frame(&c.sock, FrameType::ResyncWrite, 0, seq, &buf[FRAME_OFF..end], c.tx_mac.as_ref())?;
        self.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
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
            let (h, p) = match link::recv_frame(&c.sock, &mut rx, c.rx_mac.as_ref(), &mut buf) {
                Ok(x) => x,
                Err(e) => break e,
            };
            match h.ty {
                FrameType::Ack => {
                    let a = match wire::Ack::decode(p) {
                        Ok(a) => a,
                        Err(e) => break e.into(),
                    };
                    if let Err(e) = self.acked(&c, a.seq, h.flags & wire::ACK_MARKER_IGNORED != 0) {
                        break e;
                    }
                }
                FrameType::Pong => {}
                FrameType::Close => break LinkError::Closed,
                t => break LinkError::Unexpected(t),
            }
        };
        self.disconnect(&c, &r);
    }

    /// Everything up to `seq` is applied at the secondary. `ignored`: `seq` is a marker the
    /// secondary did not record, which must not count as acknowledged.
    fn acked(&self, c: &Conn, seq: u64, ignored: bool) -> Result<(), LinkError> {
        let mut done = BioList::new();
        let mut ignored_id = None;
        {
            let mut g = self.st.lock();
            if g.gen != c.gen {
                return Ok(());
            }
            let before = g.acked_seq;
            // ACK_MARKER_IGNORED names the marker waited for, or one that a marker sent later
            // replaced as the one tracked. Checked before anything is acknowledged: a refused
            // ACK changes nothing. (It used to be checked after `ack` had handed the writes it
            // covered to `done`; the early return dropped them, and a sync write that was
            // safely written locally failed with an I/O error. tests/guest/58-repl-wirefuzz.sh.)
            let marker = g.book.marker_unacked();
            if ignored && !marker.is_some_and(|(s, _)| s >= seq) {
                return Err(LinkError::Wire(wire::WireError::BadField));
            }
            if !g.book.ack(seq, self.sync, |b| done.push(b)) {
                return Err(LinkError::Wire(wire::WireError::BadField));
            }
            if ignored {
                // Before the retirement below, which would count it. (A marker tracked with a
                // later sequence number replaced this one: nothing counts it.)
                if let Some((_, id)) = marker.filter(|&(s, _)| s == seq) {
                    g.book.set_marker_unacked(None);
                    self.stats.marker_ignored.fetch_max(id, Ordering::Relaxed);
                    ignored_id = Some(id);
                }
            }
            let bytes = g.retire(&self.stats.marker_acked);
            self.stats.bytes_acked.fetch_add(bytes, Ordering::Relaxed);
            if seq > before {
                g.acked_seq = seq;
                self.stats.frames_acked.fetch_add(seq - before, Ordering::Relaxed);
            }
        }
        while let Some(b) = done.pop() {
            let st = BlkStatus::from_raw(b.data().status);
            self.end_sent(b, st);
        }
        if let Some(id) = ignored_id {
            pr_warn!(
                "repl: the secondary {} did not record marker {}: its device is not a consistent image (a resync is under way); no image of it exists\n",
                self.addr,
                id
            );
        }
        self.wake.complete();
        Ok(())
    }
}

impl CloneDone<PerBio> for Primary {
    fn clone_done(&self, mut parent: PBio, status: BlkStatus) -> Option<(PBio, BlkStatus)> {
        let d = *parent.data();
        if d.gen != 0 {
            let mut g = self.st.lock();
            if g.gen == d.gen {
                if let Some(e) = g.book.entry_mut(d.seq) {
                    e.local_done = true;
                    if !e.net_done {
                        parent.data_mut().status = status.to_raw();
                        e.held = Some(parent);
                        drop(g);
                        self.local_finished();
                        return None;
                    }
                    let bytes = g.retire(&self.stats.marker_acked);
                    self.stats.bytes_acked.fetch_add(bytes, Ordering::Relaxed);
                    if g.book.spare_dirty() {
                        // A durable barrier retired here: the sender clears the stale map.
                        self.wake.complete();
                    }
                }
            }
        }
        self.local_finished();
        self.close_epoch(d.epoch);
        Some((parent, status))
    }
}
