// SPDX-License-Identifier: GPL-2.0

//! dm-repl: ordered block replication over kernel TCP (wbrepl).
//!
//! Table lines (see `docs/repl.md`):
//! `<start> <len> repl primary <data_dev> <peer_host:port> <#opt_args> [opt_args...]`
//! `<start> <len> repl secondary <data_dev> <listen_host:port> <#opt_args> [opt_args...]`
//!
//! This is the foundation slice: the table line is parsed and validated in full and the devices
//! opened; a primary passes all I/O to its data device, a secondary serves reads and refuses
//! writes from above. The replication link comes with the dm-repl issue.

#![deny(unsafe_code)]

use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};
use kernel::prelude::*;

include!("../dmcore/crate_root.rs");

use dmcore::args::Args;
use dmcore::bio::{Bio, Op};
use dmcore::device::Device;
use dmcore::status::StatusWriter;
use dmcore::target::{CtrError, CtrTarget, DeviceVisitor, MapResult, StatusType, Stop, Target, TargetModule};
use wbrepl_core::parse::SocketAddrV4;
use wbrepl_core::table::{Protocol, ReplOptions, ReplTable, Role, MAX_KEY_DESC};

module! {
    type: ReplModule,
    name: "dm_repl",
    author: "wbrepl developers",
    description: "dm-repl: ordered block replication over kernel TCP (wbrepl)",
    license: "GPL",
    alias: ["dm-repl"],
}

type ReplModule = TargetModule<Repl>;

struct Repl {
    len: u64,
    role: Role,
    data: Device,
    meta: Option<Device>,
    addr: SocketAddrV4,
    protocol: Option<Protocol>,
    max_inflight_kb: Option<u32>,
    auth: Option<([u8; MAX_KEY_DESC], usize)>,
    marker_sectors: Option<u32>,
    freeze_on_marker: bool,
    freeze_timeout_ms: Option<u32>,
    writes: AtomicU64,
    refused: AtomicU64,
}

impl Repl {
    fn auth_str(&self) -> Option<&str> {
        self.auth.as_ref().and_then(|(b, n)| core::str::from_utf8(&b[..*n]).ok())
    }
}

#[vtable]
impl Target for Repl {
    const NAME: &'static CStr = kernel::c_str!("repl");
    const VERSION: [u32; 3] = [0, 1, 0];
    type PerBio = ();

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
        let auth = t.opts.auth.map(|k| {
            let mut b = [0u8; MAX_KEY_DESC];
            b[..k.len()].copy_from_slice(k.as_bytes());
            (b, k.len())
        });
        ti.set_num_flush_bios(1);
        ti.set_num_discard_bios(1);
        ti.set_num_write_zeroes_bios(1);
        let me = Self {
            len: ti.len(),
            role: t.role,
            data,
            meta,
            addr: t.addr,
            protocol: t.opts.protocol,
            max_inflight_kb: t.opts.max_inflight_kb,
            auth,
            marker_sectors: t.opts.marker_sectors,
            freeze_on_marker: t.opts.freeze_on_marker,
            freeze_timeout_ms: t.opts.freeze_timeout_ms,
            writes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        };
        KBox::pin(me, GFP_KERNEL).map_err(|_| CtrError::new(kernel::c_str!("Cannot allocate"), ENOMEM))
    }

    fn map(&self, mut bio: Bio<()>) -> MapResult<()> {
        let writes_data = matches!(bio.op(), Op::Write | Op::Discard | Op::WriteZeroes | Op::SecureErase);
        if writes_data {
            if self.role == Role::Secondary {
                // Only the replication stream may write a secondary's device.
                self.refused.fetch_add(1, Ordering::Relaxed);
                return MapResult::Kill(bio);
            }
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        let sector = bio.target_sector();
        bio.remap(&self.data, sector);
        MapResult::Remapped(bio)
    }

    fn status(&self, ty: StatusType, out: &mut StatusWriter<'_>) {
        let opts = ReplOptions {
            protocol: self.protocol,
            max_inflight_kb: self.max_inflight_kb,
            meta_dev: None,
            auth: self.auth_str(),
            marker_sectors: self.marker_sectors,
            freeze_on_marker: self.freeze_on_marker,
            freeze_timeout_ms: self.freeze_timeout_ms,
        };
        let _ = match ty {
            StatusType::Info => write!(
                out,
                "{} passthrough peer {} protocol {} writes {} refused {}",
                self.role.as_str(),
                self.addr,
                opts.protocol().as_str(),
                self.writes.load(Ordering::Relaxed),
                self.refused.load(Ordering::Relaxed),
            ),
            StatusType::Table => {
                // Devices print as major:minor, like every dm target; meta_dev is printed by
                // hand because `ReplOptions` borrows strings and ours is a device name.
                let mut line = opts;
                let mut name_buf = [0u8; 24];
                let meta_name = self.meta.as_ref().map(|m| {
                    let mut w = StatusWriter::new(&mut name_buf);
                    let _ = write!(w, "{m}");
                    w.len()
                });
                line.meta_dev = meta_name.and_then(|n| core::str::from_utf8(&name_buf[..n]).ok());
                write!(out, "{} {} {} {}", self.role.as_str(), self.data, self.addr, line)
            }
            StatusType::Ima => write!(out, "role={},data={},peer={};", self.role.as_str(), self.data, self.addr),
        };
    }

    fn iterate_devices(&self, visit: &mut DeviceVisitor<'_>) -> core::result::Result<(), Stop> {
        visit.visit(&self.data, 0, self.len)
    }
}
