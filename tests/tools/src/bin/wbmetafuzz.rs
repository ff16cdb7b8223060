//! Structure-aware fuzzing of dm-wbcache's metadata load, in the guest
//! (`tests/guest/87-wbcache-metafuzz.sh`).
//!
//! For each image: `wbrepl_core::wbfuzz::generate` writes a cache image with valid checksums
//! and one kind of damage (or none) onto the cache device; `wbrepl_core::wbload::load_image`
//! (the kernel's load steps, run here) predicts what the kernel must do; the kernel target is
//! then created over it and must do exactly that: load it (its log line names the same commit,
//! dirty, discarded and ignored counts and epoch), format the device, or refuse it with the same
//! message, within a time bound, never an oops or a lockup (the harness watches the console).
//!
//!   wbmetafuzz --cache DEV --origin DEV --block-size N --seed S --count N [--mutate]
//!
//! `--mutate` checks the oracle itself: every prediction is altered (a count off by one, a
//! message changed, a load predicted for a format), and every image must then be reported as a
//! mismatch; it exits 0 only if all were.

use devicemapper::{DevId, DmFlags, DmName, DmOptions, DM};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::process::exit;
use std::time::{Duration, Instant};
use wbrepl_core::wbformat::Crc32c;
use wbrepl_core::wbfuzz::{generate, Table};
use wbrepl_core::wbindex::{Index, Slot};
use wbrepl_core::wbload::{load_image, ImageLoad};

struct HostCrc;
impl Crc32c for HostCrc {
    fn append(&self, crc: u32, data: &[u8]) -> u32 {
        crc32c::crc32c_append(crc, data)
    }
}

/// A resume must finish within this (the load is linear; the largest image has 16 000 entries).
const RESUME_BOUND: Duration = Duration::from_secs(10);
const NAME: &str = "wbmetafuzz";

fn die(msg: impl std::fmt::Display) -> ! {
    eprintln!("wbmetafuzz: {msg}");
    exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], flag: &str) -> T {
    let v = args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).unwrap_or_else(|| die(format!("{flag} is required")));
    v.parse().unwrap_or_else(|_| die(format!("{flag}: bad value {v}")))
}

/// `major:minor` of a block device, as dm-wbcache names it in its log lines.
fn devnum(path: &str) -> String {
    let m = std::fs::metadata(path).unwrap_or_else(|e| die(format!("{path}: {e}")));
    if !m.file_type().is_block_device() {
        die(format!("{path} is not a block device"));
    }
    let r = m.rdev();
    format!("{}:{}", libc_major(r), libc_minor(r))
}

fn libc_major(d: u64) -> u64 {
    ((d >> 32) & 0xffff_f000) | ((d >> 8) & 0xfff)
}

fn libc_minor(d: u64) -> u64 {
    ((d >> 12) & 0xffff_ff00) | (d & 0xff)
}

fn sectors(path: &str) -> u64 {
    let mut f = File::open(path).unwrap_or_else(|e| die(format!("{path}: {e}")));
    f.seek(SeekFrom::End(0)).unwrap_or_else(|e| die(format!("{path}: {e}"))) / 512
}

/// The kernel log from where it is now on (`/dev/kmsg`, read without waiting).
struct Kmsg(File);

impl Kmsg {
    fn open() -> Self {
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(0o4000) // O_NONBLOCK
            .open("/dev/kmsg")
            .unwrap_or_else(|e| die(format!("/dev/kmsg: {e}")));
        f.seek(SeekFrom::End(0)).unwrap_or_else(|e| die(format!("/dev/kmsg: {e}")));
        Self(f)
    }

    /// The messages logged since the last call.
    fn lines(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.0.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    if let Some((_, msg)) = rec.split_once(';') {
                        out.push(msg.lines().next().unwrap_or("").to_owned());
                    }
                }
                // EAGAIN: no more; EPIPE: records were overwritten (go on with the next).
                Err(e) if e.raw_os_error() == Some(32) => continue,
                Err(_) => break,
            }
        }
        out
    }
}

/// What the kernel is expected to log (the part after "wbcache <dev>: ") and whether the
/// resume succeeds.
fn predicted(load: &Result<ImageLoad, wbrepl_core::wbload::LoadError>) -> (bool, String) {
    match load {
        Ok(ImageLoad::Blank) => (true, "formatted: ".to_owned()),
        Ok(ImageLoad::Loaded { seq, report, dirty, epoch, .. }) => (
            true,
            format!(
                "loaded commit {seq}: {dirty} dirty blocks, {} discarded, {} entries of an incomplete commit ignored; epoch {epoch}",
                report.discarded, report.ignored
            ),
        ),
        Err(e) => (false, format!("cannot use the cache device: {e}")),
    }
}

fn mutate(p: (bool, String)) -> (bool, String) {
    match p {
        (true, s) if s.starts_with("formatted") => (true, "loaded commit 0: 0 dirty blocks".to_owned()),
        (true, s) => (true, s.replacen(" dirty blocks", "1 dirty blocks", 1)),
        (false, s) => (false, format!("{s}!")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cache: String = arg(&args, "--cache");
    let origin: String = arg(&args, "--origin");
    let block_size: u32 = arg(&args, "--block-size");
    let seed: u64 = arg(&args, "--seed");
    let count: u64 = arg(&args, "--count");
    let mutated = args.iter().any(|a| a == "--mutate");
    let table = Table { block_size, cache_sectors: sectors(&cache), origin_sectors: sectors(&origin) };
    let geom = table.geometry().unwrap_or_else(|e| die(e.as_str()));
    let len = table.metadata_bytes().unwrap_or_else(|e| die(e.as_str()));
    let cache_num = devnum(&cache);
    let prefix = format!("wbcache {cache_num}: ");
    let params = format!("{origin} {cache} {block_size} 0");
    println!(
        "seed {seed}: {count} images of {} entries ({len} bytes of metadata) on {cache} ({cache_num}), table 0 {} wbcache {params}",
        geom.nr_blocks, table.origin_sectors
    );

    let dm = DM::new().unwrap_or_else(|e| die(format!("device-mapper: {e}")));
    let name = DmName::new(NAME).unwrap_or_else(|e| die(e));
    let id = DevId::Name(name);
    let mut kmsg = Kmsg::open();
    let mut dev = OpenOptions::new().write(true).open(&cache).unwrap_or_else(|e| die(format!("{cache}: {e}")));
    let mut img = vec![0u8; len];
    let (nb, nw, nf) = Index::<Vec<Slot>, Vec<u32>, Vec<u64>>::storage_for(geom.nr_blocks);
    let mut ix = Index::new(vec![Slot::default(); geom.nr_blocks as usize], vec![0u32; nb], vec![0u32; nf], vec![0u64; nw], vec![0u64; nw])
        .unwrap_or_else(|e| die(e.as_str()));
    let mut per_kind: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    let (mut bad, mut slowest) = (0u64, Duration::ZERO);
    let start = Instant::now();
    for k in 0..count {
        let s = seed.wrapping_add(k);
        let flaw = generate(s, &table, &mut img, &HostCrc).unwrap_or_else(|e| die(e.as_str()));
        let mut want = predicted(&load_image(&mut ix, &img, &HostCrc, block_size, table.cache_sectors, table.origin_sectors, 2048));
        if mutated {
            want = mutate(want);
        }
        // One device for all the images: suspended (the loaded table commits its metadata), the
        // image written, the next table loaded and resumed (device-mapper destroys the previous
        // table; a refused one stays in place, suspended, until the next is loaded).
        let tw = Instant::now();
        if k > 0 {
            let _ = dm.device_suspend(&id, DmOptions::default().set_flags(DmFlags::DM_SUSPEND));
        }
        dev.seek(SeekFrom::Start(0)).and_then(|_| dev.write_all(&img)).and_then(|_| dev.sync_all()).unwrap_or_else(|e| die(format!("{cache}: {e}")));
        kmsg.lines();
        let tc = Instant::now();
        if k == 0 {
            dm.device_create(name, None, DmOptions::default()).unwrap_or_else(|e| die(format!("create: {e}")));
        }
        let t0 = Instant::now();
        let resumed = dm
            .table_load(&id, &[(0, table.origin_sectors, "wbcache".to_owned(), params.clone())], DmOptions::default())
            .and_then(|_| dm.device_suspend(&id, DmOptions::default()))
            .is_ok();
        let took = t0.elapsed();
        slowest = slowest.max(took);
        // "dm_wbcache: wbcache 7:1: ..." (the module's prefix, then the target's).
        let logged: Vec<String> =
            kmsg.lines().into_iter().filter_map(|l| l.find(&prefix).map(|i| l[i + prefix.len()..].to_owned())).collect();
        let seen = logged.iter().any(|l| if want.1.starts_with("formatted") { l.starts_with(&want.1) } else { *l == want.1 });
        let ok = resumed == want.0 && seen && took <= RESUME_BOUND;
        let e = per_kind.entry(flaw.name()).or_insert((0, 0));
        e.0 += 1;
        if !ok {
            e.1 += 1;
            bad += 1;
            if !mutated || bad <= 3 {
                println!(
                    "MISMATCH seed {s} ({}): expected resume {} and \"{}\"; resume {} in {} ms, logged {:?}",
                    flaw.name(), if want.0 { "ok" } else { "refused" }, want.1, if resumed { "ok" } else { "refused" }, took.as_millis(), logged
                );
            }
        }
        if std::env::var_os("WBMETAFUZZ_TIMES").is_some() {
            println!("{}: suspend and write {} ms, resume {} ms", flaw.name(), (tc - tw).as_millis(), took.as_millis());
        }
    }
    if count > 0 {
        if let Err(e) = dm.device_remove(&id, DmOptions::default()) {
            die(format!("remove: {e}"));
        }
    }
    for (kind, (n, b)) in &per_kind {
        println!("  {kind}: {n} images{}", if *b > 0 { format!(", {b} mismatched") } else { String::new() });
    }
    println!(
        "{count} images in {:.1} s, slowest resume {} ms, {bad} mismatched{}",
        start.elapsed().as_secs_f64(),
        slowest.as_millis(),
        if mutated { " (every prediction altered: all must mismatch)" } else { "" }
    );
    let pass = if mutated { bad == count } else { bad == 0 };
    exit(if pass { 0 } else { 1 })
}
