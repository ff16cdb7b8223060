#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Block-level workload and oracle for the dm-wbcache power-loss test (85-wbcache-powerloss.sh).

`run DEV STEPS_JSON LOGDEV`: writes through DEV in numbered steps. Every 512-byte sector written
at step t carries (t, sector) repeated, so any sector read back names the write it came from.
After some steps the workload flushes (fsync, or an O_DSYNC write) and then records a mark
`s<t>` in the dm-log-writes log: everything written by steps <= t is durable at that mark.

`check DEV STEPS_JSON STEP`: after a replay to a point whose last mark is `s<STEP>` (0: none),
every sector must hold the newest write of a step <= STEP, or a write of a later step that
was issued before the point (a volatile write may or may not survive). Zeroes only where no
step <= STEP wrote. Anything else (older data, another sector's data, garbage) is a failure.
"""

import json
import mmap
import os
import random
import struct
import subprocess
import sys

SECTOR = 512
BLOCK = 4096
RANGE_BLOCKS = 1024  # 4 MiB of the device: plenty of overwrites


def pattern(step, sector):
    return struct.pack("<QQ", step, sector) * (SECTOR // 16)


def buf_for(step, first, count):
    m = mmap.mmap(-1, count * SECTOR)  # page-aligned, as O_DIRECT needs
    for k in range(count):
        m[k * SECTOR:(k + 1) * SECTOR] = pattern(step, first + k)
    return m


def mark(logdev, text):
    subprocess.run(["dmsetup", "message", logdev, "0", "mark", text], check=True)


def run(dev, steps_path, logdev, nsteps=300, seed=7):
    rng = random.Random(seed)
    fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
    sfd = os.open(dev, os.O_RDWR | os.O_DIRECT | os.O_DSYNC)
    steps = []  # steps[t-1] = list of (first sector, count)
    for t in range(1, nsteps + 1):
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
        dsync = rng.random() < 0.15
        for first, count in extents:
            os.pwrite(sfd if dsync else fd, buf_for(t, first, count), first * SECTOR)
        steps.append(extents)
        if dsync:
            mark(logdev, f"s{t}")
        elif rng.random() < 0.3:
            os.fsync(fd)
            mark(logdev, f"s{t}")
        if t == nsteps // 3:
            subprocess.run(["dmsetup", "message", os.path.basename(dev), "0", "mode", "ordered"], check=True)
        if t == 2 * nsteps // 3:
            subprocess.run(["dmsetup", "message", os.path.basename(dev), "0", "flush"], check=True)
            subprocess.run(["dmsetup", "message", os.path.basename(dev), "0", "mode", "writeback"], check=True)
    os.fsync(fd)
    mark(logdev, f"s{nsteps}")
    os.close(fd)
    os.close(sfd)
    with open(steps_path, "w") as f:
        json.dump(steps, f)


def check(dev, steps_path, durable):
    with open(steps_path) as f:
        steps = json.load(f)
    writers = {}  # sector -> steps that wrote it, ascending
    for t, extents in enumerate(steps, start=1):
        for first, count in extents:
            for s in range(first, first + count):
                writers.setdefault(s, []).append(t)
    fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
    size = RANGE_BLOCKS * BLOCK
    m = mmap.mmap(-1, size)
    got = os.preadv(fd, [m], 0)
    os.close(fd)
    if got != size:
        print(f"short read: {got}")
        return 1
    bad = 0
    for s in range(size // SECTOR):
        data = m[s * SECTOR:(s + 1) * SECTOR]
        w = writers.get(s, [])
        must = max([t for t in w if t <= durable], default=0)
        if data == bytes(SECTOR):
            t = 0
        else:
            t, s2 = struct.unpack_from("<QQ", data)
            if s2 != s or data != pattern(t, s2):
                bad += 1
                if bad <= 5:
                    print(f"sector {s}: garbage or another sector's data (claims step {t}, sector {s2})")
                continue
        ok = t == must or (t in w and t > durable)
        if not ok:
            bad += 1
            if bad <= 5:
                print(f"sector {s}: holds step {t}, expected step {must} (durable up to step {durable}) or a later write {[x for x in w if x > durable][:5]}")
    if bad:
        print(f"{bad} bad sectors")
        return 1
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "check":
        sys.exit(check(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    else:
        sys.exit("usage: powerloss.py run DEV STEPS LOGDEV | check DEV STEPS DURABLE_STEP")
