#!/usr/bin/env python3
"""Checkpoint oracle: a block workload with a log of every write, checkpoints requested while it
runs, and the check that every image is a point-in-time state of the workload taken at its
checkpoint.

  cpload.py run --dev DEV --wbcache NAME --log LOG [--blocks N] [--threads T] [--prestamp]
                [--label-prefix P] [--phase MODES:COUNT]...
  cpload.py check --log LOG --image LABEL:PATH [--image ...]
  cpload.py self-test

`run` writes 4 KiB blocks, each stamped over the whole block with (block, sequence number, the
run's nonce), from T threads; a thread owns the blocks b with b % T == its number and writes them
one at a time, so two writes to one block are never in flight together and a block's sequence
numbers are in time order. Every write's issue and completion times (CLOCK_MONOTONIC, taken just
before and just after the pwrite) go to the log. `--prestamp` first writes every block once (seq
1, logged like any write) and writes the cache back (`flush`), so that no image holds zeroes
where the workload wrote. Meanwhile the main thread requests checkpoints (the `checkpoint MODE
LABEL TIMEOUT` message to the cache), one phase after another (a phase `ordered:6` switches the
cache to ordered mode first, and back to writeback after), and logs when each was requested and
when it returned: both times are taken immediately around the DM_TARGET_MSG ioctl, issued from
this process (no `dmsetup` is spawned). A mode `repl` instead sends dm-repl's own `marker LABEL`
message to the device below (`--repl NAME`): a marker without the cache's drain, the control
experiment. Every marker gets a label of its own (PREFIX<k>-<mode>), by which its image is
found. A phase `until:CMD` waits (the writers running) until the shell command CMD succeeds, 60 s
at most. A writer that fails ends the run (exit 1, its error printed), and so does a log in which
the writers did not keep writing (see `check_log`).

`check` compares each image (a copy of the secondary's device frozen at a marker, named by the
marker's label) with the log. Each block must hold zeroes or one whole write of this run to that
block, and the set S of writes the image holds (each block's write with every earlier write to
the same block) must be the state of the workload at some instant during the checkpoint:

  order:  S is a prefix: every write that completed before a write in S was issued is in S
          (no crash of the workload could have left anything else);
  lower:  every write that completed before the checkpoint was requested is in S;
  upper:  no write in S was issued after the checkpoint returned (the marker was down by then);
  torn:   every block holds zeroes or exactly one whole write of this run to that block.

Writes in flight together may be in S or not, in any combination: no application can have
relied on their order. Each image is checked against every rule and the rules it breaks are
named. A checkpoint image must break none; a control image (mode repl) is expected to be
rejected, and for `order`: `check` fails unless at least --control-min-order of the control
images break the order rule. `check` also fails when the log itself is bad (check_log), when no
image is given, and when a checkpoint of the log has no image (unless --allow-missing).
"""
import argparse
import contextlib
import ctypes
import errno
import io
import json
import math
import mmap
import os
import random
import stat
import struct
import subprocess
import sys
import threading
import time

BS = 4096
MAGIC = b"WBCPTEST"
HDR = struct.Struct("<8sQQQ")
MASK = 2**64 - 1
GOLDEN = 0x9E3779B97F4A7C15
RULES = ("order", "lower", "upper", "torn")


def stamp(block, seq, nonce):
    chk = (block ^ (seq * GOLDEN & MASK) ^ nonce) & MASK
    return HDR.pack(MAGIC, block, seq, chk) * (BS // HDR.size)


def parse(buf, block, nonce):
    """The sequence number stamped on `buf` for `block` in this run, 0 for zeroes; raises
    ValueError on anything else (a torn block, another block's data, another run's)."""
    if buf == bytes(BS):
        return 0
    magic, b, seq, chk = HDR.unpack_from(buf)
    if magic == MAGIC and b == block and buf == stamp(block, seq, nonce):
        return seq
    if magic == MAGIC and b == block:
        other = chk ^ block ^ (seq * GOLDEN & MASK)
        if buf == stamp(block, seq, other):
            raise ValueError(f"block {block}: seq {seq} of another run (nonce {other:#x}, not {nonce:#x})")
    raise ValueError(f"block {block}: not one whole write of it (magic {magic!r}, block {b}, seq {seq})")


def now():
    return time.monotonic_ns()


# --- device-mapper messages, from this process -----------------------------------------------

class Answer:
    def __init__(self, rc, out, err, t0, t1):
        self.rc, self.out, self.err, self.t0, self.t1 = rc, out, err, t0, t1


class DmControl:
    """Target messages through the DM_TARGET_MSG ioctl on /dev/mapper/control, the call
    `dmsetup message` makes, so that the request and return times are taken right around the
    system call (spawning dmsetup costs tens of milliseconds under TCG, on either side of the
    message). ctypes releases the GIL for the call, so the writers run on while a checkpoint
    blocks (fcntl.ioctl keeps the GIL for buffers over 1024 bytes)."""

    IOCTL = 0xC138FD0E        # _IOWR(0xfd, DM_TARGET_MSG_CMD 14, struct dm_ioctl), 312 bytes
    HDR_SIZE = 312            # sizeof(struct dm_ioctl); the message starts there
    DATA_OUT = 1 << 16        # DM_DATA_OUT_FLAG: the answer is in the buffer
    BUFFER_FULL = 1 << 8      # DM_BUFFER_FULL_FLAG: it did not fit
    SIZE = 4096

    def __init__(self):
        self.fd = os.open("/dev/mapper/control", os.O_RDWR | os.O_CLOEXEC)
        libc = ctypes.CDLL(None, use_errno=True)
        self.ioctl = libc.ioctl
        self.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
        self.ioctl.restype = ctypes.c_int

    def message(self, name, *words):
        text = " ".join(words).encode()
        buf = ctypes.create_string_buffer(self.SIZE)
        # struct dm_ioctl: version[3], data_size, data_start, target_count, open_count, flags,
        # event_nr, padding, dev; name[128] at 48; struct dm_target_msg {sector; message[]}
        # at data_start.
        struct.pack_into("<3IIIIiIIIQ", buf, 0, 4, 0, 0, self.SIZE, self.HDR_SIZE, 0, 0, 0, 0, 0, 0)
        nm = name.encode()
        if len(nm) >= 128 or len(text) + 9 > self.SIZE - self.HDR_SIZE:
            raise ValueError("device name or message too long")
        buf[48:48 + len(nm)] = nm
        struct.pack_into("<Q", buf, self.HDR_SIZE, 0)
        buf[self.HDR_SIZE + 8:self.HDR_SIZE + 8 + len(text)] = text
        addr = ctypes.addressof(buf)
        t0 = now()
        r = self.ioctl(self.fd, self.IOCTL, addr)
        t1 = now()
        if r < 0:
            e = ctypes.get_errno()
            return Answer(e, "", f"{errno.errorcode.get(e, e)}: {os.strerror(e)}", t0, t1)
        flags = struct.unpack_from("<I", buf, 28)[0]
        start = struct.unpack_from("<I", buf, 16)[0]
        if flags & self.BUFFER_FULL:
            return Answer(errno.ENOSPC, "", "the answer did not fit the buffer", t0, t1)
        out = buf.raw[start:].split(b"\0", 1)[0].decode(errors="replace") if flags & self.DATA_OUT else ""
        return Answer(0, out.strip(), "", t0, t1)


# --- the workload ----------------------------------------------------------------------------

def writer(fd, t, nthreads, nblocks, nonce, first_seq, stop, died, log, errors, seed, flush_every):
    try:
        rnd = random.Random(seed)
        mine = list(range(t, nblocks, nthreads))
        seqs = {}
        buf = mmap.mmap(-1, BS)
        n = 0
        while not stop.is_set():
            b = rnd.choice(mine)
            s = seqs.get(b, first_seq - 1) + 1
            seqs[b] = s
            buf.seek(0)
            buf.write(stamp(b, s, nonce))
            t0 = now()
            if os.pwrite(fd, buf, b * BS) != BS:
                raise OSError(f"short write of block {b}")
            t1 = now()
            log.append((b, s, t0, t1))
            n += 1
            if flush_every and n % flush_every == 0:
                os.fsync(fd)
    except BaseException as e:  # noqa: BLE001 -- any error ends this writer: report it
        errors.append(f"writer {t} died after {len(log)} writes: {type(e).__name__}: {e}")
        died.set()


def open_dev(path):
    """O_DIRECT on a block device; a regular file (the host self-test) is opened without it."""
    direct = stat.S_ISBLK(os.stat(path).st_mode)
    return os.open(path, os.O_WRONLY | (os.O_DIRECT if direct else 0))


def run(a, dm=None):
    dm = dm or DmControl()
    nonce = a.nonce if a.nonce is not None else random.getrandbits(63) | 1
    fd = open_dev(a.dev)
    logs = [[] for _ in range(a.threads)]
    pre = []
    errors = []
    cps = []
    failures = 0
    if a.prestamp:
        buf = mmap.mmap(-1, BS)
        for b in range(a.blocks):
            buf.seek(0)
            buf.write(stamp(b, 1, nonce))
            t0 = now()
            os.pwrite(fd, buf, b * BS)
            pre.append((b, 1, t0, now()))
        os.fsync(fd)
        r = dm.message(a.wbcache, "flush")
        if r.rc:
            print(f"cpload: flush after the prestamp failed: {r.err}", file=sys.stderr)
            failures += 1
        print(f"cpload: prestamped {a.blocks} blocks", flush=True)
    stop = threading.Event()
    died = threading.Event()
    threads = [
        threading.Thread(target=writer, args=(fd, t, a.threads, a.blocks, nonce, 2 if a.prestamp else 1, stop, died,
                                              logs[t], errors, a.seed + t, a.flush_every))
        for t in range(a.threads)
    ]
    for th in threads:
        th.start()
    try:
        died.wait(a.warmup)
        k = 0
        for phase in a.phase:
            if died.is_set():
                break
            if phase.startswith("until:"):
                end = time.monotonic() + 60
                while subprocess.run(phase[len("until:"):], shell=True).returncode:
                    if died.is_set() or time.monotonic() > end:
                        break
                    died.wait(0.2)
                else:
                    continue
                print(f"cpload: phase {phase}: the command did not succeed within 60 s", file=sys.stderr)
                failures += 1
                break
            modes, count = phase.split(":")
            modes = modes.split(",")
            if "ordered" in modes:
                r = dm.message(a.wbcache, "mode", "ordered")
                if r.rc:
                    print("cpload: mode ordered failed:", r.err, file=sys.stderr)
                    failures += 1
            for i in range(int(count)):
                if died.is_set():
                    break
                mode = modes[i % len(modes)]
                k += 1
                label = f"{a.label_prefix}{k}-{mode}"
                if mode == "repl":
                    r = dm.message(a.repl, "marker", label)
                else:
                    r = dm.message(a.wbcache, "checkpoint", mode, label, str(a.timeout_ms))
                rec = {"label": label, "mode": mode, "requested": r.t0, "done": r.t1, "rc": r.rc,
                       "answer": r.out, "error": r.err}
                try:
                    if r.rc == 0 and mode == "repl":
                        rec["id"] = int(r.out)
                    elif r.rc == 0:
                        f = r.out.split()
                        rec["id"] = int(f[f.index("id") + 1])
                        rec["blocks"] = int(f[f.index("blocks") + 1])
                        rec["total_ms"] = int(f[f.index("total_ms") + 1])
                    else:
                        failures += 1
                except (ValueError, IndexError):
                    rec["error"] = f"unexpected answer {r.out!r}"
                    rec.pop("id", None)
                    failures += 1
                cps.append(rec)
                print(f"cpload: checkpoint {label}: rc {r.rc} {r.out or r.err} "
                      f"(ioctl {(r.t1 - r.t0) / 1e6:.1f} ms)", flush=True)
                if "id" in rec and a.after_checkpoint:
                    h = subprocess.run(a.after_checkpoint.replace("{id}", str(rec["id"])).replace("{label}", label),
                                       shell=True)
                    if h.returncode:
                        print(f"cpload: after checkpoint {label}: the hook failed", file=sys.stderr)
                        failures += 1
                died.wait(a.interval)
            if "ordered" in modes:
                dm.message(a.wbcache, "mode", "writeback")
        died.wait(a.warmup)
    finally:
        stop.set()
        for th in threads:
            th.join()
        os.close(fd)
    writes = pre + [w for l in logs for w in l]
    log = {"blocks": a.blocks, "threads": a.threads, "nonce": nonce, "prestamp": len(pre),
           "writes": writes, "checkpoints": cps, "errors": errors}
    with open(a.log, "w") as f:
        json.dump(log, f)
    for e in errors:
        print(f"cpload: {e}", file=sys.stderr, flush=True)
    problems, figures = check_log(log, a.min_between, a.min_in_flight)
    for p in problems:
        print(f"cpload: bad run: {p}", file=sys.stderr, flush=True)
    print(f"cpload: {len(writes) - len(pre)} writes, {len(cps)} checkpoints, {failures} failed, "
          f"{len(errors)} writers died; {figures}", flush=True)
    return 1 if failures or problems else 0


def check_log(log, min_between, min_in_flight):
    """Whether the workload kept running: no writer died, at least `min_between` writes began
    and ended between consecutive checkpoints (and before the first, and after the last), at
    least `min_in_flight` writes were in flight during each checkpoint (issued before it
    returned, completed after it was requested), and every writer wrote after the last marker
    returned. The control's markers (mode repl) are asked for neither minimum: each takes a
    millisecond (a writer between two writes has none in flight then), and they come 0.5 s apart
    in a full cache, whose writers wait for space or go around it. Returns (problems, figures)."""
    problems = [f"a writer died: {e}" for e in log.get("errors", [])]
    every = sorted((c for c in log["checkpoints"] if "id" in c), key=lambda c: c["requested"])
    # The minimum between markers is asked of checkpoints; a run of control markers only is asked
    # it before the first, during the run of them and after the last.
    cps = [c for c in every if c["mode"] != "repl"] or every[:1] + every[1:][-1:]
    pre = log.get("prestamp", 0)
    writes = log["writes"][pre:]
    if not cps:
        problems.append("no checkpoint succeeded")
        return problems, "no checkpoints"
    if not writes:
        problems.append("no writes")
        return problems, "no writes"
    bounds = [float("-inf")] + [c["done"] for c in cps]
    ends = [c["requested"] for c in cps] + [float("inf")]
    between = []
    for lo, hi in zip(bounds, ends):
        between.append(sum(1 for w in writes if w[2] >= lo and w[3] <= hi))
    names = ["before the first checkpoint"] + [f"after {c['label']}" for c in cps]
    for n, name in zip(between, names):
        if n < min_between:
            problems.append(f"{n} writes {name} (before the next one, or the end), fewer than {min_between}")
    inflight = []
    for c in cps:
        if c["mode"] == "repl":    # a run of control markers only
            continue
        n = sum(1 for w in writes if w[2] < c["done"] and w[3] > c["requested"])
        inflight.append(n)
        if n < min_in_flight:
            problems.append(f"{n} writes in flight during checkpoint {c['label']}, fewer than {min_in_flight}")
    threads = log.get("threads", 1)
    last = every[-1]["done"]
    for t in range(threads):
        if not any(w[0] % threads == t and w[2] >= last for w in writes):
            problems.append(f"writer {t} wrote nothing after the last marker returned")
    slack = [(c["done"] - c["requested"]) / 1e6 - c["total_ms"] for c in cps if "total_ms" in c]
    figures = (f"writes between checkpoints: min {min(between)}, in flight during one: "
               f"min {min(inflight) if inflight else '-'}"
               + (f"; ioctl time minus the kernel's total_ms: median {sorted(slack)[len(slack) // 2]:.1f} ms, "
                  f"max {max(slack):.1f} ms" if slack else ""))
    return problems, figures


# --- the oracle ----------------------------------------------------------------------------------

class Oracle:
    """The log, indexed for checking images."""

    def __init__(self, log):
        self.log = log
        self.nblocks = log["blocks"]
        self.nonce = log["nonce"]
        self.writes = [tuple(w) for w in log["writes"]]
        self.by_key = {(w[0], w[1]): w for w in self.writes}

    def read(self, path):
        with open(path, "rb") as f:
            data = f.read(self.nblocks * BS)
        if len(data) < self.nblocks * BS:
            raise ValueError(f"image {path} is short ({len(data)} bytes, {self.nblocks * BS} needed)")
        img, torn = [], []
        for b in range(self.nblocks):
            try:
                img.append(parse(data[b * BS:(b + 1) * BS], b, self.nonce))
            except ValueError as e:
                img.append(None)
                torn.append(str(e))
        return img, torn

    def judge(self, cp, img, torn=()):
        """The rules the image breaks: {rule: message}, empty if it is correct. `img[b]` is the
        sequence number block b holds (0: zeroes, None: torn)."""
        broken = {}
        t_req, t_done = cp["requested"], cp["done"]
        ms = lambda t: (t - t_req) / 1e6  # noqa: E731 -- times relative to the request
        if torn:
            broken["torn"] = f"{torn[0]} ({len(torn)} such blocks)"
        for b, s in enumerate(img):
            if s and (b, s) not in self.by_key:
                img[b] = None
                broken.setdefault("torn", f"block {b}: seq {s} was never written")
        held = lambda w: img[w[0]] is None or img[w[0]] >= w[1]  # noqa: E731 -- a torn block: not judged
        newest = [self.by_key[(b, s)] for b, s in enumerate(img) if s]
        # order: a write completed before the latest issue among the writes held is missing.
        if newest:
            top = max(newest, key=lambda w: w[2])
            missing = [w for w in self.writes if w[3] < top[2] and not held(w)]
            if missing:
                w = min(missing, key=lambda w: w[3])
                broken["order"] = (
                    f"not a prefix: it holds block {top[0]} seq {top[1]} (issued at {ms(top[2]):+.3f} ms), but block "
                    f"{w[0]} holds seq {img[w[0]]}{' (zeroes)' if img[w[0]] == 0 else ''} while its seq {w[1]} "
                    f"completed {(top[2] - w[3]) / 1e6:.3f} ms before that ({len(missing)} such writes)")
        # lower: a write completed before the checkpoint was requested is missing.
        missing = [w for w in self.writes if w[3] < t_req and not held(w)]
        if missing:
            w = min(missing, key=lambda w: w[3])
            broken["lower"] = (
                f"older than its checkpoint: block {w[0]} holds seq {img[w[0]]}, but seq {w[1]} completed at "
                f"{ms(w[3]):+.3f} ms, before the checkpoint was requested ({len(missing)} such writes)")
        # upper: a write held was issued after the checkpoint returned.
        late = [w for w in self.writes if w[2] > t_done and img[w[0]] is not None and img[w[0]] >= w[1]]
        if late:
            w = max(late, key=lambda w: w[2])
            broken["upper"] = (
                f"newer than its checkpoint: block {w[0]} holds seq {w[1]}, issued at {ms(w[2]):+.3f} ms, "
                f"{(w[2] - t_done) / 1e6:.3f} ms after the checkpoint returned ({len(late)} such writes)")
        return broken

    def latest(self, cp, img):
        """How long after the request the latest write the image holds was issued (ms)."""
        iss = [self.by_key[(b, s)][2] for b, s in enumerate(img) if s and (b, s) in self.by_key]
        return (max(iss) - cp["requested"]) / 1e6 if iss else float("-inf")

    def summary(self, cp, img):
        held = sum(1 for s in img if s)
        zero = sum(1 for s in img if s == 0)
        after = sum(1 for w in self.writes if w[2] > cp["requested"] and img[w[0]] and img[w[0]] >= w[1])
        return (f"{held} blocks hold data, {zero} zeroes, {after} writes issued after the request are in it, "
                f"the latest at {self.latest(cp, img):+.1f} ms")


def check(a):
    with open(a.log) as f:
        log = json.load(f)
    bad = 0
    problems, figures = check_log(log, a.min_between, a.min_in_flight)
    for p in problems:
        print(f"bad log: {p}")
    bad += len(problems)
    if not a.image:
        print("no image to check")
        return 1
    oracle = Oracle(log)
    cps = {c["label"]: c for c in log["checkpoints"] if "id" in c}
    seen = set()
    late = {}
    real = {"n": 0, "bad": 0, "zeroes": 0, **{r: 0 for r in RULES}}
    ctl = {"n": 0, "bad": 0, "zeroes": 0, **{r: 0 for r in RULES}}
    for spec in a.image:
        label, path = spec.split(":", 1)
        cp = cps.get(label)
        if cp is None:
            print(f"image {label}: no such checkpoint in the log")
            bad += 1
            continue
        seen.add(label)
        try:
            img, torn = oracle.read(path)
        except (OSError, ValueError) as e:
            print(f"image {label}: {e}")
            bad += 1
            continue
        broken = oracle.judge(cp, img, torn)
        tally = ctl if cp["mode"] == "repl" else real
        tally["n"] += 1
        tally["bad"] += bool(broken)
        tally["zeroes"] += 0 in img
        if not broken:
            late[cp["mode"]] = max(late.get(cp["mode"], float("-inf")), oracle.latest(cp, img))
        for r in broken:
            tally[r] += 1
        head = f"image of marker {cp['id']} ({cp['mode']}, {label})"
        if broken:
            print(f"{head}: rejected ({oracle.summary(cp, img)}): "
                  + "; ".join(f"[{r}] {broken[r]}" for r in RULES if r in broken))
        else:
            print(f"{head}: ok ({oracle.summary(cp, img)})")
    missing = [l for l in cps if l not in seen]
    if missing and not a.allow_missing:
        print(f"no image given for {len(missing)} checkpoints of the log: {' '.join(missing)}")
        bad += 1
    rules = lambda t: ", ".join(f"{r} {t[r]}" for r in RULES) + f"; {t['zeroes']} hold zeroes"  # noqa: E731
    print(f"cpload check: {real['n']} checkpoint images, {real['bad']} rejected ({rules(real)})"
          + (f"; {ctl['n']} control images, {ctl['bad']} rejected ({rules(ctl)})" if ctl["n"] else "")
          + f"; {figures}")
    if late:
        print("cpload check: the latest write an accepted image holds was issued, after its request: "
              + ", ".join(f"{m} {late[m]:+.1f} ms" for m in sorted(late)))
    bad += real["bad"]
    if ctl["n"]:
        need = math.ceil(a.control_min_order * ctl["n"])
        if ctl["order"] < need:
            print(f"the control: {ctl['order']} of {ctl['n']} images rejected for order, fewer than {need}")
            bad += 1
    return 1 if bad else 0


# --- the self-test (host) --------------------------------------------------------------------

class StubDm:
    """Answers messages as dm-wbcache and dm-repl would, after `delay` seconds (host self-test)."""

    def __init__(self, delay=0.05):
        self.delay, self.epoch, self.marker = delay, 1, 100

    def message(self, name, *words):
        t0 = now()
        time.sleep(self.delay)
        if words[0] == "checkpoint":
            self.epoch += 1
            out = f"id {self.epoch - 1} mode {words[1]} label {words[2]} blocks 0 drain_ms 0 marker_ms 0 total_ms 0"
        elif words[0] == "marker":
            self.marker += 1
            out = str(self.marker)
        else:
            out = ""
        return Answer(0, out, "", t0, now())


def self_test():
    """The oracle rejects each kind of wrong image and log it must (run on the host)."""
    import resource
    import tempfile
    tmp = tempfile.mkdtemp(prefix="cpload-selftest-")
    nonce = 0x5EED
    n = [0]

    def img(*seqs, nonce=nonce):
        n[0] += 1
        p = os.path.join(tmp, f"img{n[0]}")
        with open(p, "wb") as f:
            for b, s in enumerate(seqs):
                f.write(stamp(b, s, nonce) if s else bytes(BS))
        return p

    # Block 0: seq 1 at [10, 20], seq 2 at [50, 60]; block 1: seq 1 at [30, 40]; block 2: seq 1
    # at [100, 110], issued after the checkpoint returned (at 90).
    w = [(0, 1, 10, 20), (1, 1, 30, 40), (0, 2, 50, 60), (2, 1, 100, 110)]
    log = {"blocks": 3, "nonce": nonce, "writes": w, "checkpoints": []}
    o = Oracle(log)
    cp = {"requested": 45, "done": 90}

    def rules(path, c=cp):
        im, torn = o.read(path)
        return set(o.judge(c, im, torn))

    assert rules(img(1, 1, 0)) == set()
    assert rules(img(2, 1, 0)) == set()                  # a write in flight during the checkpoint: fine
    assert rules(img(0, 1, 0)) == {"lower", "order"}     # misses (0,1), done before the request and (1,1)
    assert rules(img(1, 0, 0)) == {"lower"}              # a prefix, but older than the checkpoint
    # (0,2) was issued at 50, after (1,1) completed at 40: holding it without (1,1) is no prefix.
    early = {"requested": 25, "done": 28}
    assert rules(img(2, 0, 0), early) == {"order", "upper"}
    assert rules(img(1, 0, 0), early) == set()
    # Upper bound (mutation): the image holds (2,1), issued 10 after the checkpoint returned: the
    # final quiet state, or the image of a later marker, passed before.
    assert rules(img(2, 1, 1)) == {"upper"}
    assert rules(img(1, 0, 0), early) == set() and rules(img(2, 1, 1), early) == {"upper"}
    assert rules(img(2, 1, 1), {"requested": 45, "done": 100}) == set()   # issued at 100: not after 100
    # A torn block, a block of another run, another block's data.
    torn = img(1, 1, 0)
    with open(torn, "r+b") as f:
        f.seek(100)
        f.write(b"x")
    assert rules(torn) == {"torn"}
    assert rules(img(1, 1, 0, nonce=7)) == {"torn"}
    swapped = img(1, 1, 0)
    with open(swapped, "r+b") as f:
        f.write(stamp(1, 1, nonce))
    assert rules(swapped) == {"torn"}

    # check(): the summary per rule, control images, no image, a missing image. Block 1's seq 2
    # is written between the two checkpoints, at [92, 94]; the control marker c3 comes last.
    log = {"blocks": 3, "threads": 1, "nonce": nonce, "prestamp": 0, "writes": w + [(1, 2, 92, 94)], "errors": [],
           "checkpoints": [{"label": "c1-hold", "mode": "hold", "id": 1, "requested": 45, "done": 90},
                           {"label": "c2-hold", "mode": "hold", "id": 2, "requested": 95, "done": 99},
                           {"label": "c3-repl", "mode": "repl", "id": 9, "requested": 95, "done": 99}]}
    lp = os.path.join(tmp, "log")
    with open(lp, "w") as f:
        json.dump(log, f)

    def chk(*images, **kw):
        ns = argparse.Namespace(log=lp, image=list(images), min_between=kw.get("min_between", 0),
                                min_in_flight=kw.get("min_in_flight", 0), allow_missing=kw.get("allow_missing", False),
                                control_min_order=kw.get("control_min_order", 0.75))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = check(ns)
        return rc, out.getvalue()
    good, later = img(1, 1, 0), img(2, 2, 0)
    ctl_order, ctl_lower = img(1, 2, 0), img(2, 1, 0)   # (1,2) without (0,2); a prefix, older than 95
    rc, out = chk(f"c1-hold:{good}", f"c2-hold:{later}", f"c3-repl:{ctl_order}")
    assert rc == 0 and "2 checkpoint images, 0 rejected (order 0, lower 0, upper 0, torn 0; 2 hold zeroes)" in out, out
    assert "1 control images, 1 rejected (order 1, lower 1, upper 0, torn 0; 1 hold zeroes)" in out, out
    # The image of the later marker given as the earlier one's (a wrong mapping, a late freeze).
    rc, out = chk(f"c1-hold:{later}", f"c2-hold:{later}", f"c3-repl:{ctl_order}")
    assert rc == 1 and "(hold, c1-hold): rejected (" in out and "[upper] newer than its checkpoint" in out, out
    assert "2 checkpoint images, 1 rejected (order 0, lower 0, upper 1, torn 0" in out, out
    rc, out = chk(f"c1-hold:{good}", f"c2-hold:{later}", f"c3-repl:{ctl_lower}")   # the control, not for order
    assert rc == 1 and "[lower]" in out and "the control: 0 of 1 images rejected for order" in out, out
    assert chk(f"c1-hold:{good}", f"c2-hold:{later}", f"c3-repl:{later}")[0] == 1  # the control accepted
    assert chk() == (1, "no image to check\n")
    rc, out = chk(f"c1-hold:{good}", f"c2-hold:{later}")                       # c3-repl has no image
    assert rc == 1 and "no image given for 1 checkpoints of the log: c3-repl" in out, out
    assert chk(f"c1-hold:{good}", allow_missing=True)[0] == 0
    assert chk(f"c9-hold:{good}", allow_missing=True)[0] == 1                  # no such checkpoint
    rc, out = chk(f"c1-hold:{good}", f"c2-hold:{later}", f"c3-repl:{ctl_order}", min_between=5)
    assert rc == 1 and "bad log: " in out, out                                 # a bad log fails the check

    # check_log (mutations of a good log): writers that stopped, no writes in flight during a
    # checkpoint, a writer's error, no checkpoint at all.
    cps = [{"label": f"c{i}", "mode": "hold", "id": i, "requested": 1000 * i, "done": 1000 * i + 100, "total_ms": 0}
           for i in (1, 2, 3)] + [{"label": "c4", "mode": "repl", "id": 9, "requested": 3500, "done": 3501}]
    ws = [(t % 2, t, t * 10, t * 10 + 8) for t in range(1, 400)]
    good = {"threads": 2, "writes": ws, "checkpoints": cps, "errors": []}
    assert check_log(good, 20, 2)[0] == [], check_log(good, 20, 2)
    # a control marker with nothing in flight is fine (it takes a millisecond), a checkpoint not
    quick = dict(good, writes=[x for x in ws if not (3400 < x[3] and x[2] < 3600)])
    assert check_log(quick, 20, 2)[0] == [], check_log(quick, 20, 2)
    stopped = dict(good, writes=[x for x in ws if x[3] < 1500])
    assert any("after c2" in p for p in check_log(stopped, 20, 2)[0])
    gap = dict(good, writes=[x for x in ws if not (1900 < x[3] and x[2] < 2200)])
    assert any("in flight during checkpoint c2" in p for p in check_log(gap, 20, 2)[0])
    assert any("writer 1 wrote nothing after the last marker" in p
               for p in check_log(dict(good, writes=[x for x in ws if x[0] == 0 or x[3] < 2000]), 20, 2)[0])
    assert check_log(dict(good, errors=["writer 0 died: OSError"]), 20, 2)[0]
    # A run of control markers only: none is asked for writes in flight, nor for writes between
    # two of them (c1 and c2 are 1000 apart here: 0 writes between them), only between the first
    # and the last.
    ctl = [dict(c, mode="repl") for c in cps[:3]]
    assert check_log(dict(gap, checkpoints=ctl), 20, 2)[0] == []
    assert check_log(dict(good, writes=[x for x in ws if not 1100 < x[3] < 2000], checkpoints=ctl), 20, 2)[0] == []
    assert check_log(dict(good, writes=[x for x in ws if not 1100 < x[3] < 3000], checkpoints=ctl), 20, 2)[0]
    assert check_log(dict(good, checkpoints=[]), 20, 2)[0] == ["no checkpoint succeeded"]

    # run(): writers that die fail the run (the audit's `ulimit -f 16`: every pwrite beyond 16 KiB
    # fails with EFBIG, and the old run said "0 writes, 0 checkpoints, 0 failed", exit 0); the same
    # run without the limit passes.
    dev = os.path.join(tmp, "dev")
    with open(dev, "wb") as f:
        f.truncate(64 * BS)

    def run_child(limit):
        p = argparse.ArgumentParser()
        add_run_args(p)
        a = p.parse_args(["--dev", dev, "--wbcache", "stub", "--log", os.path.join(tmp, f"run{limit}.log"),
                          "--blocks", "64", "--threads", "4", "--phase", "hold,writethrough:3",
                          "--phase", f"until:test -e {dev}", "--phase", "repl:2", "--interval", "0.1",
                          "--warmup", "0.2", "--min-between", "20", "--min-in-flight", "1"])
        out = os.path.join(tmp, f"run{limit}.out")
        pid = os.fork()
        if pid == 0:
            try:
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                if limit:
                    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
                rc = run(a, StubDm())
            except BaseException as e:  # noqa: BLE001
                print(f"self-test child: {type(e).__name__}: {e}", file=sys.stderr)
                rc = 2
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
        rc = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        with open(out) as f:
            return rc, f.read()
    rc, out = run_child(0)
    assert rc == 0, out
    rc, out = run_child(16 * 1024)
    assert rc == 1 and "died" in out and "File too large" in out, (rc, out)
    print("cpload self-test: ok (rules order, lower, upper, torn; control; no image; dead and idle writers)")


def add_run_args(r):
    r.add_argument("--dev", required=True)
    r.add_argument("--wbcache", required=True)
    r.add_argument("--repl", help="the dm-repl primary below, for phases of mode repl")
    r.add_argument("--after-checkpoint", help="shell command run after each checkpoint ({id}: its marker id, {label})")
    r.add_argument("--log", required=True)
    r.add_argument("--blocks", type=int, default=2048)
    r.add_argument("--threads", type=int, default=4)
    r.add_argument("--phase", action="append", default=[],
                   help="MODES:COUNT, e.g. hold,writethrough:16 (modes taken in turn), or until:SHELL-COMMAND")
    r.add_argument("--label-prefix", default="cp", help="labels are PREFIX<k>-<mode>")
    r.add_argument("--prestamp", action="store_true", help="write every block once (and flush) first")
    r.add_argument("--interval", type=float, default=0.5)
    r.add_argument("--warmup", type=float, default=1.0)
    r.add_argument("--timeout-ms", type=int, default=60000)
    r.add_argument("--flush-every", type=int, default=300)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--nonce", type=int)
    add_log_args(r)


def add_log_args(p):
    p.add_argument("--min-between", type=int, default=MIN_BETWEEN,
                   help="writes required between consecutive checkpoints (and before the first, after the last)")
    p.add_argument("--min-in-flight", type=int, default=MIN_IN_FLIGHT,
                   help="writes required in flight during each checkpoint")


# Seen under a loaded TCG guest (2026-12-07): at least 53 writes between two checkpoints 0.5 s
# apart (a full 4 MiB cache, writes waiting for space) and 15 in flight during a checkpoint.
MIN_BETWEEN = 20
MIN_IN_FLIGHT = 4


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    add_run_args(sub.add_parser("run"))
    c = sub.add_parser("check")
    c.add_argument("--log", required=True)
    c.add_argument("--image", action="append", default=[], help="LABEL:PATH, the image of the marker LABEL")
    c.add_argument("--allow-missing", action="store_true", help="checkpoints of the log may have no image")
    c.add_argument("--control-min-order", type=float, default=0.75,
                   help="the fraction of control images (mode repl) that must break the order rule")
    add_log_args(c)
    sub.add_parser("self-test")
    a = p.parse_args()
    if a.cmd == "run":
        return run(a)
    if a.cmd == "check":
        return check(a)
    self_test()
    return 0


if __name__ == "__main__":
    sys.exit(main())
