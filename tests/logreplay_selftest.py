#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Self-test for logreplay.py: python3 tests/logreplay_selftest.py

Builds dm-log-writes logs the way the Linux 6.12 target lays them out (for
sectorsize 512 and 4096), runs the tool's list/points/marks/replay on them
and compares with an independent model of the device, byte by byte.  Also
checks that truncated and corrupt logs give exit status 2 and a message, not
a traceback.  Exits 1 on the first failure.
"""
import contextlib
import io
import os
import random
import struct
import subprocess
import sys
import tempfile
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True                  # leave no __pycache__ behind
import logreplay  # noqa: E402

TOOL = os.path.join(HERE, "logreplay.py")

FLUSH, FUA, DISCARD, MARK, META = 1, 2, 4, 8, 16
MAGIC = 0x6A736677736872
DEV_SIZE = 256 * 1024           # bytes of the simulated data device


class KernelLog:
    """Writes a log image as drivers/md/dm-log-writes.c would.

    Bios complete at once.  Plain writes and discards wait on the unflushed
    list until a flush, which logs them and then itself; FUA writes and
    marks are logged at once and rewrite the super (only they do).
    Sectors given to the methods are bio sectors (512 bytes).
    """

    def __init__(self, sectorsize, log_size=2 * 1024 * 1024):
        self.s = sectorsize
        # Stale contents: nothing may depend on unused space being zero.
        self.img = bytearray(b"\xa5" * log_size)
        self.next_sector = sectorsize >> 9      # 512-byte units, as bi_sector
        self.logged = 0
        self.unflushed = []
        # Logged entries, in log order: (flags, sector, nr, data, mark)
        self.record = []
        # Each flush's group: (index of its first write, index of the flush entry)
        self.groups = []

    def _to_dev(self, bio_sectors):           # bio_to_dev_sectors()
        assert bio_sectors * 512 % self.s == 0
        return bio_sectors * 512 // self.s

    def _log_one(self, flags, sector512, nr512, data=b"", mark=b""):
        assert (sector512 + nr512) * 512 <= DEV_SIZE
        at = self.next_sector * 512
        if not flags & DISCARD:
            self.next_sector += nr512           # dev_to_bio_sectors(nr)
        self.next_sector += self.s >> 9         # the header block
        assert self.next_sector * 512 < len(self.img)
        self.logged += 1
        header = struct.pack("<QQQQ", self._to_dev(sector512),
                             self._to_dev(nr512), flags, len(mark)) + mark
        self.img[at:at + self.s] = header + bytes(self.s - len(header))
        if data:
            assert len(data) == nr512 * 512
            self.img[at + self.s:at + self.s + len(data)] = data
        self.record.append((flags, sector512, nr512, data, mark))
        if flags & (FUA | MARK):
            sup = struct.pack("<QQQI", MAGIC, 1, self.logged, self.s)
            sup += bytes(4)                     # tail padding of the C struct
            self.img[0:self.s] = sup + bytes(self.s - len(sup))

    def write(self, sector512, data, fua=False, meta=False, preflush=False):
        flags = (FUA if fua else 0) | (META if meta else 0)
        if preflush:                            # flush with data: "weird"
            self.flush(FLUSH | flags, sector512, data)
        elif fua:
            self._log_one(flags, sector512, len(data) // 512, data)
        else:
            self.unflushed.append((flags, sector512, len(data) // 512, data))

    def discard(self, sector512, nr512):
        self.unflushed.append((DISCARD, sector512, nr512, b""))

    def flush(self, flags=FLUSH, sector512=0, data=b""):
        start = len(self.record)
        for block in self.unflushed:
            self._log_one(*block)
        self.unflushed = []
        self.groups.append((start, len(self.record)))
        self._log_one(flags, sector512, len(data) // 512, data)

    def mark(self, text):
        # log_mark(): kstrndup(text, sectorsize - 32 - 1), data_len = strlen
        self._log_one(MARK, 0, 0, mark=text.encode()[:self.s - 33])

    def remove(self):                           # log_writes_dtr()
        for block in self.unflushed:
            self._log_one(*block)
        self.unflushed = []
        self.mark("dm-log-writes-end")

    def nr_entries(self):
        return struct.unpack_from("<Q", self.img, 16)[0]


def initial_device():
    """Recognisable, non-zero starting contents of the target."""
    return bytearray(bytes((i * 7 + 3) & 0xFF for i in range(256)) *
                     (DEV_SIZE // 256))


def model(record, start, end, dev):
    """Applies record[start:end] to the bytearray dev (the expected result)."""
    for flags, sector512, nr512, data, _ in record[start:end]:
        off, length = sector512 * 512, nr512 * 512
        if flags & DISCARD:
            dev[off:off + length] = bytes(length)
        elif data:
            dev[off:off + length] = data
    return dev


def payload(seed, nbytes):
    return bytes((seed * 31 + i * 13 + (i >> 9)) & 0xFF for i in range(nbytes))


def build(s):
    """A log exercising every kind of entry, for sectorsize s."""
    k = KernelLog(s)
    b = s // 512                                # bio sectors per block
    k.write(0, payload(1, s))                   # 1 block at sector 0
    k.write(8 * b, payload(2, 3 * s), meta=True)
    k.write(40 * b, payload(3, 8 * s))
    k.flush()
    k.write(2 * b, payload(4, 2 * s), fua=True)  # logged before older writes
    k.write(8 * b, payload(5, s))               # overwrites part of entry 1
    k.discard(41 * b, 4 * b)                    # inside the 8-block write
    k.mark("after discard")
    k.write(50 * b, payload(6, 5 * s), fua=True, preflush=True)
    k.write(3 * b, payload(7, s))               # only logged by remove()
    k.mark("x" * 5000)                          # truncated to s - 33
    k.remove()
    return k


failures = 0


def check(cond, what):
    global failures
    print(("ok - " if cond else "not ok - ") + what)
    if not cond:
        failures += 1


def run_main(argv):
    """Runs logreplay.main(argv); returns (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = logreplay.main(argv)
        except SystemExit as e:                 # argparse errors
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def expected_list(k):
    lines = [f"# entries {len(k.record)} sectorsize {k.s}"]
    for i, (flags, sector, nr, _, mark) in enumerate(k.record):
        names = [n for bit, n in ((FLUSH, "FLUSH"), (FUA, "FUA"),
                                  (DISCARD, "DISCARD"), (MARK, "MARK"),
                                  (META, "META")) if flags & bit]
        line = f"{i} {'|'.join(names) or '-'} {sector} {nr}"
        if flags & MARK:
            line += " " + mark.decode()
        lines.append(line)
    return lines


def write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def test_sectorsize(tmp, s):
    k = build(s)
    n = len(k.record)
    check(k.nr_entries() == n, f"s={s}: simulated super counts {n} entries")
    logp = os.path.join(tmp, f"log{s}")
    write_file(logp, bytes(k.img))
    log = logreplay.read_log(logp)

    # Units: on disk the sector is in s-byte blocks, printed in 512-byte ones.
    e1 = log.entries[1]
    per = s // 512
    check(e1.sector == 8 and e1.nr_sectors == 3 and
          e1.sector512 == 8 * per and e1.nr_sectors512 == 3 * per,
          f"s={s}: entry 1 sector/nr in device units and in 512-byte units")

    rc, out, _ = run_main(["list", logp])
    check(rc == 0 and out.splitlines() == expected_list(k), f"s={s}: list")
    want_points = [i for i, r in enumerate(k.record) if r[0] & (FLUSH | FUA)]
    rc, out, _ = run_main(["points", logp])
    check(rc == 0 and out.split() == [str(i) for i in want_points],
          f"s={s}: points {want_points}")
    want_marks = [f"{i} {r[4].decode()}" for i, r in enumerate(k.record)
                  if r[0] & MARK]
    rc, out, _ = run_main(["marks", logp])
    check(rc == 0 and out.splitlines() == want_marks, f"s={s}: marks")
    long_mark = next(i for i, r in enumerate(k.record) if r[4][:1] == b"x")
    check(log.entries[long_mark].mark == b"x" * (s - 33),
          f"s={s}: long mark truncated to {s - 33} bytes")

    # Replays: every flush prefix, the whole log, and the log in two halves.
    tgt = os.path.join(tmp, f"target{s}")
    for p in want_points + [n - 1]:
        write_file(tgt, initial_device())
        rc, _, err = run_main(["replay", logp, tgt, "--end", str(p + 1)])
        want = model(k.record, 0, p + 1, initial_device())
        check(rc == 0 and read_file(tgt) == want,
              f"s={s}: replay [0, {p + 1}) matches the model {err.strip()}")
    write_file(tgt, initial_device())
    mid = want_points[1]
    rc1, _, _ = run_main(["replay", logp, tgt, "--end", str(mid)])
    rc2, _, _ = run_main(["replay", logp, tgt, "--start", str(mid)])
    check(rc1 == rc2 == 0 and
          read_file(tgt) == model(k.record, 0, n, initial_device()),
          f"s={s}: replay [0, {mid}) then [{mid}, {n}) equals the whole log")
    # The discard zeroed its range, inside data written before it.
    off = 41 * s
    check(read_file(tgt)[off:off + 4 * s] == bytes(4 * s),
          f"s={s}: discard replayed as zeroes")
    rc, _, err = run_main(["replay", logp, tgt, "--start", "3", "--end", "2"])
    check(rc == 2 and "bad range" in err, f"s={s}: bad range refused")
    return k, logp, tgt


def test_stale_super(tmp):
    """Entries after the last FUA/mark are on disk but not in nr_entries."""
    k = KernelLog(4096)
    k.write(0, payload(8, 4096), fua=True)
    k.write(8, payload(9, 8192))
    k.flush()                                   # no super update
    logp = os.path.join(tmp, "stale")
    write_file(logp, bytes(k.img))
    rc, out, _ = run_main(["list", logp])
    check(rc == 0 and out.splitlines() == ["# entries 1 sectorsize 4096",
                                           "0 FUA 0 8"],
          "only the nr_entries entries of the super are read")


def entry_offset(k, index):
    """Byte offset of entry index's header, from the simulator's record."""
    off = k.s                                   # after the super block
    for flags, _, nr512, _, _ in k.record[:index]:
        off += k.s + (0 if flags & DISCARD else nr512 * 512)
    return off


def expect_error(tmp, name, img, what, argv_extra=()):
    logp = os.path.join(tmp, name)
    write_file(logp, img)
    rc, out, err = run_main(["list", logp, *argv_extra])
    check(rc == 2 and out == "" and what in err and "Traceback" not in err,
          f"{name}: exit 2, message mentions '{what}'")
    return logp


def test_corrupt(tmp, k, logp, tgt):
    img = read_file(logp)
    s = k.s
    size = (k.next_sector * 512)                # end of the last entry
    expect_error(tmp, "trunc-data", img[:size - s - 100], "truncated")
    expect_error(tmp, "trunc-header", img[:s + 10], "at most")
    expect_error(tmp, "trunc-super", img[:10], "ends at byte 10")
    expect_error(tmp, "bad-magic", b"\0" * 8 + img[8:], "bad magic")
    expect_error(tmp, "bad-sectorsize",
                 img[:24] + struct.pack("<I", 1000) + img[28:],
                 "bad sectorsize")
    expect_error(tmp, "huge-count",
                 img[:16] + struct.pack("<Q", 1 << 62) + img[24:],
                 "claims")
    # Entry 0 header is at byte s; data_len at +24, flags at +16.
    bad = bytearray(img)
    struct.pack_into("<Q", bad, s + 8, 1 << 60)       # nr_sectors
    expect_error(tmp, "huge-nr-sectors", bytes(bad), "past the end")
    first_mark = next(i for i, r in enumerate(k.record) if r[0] & MARK)
    mark_at = entry_offset(k, first_mark)
    check(struct.unpack_from("<Q", img, mark_at + 16)[0] == MARK,
          "located the first mark's header")
    bad = bytearray(img)
    struct.pack_into("<Q", bad, mark_at + 24, s)      # data_len too big
    expect_error(tmp, "bad-mark-len", bytes(bad), "mark data_len")
    bad = bytearray(img)
    struct.pack_into("<Q", bad, s + 16, 1 << 9)       # unknown flag
    expect_error(tmp, "bad-flags", bytes(bad), "unknown flag")

    # A replay from a truncated log fails before touching the target, and the
    # real command line exits 2 with no traceback.
    trunc = os.path.join(tmp, "trunc-data")
    write_file(tgt, initial_device())
    res = subprocess.run([sys.executable, TOOL, "replay", trunc, tgt],
                         capture_output=True, text=True)
    check(res.returncode == 2 and "truncated" in res.stderr and
          "Traceback" not in res.stderr and read_file(tgt) == initial_device(),
          "CLI replay of a truncated log: exit 2, target untouched")
    res = subprocess.run([sys.executable, TOOL, "list", logp],
                         capture_output=True, text=True)
    check(res.returncode == 0 and res.stdout.splitlines() == expected_list(k),
          "CLI list exits 0 with the expected output")
    res = subprocess.run([sys.executable, TOOL, "list",
                          os.path.join(tmp, "missing")],
                         capture_output=True, text=True)
    check(res.returncode == 1 and "Traceback" not in res.stderr,
          "CLI on a missing log: exit 1, no traceback")


def test_crash_states(tmp, s):
    """Groups and crash states against the simulator's own record of each flush's group."""
    k = KernelLog(s)
    b = s // 512
    k.write(0, payload(1, s))
    k.flush()                                   # a group of one
    k.mark("m1")
    k.write(8 * b, payload(2, 3 * s))
    k.write(2 * b, payload(3, s), fua=True)     # logged at once, before the group
    k.write(16 * b, payload(4, 2 * s), meta=True)
    k.discard(9 * b, b)
    k.write(20 * b, payload(5, 4 * s))
    k.flush()                                   # a group of four, a FUA write before it
    k.flush()                                   # an empty group
    k.write(30 * b, payload(6, s))
    k.write(31 * b, payload(7, s), fua=True, preflush=True)  # a PREFLUSH write: FLUSH|FUA
    k.remove()
    logp = os.path.join(tmp, f"crash{s}")
    write_file(logp, bytes(k.img))
    log = logreplay.read_log(logp)
    for start, f in k.groups:
        check(logreplay.group_start(log, f) == start and
              logreplay.crash_candidates(log, f) == (start, f),
              f"s={s}: FLUSH entry {f}: its group is [{start}, {f})")
    fua = next(i for i, r in enumerate(k.record) if r[0] == FUA)
    check(logreplay.crash_candidates(log, fua) == (fua, fua + 1),
          f"s={s}: FUA entry {fua}: only the write itself may be dropped or torn")
    mark = next(i for i, r in enumerate(k.record) if r[0] & MARK)
    check(logreplay.crash_candidates(log, mark) == (mark + 1, mark + 1),
          f"s={s}: a mark has nothing to drop")

    big = max(k.groups, key=lambda g: g[1] - g[0])
    f = big[1]
    states = logreplay.crash_states(log, f, random.Random(3), 40)
    again = logreplay.crash_states(log, f, random.Random(3), 40)
    keys = [st.parts for st in states]
    check(states == again, f"s={s}: crash states are repeatable from the seed")
    check(len(states) == 40 and len(set(keys)) == len(keys) and states[0].parts == (),
          f"s={s}: {len(states)} distinct states, the first with the whole group dropped")
    whole = tuple((i, None) for i in range(big[0], f))
    check(whole not in keys, f"s={s}: the whole group kept is not among them (it is the point)")
    torn = 0
    ok_parts = True
    for st in states:
        idx = [i for i, _ in st.parts]
        ok_parts &= st.base == big[0] and idx == sorted(idx) and all(big[0] <= i < f for i in idx)
        for i, kept in st.parts:
            if kept is None:
                continue
            torn += 1
            e = log.entries[i]
            units = [u for a, n in kept for u in range(a, a + n)]
            ok_parts &= (e.has_data and 0 < len(units) < e.nr_sectors and
                         len(set(units)) == len(units) and max(units) < e.nr_sectors)
    check(ok_parts, f"s={s}: every state keeps a subset of the group, in log order, "
                    f"torn writes ({torn}) a proper part of their sectors")
    small = logreplay.crash_states(log, k.groups[0][1], random.Random(1), 10)
    check(len(small) == 1 and small[0].parts == (),
          f"s={s}: a group of one one-block write has one state (dropped)")
    # Applying a state: [0, base) whole, then the parts, equals the model.
    tgt = os.path.join(tmp, f"crash-target{s}")
    for st in states[:12]:
        write_file(tgt, initial_device())
        logreplay.replay(log, tgt, 0, st.base)
        logreplay.apply_state(log, tgt, st)
        want = model(k.record, 0, st.base, initial_device())
        for i, kept in st.parts:
            flags, sector, nr, data, _ = k.record[i]
            if kept is None:
                model(k.record, i, i + 1, want)
            else:
                for a, n in kept:
                    off = sector * 512 + a * s
                    want[off:off + n * s] = data[a * s:(a + n) * s]
        if read_file(tgt) != want:
            check(False, f"s={s}: state {st.describe(log)} applied as the model says")
            break
    else:
        check(True, f"s={s}: 12 states applied exactly as the model says")
    rc, out, _ = run_main(["states", logp, str(f), "--count", "5", "--seed", "3"])
    check(rc == 0 and out.splitlines() == [st.describe(log) for st in states[:5]],
          f"s={s}: CLI states prints them")
    rc, _, err = run_main(["states", logp, str(len(k.record) + 5)])
    check(rc == 2 and "no entry" in err, f"s={s}: CLI states of an entry past the end: exit 2")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        try:
            test_sectorsize(tmp, 512)
            k, logp, tgt = test_sectorsize(tmp, 4096)
            test_stale_super(tmp)
            test_corrupt(tmp, k, logp, tgt)
            test_crash_states(tmp, 512)
            test_crash_states(tmp, 4096)
        except Exception:                       # a bug in the tool or test
            traceback.print_exc()
            check(False, "no unexpected exception")
    # .ci/run counts a line "<name> self-test: ok".
    print("logreplay self-test: ok" if not failures else f"logreplay self-test: FAILED ({failures} failure(s))")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
