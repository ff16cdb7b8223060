#!/usr/bin/env python3
"""Writes a dm-repl marker record (rust/core/src/marker.rs) with O_DIRECT.

    replmarker.py DEV SECTOR ID LABEL

Writes one 4 KiB block at SECTOR: the 512-byte record (magic WBRPMRK1, id, time, label,
CRC-32C) followed by zeros.
"""
import mmap
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from replfuzz import crc32c  # noqa: E402


def record(marker_id, label):
    lb = label.encode("ascii")
    assert len(lb) <= 64 and all(0x20 <= c < 0x7F for c in lb)
    body = b"WBRPMRK1" + struct.pack("<QQ", marker_id, time.time_ns()) + lb + bytes(64 - len(lb))
    return body + struct.pack("<I", crc32c(body))


def main():
    dev, sector, marker_id, label = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    buf = mmap.mmap(-1, 4096)
    buf.write(record(marker_id, label))
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    try:
        n = os.pwritev(fd, [buf], sector * 512)
        assert n == 4096, n
    finally:
        os.close(fd)


if __name__ == "__main__":
    main()
