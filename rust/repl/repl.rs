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
use dmcore::bio::{Bio, MapContext, Op};
use dmcore::device::Device;
use dmcore::status::StatusWriter;
use dmcore::target::{CtrError, CtrTarget, DeviceVisitor, MapResult, StatusType, Stop, Target, TargetModule};
use wbrepl_core::parse::SocketAddrV4;
use kernel::str::CString;
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

struct Repl {
    len: u64,
    role: Role,
    data: Device,
    /// Held open for the replication link's metadata (dirty bitmap, state).
    _meta: Option<Device>,
    addr: SocketAddrV4,
    protocol: Protocol,
    /// `<#opt_args> [opt_args...]` as `dmsetup table` prints it (devices as `major:minor`),
    /// rendered once by the constructor.
    opts_line: CString,
    writes: AtomicU64,
    refused: AtomicU64,
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
        // The table prints devices as major:minor, so meta_dev is printed by its device number.
        let nomem = |_| CtrError::new(kernel::c_str!("Cannot allocate"), ENOMEM);
        let meta_name = match &meta {
            Some(m) => Some(CString::try_from_fmt(kernel::fmt!("{m}")).map_err(nomem)?),
            None => None,
        };
        let opts = ReplOptions { meta_dev: meta_name.as_deref().and_then(|n| n.to_str().ok()), ..t.opts };
        let opts_line = CString::try_from_fmt(kernel::fmt!("{opts}")).map_err(nomem)?;
        ti.set_num_flush_bios(1);
        ti.set_num_discard_bios(1);
        ti.set_num_write_zeroes_bios(1);
        let me = Self {
            len: ti.len(),
            role: t.role,
            data,
            _meta: meta,
            addr: t.addr,
            protocol: t.opts.protocol(),
            opts_line,
            writes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        };
        KBox::pin(me, GFP_KERNEL).map_err(|_| CtrError::new(kernel::c_str!("Cannot allocate"), ENOMEM))
    }

    fn map(&self, mut bio: Bio<()>, _ctx: &MapContext<'_>) -> MapResult<()> {
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
        let _ = match ty {
            StatusType::Info => write!(
                out,
                "{} passthrough peer {} protocol {} writes {} refused {}",
                self.role.as_str(),
                self.addr,
                self.protocol.as_str(),
                self.writes.load(Ordering::Relaxed),
                self.refused.load(Ordering::Relaxed),
            ),
            StatusType::Table => write!(out, "{} {} {} {}", self.role.as_str(), self.data, self.addr, &*self.opts_line),
            StatusType::Ima => write!(out, "role={},data={},peer={};", self.role.as_str(), self.data, self.addr),
        };
    }

    fn iterate_devices(&self, visit: &mut DeviceVisitor<'_>) -> core::result::Result<(), Stop> {
        visit.visit(&self.data, 0, self.len)
    }
}
