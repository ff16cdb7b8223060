//! Device-mapper through its ioctls (the `devicemapper` crate, `/dev/mapper/control`): a thin
//! wrapper ([`Dm`]) with short error texts, and the plain snapshot of every device that
//! [`crate::stack`] works on ([`Dm::snapshot`]).
//!
//! For every dm device the active table is read (`DM_TABLE_STATUS` with `DM_STATUS_TABLE`,
//! which is what `dmsetup table` prints: devices as `major:minor`); for devices with a wbrepl
//! target the INFO status is read as well (`DM_TABLE_STATUS` without it, with `DM_NOFLUSH`).
//! Status lines are matched to table lines by position, start, length and type.
//!
//! A device removed between listing and reading (`ENXIO`) is skipped. Any other per-device
//! failure is kept as that device's table error, so one odd device never hides the others.
//!
//! Events: `DM::device_wait` cannot be given the event number to wait past (the crate puts its
//! udev flags into that header field), so [`Dm::wait_event`] uses the crate's documented way:
//! poll the control file descriptor, re-arm it with `DM_DEV_ARM_POLL`, and compare the devices'
//! event numbers.

use crate::error::{Error, Result};
use crate::stack::{is_wbrepl_target, DevNum, Device, Target};
use devicemapper::{errors, DevId, DmError, DmFlags, DmName, DmOptions, DM};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

/// Control node the `devicemapper` crate opens.
pub const CONTROL: &str = "/dev/mapper/control";

/// One line of a table or status: start, length, target type, parameters.
pub type TargetLine = (u64, u64, String, String);

/// A failed device-mapper call: its errno (if it was an ioctl that failed) and a short text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmErr {
    /// The ioctl's errno.
    pub errno: Option<Errno>,
    /// What went wrong, without the crate's header dumps.
    pub text: String,
}

impl DmErr {
    /// An operational [`Error`]: `context: text`.
    pub fn op(&self, context: impl fmt::Display) -> Error {
        Error::op(format!("{context}: {}", self.text))
    }

    /// Whether the ioctl failed with `e`.
    pub fn is(&self, e: Errno) -> bool {
        self.errno == Some(e)
    }
}

impl fmt::Display for DmErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<DmError> for DmErr {
    fn from(e: DmError) -> Self {
        let errno = match &e {
            DmError::Core(errors::Error::Ioctl(_, _, _, err)) => Some(**err),
            _ => None,
        };
        let text = match (errno, &e) {
            (Some(n), _) => io::Error::from_raw_os_error(n as i32).to_string(),
            (None, DmError::Core(errors::Error::ContextInit(msg))) => msg.clone(),
            (None, e) => e.to_string(),
        };
        Self { errno, text }
    }
}

/// What `DM_DEV_STATUS` says about a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    /// Device number.
    pub devnum: DevNum,
    /// Openers.
    pub open_count: i32,
    /// Event counter.
    pub event_nr: u32,
    /// Suspended.
    pub suspended: bool,
    /// Has an active table.
    pub active: bool,
}

/// An open `/dev/mapper/control`.
pub struct Dm(DM);

fn name(name: &str) -> std::result::Result<&DmName, DmErr> {
    DmName::new(name).map_err(|_| DmErr {
        errno: None,
        text: format!("\"{name}\" is not a valid device-mapper name"),
    })
}

fn to_devnum(d: devicemapper::Device) -> DevNum {
    DevNum::new(d.major, d.minor)
}

impl Dm {
    /// Opens the control device (needs root and the dm_mod module).
    pub fn open() -> Result<Self> {
        DM::new().map(Self).map_err(|e| {
            Error::op(format!(
                "cannot open {CONTROL}: {}\n(run as root, and make sure device-mapper is available: modprobe dm_mod)",
                DmErr::from(e)
            ))
        })
    }

    /// Every device: name, device number.
    pub fn list(&self) -> std::result::Result<Vec<(String, DevNum)>, DmErr> {
        Ok(self
            .0
            .list_devices()?
            .into_iter()
            .map(|(n, d, _)| (n.to_string(), to_devnum(d)))
            .collect())
    }

    /// `DM_DEV_STATUS` of a device.
    pub fn info(&self, dev: &str) -> std::result::Result<Info, DmErr> {
        let i = self.0.device_info(&DevId::Name(name(dev)?))?;
        let f = i.flags();
        Ok(Info {
            devnum: to_devnum(i.device()),
            open_count: i.open_count(),
            event_nr: i.event_nr(),
            suspended: f.contains(DmFlags::DM_SUSPEND),
            active: f.contains(DmFlags::DM_ACTIVE_PRESENT),
        })
    }

    fn table_status(
        &self,
        dev: &str,
        flags: DmFlags,
    ) -> std::result::Result<Vec<TargetLine>, DmErr> {
        let (_, lines) = self.0.table_status(
            &DevId::Name(name(dev)?),
            DmOptions::default().set_flags(flags),
        )?;
        Ok(lines
            .into_iter()
            .map(|(s, l, t, p)| (s, l, t, p.trim().to_owned()))
            .collect())
    }

    /// The active table (`dmsetup table`).
    pub fn table(&self, dev: &str) -> std::result::Result<Vec<TargetLine>, DmErr> {
        self.table_status(dev, DmFlags::DM_STATUS_TABLE)
    }

    /// The INFO status (`dmsetup status`), without making targets commit metadata.
    pub fn status(&self, dev: &str) -> std::result::Result<Vec<TargetLine>, DmErr> {
        self.table_status(dev, DmFlags::DM_NOFLUSH)
    }

    /// The INFO status of a single-target device (its first target's parameters).
    pub fn status_info(&self, dev: &str) -> Result<String> {
        let lines = self
            .status(dev)
            .map_err(|e| e.op(format!("cannot read the status of {dev}")))?;
        Ok(lines.into_iter().next().map(|l| l.3).unwrap_or_default())
    }

    /// Sends a target message to the whole device; returns the target's answer, if any.
    pub fn message(&self, dev: &str, msg: &str) -> std::result::Result<Option<String>, DmErr> {
        let (_, out) = self.0.target_msg(&DevId::Name(name(dev)?), None, msg)?;
        Ok(out.map(|s| s.trim().to_owned()))
    }

    /// Suspends a device (waiting for its I/O in flight).
    pub fn suspend(&self, dev: &str) -> std::result::Result<(), DmErr> {
        self.0.device_suspend(
            &DevId::Name(name(dev)?),
            DmOptions::default().set_flags(DmFlags::DM_SUSPEND),
        )?;
        Ok(())
    }

    /// Resumes a device (making a loaded table active).
    pub fn resume(&self, dev: &str) -> std::result::Result<(), DmErr> {
        self.0
            .device_suspend(&DevId::Name(name(dev)?), DmOptions::default())?;
        Ok(())
    }

    /// Loads a table into the inactive slot.
    pub fn load(
        &self,
        dev: &str,
        lines: &[TargetLine],
        readonly: bool,
    ) -> std::result::Result<(), DmErr> {
        let flags = if readonly {
            DmFlags::DM_READONLY
        } else {
            DmFlags::empty()
        };
        self.0.table_load(
            &DevId::Name(name(dev)?),
            lines,
            DmOptions::default().set_flags(flags),
        )?;
        Ok(())
    }

    /// Creates a device, loads `lines` and resumes it (`dmsetup create`). A device that was
    /// made but could not be loaded or resumed is removed again.
    pub fn create(
        &self,
        dev: &str,
        lines: &[TargetLine],
        readonly: bool,
    ) -> std::result::Result<DevNum, DmErr> {
        let flags = if readonly {
            DmFlags::DM_READONLY
        } else {
            DmFlags::empty()
        };
        let info = self
            .0
            .device_create(name(dev)?, None, DmOptions::default().set_flags(flags))?;
        let done = self
            .load(dev, lines, readonly)
            .and_then(|()| self.resume(dev));
        if let Err(e) = done {
            let _ = self.remove(dev);
            return Err(e);
        }
        Ok(to_devnum(info.device()))
    }

    /// Creates a device and loads `lines` without resuming it, then removes it: whether the
    /// table would load (the targets' constructors accept it).
    pub fn try_load(&self, dev: &str, lines: &[TargetLine]) -> std::result::Result<(), DmErr> {
        self.0
            .device_create(name(dev)?, None, DmOptions::default())?;
        let r = self.load(dev, lines, true);
        self.remove(dev)?;
        r
    }

    /// Removes a device (`dmsetup remove`; the crate retries while it is busy, for 1 s).
    pub fn remove(&self, dev: &str) -> std::result::Result<(), DmErr> {
        self.0
            .device_remove(&DevId::Name(name(dev)?), DmOptions::default())?;
        Ok(())
    }

    /// Removes a device, saying plainly when it is in use.
    pub fn remove_unused(&self, dev: &str) -> Result<()> {
        self.remove(dev).map_err(|e| {
            if e.is(Errno::EBUSY) {
                Error::op(format!(
                    "cannot remove {dev}: it is in use (mounted, open, or under another device)"
                ))
            } else {
                e.op(format!("cannot remove {dev}"))
            }
        })
    }

    /// Clears a pending event so that [`Dm::wait_event`] waits for the next one.
    pub fn arm(&self) -> std::result::Result<(), DmErr> {
        self.0.arm_poll()?;
        Ok(())
    }

    /// Waits until some device raises an event (or a uevent-generating operation happens) after
    /// the last [`Dm::arm`], or `timeout` passes; re-arms. Returns whether an event came (a
    /// signal counts as one, so the caller looks at its flags promptly).
    pub fn wait_event(&self, timeout: Duration) -> std::result::Result<bool, DmErr> {
        let fd = self.0.file().as_fd();
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        let t = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        let ready = match poll(&mut fds, t) {
            Ok(n) => n > 0,
            Err(Errno::EINTR) => true,
            Err(e) => {
                return Err(DmErr {
                    errno: Some(e),
                    text: format!("cannot poll {CONTROL}: {}", e.desc()),
                })
            }
        };
        if ready {
            self.arm()?;
        }
        Ok(ready)
    }

    /// Reads every device-mapper device.
    pub fn snapshot(&self) -> Result<Vec<Device>> {
        let list = self
            .list()
            .map_err(|e| e.op("cannot list device-mapper devices"))?;
        let mut devices = Vec::with_capacity(list.len());
        for (name, devnum) in list {
            let mut device = Device {
                name,
                devnum,
                table: Ok(Vec::new()),
            };
            let table = match self.table(&device.name) {
                Ok(table) => table,
                Err(e) if e.is(Errno::ENXIO) => continue,
                Err(e) => {
                    device.table = Err(e.text);
                    devices.push(device);
                    continue;
                }
            };
            // Status only where it is needed; a failure leaves the status unknown, not the
            // table.
            let status = if table.iter().any(|t| is_wbrepl_target(&t.2)) {
                self.status(&device.name).unwrap_or_default()
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
                        .map(|s| s.3.clone());
                    Target {
                        start,
                        length,
                        target_type,
                        params,
                        status,
                    }
                })
                .collect());
            devices.push(device);
        }
        Ok(devices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_short() {
        let e = DmErr::from(DmError::Core(errors::Error::ContextInit("nope".into())));
        assert_eq!((e.errno, e.text.as_str()), (None, "nope"));
        assert_eq!(e.op("x").to_string(), "x: nope");
    }
}
