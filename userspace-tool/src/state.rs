//! The images of a secondary: a small JSON state file per secondary repl device
//! (`<state dir>/<secondary>.json`), the retention rules, and how an image is named and chosen.
//!
//! The file is replaced atomically (written beside, synced, renamed, directory synced), and
//! every change is made under an exclusive lock (`<secondary>.lock`) after reading the file
//! again, so `secondary run` and `images delete|prune` can change it at the same time.
//! `secondary run` also holds `<secondary>.run` for its whole life: one loop per secondary.

use crate::error::{Error, Result};
use crate::output;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Format version of the state file.
pub const VERSION: u32 = 1;
/// Default state directory.
pub const DEFAULT_DIR: &str = "/var/lib/wbrepl";

/// Everything recorded about one secondary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// Name of the secondary repl device.
    pub secondary: String,
    /// Name of the thin pool holding the images.
    pub pool: String,
    /// Name of the thin volume the secondary writes to (the snapshots' origin).
    pub origin: String,
    /// Its thin device id.
    pub origin_thin_id: u32,
    /// Its external origin, if it has one (exposing an image needs it too).
    pub external_origin: Option<String>,
    /// Sequence number for the next image.
    pub next_seq: u64,
    /// The images, oldest first.
    pub images: Vec<Image>,
}

/// One point-in-time image: a thin snapshot taken while the secondary was frozen at a marker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Order of creation (unique per secondary).
    pub seq: u64,
    /// `<marker id>-[<label>-]<time>`.
    pub name: String,
    /// The marker's id.
    pub marker_id: u64,
    /// The marker's label.
    pub label: Option<String>,
    /// The marker's time (ns since the Unix epoch) as the primary stamped it.
    pub marker_time_ns: Option<u64>,
    /// When the snapshot was taken (ns since the Unix epoch).
    pub created_ns: u64,
    /// Thin device id of the snapshot in the pool.
    pub thin_id: u32,
    /// Size, sectors.
    pub size_sectors: u64,
    /// `false` between choosing the id and the pool confirming the snapshot (a crash there is
    /// cleaned up at the next start of `secondary run`).
    pub complete: bool,
}

impl Image {
    /// The time the image stands for: the marker's, else when it was taken.
    pub fn time_ns(&self) -> u64 {
        self.marker_time_ns.unwrap_or(self.created_ns)
    }
}

/// The name of an image: `<marker id>-[<label>-]<UTC time>`, e.g. `7-nightly-20261202T130405Z`.
pub fn image_name(marker_id: u64, label: Option<&str>, time_ns: u64) -> String {
    match label {
        Some(l) => format!("{marker_id}-{l}-{}", output::compact_time(time_ns)),
        None => format!("{marker_id}-{}", output::compact_time(time_ns)),
    }
}

/// What to keep: the last `keep` images and/or those younger than `max_age`. An image is kept
/// if either rule keeps it; with no rule, everything is kept; the newest image is always kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep this many newest images (at least 1).
    pub keep: Option<usize>,
    /// Keep images younger than this (by their marker time).
    pub max_age: Option<Duration>,
}

impl Retention {
    /// Whether no rule is set.
    pub fn is_none(&self) -> bool {
        self.keep.is_none() && self.max_age.is_none()
    }

    /// Why an image at `rank` (0 = newest) of age `age` would be deleted, or `None` if kept.
    fn verdict(&self, rank: usize, age: Duration) -> Option<String> {
        let by_count = self.keep.map(|n| rank < n);
        let by_age = self.max_age.map(|a| age < a);
        let kept = rank == 0
            || match (by_count, by_age) {
                (None, None) => true,
                (Some(c), None) => c,
                (None, Some(a)) => a,
                (Some(c), Some(a)) => c || a,
            };
        if kept {
            return None;
        }
        let mut why = Vec::new();
        if let Some(n) = self.keep {
            why.push(format!("not among the {n} newest"));
        }
        if let Some(a) = self.max_age {
            why.push(format!("older than {}", humantime::format_duration(a)));
        }
        Some(why.join(" and "))
    }

    /// The images (complete ones only) these rules delete at `now_ns`, with the reason, oldest
    /// first.
    pub fn expired<'a>(&self, images: &'a [Image], now_ns: u64) -> Vec<(&'a Image, String)> {
        let mut done: Vec<&Image> = images.iter().filter(|i| i.complete).collect();
        done.sort_by_key(|i| std::cmp::Reverse(i.seq));
        let mut out: Vec<(&Image, String)> = done
            .iter()
            .enumerate()
            .filter_map(|(rank, img)| {
                let age = Duration::from_nanos(now_ns.saturating_sub(img.time_ns()));
                self.verdict(rank, age).map(|why| (*img, why))
            })
            .collect();
        out.reverse();
        out
    }
}

/// Checks a `--keep` value: a whole number of at least 1.
pub fn parse_keep(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "--keep must be a whole number of at least 1 (the newest image is always kept), not \"{s}\""
        )),
    }
}

/// Checks a `--max-age` value: a duration of at least a second.
pub fn parse_max_age(s: &str) -> std::result::Result<Duration, String> {
    let d = output::parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("--max-age must be at least 1s, not \"{s}\""));
    }
    Ok(d)
}

/// The image `query` names: `latest`, an image name, or a marker id (which must name exactly
/// one image). Only complete images are chosen.
pub fn select<'a>(images: &'a [Image], query: &str) -> std::result::Result<&'a Image, String> {
    let done = || images.iter().filter(|i| i.complete);
    if query == "latest" {
        return done()
            .max_by_key(|i| i.seq)
            .ok_or_else(|| "there are no images yet".to_owned());
    }
    if let Some(i) = done().find(|i| i.name == query) {
        return Ok(i);
    }
    if let Ok(id) = query.parse::<u64>() {
        let hits: Vec<&Image> = done().filter(|i| i.marker_id == id).collect();
        match hits.as_slice() {
            [one] => return Ok(one),
            [] => {}
            many => {
                let names: Vec<&str> = many.iter().map(|i| i.name.as_str()).collect();
                return Err(format!(
                    "marker id {id} names {} images ({}): give the image name",
                    many.len(),
                    names.join(", ")
                ));
            }
        }
    }
    Err(format!(
        "no image \"{query}\" (images are named by marker id, name or \"latest\")"
    ))
}

/// Where one secondary's files live.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    secondary: String,
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::op(format!("cannot {what} {}: {e}", path.display()))
}

impl Store {
    /// The store of `secondary` (a device-mapper name) under `dir`.
    pub fn new(dir: &Path, secondary: &str) -> Result<Self> {
        if secondary.is_empty() || secondary.contains('/') || secondary.starts_with('.') {
            return Err(Error::usage(format!(
                "\"{secondary}\" is not a device-mapper device name"
            )));
        }
        Ok(Self {
            dir: dir.to_owned(),
            secondary: secondary.to_owned(),
        })
    }

    fn file(&self, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", self.secondary))
    }

    /// The state file.
    pub fn path(&self) -> PathBuf {
        self.file("json")
    }

    /// Reads the state; `None` if there is none yet.
    pub fn load(&self) -> Result<Option<State>> {
        let p = self.path();
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &p, e)),
        };
        let st: State = serde_json::from_str(&text).map_err(|e| io_err("parse", &p, e))?;
        if st.version != VERSION {
            return Err(Error::op(format!(
                "{}: state format version {} (this wbrepl knows {VERSION})",
                p.display(),
                st.version
            )));
        }
        Ok(Some(st))
    }

    /// Reads the state, which must exist.
    pub fn load_existing(&self) -> Result<State> {
        self.load()?.ok_or_else(|| {
            Error::op(format!(
                "no images recorded for {} ({} does not exist; is --state-dir right?)",
                self.secondary,
                self.path().display()
            ))
        })
    }

    /// Writes the state atomically.
    pub fn save(&self, st: &State) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| io_err("create", &self.dir, e))?;
        let p = self.path();
        let tmp = self.file("json.tmp");
        let mut text = serde_json::to_string_pretty(st)
            .map_err(|e| Error::op(format!("cannot encode the state: {e}")))?;
        text.push('\n');
        let mut f = File::create(&tmp).map_err(|e| io_err("create", &tmp, e))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| io_err("write", &tmp, e))?;
        fs::rename(&tmp, &p).map_err(|e| io_err("replace", &p, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("sync", &self.dir, e))
    }

    fn flock(&self, ext: &str, arg: FlockArg) -> Result<Flock<File>> {
        fs::create_dir_all(&self.dir).map_err(|e| io_err("create", &self.dir, e))?;
        let p = self.file(ext);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| io_err("open", &p, e))?;
        Flock::lock(f, arg).map_err(|(_, e)| {
            if e == nix::errno::Errno::EWOULDBLOCK {
                Error::op(format!(
                    "another wbrepl secondary run is running for {} ({} is locked)",
                    self.secondary,
                    p.display()
                ))
            } else {
                io_err("lock", &p, e)
            }
        })
    }

    /// Held by `secondary run` for its whole life; fails at once if another holds it.
    pub fn run_lock(&self) -> Result<Flock<File>> {
        self.flock("run", FlockArg::LockExclusiveNonblock)
    }

    /// Drops the record of image `seq` (under the lock).
    pub fn forget(&self, seq: u64) -> Result<()> {
        self.update(|st| {
            if let Some(st) = st {
                st.images.retain(|i| i.seq != seq);
            }
            Ok(())
        })
    }

    /// Replaces the record of image `img.seq` with `img` (under the lock).
    pub fn set_image(&self, img: &Image) -> Result<()> {
        self.update(|st| {
            if let Some(st) = st {
                st.images
                    .iter_mut()
                    .filter(|i| i.seq == img.seq)
                    .for_each(|i| *i = img.clone());
            }
            Ok(())
        })
    }

    /// Reads the state under the lock, lets `f` change it, writes it back (only if it changed)
    /// and returns what `f` returned.
    pub fn update<T>(&self, f: impl FnOnce(&mut Option<State>) -> Result<T>) -> Result<T> {
        let _lock = self.flock("lock", FlockArg::LockExclusive)?;
        let before = self.load()?;
        let mut st = before.clone();
        let r = f(&mut st)?;
        if st != before {
            if let Some(st) = &st {
                self.save(st)?;
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const NOW: u64 = 1_796_216_645 * S;

    fn img(seq: u64, marker_id: u64, age_s: u64) -> Image {
        Image {
            seq,
            name: image_name(marker_id, None, NOW - age_s * S),
            marker_id,
            label: None,
            marker_time_ns: Some(NOW - age_s * S),
            created_ns: NOW - age_s * S + S,
            thin_id: 10 + seq as u32,
            size_sectors: 131072,
            complete: true,
        }
    }

    /// Ten images, one a minute, the newest a minute old.
    fn ten() -> Vec<Image> {
        (1..=10).map(|s| img(s, s + 100, (11 - s) * 60)).collect()
    }

    fn seqs(r: &Retention, images: &[Image]) -> Vec<u64> {
        r.expired(images, NOW).iter().map(|(i, _)| i.seq).collect()
    }

    #[test]
    fn names() {
        assert_eq!(
            image_name(7, Some("nightly"), NOW),
            "7-nightly-20261202T130405Z"
        );
        assert_eq!(image_name(12, None, NOW), "12-20261202T130405Z");
    }

    #[test]
    fn no_rule_keeps_everything() {
        assert!(Retention::default().is_none());
        assert!(seqs(&Retention::default(), &ten()).is_empty());
    }

    #[test]
    fn keep_the_last_n() {
        let r = Retention {
            keep: Some(3),
            max_age: None,
        };
        assert_eq!(seqs(&r, &ten()), [1, 2, 3, 4, 5, 6, 7]);
        let r = Retention {
            keep: Some(10),
            max_age: None,
        };
        assert!(seqs(&r, &ten()).is_empty());
        let r = Retention {
            keep: Some(1),
            max_age: None,
        };
        assert_eq!(seqs(&r, &ten()).len(), 9);
        assert_eq!(r.expired(&ten(), NOW)[0].1, "not among the 1 newest");
    }

    #[test]
    fn keep_younger_than() {
        // 5 min: the images 1..=4 min old survive.
        let r = Retention {
            keep: None,
            max_age: Some(Duration::from_secs(300)),
        };
        assert_eq!(seqs(&r, &ten()), [1, 2, 3, 4, 5, 6]);
        assert_eq!(r.expired(&ten(), NOW)[0].1, "older than 5m");
        // All older than the limit: the newest stays anyway.
        let r = Retention {
            keep: None,
            max_age: Some(Duration::from_secs(1)),
        };
        assert_eq!(seqs(&r, &ten()), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn either_rule_keeps() {
        // 3 newest OR younger than 5 min: the 4 that are young win.
        let r = Retention {
            keep: Some(3),
            max_age: Some(Duration::from_secs(300)),
        };
        assert_eq!(seqs(&r, &ten()), [1, 2, 3, 4, 5, 6]);
        // 6 newest OR younger than 2 min.
        let r = Retention {
            keep: Some(6),
            max_age: Some(Duration::from_secs(120)),
        };
        assert_eq!(seqs(&r, &ten()), [1, 2, 3, 4]);
        assert_eq!(
            r.expired(&ten(), NOW)[0].1,
            "not among the 6 newest and older than 2m"
        );
    }

    #[test]
    fn order_is_by_creation_not_marker_id() {
        // A new primary starts marker ids again from 1: the newest image has the lowest id.
        let mut images = ten();
        images.push(img(11, 1, 0));
        let r = Retention {
            keep: Some(1),
            max_age: None,
        };
        assert_eq!(seqs(&r, &images), (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn incomplete_images_are_not_retention_candidates() {
        let mut images = ten();
        images[9].complete = false;
        let r = Retention {
            keep: Some(1),
            max_age: None,
        };
        // seq 9 is the newest complete image now.
        assert_eq!(seqs(&r, &images), [1, 2, 3, 4, 5, 6, 7, 8]);
        // Future times (a clock skew) count as age 0.
        let mut images = ten();
        images[0].marker_time_ns = Some(NOW + 60 * S);
        let r = Retention {
            keep: None,
            max_age: Some(Duration::from_secs(30)),
        };
        assert!(!seqs(&r, &images).contains(&1));
    }

    #[test]
    fn arguments() {
        assert_eq!(parse_keep("3"), Ok(3));
        assert!(parse_keep("0").unwrap_err().contains("at least 1"));
        assert!(parse_keep("-1").is_err() && parse_keep("x").is_err());
        assert_eq!(parse_max_age("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_max_age("10ms").is_err());
        assert!(parse_max_age("soon").is_err());
    }

    #[test]
    fn selecting() {
        let mut images = ten();
        images[2].marker_id = 999;
        images[5].marker_id = 999;
        images[9].complete = false;
        assert_eq!(select(&images, "latest").map(|i| i.seq), Ok(9));
        assert_eq!(select(&images, "102").map(|i| i.seq), Ok(2));
        let name = images[3].name.clone();
        assert_eq!(select(&images, &name).map(|i| i.seq), Ok(4));
        let e = select(&images, "999").unwrap_err();
        assert!(e.starts_with("marker id 999 names 2 images ("), "{e}");
        assert!(select(&images, "110")
            .unwrap_err()
            .starts_with("no image \"110\""));
        assert!(select(&images, "bogus").is_err());
        assert_eq!(
            select(&[], "latest").unwrap_err(),
            "there are no images yet"
        );
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("wbrepl-state-test-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn state() -> State {
        State {
            version: VERSION,
            secondary: "sec0".into(),
            pool: "pool0".into(),
            origin: "thin0".into(),
            origin_thin_id: 1,
            external_origin: None,
            next_seq: 11,
            images: ten(),
        }
    }

    #[test]
    fn store_round_trip_and_update() {
        let d = tmpdir("rt");
        let s = Store::new(&d, "sec0").unwrap();
        assert_eq!(s.load().unwrap(), None);
        assert!(s
            .load_existing()
            .unwrap_err()
            .to_string()
            .contains("no images recorded for sec0"));
        s.save(&state()).unwrap();
        assert_eq!(s.load().unwrap(), Some(state()));
        let n = s
            .update(|st| {
                let st = st.as_mut().ok_or_else(|| Error::op("none"))?;
                st.images.retain(|i| i.seq > 5);
                Ok(st.images.len())
            })
            .unwrap();
        assert_eq!(n, 5);
        assert_eq!(s.load_existing().unwrap().images.len(), 5);
        let mut img = s.load_existing().unwrap().images[0].clone();
        img.thin_id = 99;
        s.set_image(&img).unwrap();
        assert_eq!(s.load_existing().unwrap().images[0].thin_id, 99);
        s.forget(img.seq).unwrap();
        assert_eq!(s.load_existing().unwrap().images.len(), 4);
        s.forget(12345).unwrap();
        assert_eq!(s.load_existing().unwrap().images.len(), 4);
        // A failing update changes nothing.
        let e = s.update(|st| {
            if let Some(st) = st.as_mut() {
                st.images.clear();
            }
            Err::<(), _>(Error::op("stop"))
        });
        assert_eq!(e, Err(Error::op("stop")));
        assert_eq!(s.load_existing().unwrap().images.len(), 4);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn store_refuses_bad_files_and_names() {
        let d = tmpdir("bad");
        assert!(Store::new(&d, "../x").is_err());
        assert!(Store::new(&d, "").is_err());
        let s = Store::new(&d, "sec0").unwrap();
        fs::create_dir_all(&d).unwrap();
        fs::write(s.path(), "{not json").unwrap();
        assert!(s
            .load()
            .unwrap_err()
            .to_string()
            .starts_with("cannot parse "));
        let mut st = state();
        st.version = 99;
        fs::write(s.path(), serde_json::to_string(&st).unwrap()).unwrap();
        assert!(s
            .load()
            .unwrap_err()
            .to_string()
            .contains("state format version 99"));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn one_run_lock_at_a_time() {
        let d = tmpdir("lock");
        let s = Store::new(&d, "sec0").unwrap();
        let held = s.run_lock().unwrap();
        let e = s.run_lock().unwrap_err().to_string();
        assert!(
            e.starts_with("another wbrepl secondary run is running for sec0"),
            "{e}"
        );
        drop(held);
        assert!(s.run_lock().is_ok());
        let _ = fs::remove_dir_all(&d);
    }
}
