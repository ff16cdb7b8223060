//! dm-thin as seen from tables and status lines: a thin volume's table names its pool and its
//! device id; the pool's status says whether it can take snapshots. Pure functions, tested on
//! the host.
//!
//! - thin: `<pool dev> <dev id> [<external origin dev>]`
//! - thin-pool status: `<transaction id> <used meta>/<total meta> <used data>/<total data>
//!   <held root> ro|rw|out_of_data_space ...`, or `Fail`.

use crate::stack::{DevNum, Device};
use serde::Serialize;

/// Target type of a thin volume.
pub const THIN: &str = "thin";
/// Target type of a thin pool.
pub const POOL: &str = "thin-pool";
/// Largest thin device id (24 bits).
pub const MAX_ID: u32 = (1 << 24) - 1;

/// A thin volume's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThinTable {
    /// The pool device.
    pub pool: DevNum,
    /// The thin device id in the pool.
    pub id: u32,
    /// An external (read-only) origin, if any.
    pub external_origin: Option<String>,
}

impl ThinTable {
    /// Parses the parameters of a `thin` table line (as read back: devices as
    /// `major:minor`).
    pub fn parse(params: &str) -> Result<Self, String> {
        let mut w = params.split_ascii_whitespace();
        let pool = w
            .next()
            .ok_or("no pool device")?
            .parse::<DevNum>()
            .map_err(|_| format!("pool device is not major:minor in \"{params}\""))?;
        let id = w
            .next()
            .ok_or("no device id")?
            .parse::<u32>()
            .ok()
            .filter(|&i| i <= MAX_ID)
            .ok_or_else(|| format!("bad thin device id in \"{params}\""))?;
        let external_origin = w.next().map(str::to_owned);
        if w.next().is_some() {
            return Err(format!("unexpected words in \"{params}\""));
        }
        Ok(Self {
            pool,
            id,
            external_origin,
        })
    }

    /// The table parameters for a thin device `id` in the same pool (with the same external
    /// origin).
    pub fn params_for(&self, id: u32) -> String {
        match &self.external_origin {
            Some(o) => format!("{} {id} {o}", self.pool),
            None => format!("{} {id}", self.pool),
        }
    }
}

/// A thin pool's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolStatus {
    /// `rw`, `ro`, `out_of_data_space` or `fail`.
    pub mode: String,
    /// Data blocks used.
    pub data_used: u64,
    /// Data blocks in all.
    pub data_total: u64,
    /// Metadata blocks used.
    pub meta_used: u64,
    /// Metadata blocks in all.
    pub meta_total: u64,
}

fn ratio(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once('/')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

impl PoolStatus {
    /// Parses a thin-pool INFO status.
    pub fn parse(info: &str) -> Option<Self> {
        let w: Vec<&str> = info.split_ascii_whitespace().collect();
        if w.first() == Some(&"Fail") {
            return Some(Self {
                mode: "fail".into(),
                data_used: 0,
                data_total: 0,
                meta_used: 0,
                meta_total: 0,
            });
        }
        let (meta_used, meta_total) = ratio(w.get(1)?)?;
        let (data_used, data_total) = ratio(w.get(2)?)?;
        Some(Self {
            mode: (*w.get(4)?).to_owned(),
            data_used,
            data_total,
            meta_used,
            meta_total,
        })
    }

    /// Why the pool cannot take a snapshot now, if it cannot.
    pub fn refuses_snapshots(&self) -> Option<String> {
        match self.mode.as_str() {
            "rw" => None,
            "out_of_data_space" => Some("the pool is out of data space".into()),
            "ro" => Some("the pool is read-only (metadata full or damaged?)".into()),
            "fail" => Some("the pool has failed".into()),
            m => Some(format!("the pool is in mode {m}")),
        }
    }
}

/// A thin volume found among the dm devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThinDevice {
    /// Its dm name.
    pub name: String,
    /// Its device number.
    pub devnum: DevNum,
    /// Length, sectors.
    pub len: u64,
    /// Its table.
    pub table: ThinTable,
}

/// The device whose table is a single `ty` target: (length, parameters).
pub fn single_target<'a>(d: &'a Device, ty: &str) -> Option<(u64, &'a str)> {
    match d.table.as_deref() {
        Ok([t]) if t.start == 0 && t.target_type == ty => Some((t.length, t.params.as_str())),
        _ => None,
    }
}

/// Every thin volume in `devices` that lives in the pool `pool`.
pub fn volumes_in(devices: &[Device], pool: DevNum) -> Vec<ThinDevice> {
    devices
        .iter()
        .filter_map(|d| {
            let (len, params) = single_target(d, THIN)?;
            let table = ThinTable::parse(params).ok()?;
            (table.pool == pool).then(|| ThinDevice {
                name: d.name.clone(),
                devnum: d.devnum,
                len,
                table,
            })
        })
        .collect()
}

/// A device id for a new snapshot: one above every id known to be used (`None` if that is past
/// [`MAX_ID`]).
pub fn next_id(used: impl IntoIterator<Item = u32>) -> Option<u32> {
    let top = used
        .into_iter()
        .max()
        .map_or(Some(0), |m| m.checked_add(1))?;
    (top <= MAX_ID).then_some(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_tables() {
        let t = ThinTable::parse("253:2 1").unwrap();
        assert_eq!(
            t,
            ThinTable {
                pool: DevNum::new(253, 2),
                id: 1,
                external_origin: None
            }
        );
        assert_eq!(t.params_for(7), "253:2 7");
        let t = ThinTable::parse("253:2 16777215 7:3").unwrap();
        assert_eq!((t.id, t.external_origin.as_deref()), (MAX_ID, Some("7:3")));
        assert_eq!(t.params_for(4), "253:2 4 7:3");
        for bad in [
            "",
            "253:2",
            "pool 1",
            "253:2 x",
            "253:2 16777216",
            "253:2 1 7:3 extra",
            "253:2 -1",
        ] {
            assert!(ThinTable::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pool_status() {
        let s = PoolStatus::parse(
            "3 10/4096 20/1024 - rw no_discard_passdown queue_if_no_space - 1024",
        )
        .unwrap();
        assert_eq!(
            s,
            PoolStatus {
                mode: "rw".into(),
                data_used: 20,
                data_total: 1024,
                meta_used: 10,
                meta_total: 4096
            }
        );
        assert_eq!(s.refuses_snapshots(), None);
        let s =
            PoolStatus::parse("3 10/4096 1024/1024 - out_of_data_space discard_passdown").unwrap();
        assert!(s.refuses_snapshots().unwrap().contains("out of data space"));
        assert!(PoolStatus::parse("3 10/4096 20/1024 - ro")
            .unwrap()
            .refuses_snapshots()
            .unwrap()
            .contains("read-only"));
        assert!(PoolStatus::parse("Fail")
            .unwrap()
            .refuses_snapshots()
            .unwrap()
            .contains("failed"));
        assert_eq!(PoolStatus::parse(""), None);
        assert_eq!(PoolStatus::parse("3 x/4096 20/1024 - rw"), None);
    }

    fn dev(name: &str, minor: u32, ty: &str, params: &str) -> Device {
        Device {
            name: name.into(),
            devnum: DevNum::new(253, minor),
            table: Ok(vec![crate::stack::Target {
                start: 0,
                length: 2048,
                target_type: ty.into(),
                params: params.into(),
                status: None,
            }]),
        }
    }

    #[test]
    fn volumes_of_a_pool() {
        let devs = [
            dev("pool", 2, POOL, "7:0 7:1 128 0 0"),
            dev("thin", 3, THIN, "253:2 1"),
            dev("img", 4, THIN, "253:2 5"),
            dev("other", 5, THIN, "253:9 1"),
            dev("lin", 6, "linear", "7:3 0"),
            Device {
                name: "gone".into(),
                devnum: DevNum::new(253, 7),
                table: Err("ENXIO".into()),
            },
        ];
        let v = volumes_in(&devs, DevNum::new(253, 2));
        let names: Vec<(&str, u32)> = v.iter().map(|t| (t.name.as_str(), t.table.id)).collect();
        assert_eq!(names, [("thin", 1), ("img", 5)]);
        assert_eq!(v[0].len, 2048);
        assert_eq!(
            single_target(&devs[0], POOL),
            Some((2048, "7:0 7:1 128 0 0"))
        );
        assert_eq!(single_target(&devs[0], THIN), None);
    }

    #[test]
    fn ids() {
        assert_eq!(next_id([]), Some(0));
        assert_eq!(next_id([1]), Some(2));
        assert_eq!(next_id([5, 1, 3]), Some(6));
        assert_eq!(next_id([MAX_ID - 1]), Some(MAX_ID));
        assert_eq!(next_id([MAX_ID]), None);
        assert_eq!(next_id([u32::MAX]), None);
    }
}
