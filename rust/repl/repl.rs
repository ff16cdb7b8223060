// SPDX-License-Identifier: GPL-2.0

//! dm-repl: ordered block replication over kernel TCP (wbrepl).
//!
//! Table lines (see `docs/repl.md`):
//! `<start> <len> repl primary <data_dev> <peer_host:port> <#opt_args> [opt_args...]`
//! `<start> <len> repl secondary <data_dev> <listen_host:port> <#opt_args> [opt_args...]`
//!
//! A primary writes locally and sends every write, in order, to its secondary
//! ([`primary`]); a secondary applies the stream to its data device ([`secondary`]) and
//! refuses writes from above. Frames and the handshake: [`link`] on `rust/core/src/wire.rs`.

// `pin_init!` of the shared state expands one recursion level per field.
#![recursion_limit = "512"]
#![deny(unsafe_code)]

use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::prelude::*;

include!("../dmcore/crate_root.rs");

mod link;
mod primary;
mod secondary;

use dmcore::args::Args;
use dmcore::bio::{Bio, MapContext, Op};
use dmcore::device::Device;
use dmcore::hmac::KernelHmac;
use dmcore::keys::Secret;
use dmcore::status::StatusWriter;
use dmcore::target::{CtrError, CtrTarget, DeviceVisitor, MapResult, QueueLimits, StatusType, Stop, Target, TargetModule};
use kernel::str::CString;
use kernel::sync::Arc;
use primary::{Primary, PerBio};
use secondary::Secondary;
use wbrepl_core::marker::{IdWord, LabelWord};
use wbrepl_core::table::{Protocol, ReplOptions, ReplTable, Role};

module! {
    type: ReplModule,
    name: "dm_repl",
    author: "wbrepl developers",
    description: "dm-repl: ordered block replication over kernel TCP (wbrepl)",
    license: "GPL",
    alias: ["dm-repl"],
}

type ReplModule = TargetModule<Repl>;

enum Engine {
    Primary(Arc<Primary>),
    Secondary(Arc<Secondary>),
}

struct Repl {
    len: u64,
    engine: Engine,
    protocol: Protocol,
    /// `<#opt_args> [opt_args...]` as `dmsetup table` prints it (devices as `major:minor`),
    /// rendered once by the constructor.
    opts_line: CString,
    refused: AtomicU64,
}

fn nomem<E>(_: E) -> CtrError {
    CtrError::new(kernel::c_str!("Cannot allocate"), ENOMEM)
}

impl Repl {
    fn data(&self) -> &Device {
        match &self.engine {
            Engine::Primary(p) => &p.data,
            Engine::Secondary(s) => s.data(),
        }
    }
}

#[vtable]
impl Target for Repl {
    const NAME: &'static CStr = kernel::c_str!("repl");
    const VERSION: [u32; 3] = [0, 3, 0];
    type PerBio = PerBio;

    fn ctr(ti: &mut CtrTarget<'_>, args: Args<'_>) -> Result<Pin<KBox<Self>>, CtrError> {
        let t = ReplTable::parse(&mut { args })?;
        let data = ti
            .get_device_path(t.data_dev)
            .map_err(|e| CtrError::new(kernel::c_str!("Data device lookup failed"), e))?;
        let meta = match t.opts.meta_dev {
            Some(m) => Some(
                ti.get_device_path(m)
                    .map_err(|e| CtrError::new(kernel::c_str!("Metadata device lookup failed"), e))?,
            ),
            None => None,
        };
        if meta.as_ref().is_some_and(|m| m.same_as(&data)) {
            return Err(CtrError::inval(kernel::c_str!("meta_dev must differ from the data device")));
        }
        if ti.len() > data.sectors() {
            return Err(CtrError::inval(kernel::c_str!("Data device is smaller than the target")));
        }
        if ti.len() < 2 * u64::from(t.opts.marker_sectors()) {
            return Err(CtrError::inval(kernel::c_str!("Target too small for its marker region")));
        }
        // The shared secret, from the keyring of the process loading the table.
        let key = match t.opts.auth {
            Some(desc) => {
                let desc = CString::try_from_fmt(kernel::fmt!("{desc}")).map_err(nomem)?;
                let secret = Secret::from_keyring(&desc)
                    .map_err(|e| CtrError::new(kernel::c_str!("Key lookup failed (auth: no such user or logon key?)"), e))?;
                Some(
                    KernelHmac::new(secret.as_bytes())
                        .map_err(|e| CtrError::new(kernel::c_str!("Cannot set up HMAC-SHA256"), e))?,
                )
            }
            None => None,
        };
        // The table prints devices as major:minor, so meta_dev is printed by its device number.
        let meta_name = match &meta {
            Some(m) => Some(CString::try_from_fmt(kernel::fmt!("{m}")).map_err(nomem)?),
            None => None,
        };
        let opts = ReplOptions { meta_dev: meta_name.as_deref().and_then(|n| n.to_str().ok()), ..t.opts };
        let opts_line = CString::try_from_fmt(kernel::fmt!("{opts}")).map_err(nomem)?;
        let len = ti.len();
        let mut meta = meta;
        let engine = match t.role {
            Role::Primary => {
                // Every write becomes one frame: at most MAX_DATA bytes.
                ti.set_max_io_len(primary::MAX_IO_SECTORS)
                    .map_err(|e| CtrError::new(kernel::c_str!("Cannot set max_io_len"), e))?;
                ti.set_flush_supported();
                ti.set_num_flush_bios(1);
                let p = Primary::new(
                    data,
                    meta.take(),
                    len,
                    t.addr,
                    key,
                    t.opts.protocol() == Protocol::Sync,
                    t.opts.max_inflight_kb(),
                    t.opts.marker_sectors(),
                )
                    .map_err(|e| {
                        if e == ENOSPC {
                            CtrError::inval(kernel::c_str!("Metadata device too small for the dirty bitmap"))
                        } else {
                            CtrError::new(kernel::c_str!("Cannot allocate the replication state"), e)
                        }
                    })?;
                Engine::Primary(p)
            }
            Role::Secondary => {
                ti.set_num_flush_bios(1);
                let s = Secondary::new(
                    data,
                    meta.take(),
                    len,
                    t.addr,
                    key,
                    t.opts.marker_sectors(),
                    t.opts.freeze_on_marker,
                    t.opts.freeze_timeout_ms,
                    ti.handle(),
                )
                    .map_err(|e| CtrError::new(kernel::c_str!("Cannot allocate the replication state"), e))?;
                Engine::Secondary(s)
            }
        };
        // Discards and write-zeroes are not replicated (no frame carries them): not offered.
        ti.set_num_discard_bios(0);
        ti.set_num_write_zeroes_bios(0);
        let me = Self {
            len,
            engine,
            protocol: t.opts.protocol(),
            opts_line,
            refused: AtomicU64::new(0),
        };
        KBox::pin(me, GFP_KERNEL).map_err(nomem)
    }

    fn map(&self, mut bio: Bio<PerBio>, _ctx: &MapContext<'_>) -> MapResult<PerBio> {
        match (&self.engine, bio.op()) {
            (_, Op::Read) => {}
            (Engine::Primary(p), Op::Write | Op::Flush) => {
                p.queue(bio);
                return MapResult::Submitted;
            }
            (Engine::Secondary(_), Op::Flush) => {}
            // Only the replication stream may write a secondary's device; discards and the
            // like are not offered (see ctr), so never replicated.
            _ => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return MapResult::Kill(bio);
            }
        }
        let sector = bio.target_sector();
        bio.remap(self.data(), sector);
        MapResult::Remapped(bio)
    }

    fn preresume(&self) -> Result {
        match &self.engine {
            Engine::Primary(p) => p.preresume(),
            Engine::Secondary(s) => s.preresume(),
        }
    }

    fn postsuspend(&self) {
        match &self.engine {
            Engine::Primary(p) => p.postsuspend(),
            Engine::Secondary(s) => s.postsuspend(),
        }
    }

    fn resume(&self) {
        match &self.engine {
            Engine::Primary(p) => Primary::start(p),
            Engine::Secondary(s) => Secondary::resume(s),
        }
    }

    fn message(&self, args: Args<'_>, out: &mut StatusWriter<'_>) -> Result {
        let mut a = args;
        let word = a.next().ok_or(EINVAL)?;
        let arg = a.next();
        if a.next().is_some() {
            return Err(EINVAL);
        }
        match (&self.engine, word, arg) {
            (Engine::Primary(p), "resync", None) => {
                p.resync_all();
                Ok(())
            }
            (Engine::Primary(p), "marker", Some(label)) => {
                // `-`: no label (as in dm-wbcache's `checkpoint` message).
                let label = if label == "-" { Some([0; wire::LABEL_LEN]) } else { marker::label_from(label) };
                let label = label.ok_or(EINVAL)?;
                let id = p.inject_marker(label)?;
                let _ = write!(out, "{id}");
                Ok(())
            }
            (Engine::Secondary(s), "thaw", Some(id)) => {
                let id = id.parse::<u64>().map_err(|_| EINVAL)?;
                s.thaw(id)
            }
            _ => Err(EINVAL),
        }
    }

    fn status(&self, ty: StatusType, out: &mut StatusWriter<'_>) {
        let _ = match (ty, &self.engine) {
            (StatusType::Info, Engine::Primary(p)) => {
                let s = p.snapshot();
                let st = &p.stats;
                let _ = write!(
                    out,
                    "primary {} peer {} protocol {} sent {} sent_bytes {} acked {} acked_bytes {} inflight {} inflight_bytes {} lag_ms {} dirty_kb {} ",
                    match (s.connected, s.ahead) {
                        (true, false) => "connected",
                        (true, true) => "ahead",
                        (false, _) => "connecting",
                    },
                    p.addr,
                    self.protocol.as_str(),
                    st.frames_sent.load(Ordering::Relaxed),
                    st.bytes_sent.load(Ordering::Relaxed),
                    st.frames_acked.load(Ordering::Relaxed),
                    st.bytes_acked.load(Ordering::Relaxed),
                    s.inflight,
                    s.inflight_bytes,
                    s.lag_ms,
                    s.dirty_regions << (primary::REGION_SHIFT - 1),
                );
                let _ = match s.resync {
                    Some((done, total)) => write!(out, "resync {}/{} ", done, total),
                    None => write!(out, "resync - "),
                };
                let _ = write!(
                    out,
                    "peer_data {} writes {} connects {} congested {} refused {} marker ",
                    s.peer_data,
                    st.writes.load(Ordering::Relaxed),
                    st.connects.load(Ordering::Relaxed),
                    st.congested.load(Ordering::Relaxed),
                    self.refused.load(Ordering::Relaxed),
                );
                let id_or_dash = |id: u64| IdWord((id != 0).then_some(id));
                write!(
                    out,
                    "{} marker_acked {} markers_refused {} marker_ignored {}",
                    id_or_dash(st.marker_id.load(Ordering::Relaxed)),
                    id_or_dash(st.marker_acked.load(Ordering::Relaxed)),
                    st.markers_refused.load(Ordering::Relaxed),
                    id_or_dash(st.marker_ignored.load(Ordering::Relaxed)),
                )
            }
            (StatusType::Info, Engine::Secondary(sec)) => {
                let st = &sec.stats;
                let peer = sec.peer();
                let _ = write!(
                    out,
                    "secondary {} listen {} peer ",
                    if peer.is_some() { "connected" } else if sec.listening() { "listening" } else { "starting" },
                    sec.addr,
                );
                let _ = match peer {
                    Some(a) => write!(out, "{a} "),
                    None => write!(out, "- "),
                };
                let _ = write!(
                    out,
                    "applied {} applied_bytes {} resync_bytes {} epoch {} data {} sessions {} dropped {} refused {}",
                    st.frames.load(Ordering::Relaxed),
                    st.bytes.load(Ordering::Relaxed),
                    st.resync_bytes.load(Ordering::Relaxed),
                    st.durable_epoch.load(Ordering::Relaxed),
                    if sec.consistent.load(Ordering::Acquire) { "consistent" } else { "inconsistent" },
                    st.sessions.load(Ordering::Relaxed),
                    st.dropped.load(Ordering::Relaxed),
                    self.refused.load(Ordering::Relaxed),
                );
                let _ = match st.marker_id.load(Ordering::Acquire) {
                    0 => write!(out, " markers 0 marker - marker_time_ns -"),
                    id => write!(
                        out,
                        " markers {} marker {} marker_time_ns {}",
                        st.markers.load(Ordering::Relaxed),
                        id,
                        st.marker_time_ns.load(Ordering::Relaxed)
                    ),
                };
                let _ = if sec.frozen.load(Ordering::Acquire) {
                    write!(out, " frozen {}", sec.frozen_id.load(Ordering::Acquire))
                } else {
                    write!(out, " frozen -")
                };
                // The label of the marker shown, not of one recorded since.
                let (lid, label) = *sec.marker_label.lock();
                let label = if lid == st.marker_id.load(Ordering::Acquire) { label } else { [0; wire::LABEL_LEN] };
                write!(out, " marker_label {} markers_ignored {}", LabelWord(&label), st.markers_ignored.load(Ordering::Relaxed))
            }
            (StatusType::Table, e) => {
                let (role, addr) = match e {
                    Engine::Primary(p) => ("primary", p.addr),
                    Engine::Secondary(s) => ("secondary", s.addr),
                };
                write!(out, "{} {} {} {}", role, self.data(), addr, &*self.opts_line)
            }
            (StatusType::Ima, e) => {
                let (role, addr) = match e {
                    Engine::Primary(p) => ("primary", p.addr),
                    Engine::Secondary(s) => ("secondary", s.addr),
                };
                write!(out, "role={},data={},peer={};", role, self.data(), addr)
            }
        };
    }

    fn iterate_devices(&self, visit: &mut DeviceVisitor<'_>) -> core::result::Result<(), Stop> {
        visit.visit(self.data(), 0, self.len)
    }

    fn io_hints(&self, limits: &mut QueueLimits<'_>) {
        if matches!(self.engine, Engine::Primary(_)) {
            // A write's data is read twice, into the frame sent and by the local write: the
            // page cache must not change it in between (the two sides would differ).
            limits.require_stable_writes();
        }
    }
}

impl Drop for Repl {
    fn drop(&mut self) {
        // No bio is in flight when a target is destroyed; stop the workers and close sockets.
        match &self.engine {
            Engine::Primary(p) => Primary::stop(p),
            Engine::Secondary(s) => Secondary::stop(s),
        }
    }
}
