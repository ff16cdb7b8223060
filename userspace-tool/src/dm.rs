//! Reading the device-mapper devices from the kernel (`devicemapper` crate, DM ioctls on
//! `/dev/mapper/control`) into the plain snapshot that [`crate::stack`] works on.
//!
//! For every dm device the active table is read (`DM_TABLE_STATUS` with `DM_STATUS_TABLE`,
//! which is what `dmsetup table` prints: devices as `major:minor`); for devices with a wbrepl
//! target the INFO status is read as well (`DM_TABLE_STATUS` without it, with `DM_NOFLUSH`).
//! Status lines are matched to table lines by position, start, length and type.
//!
//! A device removed between listing and reading (`ENXIO`) is skipped. Any other per-device
//! failure is kept as that device's table error, so one odd device never hides the others.

use crate::stack::{is_wbrepl_target, DevNum, Device, Target};
use devicemapper::{errors, DevId, DmError, DmFlags, DmOptions, DM};
use std::fmt;
use std::io;

/// Linux `ENXIO`: the device went away.
const ENXIO: i32 = 6;

/// Control node the `devicemapper` crate opens.
pub const CONTROL: &str = "/dev/mapper/control";

/// A failure that stops the whole command.
#[derive(Debug)]
pub struct DmFailure(String);

impl fmt::Display for DmFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DmFailure {}

/// The errno of a failed ioctl, if that is what `e` is.
fn errno(e: &DmError) -> Option<i32> {
    match e {
        DmError::Core(errors::Error::Ioctl(_, _, _, err)) => Some(**err as i32),
        _ => None,
    }
}

/// A short description of `e` (the crate's own rendering of ioctl errors dumps whole headers).
fn describe(e: &DmError) -> String {
    match (errno(e), e) {
        (Some(n), _) => io::Error::from_raw_os_error(n).to_string(),
        (None, DmError::Core(errors::Error::ContextInit(msg))) => msg.clone(),
        (None, e) => e.to_string(),
    }
}

type TargetLines = Vec<(u64, u64, String, String)>;

fn read(dm: &DM, id: &DevId<'_>, flags: DmFlags) -> Result<TargetLines, DmError> {
    dm.table_status(id, DmOptions::default().set_flags(flags))
        .map(|(_, lines)| lines)
}

/// Reads every device-mapper device.
pub fn snapshot() -> Result<Vec<Device>, DmFailure> {
    let dm = DM::new().map_err(|e| {
        DmFailure(format!(
            "cannot open {CONTROL}: {}\n(run as root, and make sure device-mapper is available: modprobe dm_mod)",
            describe(&e)
        ))
    })?;
    let list = dm.list_devices().map_err(|e| {
        DmFailure(format!(
            "cannot list device-mapper devices: {}",
            describe(&e)
        ))
    })?;

    let mut devices = Vec::with_capacity(list.len());
    for (name, dev, _event_nr) in list {
        let id = DevId::Name(&name);
        let mut device = Device {
            name: name.to_string(),
            devnum: DevNum::new(dev.major, dev.minor),
            table: Ok(Vec::new()),
        };
        let table = match read(&dm, &id, DmFlags::DM_STATUS_TABLE) {
            Ok(table) => table,
            Err(e) if errno(&e) == Some(ENXIO) => continue,
            Err(e) => {
                device.table = Err(describe(&e));
                devices.push(device);
                continue;
            }
        };
        // Status only where it is needed; a failure leaves the status unknown, not the table.
        let status = if table.iter().any(|t| is_wbrepl_target(&t.2)) {
            read(&dm, &id, DmFlags::DM_NOFLUSH).unwrap_or_default()
        } else {
            Vec::new()
        };
        device.table = Ok(table
            .into_iter()
            .enumerate()
            .map(|(i, (start, length, target_type, params))| {
                let status = status
                    .get(i)
                    .filter(|s| s.0 == start && s.1 == length && s.2 == target_type)
                    .map(|s| s.3.trim().to_owned());
                Target {
                    start,
                    length,
                    target_type,
                    params: params.trim().to_owned(),
                    status,
                }
            })
            .collect());
        devices.push(device);
    }
    Ok(devices)
}
