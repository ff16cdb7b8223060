#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Block workloads and oracles for the dm-wbcache power-loss test (85-wbcache-powerloss.sh).

Every 512-byte sector written at step t carries (t, sector) repeated, so any sector read back
names the write it came from. A workload writes a history file (JSON): the extents of every
step, the steps followed by fsync or written with O_DSYNC, and its checkpoints.

  run DEV HIST LOGDEV           the block workload: 300 steps of whole, partial and multi-block
                                writes; after some, fsync (or an O_DSYNC write) and then a mark
                                `s<t>` in the dm-log-writes log: everything written by steps <= t
                                is durable at that mark. A mode switch to ordered (mark
                                `mode-ordered`) and a flush, then back to writeback.
  run-ordered DEV HIST LOGDEV   the same writes on a cache created in ordered mode, with
                                checkpoints sent from a second thread while the writes go on
                                (`ordered`/`hold`); after step 200 a mark `mode-writeback`, the
                                switch to writeback, and checkpoints `hold`/`writethrough`.
  check DEV HIST STEP           the block oracle on DEV (a rebuilt cache) after a replay whose
                                last mark is `s<STEP>` (0: none): see check_image.
  replay ...                    replays a log to sampled FLUSH/FUA points and crash states before
                                them, rebuilds the cache on each and runs the block oracle (or
                                mount + e2fsck for ext4): see replay_main.
  origin LOG HIST ...           the origin-alone oracles over every prefix of the log and crash
                                states: the origin is always at an epoch boundary in ordered mode,
                                and exactly a prefix of the writes between a checkpoint's drain
                                and its marker: see OriginWalk.
  self-test                     each oracle against images and logs built here, the wrong ones
                                (mutations) included: prints "powerloss self-test: ok".
"""

import argparse
import bisect
import collections
import json
import mmap
import os
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.dont_write_bytecode = True
import logreplay  # noqa: E402

SECTOR = 512
BLOCK = 4096
RANGE_BLOCKS = 1024  # 4 MiB of the device: plenty of overwrites
RANGE_SECTORS = RANGE_BLOCKS * BLOCK // SECTOR
MARKER_MAGIC = b"WBRPMRK1"
MARKER_SECTORS = 8
INVALID = -1  # a sector that is neither zeroes nor a write of that sector


def pattern(step, sector):
    return struct.pack("<QQ", step, sector) * (SECTOR // 16)


def buf_for(step, first, count):
    m = mmap.mmap(-1, count * SECTOR)  # page-aligned, as O_DIRECT needs
    for k in range(count):
        m[k * SECTOR:(k + 1) * SECTOR] = pattern(step, first + k)
    return m


def dm(*args):
    return subprocess.run(["dmsetup", *args], capture_output=True, text=True)


def dm_ok(*args):
    r = dm(*args)
    if r.returncode:
        raise RuntimeError(f"dmsetup {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout.strip()


def mark(logdev, text):
    dm_ok("message", logdev, "0", "mark", text)


# --- history ------------------------------------------------------------------------------------

class History:
    """What a workload wrote: steps (1-based) of extents, in the order they were written."""

    def __init__(self, doc):
        if isinstance(doc, list):  # the first format: the steps alone
            doc = {"steps": doc}
        self.doc = doc
        self.steps = [[tuple(x) for x in ext] for ext in doc["steps"]]
        self.fsync = sorted(doc.get("fsync", []))
        self.dsync = sorted(doc.get("dsync", []))
        self.checkpoints = doc.get("checkpoints", [])
        # Every pwrite in issue order: (step, first sector, sectors).
        self.pwrites = [(t, f, c) for t, ext in enumerate(self.steps, start=1) for f, c in ext]
        writers = {}
        for t, f, c in self.pwrites:
            for s in range(f, f + c):
                w = writers.setdefault(s, [])
                if not w or w[-1] != t:
                    w.append(t)
        self.writers = writers  # sector -> ascending steps that wrote it

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls(json.load(f))

    def state_after(self, step):
        """Per sector of the range: the newest step <= step that wrote it (0: none)."""
        st = [0] * RANGE_SECTORS
        for t, f, c in self.pwrites:
            if t > step:
                break
            for s in range(f, min(f + c, RANGE_SECTORS)):
                st[s] = t
        return st

    def image_after(self, step):
        """The range's bytes after every write of steps <= step."""
        return image_of(self.state_after(step))


def image_of(state):
    return b"".join(pattern(t, s) if t else bytes(SECTOR) for s, t in enumerate(state))


def decode_sector(data, sector, hist):
    """The step whose write a sector holds, 0 for zeroes, INVALID for anything else (another
    sector's data, garbage, a torn sector, a step that never wrote this sector)."""
    if data == bytes(SECTOR):
        return 0
    t, s2 = struct.unpack_from("<QQ", data)
    if s2 != sector or data != pattern(t, s2) or t not in hist.writers.get(sector, ()):
        return INVALID
    return t


# --- the block workloads ------------------------------------------------------------------------

def gen_extents(rng):
    extents = []
    for _ in range(rng.randint(1, 3)):
        block = rng.randrange(RANGE_BLOCKS - 4)
        kind = rng.random()
        if kind < 0.6:  # one whole block
            first, count = block * 8, 8
        elif kind < 0.85:  # part of a block
            off = rng.randrange(8)
            first, count = block * 8 + off, rng.randint(1, 8 - off)
        else:  # several blocks, maybe unaligned
            first = block * 8 + rng.choice([0, 0, 3])
            count = rng.randint(9, 28)
        extents.append((first, count))
    return extents


class Writer:
    """The workload's writes, counted: `issued` before each pwrite, `completed` after it."""

    def __init__(self, dev):
        self.fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
        self.sfd = os.open(dev, os.O_RDWR | os.O_DIRECT | os.O_DSYNC)
        self.issued = 0
        self.completed = 0

    def write(self, t, extents, dsync):
        for first, count in extents:
            self.issued += 1
            os.pwrite(self.sfd if dsync else self.fd, buf_for(t, first, count), first * SECTOR)
            self.completed += 1

    def close(self):
        os.close(self.fd)
        os.close(self.sfd)


def run(dev, hist_path, logdev, nsteps=300, seed=7):
    rng = random.Random(seed)
    name = os.path.basename(dev)
    w = Writer(dev)
    doc = {"steps": [], "fsync": [], "dsync": []}
    for t in range(1, nsteps + 1):
        extents = gen_extents(rng)
        dsync = rng.random() < 0.15
        w.write(t, extents, dsync)
        doc["steps"].append(extents)
        if dsync:
            doc["dsync"].append(t)
            mark(logdev, f"s{t}")
        elif rng.random() < 0.3:
            os.fsync(w.fd)
            doc["fsync"].append(t)
            mark(logdev, f"s{t}")
        if t == nsteps // 3:
            mark(logdev, "mode-ordered")
            dm_ok("message", name, "0", "mode", "ordered")
        if t == 2 * nsteps // 3:
            dm_ok("message", name, "0", "flush")
            mark(logdev, "mode-writeback")
            dm_ok("message", name, "0", "mode", "writeback")
    os.fsync(w.fd)
    doc["fsync"].append(nsteps)
    mark(logdev, f"s{nsteps}")
    w.close()
    with open(hist_path, "w") as f:
        json.dump(doc, f)


class Checkpointer:
    """Sends checkpoints from a second thread while the workload writes: `req` is the number of
    writes completed before the message was sent, `done` the number issued once it returned, so
    the epoch it closed holds exactly the first c writes (and maybe part of write c + 1) for
    some c in [req, done]."""

    def __init__(self, name, w):
        self.name, self.w = name, w
        self.records = []
        self.thread = None
        self.errors = []

    def busy(self):
        return self.thread is not None and self.thread.is_alive()

    def start(self, mode):
        self.wait()
        self.thread = threading.Thread(target=self._run, args=(mode, len(self.records) + 1))
        self.thread.start()

    def wait(self):
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def _run(self, mode, k):
        req = self.w.completed
        r = dm("message", self.name, "0", "checkpoint", mode, f"pl{k}-{mode}")
        done = self.w.issued
        rec = {"mode": mode, "req": req, "done": done, "answer": r.stdout.strip()}
        if r.returncode == 0:
            f = r.stdout.split()
            rec["id"] = int(f[f.index("id") + 1])
        else:
            self.errors.append(f"checkpoint {mode}: {r.stderr.strip()}")
        self.records.append(rec)


def run_ordered(dev, hist_path, logdev, nsteps=300, seed=11, switch=200, cp_every=12):
    """The ordered workload: the cache is created in ordered mode; checkpoints run in the
    background; at step `switch` the cache goes to writeback mode (mark `mode-writeback`)."""
    rng = random.Random(seed)
    name = os.path.basename(dev)
    w = Writer(dev)
    cp = Checkpointer(name, w)
    doc = {"steps": [], "fsync": [], "dsync": [], "ordered_until": "mode-writeback"}
    modes = ["ordered", "hold"]
    for t in range(1, nsteps + 1):
        extents = gen_extents(rng)
        dsync = rng.random() < 0.15
        if t % cp_every == 1 and not cp.busy():
            cp.start(modes[len(cp.records) % 2])
        w.write(t, extents, dsync)
        doc["steps"].append(extents)
        if dsync:
            doc["dsync"].append(t)
            mark(logdev, f"s{t}")
        elif rng.random() < 0.3 or t == switch:
            os.fsync(w.fd)
            doc["fsync"].append(t)
            mark(logdev, f"s{t}")
        if t == switch:
            cp.wait()  # `mode` is refused during a checkpoint
            mark(logdev, "mode-writeback")
            dm_ok("message", name, "0", "mode", "writeback")
            modes = ["hold", "writethrough"]
    cp.wait()
    os.fsync(w.fd)
    doc["fsync"].append(nsteps)
    mark(logdev, f"s{nsteps}")
    w.close()
    doc["checkpoints"] = cp.records
    with open(hist_path, "w") as f:
        json.dump(doc, f)
    print(f"{nsteps} steps, {w.issued} writes, {len(cp.records)} checkpoints: "
          + ", ".join(f"{r['mode']} id {r.get('id', '-')} writes [{r['req']}, {r['done']}]"
                      for r in cp.records))
    if cp.errors:
        print("\n".join(cp.errors))
        return 1
    return 0


# --- the block oracle (through a rebuilt cache) --------------------------------------------------

def check_image(img, hist, durable, limit=5):
    """The block oracle: errors (empty: accepted) for the range's bytes `img` after a crash
    whose writes up to step `durable` were acknowledged before a completed flush.

    Every sector must hold the newest write of a step <= durable that wrote it (zeroes if none),
    or a write of that sector by a later step: one not yet durable, which a device may or may
    not have persisted. Each sector is judged alone, so a block may mix sectors of writes not
    yet durable (a device tears an unflushed write at sector granularity), but never a durable
    write with older data. Rejected: older data than the newest durable write, zeroes where a
    durable write was, another sector's data, garbage, a step that never wrote the sector.
    """
    errors = []
    want = hist.state_after(durable)
    expected = image_of(want)
    for s in range(RANGE_SECTORS):
        a, b = s * SECTOR, (s + 1) * SECTOR
        if img[a:b] == expected[a:b]:
            continue
        data = img[a:b]
        w = hist.writers.get(s, [])
        must = want[s]
        t = decode_sector(data, s, hist)
        if t == INVALID:
            t2, s2 = struct.unpack_from("<QQ", data)
            errors.append(f"sector {s}: garbage or another sector's data (claims step {t2}, sector {s2})")
        elif not (t == must or t > durable):
            errors.append(f"sector {s}: holds step {t}, expected step {must} (durable up to step "
                          f"{durable}) or a later write {[x for x in w if x > durable][:5]}")
    if len(errors) > limit:
        errors = errors[:limit] + [f"{len(errors)} bad sectors"]
    return errors


def read_range(dev):
    fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
    try:
        size = RANGE_SECTORS * SECTOR
        m = mmap.mmap(-1, size)
        got = os.preadv(fd, [m], 0)
        if got != size:
            raise OSError(f"short read of {dev}: {got} bytes")
        return bytes(m)
    finally:
        os.close(fd)


def check(dev, hist_path, durable):
    errors = check_image(read_range(dev), History.load(hist_path), durable)
    for e in errors:
        print(e)
    return 1 if errors else 0


# --- replay to points and crash states, rebuild, check ---------------------------------------------

def pick(points, n):
    """n indices spread evenly over points, always the last one (85's former awk `pick`)."""
    if not points:
        return []
    nr = len(points)
    step = max(nr / n, 1)
    out, i = [], step
    while i < nr:
        out.append(points[int(i) - 1])
        i += step
    out.append(points[-1])
    return sorted(set(out))


def last_mark(marks, point):
    """The step of the last `s<step>` mark logged before entry point (0: none)."""
    step = 0
    for i, text in marks:
        if i >= point:
            break
        if text[:1] == b"s" and text[1:].isdigit():
            step = int(text[1:])
    return step


def dm_dev(name):
    """("major:minor", "/dev/dm-N") of device-mapper device `name`, or None: from sysfs and the
    devtmpfs node, both there as soon as the create ioctl returned (unlike the /dev/mapper node
    udev makes later)."""
    for d in os.listdir("/sys/block"):
        try:
            with open(f"/sys/block/{d}/dm/name") as f:
                if f.read().strip() == name:
                    with open(f"/sys/block/{d}/dev") as g:
                        return g.read().strip(), f"/dev/{d}"
        except OSError:
            continue
    return None


class Rebuild:
    """The replayed image under dm-snapshot (so it stays pristine) and wbcache over its slices.

    Built and torn down for every replay point and crash state, so without waiting for udev
    (dmsetup --noudevsync: a create or remove that waits for udev takes about 0.5 s of TCG time,
    most of 85's run time): devices are named by major:minor in tables and opened through their
    devtmpfs node (/dev/dm-N, made by the kernel), and a remove that finds udev still holding a
    device retries. `udevadm settle` once at the end (`close`)."""

    def __init__(self, a):
        self.a = a
        self.size = int(subprocess.run(["blockdev", "--getsz", a.work], capture_output=True,
                                       text=True, check=True).stdout)
        self.made = []

    def create(self, name, table):
        """Creates `name`; returns (major:minor, its /dev/dm-N), or raises with dmsetup's error."""
        r = dm("--noudevsync", "create", name, "--table", table)
        dev = None
        if r.returncode == 0:
            self.made.append(name)
            dev = dm_dev(name)
        if dev is None or not os.path.exists(dev[1]):
            raise RuntimeError(f"dmsetup create {name}: {r.stderr.strip() or 'no device node'}")
        return dev

    def snapshot(self):
        self.snap, node = self.create("pl_snap", f"0 {self.size} snapshot {self.a.work} {self.a.cow} N 8")
        return node

    def stack(self):
        """wbcache over the snapshot's two slices: None, or why it did not load. Sets self.dev."""
        a = self.a
        c = self.create("pl_c", f"0 {a.cache_sectors} linear {self.snap} 0")[0]
        o = self.create("pl_o", f"0 {a.origin_sectors} linear {self.snap} {a.cache_sectors}")[0]
        try:
            self.dev = self.create("pl_wbc", f"0 {a.len} wbcache {o} {c} 4096 0")[1]
        except RuntimeError as e:
            tail = subprocess.run("dmesg | tail -n 4", shell=True, capture_output=True, text=True).stdout
            return f"wbcache does not load: {e}\n{tail.strip()}"
        return None

    def teardown(self):
        names = list(reversed(self.made))  # the upper devices first
        self.made = []
        if names:
            r = dm("--noudevsync", "remove", "--retry", *names)
            if r.returncode:
                raise RuntimeError(f"dmsetup remove {' '.join(names)}: {r.stderr.strip()}")

    def close(self):
        subprocess.run(["udevadm", "settle"], capture_output=True)


def ext4_check(dev, mnt):
    for cmd in (["mount", "-t", "ext4", dev, mnt], ["umount", mnt], ["e2fsck", "-fn", dev]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            return [f"{' '.join(cmd)}: exit {r.returncode}", *(r.stdout + r.stderr).strip().splitlines()[-8:]]
    return []


def replay_main(a):
    """Replays the log to `a.points` FLUSH/FUA points spread over it (after entry `a.after`) and,
    before each, to `a.states` crash states (logreplay.crash_states: the point's group, or its
    FUA write, kept, dropped or torn); rebuilds the cache on each state and checks it."""
    log = logreplay.read_log(a.log)
    marks = logreplay.marks(log)
    hist = History.load(a.hist) if a.hist else None
    rng = random.Random(a.seed)
    points = pick([p for p in logreplay.flush_points(log) if p > a.after], a.points)
    have = len([p for p in logreplay.flush_points(log) if p > a.after])
    if have < a.points:
        print(f"# {a.name}: the log has {have} FLUSH/FUA points, fewer than the {a.points} asked for")
        print("RESULT 0 0 1")
        return 1
    rb = Rebuild(a)
    t0 = time.monotonic()
    npoints = nstates = failures = 0
    prev = 0

    spent = collections.Counter()  # seconds per phase, for the summary line

    def timed(phase, fn, *args):
        t = time.monotonic()
        try:
            return fn(*args)
        finally:
            spent[phase] += time.monotonic() - t

    def one(state, point, what):
        nonlocal failures
        try:
            snap = timed("snapshot", rb.snapshot)
            if state is not None:
                timed("crash state", logreplay.apply_state, log, snap, state)
            err = timed("load", rb.stack)
            if err is None:
                durable = last_mark(marks, point)
                if hist is not None:
                    errs = timed("check", lambda: check_image(read_range(rb.dev), hist, durable))
                else:
                    errs = timed("check", ext4_check, rb.dev, a.mnt)
                err = "\n".join(errs) if errs else None
                what += f", durable step {durable}"
        finally:
            timed("teardown", rb.teardown)
        if err:
            failures += 1
            print(f"# {a.name}: {what}: FAILED")
            if state is not None:
                print("#   " + state.describe(log))
            for line in err.splitlines()[:12]:
                print("#   " + line)
        return err is None

    for p in points:
        states = logreplay.crash_states(log, p, rng, a.states)
        if states:
            base = states[0].base
            timed("replay", logreplay.replay, log, a.work, prev, base)
            prev = base
            for st in states:
                nstates += 1
                if not one(st, p, f"crash state before entry {p} completes"):
                    break
        timed("replay", logreplay.replay, log, a.work, prev, p + 1)
        prev = p + 1
        npoints += 1
        one(None, p, f"point {p}")
        if failures:
            break
    rb.close()
    print(f"# {a.name}: {npoints} replay points and {nstates} crash states in "
          f"{time.monotonic() - t0:.0f} s (seed {a.seed}): "
          + ", ".join(f"{k} {v:.0f} s" for k, v in spent.most_common()))
    print(f"RESULT {npoints} {nstates} {failures}")
    return 1 if failures else 0


# --- the origin alone: epoch boundaries (ordered mode) and checkpoints ----------------------------

def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_CRC_TABLE = _crc_table()


def marker_record(data):
    """The id of a marker record (rust/core/src/marker.rs) at the start of data, or None."""
    if len(data) < 92 or data[:8] != MARKER_MAGIC:
        return None
    if struct.unpack_from("<I", data, 88)[0] != crc32c(data[:88]):
        return None
    return struct.unpack_from("<Q", data, 8)[0]


def marker_bytes(mid, label=b""):
    rec = MARKER_MAGIC + struct.pack("<QQ", mid, 0) + label.ljust(64, b"\0")
    return (rec + struct.pack("<I", crc32c(rec))).ljust(SECTOR, b"\0")


class EpochOracle:
    """The origin alone in ordered mode: a crash state of the workload's writes with its fsyncs
    as barriers. With B = 0 and the fsync steps (each closes an epoch: a flush from above closes
    it in ordered mode), the origin must be, for some consecutive b < b' of B, the state after
    step b with any sectors holding instead a write of a step in (b, b']: the epoch boundary
    the origin reached (an fsync, or one the cache closed itself in between: any boundary lies
    between two fsyncs) plus part of the next epoch's writeback, which a crash may leave half
    done. Rejected: a sector older than the state after b while another holds a write newer
    than b' (writeback that passed an epoch boundary out of order), a write the sector never
    had, garbage.

    Per sector the barrier pairs (b, b') that accept its value v form an interval of indices
    k (b = B[k]): from the pair containing v (or 0 for zeroes) to the last b before the next
    write of the sector after v. The origin passes iff the intervals of all sectors meet.
    """

    def __init__(self, hist, boundaries):
        self.hist = hist
        self.b = sorted(set([0] + list(boundaries)))
        self.none = (len(self.b) + 1, -1)

    def interval(self, s, v):
        if v == INVALID:
            return self.none
        w = self.hist.writers.get(s, [])
        if v:
            j = bisect.bisect_left(w, v)
            if j == len(w) or w[j] != v:
                return self.none
            nxt = w[j + 1] if j + 1 < len(w) else None
            lo = bisect.bisect_left(self.b, v) - 1
        else:
            nxt = w[0] if w else None
            lo = 0
        hi = len(self.b) - 1 if nxt is None else bisect.bisect_left(self.b, nxt) - 1
        return lo, hi

    def explain(self, vals, lo, hi, limit=4):
        """Why the intervals do not meet: the barrier most sectors accept, and those that do not."""
        cover = [0] * (len(self.b) + 2)
        for x, y in zip(lo, hi):
            if x <= y:
                cover[x] += 1
                cover[y + 1] -= 1
        run, best, k = 0, -1, 0
        for j in range(len(self.b)):
            run += cover[j]
            if run > best:
                best, k = run, j
        b = self.b[k]
        b2 = self.b[k + 1] if k + 1 < len(self.b) else None
        bad = [s for s in range(len(vals)) if not lo[s] <= k <= hi[s]]
        st = self.hist.state_after(b)
        out = [f"not at an epoch boundary: {len(bad)} sectors fit no pair of fsync barriers; "
               f"nearest: the state after step {b} plus writes of steps up to "
               f"{b2 if b2 is not None else 'the end'}"]
        for s in bad[:limit]:
            v = vals[s]
            out.append(f"sector {s}: holds {'garbage or another sector' if v == INVALID else f'step {v}'}, "
                       f"the state after step {b} has step {st[s]}")
        return out


class OriginWalk:
    """Walks a log entry by entry, keeping the origin slice's workload range as the step each
    sector holds, and checks it after every entry (every prefix of the log is a state a crash
    may leave: the log is in completion order) and, at each FLUSH entry whose group wrote the
    origin, `subsets` crash states of that group (logreplay.crash_states):

      - always: every origin sector holds zeroes or a write of that sector;
      - in ordered mode (entries before the mark `ordered_until`, if given): EpochOracle;
      - at each checkpoint's marker (a FUA write of a marker record into the marker region):
        the origin as the entries logged before the marker left it is exactly the state after
        the first c writes, plus maybe part of write c + 1 (the one in flight when the epoch
        closed), for some c in [req, done] of that checkpoint: the drain is over, nothing newer
        is there (hold and ordered keep the next epoch off the origin until the marker; a
        write-through during a writethrough checkpoint is a later c). Every checkpoint that
        succeeded has its marker in the log, once, ids increasing.
    """

    def __init__(self, log, hist, origin_start, marker_sector, ordered_until=None,
                 subsets=0, rng=None, control=False):
        """ordered_until: None, no epoch oracle; "*", the whole log; else the text of the mark
        before which the cache was in ordered mode (from the log's start)."""
        self.log, self.hist = log, hist
        self.origin_start = origin_start
        self.marker_sector = marker_sector
        self.ordered_until = ordered_until.encode() if ordered_until not in (None, "*") else None
        self.subsets = subsets
        self.rng = rng or random.Random(1)
        self.control = control
        self.errors = []
        self.prefixes = 0       # prefixes checked against the epoch oracle
        self.states = 0         # crash states (group subsets) checked against it
        self.rejected = 0       # of those, rejected (the control's figure)
        self.markers = []
        self.cuts = []          # (marker id, mode, c)
        self.first_rejection = None
        self.ordered = ordered_until is not None

    def decode(self, e, fd):
        """{range sector: value} for the part of entry e's data inside the origin's range."""
        if not e.has_data:
            if e.flags & logreplay.LOG_DISCARD_FLAG:
                first = e.sector512 - self.origin_start
                return {s: 0 for s in range(max(first, 0), min(first + e.nr_sectors512, RANGE_SECTORS))}
            return {}
        first = e.sector512 - self.origin_start
        last = first + e.nr_sectors512
        if last <= 0 or first >= RANGE_SECTORS:
            return {}
        data = logreplay.read_entry_data(self.log, e, fd)
        out = {}
        for s in range(max(first, 0), min(last, RANGE_SECTORS)):
            k = s - first
            out[s] = decode_sector(data[k * SECTOR:(k + 1) * SECTOR], s, self.hist)
        return out

    def fail(self, msg):
        if len(self.errors) < 20:
            self.errors.append(msg)

    def run(self):
        log, hist = self.log, self.hist
        oracle = EpochOracle(hist, hist.fsync)
        vals = [0] * RANGE_SECTORS
        lo = [0] * RANGE_SECTORS
        hi = [oracle.interval(s, 0)[1] for s in range(RANGE_SECTORS)]
        cps = {c["id"]: c for c in hist.checkpoints if "id" in c}
        seen_ids = []
        undo = {}               # this group's first changes: sector -> value before the group
        group_writes = []       # (entry index, decoded) of this group
        fd = os.open(log.path, os.O_RDONLY)
        try:
            for e in log.entries:
                plain = not e.flags & (logreplay.LOG_FLUSH_FLAG | logreplay.LOG_FUA_FLAG |
                                       logreplay.LOG_MARK_FLAG)
                if e.flags & logreplay.LOG_MARK_FLAG and self.ordered_until is not None and \
                        e.mark == self.ordered_until:
                    self.ordered = False
                if e.flags & logreplay.LOG_FLUSH_FLAG and group_writes and self.ordered:
                    self.check_subsets(oracle, vals, lo, hi, undo, group_writes, e.index)
                if not plain:
                    undo, group_writes = {}, []
                if e.has_data and e.sector512 == self.marker_sector:
                    mid = marker_record(logreplay.read_entry_data(log, e, fd))
                    if mid is not None:
                        self.check_marker(mid, cps, vals, seen_ids, e.index)
                dec = self.decode(e, fd)
                if not dec:
                    continue
                if plain:
                    group_writes.append((e.index, dec))
                for s, v in dec.items():
                    if plain and s not in undo:
                        undo[s] = vals[s]
                    vals[s] = v
                    lo[s], hi[s] = oracle.interval(s, v)
                    if v == INVALID:
                        self.fail(f"entry {e.index}: origin sector {s} holds garbage or another "
                                  "sector's data")
                if self.ordered:
                    self.prefixes += 1
                    if max(lo) > min(hi):
                        self.reject(f"the log's first {e.index + 1} entries",
                                    lambda: oracle.explain(vals, lo, hi))
        finally:
            os.close(fd)
        done = [c for c in hist.checkpoints if "id" in c]
        missing = [c["id"] for c in done if c["id"] not in seen_ids]
        if missing:
            self.fail(f"checkpoints {missing} succeeded but their marker is not in the log")
        if seen_ids != sorted(seen_ids) or len(set(seen_ids)) != len(seen_ids):
            self.fail(f"marker ids not increasing once each: {seen_ids}")
        return self

    def reject(self, what, why):
        """Counts a rejected state; `why` (a function: explaining costs a pass over the
        barriers) is kept for the first few."""
        self.rejected += 1
        if self.control:
            if self.rejected == 1:
                self.first_rejection = f"{what}: " + "\n  ".join(why())
        elif len(self.errors) < 3:
            self.fail(f"{what}: " + "\n  ".join(why()))
        else:
            self.fail(f"{what}: rejected")

    def check_subsets(self, oracle, vals, lo, hi, undo, group_writes, point):
        """Crash states before FLUSH entry `point` completes: subsets of its group, torn too."""
        log = self.log
        states = logreplay.crash_states(log, point, self.rng, self.subsets)
        dec = dict(group_writes)
        for st in states:
            v2 = dict(undo)
            unit = log.sectorsize // SECTOR
            for i, kept in st.parts:
                d = dec.get(i)
                if not d:
                    continue
                e = log.entries[i]
                first = e.sector512 - self.origin_start
                for s, v in d.items():
                    if kept is None or any(a * unit <= s - first < (a + n) * unit for a, n in kept):
                        v2[s] = v
            lo2, hi2 = list(lo), list(hi)
            for s, v in v2.items():
                lo2[s], hi2[s] = oracle.interval(s, v)
            self.states += 1
            if max(lo2) > min(hi2):
                vals2 = list(vals)
                for s, v in v2.items():
                    vals2[s] = v
                self.reject(st.describe(log), lambda: oracle.explain(vals2, lo2, hi2))

    def check_marker(self, mid, cps, vals, seen_ids, index):
        seen_ids.append(mid)
        self.markers.append(mid)
        cp = cps.get(mid)
        if cp is None:
            self.fail(f"entry {index}: a marker with id {mid}, which no checkpoint of the "
                      "workload answered")
            return
        c, why = exact_cut(vals, self.hist, cp["req"], cp["done"])
        if c is None:
            self.fail(f"entry {index}: checkpoint {mid} ({cp['mode']}, writes [{cp['req']}, "
                      f"{cp['done']}]): the origin before its marker is no prefix of the writes: "
                      + "\n  ".join(why))
        else:
            self.cuts.append((mid, cp["mode"], c))


def exact_cut(vals, hist, req, done):
    """(c, []) if vals is the state after the first c writes, plus maybe part of write c + 1,
    for some c in [req, done]; else (None, reasons) for the c with the fewest mismatches."""
    pw = hist.pwrites
    state = [0] * RANGE_SECTORS
    for t, f, n in pw[:req]:
        for s in range(f, min(f + n, RANGE_SECTORS)):
            state[s] = t
    mism = {s for s in range(RANGE_SECTORS) if vals[s] != state[s]}
    best = (len(mism) + 1, None, None)
    for c in range(req, min(done, len(pw)) + 1):
        nxt = pw[c] if c < len(pw) and c + 1 <= done else None
        ok = nxt is not None and all(nxt[1] <= s < nxt[1] + nxt[2] and vals[s] == nxt[0] for s in mism)
        if not mism or ok:
            return c, []
        if len(mism) < best[0]:
            best = (len(mism), c, sorted(mism)[:4])
        if nxt is None:
            break
        t, f, n = nxt
        for s in range(f, min(f + n, RANGE_SECTORS)):
            state[s] = t
            if vals[s] == t:
                mism.discard(s)
            else:
                mism.add(s)
    n, c, where = best
    st = [0] * RANGE_SECTORS
    for t, f, k in pw[:c]:
        for s in range(f, min(f + k, RANGE_SECTORS)):
            st[s] = t
    return None, [f"nearest: after write {c}, {n} sectors differ"] + [
        f"sector {s}: holds {'garbage' if vals[s] == INVALID else f'step {vals[s]}'}, "
        f"expected step {st[s]}" for s in where]


def origin_main(a):
    log = logreplay.read_log(a.log)
    hist = History.load(a.hist)
    until = a.ordered_until or None
    walk = OriginWalk(log, hist, a.origin_start, a.marker_sector, until, a.subsets,
                      random.Random(a.seed), control=a.control).run()
    cuts = ", ".join(f"{mid} {mode} at write {c}" for mid, mode, c in walk.cuts)
    print(f"# {a.name}: {walk.prefixes} prefixes and {walk.states} crash states against the epoch "
          f"oracle, {walk.rejected} rejected; {len(walk.markers)} markers, each a prefix: "
          f"{cuts or 'none'} (seed {a.seed})")
    for e in walk.errors:
        print("# " + e.replace("\n", "\n#   "))
    print(f"RESULT {walk.prefixes} {walk.states} {walk.rejected} {len(walk.markers)} {len(walk.errors)}")
    return 1 if walk.errors else 0


# --- self-test ------------------------------------------------------------------------------------

def self_test():
    """Each oracle accepts the right images and logs and rejects the wrong ones (mutations)."""
    import logreplay_selftest  # the dm-log-writes simulator (tests/)
    logreplay_selftest.DEV_SIZE = 1 << 30       # our simulated devices are larger than its own

    def KernelLog(s, log_size=8 << 20):
        return logreplay_selftest.KernelLog(s, log_size)

    failures = []

    def expect(cond, what):
        print(("ok - " if cond else "not ok - ") + what)
        if not cond:
            failures.append(what)

    rng = random.Random(5)
    steps, fsync = [], []
    for t in range(1, 61):
        steps.append(gen_extents(rng))
        if rng.random() < 0.3:
            fsync.append(t)
    hist = History({"steps": steps, "fsync": fsync})
    d = fsync[len(fsync) // 2]                       # a durable step
    later = [t for t in range(d + 1, 61)]

    # 1. The block oracle.
    expect(not check_image(hist.image_after(d), hist, d), "block oracle: the state after the durable step")
    expect(not check_image(hist.image_after(60), hist, d), "block oracle: every later write persisted too")
    mixed = bytearray(hist.image_after(d))
    newer = hist.state_after(60)
    for s in range(0, RANGE_SECTORS, 3):             # any sectors of later writes
        if newer[s] > d:
            mixed[s * SECTOR:(s + 1) * SECTOR] = pattern(newer[s], s)
    expect(not check_image(bytes(mixed), hist, d),
           "block oracle: sectors of not-yet-durable writes mixed in (a torn unflushed write)")
    base = hist.state_after(d)
    older = hist.state_after(d - 1)
    # A durable write dropped: a sector the last durable step wrote holds the older data.
    s0 = next(s for s in range(RANGE_SECTORS) if base[s] == d)
    img = bytearray(hist.image_after(d))
    img[s0 * SECTOR:(s0 + 1) * SECTOR] = pattern(older[s0], s0) if older[s0] else bytes(SECTOR)
    expect(check_image(bytes(img), hist, d), "block oracle rejects: a durable write dropped")
    # A torn block: half a block of the durable write, half older data (not a later write).
    blk = next(s // 8 for s in range(RANGE_SECTORS) if s % 8 == 0 and all(base[s + k] == d for k in range(8))
               and any(older[s + k] != d for k in range(8)))
    img = bytearray(hist.image_after(d))
    for k in range(4, 8):
        s = blk * 8 + k
        img[s * SECTOR:(s + 1) * SECTOR] = pattern(older[s], s) if older[s] else bytes(SECTOR)
    expect(check_image(bytes(img), hist, d), "block oracle rejects: a block torn between a durable write and older data")
    img = bytearray(hist.image_after(d))
    s1 = s0 + 1 if s0 + 1 < RANGE_SECTORS else s0 - 1
    img[s0 * SECTOR:(s0 + 1) * SECTOR] = img[s1 * SECTOR:(s1 + 1) * SECTOR]
    expect(check_image(bytes(img), hist, d), "block oracle rejects: another sector's data")
    img = bytearray(hist.image_after(d))
    img[s0 * SECTOR + 100] ^= 1
    expect(check_image(bytes(img), hist, d), "block oracle rejects: a torn sector (one byte changed)")

    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None   # many small fsyncs
    with tempfile.TemporaryDirectory(dir=shm) as tmp:
        # 2. Crash states on a plain disk: every state the generator makes passes the block
        # oracle; the generator with its group start moved back one flush (so a state may drop
        # a write an earlier, completed flush made durable) makes states it rejects.
        k = KernelLog(512)
        klog_range(k, hist)
        logp = os.path.join(tmp, "disk.log")
        with open(logp, "wb") as f:
            f.write(bytes(k.img))
        log = logreplay.read_log(logp)
        marks = logreplay.marks(log)
        pts = logreplay.flush_points(log)
        good = bad = total = 0
        srng = random.Random(9)
        img_path = os.path.join(tmp, "img")
        for p in pts:
            for st in logreplay.crash_states(log, p, srng, 6):
                total += 1
                with open(img_path, "wb") as f:
                    f.write(bytes(RANGE_SECTORS * SECTOR))
                logreplay.replay(log, img_path, 0, st.base)
                logreplay.apply_state(log, img_path, st)
                with open(img_path, "rb") as f:
                    if not check_image(f.read(), hist, last_mark(marks, p)):
                        good += 1
        expect(total > 50 and good == total,
               f"crash states of a disk's log: all {total} pass the block oracle ({good})")
        orig = logreplay.crash_candidates
        try:
            def widened(lg, point):
                # The group, and the one before it (past the marks between them).
                b, e = orig(lg, point)
                j = b
                while j > 0 and lg.entries[j - 1].flags & logreplay.LOG_MARK_FLAG:
                    j -= 1
                if j > 0 and lg.entries[j - 1].flags & logreplay.LOG_FLUSH_FLAG:
                    return logreplay.group_start(lg, j - 1), e
                return b, e
            logreplay.crash_candidates = widened
            for p in pts:
                for st in logreplay.crash_states(log, p, srng, 6):
                    with open(img_path, "wb") as f:
                        f.write(bytes(RANGE_SECTORS * SECTOR))
                    logreplay.replay(log, img_path, 0, st.base)
                    logreplay.apply_state(log, img_path, st)
                    with open(img_path, "rb") as f:
                        if check_image(f.read(), hist, last_mark(marks, p)):
                            bad += 1
        finally:
            logreplay.crash_candidates = orig
        expect(bad > 0, f"mutation: crash states that may drop a flushed write: the block oracle "
                        f"rejects {bad}")

        # 3. The epoch oracle on an ordered cache's origin, simulated: after each fsync the epoch's
        # blocks are written back (in a random order), then the origin is flushed.
        def origin_log(name, mutate=None, marker=None):
            k = KernelLog(512)
            simulate_ordered_origin(k, hist, random.Random(3), mutate, marker)
            p = os.path.join(tmp, name)
            with open(p, "wb") as f:
                f.write(bytes(k.img))
            return logreplay.read_log(p)

        def walk(log, h=hist, control=False):
            return OriginWalk(log, h, ORIGIN0, MARKER0, "*", 8, random.Random(4), control).run()

        w = walk(origin_log("ordered.log"))
        expect(not w.errors and w.prefixes > 50 and w.states > 20,
               f"epoch oracle: an ordered origin passes at every prefix ({w.prefixes}) and crash "
               f"state ({w.states}) {w.errors[:1]}")
        w = walk(origin_log("early.log", mutate="early"))
        expect(w.errors, "mutation: one block of the next epoch written back before the epoch's "
                         f"flush: the epoch oracle rejects it ({w.rejected} states)")
        w = walk(origin_log("wb.log", mutate="writeback"))
        expect(w.errors, "mutation: writeback mode (newest versions, no epoch order): the epoch "
                         f"oracle rejects {w.rejected} of {w.prefixes + w.states} states")
        w = walk(origin_log("garbage.log", mutate="garbage"))
        expect(any("garbage" in e for e in w.errors), "mutation: a torn origin sector is rejected")

        # 4. The checkpoint oracle: the origin at the marker is exactly the first c writes.
        cp_hist, cut = checkpoint_history(hist)
        for name, mut, want in (("cut", None, True), ("newer", "newer", False),
                                ("older", "older", False), ("partial", "partial", False),
                                ("unknown", "unknown", False), ("nomarker", "nomarker", False)):
            k = KernelLog(512)
            simulate_checkpoint(k, cp_hist, cut, mut)
            p = os.path.join(tmp, name + ".log")
            with open(p, "wb") as f:
                f.write(bytes(k.img))
            w = OriginWalk(logreplay.read_log(p), cp_hist, ORIGIN0, MARKER0).run()
            what = {None: "the origin at the marker is the first c writes: accepted",
                    "newer": "mutation: a write issued after the checkpoint returned is on the origin",
                    "older": "mutation: a write completed before the request is missing",
                    "partial": "mutation: the drain is half done at the marker",
                    "unknown": "mutation: a marker no checkpoint answered",
                    "nomarker": "mutation: a checkpoint that succeeded left no marker"}[mut]
            expect(not w.errors if want else bool(w.errors),
                   what + ("" if want else f": rejected ({(w.errors or ['-'])[0].splitlines()[0][:90]})"))

        # 5. The marker record is the product's (rust/core/src/marker.rs): the CRC-32C check value.
        expect(crc32c(b"123456789") == 0xE3069283, "CRC-32C check value")
        expect(marker_record(marker_bytes(42)) == 42 and marker_record(b"x" + marker_bytes(42)[1:]) is None,
               "a marker record decodes, a damaged one does not")
    print("powerloss self-test: ok" if not failures else f"powerloss self-test: FAILED ({len(failures)} failure(s))")
    return 1 if failures else 0


# Layout of the simulated logs: the origin slice starts at sector ORIGIN0 of the logged device,
# its marker region at MARKER0.
ORIGIN0 = RANGE_SECTORS
MARKER0 = 2 * RANGE_SECTORS + 64


def klog_range(k, hist):
    """A disk's log: each step's writes, a flush after each fsync step, then the mark."""
    for t, ext in enumerate(hist.steps, start=1):
        for f, c in ext:
            k.write(f, b"".join(pattern(t, s) for s in range(f, f + c)))
        if t in hist.fsync:
            k.flush()
            k.mark(f"s{t}")


def simulate_ordered_origin(k, hist, rng, mutate=None, marker=None):
    """The origin of an ordered cache: each epoch (steps up to an fsync) written back after it
    closes, its blocks' final versions in a random order, then an origin flush. Cache-slice
    writes in between (junk at sector 0) stand for the cache's own I/O. Mutations: "early" puts
    one block of the next epoch into an epoch's writeback; "writeback" writes back the newest
    version of random blocks with no epoch order; "garbage" tears one origin sector."""
    bounds = sorted(set(hist.fsync + [len(hist.steps)]))
    prev = 0
    for i, b in enumerate(bounds):
        st = hist.state_after(b)
        old = hist.state_after(prev)
        changed = sorted({s // 8 for s in range(RANGE_SECTORS) if st[s] != old[s]})
        if mutate == "writeback":
            st = hist.state_after(min(len(hist.steps), b + 15))
        rng.shuffle(changed)
        if mutate == "early" and i + 1 < len(bounds) and i == len(bounds) // 2:
            nxt = hist.state_after(bounds[i + 1])
            extra = next((blk for blk in range(RANGE_BLOCKS)
                          if any(nxt[blk * 8 + j] != st[blk * 8 + j] for j in range(8))), None)
            if extra is not None:
                k.write(ORIGIN0 + extra * 8, b"".join(
                    pattern(nxt[extra * 8 + j], extra * 8 + j) if nxt[extra * 8 + j]
                    else bytes(SECTOR) for j in range(8)))
        for n, blk in enumerate(changed):
            data = b"".join(pattern(st[blk * 8 + j], blk * 8 + j) if st[blk * 8 + j] else bytes(SECTOR)
                            for j in range(8))
            if mutate == "garbage" and i == 1 and n == 0:
                data = data[:100] + b"\xff" + data[101:]
            k.write(ORIGIN0 + blk * 8, data)
            if n % 5 == 4:
                k.write(0, bytes(SECTOR))      # a cache-device write in the same group
        k.flush()
        k.mark(f"s{b}")
        prev = b


def checkpoint_history(hist):
    """hist with one checkpoint: requested after write r, returned before write r + 6 was issued;
    its epoch closed after write c = r + 2."""
    r = len(hist.pwrites) // 2
    doc = dict(hist.doc)
    doc["checkpoints"] = [{"mode": "hold", "req": r, "done": r + 5, "id": 7}]
    return History(doc), r + 2


def simulate_checkpoint(k, hist, c, mutate):
    """The origin at a checkpoint: the state after the first c writes (drained), its flush, then
    the marker (FUA, after its preflush). Mutations: "newer" adds a write issued after the
    checkpoint returned, "older" drops a write completed before the request, "partial" leaves
    one block of the drain out, "unknown" writes a marker with another id, "nomarker" none."""
    pw = hist.pwrites
    cp = hist.checkpoints[0]
    st = [0] * RANGE_SECTORS
    for t, f, n in pw[:c]:
        for s in range(f, min(f + n, RANGE_SECTORS)):
            st[s] = t
    if mutate == "newer":
        t, f, n = pw[cp["done"] + 1]
        for s in range(f, f + n):
            st[s] = t
    if mutate == "older":
        t, f, n = pw[cp["req"] - 1]
        s = f
        st[s] = max([x for x in hist.writers[s] if x < t], default=0)
    blocks = sorted({s // 8 for s in range(RANGE_SECTORS) if st[s]})
    if mutate == "partial":
        blocks = blocks[:-1]
    for blk in blocks:
        k.write(ORIGIN0 + blk * 8, b"".join(pattern(st[blk * 8 + j], blk * 8 + j) if st[blk * 8 + j]
                                            else bytes(SECTOR) for j in range(8)))
    k.flush()
    if mutate != "nomarker":
        k.flush()                                  # the marker's preflush
        k.write(MARKER0, marker_bytes(99 if mutate == "unknown" else cp["id"]).ljust(MARKER_SECTORS * SECTOR, b"\0"), fua=True)
    k.mark("end")


# --- command line ---------------------------------------------------------------------------------

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"] and len(argv) == 4:
        run(argv[1], argv[2], argv[3])
        return 0
    if argv[:1] == ["run-ordered"] and len(argv) == 4:
        return run_ordered(argv[1], argv[2], argv[3])
    if argv[:1] == ["check"] and len(argv) == 4:
        return check(argv[1], argv[2], int(argv[3]))
    if argv[:1] == ["self-test"]:
        return self_test()
    p = argparse.ArgumentParser(prog="powerloss.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("replay")
    r.add_argument("--name", required=True)
    r.add_argument("--log", required=True)
    r.add_argument("--hist", help="the block oracle with this history (default: ext4 checks)")
    r.add_argument("--mnt", help="mount point for the ext4 checks")
    r.add_argument("--work", required=True, help="device the log is replayed onto")
    r.add_argument("--cow", required=True, help="device for the snapshots' exceptions")
    r.add_argument("--cache-sectors", type=int, required=True)
    r.add_argument("--origin-sectors", type=int, required=True)
    r.add_argument("--len", type=int, required=True, help="the wbcache target's length")
    r.add_argument("--points", type=int, required=True)
    r.add_argument("--states", type=int, default=0, help="crash states before each point")
    r.add_argument("--after", type=int, default=-1, help="points after this entry only")
    r.add_argument("--seed", type=int, default=1)
    o = sub.add_parser("origin")
    o.add_argument("--name", required=True)
    o.add_argument("--log", required=True)
    o.add_argument("--hist", required=True)
    o.add_argument("--origin-start", type=int, required=True, help="first sector of the origin slice")
    o.add_argument("--marker-sector", type=int, required=True, help="sector of the marker region")
    o.add_argument("--ordered-until", default="", help="the epoch oracle before this mark "
                   "('*': the whole log; empty: nowhere)")
    o.add_argument("--subsets", type=int, default=8, help="crash states per FLUSH of origin writes")
    o.add_argument("--seed", type=int, default=1)
    o.add_argument("--control", action="store_true", help="count rejections instead of failing")
    a = p.parse_args(argv)
    if a.cmd == "replay":
        return replay_main(a)
    return origin_main(a)


if __name__ == "__main__":
    sys.exit(main())
