#!/usr/bin/env python3
"""Checkpoint oracle: a block workload with a log of every write, checkpoints requested while it
runs, and the check that every image is a point-in-time state of the workload.

  cpload.py run --dev DEV --wbcache NAME --log LOG [--blocks N] [--threads T] [--phase MODES:COUNT]...
  cpload.py check --log LOG --image MARKER_ID:PATH [--image ...]

`run` writes 4 KiB blocks, each stamped with (block, sequence number) over the whole block, from
T threads; a thread owns the blocks b with b % T == its number and writes them one at a time, so
two writes to one block are never in flight together. Every write's submission and completion
times (CLOCK_MONOTONIC) go to the log. Meanwhile the main thread requests checkpoints (the
message `checkpoint MODE LABEL TIMEOUT` to the cache NAME), one phase after another (a phase
`ordered:6` switches the cache to ordered mode first, and back to writeback after), noting when
each was requested and when it returned: both times are read immediately around the
DM_TARGET_MSG ioctl, which this process issues itself (no `dmsetup` is spawned in between). A
phase `repl:3` instead sends dm-repl's own `marker` message to the device below (`--repl
NAME`): a marker that skips the cache's drain, for the control experiment (its images are not
consistent while the cache holds writes back).

`check` compares each image (a copy of the secondary's device frozen at a marker) with the log.
An image is correct when it holds, for each block, the data of one write to that block (or zeroes
if it holds none), and the set S of writes it holds (with every earlier write to the same block)
is a *prefix* of the workload: every write acknowledged before the checkpoint was requested is in
S, and every write acknowledged before the submission of a write in S is in S (S is closed under
"completed before it was issued"). Writes in flight together may be in S or not: no application
can have relied on their order.
"""
import argparse
import ctypes
import errno
import json
import mmap
import os
import random
import struct
import subprocess
import sys
import threading
import time

BS = 4096
MAGIC = b"WBCPTEST"
HDR = struct.Struct("<8sQQQ")


def stamp(block, seq):
    return HDR.pack(MAGIC, block, seq, block ^ (seq * 0x9E3779B97F4A7C15 & (2**64 - 1))) * (BS // HDR.size)


def parse(buf, block):
    """The sequence number stamped on `buf` for `block`, 0 for zeroes; raises on anything else."""
    if buf == bytes(BS):
        return 0
    magic, b, seq, chk = HDR.unpack_from(buf)
    if magic != MAGIC or b != block or buf != stamp(block, seq):
        raise ValueError(f"block {block}: not one whole write of it (magic {magic!r}, block {b}, seq {seq})")
    return seq


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


def writer(fd, t, nthreads, nblocks, stop, log, seed, flush_every):
    rnd = random.Random(seed)
    mine = list(range(t, nblocks, nthreads))
    seqs = {}
    buf = mmap.mmap(-1, BS)
    n = 0
    while not stop.is_set():
        b = rnd.choice(mine)
        s = seqs.get(b, 0) + 1
        seqs[b] = s
        buf.seek(0)
        buf.write(stamp(b, s))
        t0 = now()
        os.pwrite(fd, buf, b * BS)
        t1 = now()
        log.append((b, s, t0, t1))
        n += 1
        if flush_every and n % flush_every == 0:
            os.fsync(fd)


def run(a):
    dm = DmControl()
    fd = os.open(a.dev, os.O_WRONLY | os.O_DIRECT)
    stop = threading.Event()
    logs = [[] for _ in range(a.threads)]
    threads = [
        threading.Thread(target=writer, args=(fd, t, a.threads, a.blocks, stop, logs[t], a.seed + t, a.flush_every))
        for t in range(a.threads)
    ]
    for th in threads:
        th.start()
    cps = []
    failures = 0
    try:
        time.sleep(a.warmup)
        k = 0
        for phase in a.phase:
            modes, count = phase.split(":")
            modes = modes.split(",")
            if "ordered" in modes:
                r = dm.message(a.wbcache, "mode", "ordered")
                if r.rc:
                    print("cpload: mode ordered failed:", r.err, file=sys.stderr)
                    failures += 1
            for i in range(int(count)):
                mode = modes[i % len(modes)]
                k += 1
                label = f"cp{k}-{mode}"
                if mode == "repl":
                    r = dm.message(a.repl, "marker", label)
                else:
                    r = dm.message(a.wbcache, "checkpoint", mode, label, str(a.timeout_ms))
                out = r.out
                rec = {"label": label, "mode": mode, "requested": r.t0, "done": r.t1, "rc": r.rc,
                       "answer": out, "error": r.err}
                if r.rc == 0 and mode == "repl":
                    rec["id"] = int(out)
                elif r.rc == 0:
                    f = out.split()
                    rec["id"] = int(f[f.index("id") + 1])
                    rec["blocks"] = int(f[f.index("blocks") + 1])
                    rec["total_ms"] = int(f[f.index("total_ms") + 1])
                else:
                    failures += 1
                cps.append(rec)
                print(f"cpload: checkpoint {label}: rc {r.rc} {out or r.err} (ioctl {(r.t1 - r.t0) / 1e6:.1f} ms)",
                      flush=True)
                if "id" in rec and a.after_checkpoint:
                    h = subprocess.run(a.after_checkpoint.replace("{id}", str(rec["id"])), shell=True)
                    if h.returncode:
                        print(f"cpload: after checkpoint {label}: the hook failed", file=sys.stderr)
                        failures += 1
                time.sleep(a.interval)
            if "ordered" in modes:
                dm.message(a.wbcache, "mode", "writeback")
        time.sleep(a.warmup)
    finally:
        stop.set()
        for th in threads:
            th.join()
        os.close(fd)
    writes = [w for l in logs for w in l]
    with open(a.log, "w") as f:
        json.dump({"blocks": a.blocks, "writes": writes, "checkpoints": cps}, f)
    print(f"cpload: {len(writes)} writes, {len(cps)} checkpoints, {failures} failed", flush=True)
    return 1 if failures else 0


def check_image(log, cp, path):
    nblocks = log["blocks"]
    with open(path, "rb") as f:
        data = f.read(nblocks * BS)
    if len(data) < nblocks * BS:
        return f"image {path} is short"
    img = [parse(data[b * BS:(b + 1) * BS], b) for b in range(nblocks)]
    by_key = {(w[0], w[1]): w for w in log["writes"]}
    # The latest submission among the writes the image holds.
    latest = cp["requested"]
    for b, s in enumerate(img):
        if s == 0:
            continue
        w = by_key.get((b, s))
        if w is None:
            return f"block {b}: sequence {s} was never written"
        latest = max(latest, w[2])
    # Every write completed before then must be in the image (or overwritten in it).
    missing = [w for w in log["writes"] if w[3] < latest and img[w[0]] < w[1]]
    if missing:
        w = min(missing, key=lambda w: w[3])
        return (f"not a prefix: block {w[0]} holds seq {img[w[0]]}, but seq {w[1]} completed "
                f"{(latest - w[3]) / 1e6:.3f} ms before the latest write the image holds was issued "
                f"({len(missing)} such writes)")
    held = sum(1 for s in img if s)
    after = sum(1 for w in log["writes"] if w[2] > cp["requested"] and img[w[0]] >= w[1])
    return f"ok ({held} blocks hold data, {after} writes issued after the request are in it)"


def check(a):
    with open(a.log) as f:
        log = json.load(f)
    cps = {c["id"]: c for c in log["checkpoints"] if "id" in c}
    bad = 0
    for spec in a.image:
        mid, path = spec.split(":", 1)
        cp = cps.get(int(mid))
        if cp is None:
            print(f"image of marker {mid}: no such checkpoint in the log")
            bad += 1
            continue
        try:
            r = check_image(log, cp, path)
        except ValueError as e:
            r = str(e)
        ok = r.startswith("ok")
        bad += not ok
        print(f"image of marker {mid} ({cp['mode']}, {cp['label']}): {r}")
    return 1 if bad else 0


def self_test():
    """The oracle refuses a non-prefix image and a torn block (run on the host)."""
    import tempfile
    w = [(0, 1, 10, 20), (1, 1, 30, 40), (0, 2, 50, 60)]
    log = {"blocks": 2, "writes": w, "checkpoints": []}
    cp = {"requested": 45}

    def img(*seqs):
        f = tempfile.NamedTemporaryFile(delete=False)
        for b, s in enumerate(seqs):
            f.write(stamp(b, s) if s else bytes(BS))
        f.close()
        return f.name
    assert check_image(log, cp, img(1, 1)).startswith("ok")
    assert check_image(log, cp, img(2, 1)).startswith("ok")   # a later write: fine
    assert not check_image(log, cp, img(0, 1)).startswith("ok")  # misses a write done before the request
    assert not check_image(log, cp, img(1, 0)).startswith("ok")
    # (0,2) was issued at 50, after (1,1) completed at 40: holding it without (1,1) is no prefix.
    assert not check_image(log, {"requested": 25}, img(2, 0)).startswith("ok")
    assert check_image(log, {"requested": 25}, img(1, 0)).startswith("ok")
    torn = img(1, 1)
    with open(torn, "r+b") as f:
        f.seek(100)
        f.write(b"x")
    try:
        check_image(log, cp, torn)
        raise AssertionError("torn block accepted")
    except ValueError:
        pass
    print("cpload self-test: ok")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--dev", required=True)
    r.add_argument("--wbcache", required=True)
    r.add_argument("--repl", help="the dm-repl primary below, for phases of mode repl")
    r.add_argument("--after-checkpoint", help="shell command run after each checkpoint ({id}: its marker id)")
    r.add_argument("--log", required=True)
    r.add_argument("--blocks", type=int, default=2048)
    r.add_argument("--threads", type=int, default=4)
    r.add_argument("--phase", action="append", default=[], help="MODES:COUNT, e.g. hold,writethrough:16")
    r.add_argument("--interval", type=float, default=0.5)
    r.add_argument("--warmup", type=float, default=1.0)
    r.add_argument("--timeout-ms", type=int, default=60000)
    r.add_argument("--flush-every", type=int, default=300)
    r.add_argument("--seed", type=int, default=1)
    c = sub.add_parser("check")
    c.add_argument("--log", required=True)
    c.add_argument("--image", action="append", default=[])
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
