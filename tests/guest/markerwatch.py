#!/usr/bin/env python3
"""Watches the marker region of a device for new marker records (rust/core/src/marker.rs) and
runs a command at each: the secondary side of a replication layer that, unlike dm-repl, cannot
freeze at a marker (DRBD). One process, one O_DIRECT read of the region per poll.

  markerwatch.py --dev DEV --sector S --map FILE --stop FILE [--ready CMD] --on-marker CMD

At each new marker id (different from the last one seen), if the --ready shell command succeeds
(e.g. "the replica is up to date"), the --on-marker shell command runs with {id} and {n} (1, 2,
... for each marker taken) replaced; on success "<id> <n> <label>" is appended to --map (the
record's label, `-` for none). Runs until the --stop file exists. Failures go to stderr.
"""
import argparse
import mmap
import os
import struct
import subprocess
import sys
import time

MAGIC = b"WBRPMRK1"


def read_id(fd, offset, buf):
    """The marker id and label at `offset` ((0, "") if there is no record)."""
    os.preadv(fd, [buf], offset)
    r = bytes(buf[:512])
    if r[:8] != MAGIC:
        return 0, ""
    label = r[24:88].split(b"\0", 1)[0].decode("ascii", "replace")
    return struct.unpack_from("<Q", r, 8)[0], label or "-"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dev", required=True)
    p.add_argument("--sector", type=int, required=True)
    p.add_argument("--map", required=True)
    p.add_argument("--stop", required=True)
    p.add_argument("--ready", default="true")
    p.add_argument("--on-marker", required=True)
    p.add_argument("--poll-ms", type=int, default=10)
    a = p.parse_args()
    buf = mmap.mmap(-1, 4096)
    last, n = 0, 0
    while not os.path.exists(a.stop):
        fd = os.open(a.dev, os.O_RDONLY | os.O_DIRECT)
        try:
            mid, label = read_id(fd, a.sector * 512, buf)
        finally:
            os.close(fd)
        if mid and mid != last and subprocess.run(a.ready, shell=True).returncode == 0:
            cmd = a.on_marker.replace("{id}", str(mid)).replace("{n}", str(n + 1))
            r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
            if r.returncode == 0:
                n += 1
                last = mid
                with open(a.map, "a") as f:
                    f.write(f"{mid} {n} {label}\n")
            else:
                print(f"markerwatch: marker {mid}: '{cmd}' failed: {r.stderr.strip()}", file=sys.stderr)
                last = mid
        time.sleep(a.poll_ms / 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
