#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Reads and replays a log written by the dm-log-writes target (Linux 6.12).

    logreplay.py list   LOG                      every entry, one per line
    logreplay.py points LOG                      indices of FLUSH/FUA entries
    logreplay.py marks  LOG                      "<index> <text>" for each mark
    logreplay.py replay LOG TARGET [--start A] [--end B]
                                                 apply entries [A, B) to TARGET
    logreplay.py states LOG POINT [--count N] [--seed S]
                                                 crash states just before POINT
                                                 completes (see crash_states)

LOG is the log device or an image of it; TARGET is a regular file or a block
device.  A stand-in for xfstests' src/log-writes/replay-log, written from the
on-disk format of drivers/md/dm-log-writes.c.  Python 3.11 stdlib only.

On-disk format (all integers little-endian; S = the log's "sectorsize", which
the kernel sets to the logical block size of the *data* device, 512 or 4096):

  byte 0      super block, one S-byte block:
                u64 magic      0x6a736677736872 ("rhswfsj" read as LE bytes)
                u64 version    1
                u64 nr_entries number of entries logged when the super was
                               last written (see "nr_entries" below)
                u32 sectorsize S
              then 4 bytes of C struct padding (not initialised by the
              kernel, ignored here) and zeroes up to S bytes.
  byte S      entry 0, then entry 1, ... each laid out as:
                one S-byte header block:
                  u64 sector      first sector written, in units of S bytes
                  u64 nr_sectors  length, in units of S bytes
                  u64 flags       FLUSH=1 FUA=2 DISCARD=4 MARK=8 METADATA=16
                  u64 data_len    bytes of mark text (MARK entries), else 0
                  [mark text, data_len bytes, no NUL, at most S-33 bytes]
                  zeroes up to S bytes
                then, unless DISCARD, nr_sectors*S bytes of written data.
              A DISCARD entry has a range but no data in the log; a plain
              FLUSH or a MARK has nr_sectors == 0 and no data.

Units: the kernel converts the bio's 512-byte sectors to S-byte units before
logging (bio_to_dev_sectors: >> (log2(S) - 9)), so the entry's sector and
nr_sectors must be multiplied by S/512 to get 512-byte device sectors.  This
tool prints and replays in 512-byte sectors: data goes to byte offset
sector512 * 512 == entry.sector * S.

nr_entries: the kernel rewrites the super only after logging a FUA or a MARK
entry (and a final "dm-log-writes-end" mark when the target is removed), so
entries logged after the last FUA/mark may be on disk but are not counted;
like replay-log, this tool reads exactly nr_entries entries.

Crash states (the "states" command, crash_states()): what the log knows of durability.
dm-log-writes puts a write without FLUSH/FUA on its "unflushed" list when the write
*completes* (normal_end_io), in completion order.  A FLUSH bio takes that whole list when it
is *mapped* (issued); when the flush completes, the list is logged and then the FLUSH entry.
FUA writes are logged on their own when they complete, marks when they are received.  So:

  - plain writes are logged as the *group* right before the FLUSH entry that took them (or,
    when the target is removed, the ones still unflushed right before the final mark): the
    run of plain entries directly before a FLUSH entry is exactly that flush's group, the
    writes that completed after the previous flush was issued and before this one was.  None
    of them was covered by an earlier flush; all of them are by this one;
  - every entry logged before a flush's group is durable when that flush completes: earlier
    groups (their flushes completed first, being logged first) and FUA writes (completed).

A crash just before FLUSH entry F completes leaves every entry before F's group, plus any
subset of the group, each write whole, absent or torn (a device may persist unflushed writes
in any order, and any subset of a write's sectors); F's own data, if any (a PREFLUSH write
logged as one entry), absent: it is written after its preflush.  A crash just before a FUA
write completes leaves every entry before it, and that write whole, absent or torn.  Writes
that completed after F was issued are logged after F: not durable either, but the log cannot
say which of them had been *issued* before the crash, so no state includes them (leaving an
in-flight write out is always a possible state).
The one assumption: flushes complete in the order they were issued.  If a flush issued later
completed first, the earlier one's group is logged after it, and a state that drops a write of
that group drops a write the later flush had made durable.

Exit status: 0 on success; 2 if the log is truncated or corrupt (or for a bad
command line or entry range); 1 for an I/O error on the log or the target, or
a block-device target too small for the entries replayed.
"""
import argparse
import fcntl
import os
import random
import stat
import struct
import sys
from dataclasses import dataclass

WRITE_LOG_MAGIC = 0x6A736677736872
WRITE_LOG_VERSION = 1

LOG_FLUSH_FLAG = 1 << 0
LOG_FUA_FLAG = 1 << 1
LOG_DISCARD_FLAG = 1 << 2
LOG_MARK_FLAG = 1 << 3
LOG_METADATA_FLAG = 1 << 4
KNOWN_FLAGS = (LOG_FLUSH_FLAG | LOG_FUA_FLAG | LOG_DISCARD_FLAG |
               LOG_MARK_FLAG | LOG_METADATA_FLAG)
# Print order of the flag names in "list".
FLAG_NAMES = ((LOG_FLUSH_FLAG, "FLUSH"), (LOG_FUA_FLAG, "FUA"),
              (LOG_DISCARD_FLAG, "DISCARD"), (LOG_MARK_FLAG, "MARK"),
              (LOG_METADATA_FLAG, "META"))

# struct log_write_super: three __le64 and one __le32.  The C struct is 32
# bytes (4 bytes of tail padding); only the first 28 carry meaning.
SUPER = struct.Struct("<QQQI")
# struct log_write_entry: four __le64, 32 bytes, at the start of its block.
ENTRY = struct.Struct("<QQQQ")

SECTOR_SIZE = 512           # the kernel's SECTOR_SIZE: bio sectors
MAX_SECTORSIZE = 65536      # the kernel uses one page for a header block
CHUNK = 1 << 20             # copy/zero in pieces of at most 1 MiB

BLKZEROOUT = 0x127F         # _IO(0x12, 127): zero a byte range of a bdev


class LogError(Exception):
    """The log is truncated, corrupt, or not a dm-log-writes log."""


class ReplayError(Exception):
    """The log cannot be applied to this target (e.g. it is too small)."""


@dataclass(frozen=True)
class Entry:
    index: int
    flags: int
    sector: int         # in units of the log's sectorsize (as on disk)
    nr_sectors: int     # in units of the log's sectorsize (as on disk)
    data_len: int
    mark: bytes         # mark text (MARK entries), else b""
    data_offset: int    # byte offset in the log of the data (if any)
    sectorsize: int

    @property
    def sector512(self):
        """First sector in 512-byte device sectors."""
        return self.sector * (self.sectorsize // SECTOR_SIZE)

    @property
    def nr_sectors512(self):
        """Length in 512-byte device sectors."""
        return self.nr_sectors * (self.sectorsize // SECTOR_SIZE)

    @property
    def has_data(self):
        """True if the entry carries nr_sectors of data in the log."""
        return self.nr_sectors > 0 and not self.flags & LOG_DISCARD_FLAG


@dataclass(frozen=True)
class Log:
    path: str
    size: int           # bytes in the log device/image
    sectorsize: int
    nr_entries: int
    entries: list


def _pread_exact(fd, length, offset, what):
    """Reads exactly length bytes at offset, or raises LogError."""
    buf = bytearray()
    while len(buf) < length:
        chunk = os.pread(fd, length - len(buf), offset + len(buf))
        if not chunk:
            raise LogError(f"{what}: log ends at byte {offset + len(buf)}, "
                           f"expected {length} bytes at byte {offset}")
        buf += chunk
    return bytes(buf)


def flag_string(flags):
    """FLUSH|FUA|... for the flags set, or "-" when none is."""
    names = [name for bit, name in FLAG_NAMES if flags & bit]
    return "|".join(names) if names else "-"


def mark_text(raw):
    """Mark bytes as one printable line (escapes non-printables)."""
    text = raw.decode("utf-8", errors="backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def parse_log(fd, path="<log>"):
    """Reads the super and every entry header from an open log; returns a Log.

    Only headers and mark text are read, data is located but not loaded.
    Every length is checked against the size of the log, so a truncated or
    corrupt log raises LogError before anything is printed or replayed.
    """
    size = os.lseek(fd, 0, os.SEEK_END)     # also right for block devices
    raw = _pread_exact(fd, SUPER.size, 0, "super block")
    magic, version, nr_entries, sectorsize = SUPER.unpack(raw)
    if magic != WRITE_LOG_MAGIC:
        raise LogError(f"bad magic {magic:#x} (expected {WRITE_LOG_MAGIC:#x}):"
                       " not a dm-log-writes log, or no FUA/mark logged yet")
    if version != WRITE_LOG_VERSION:
        raise LogError(f"unsupported log version {version}")
    # The kernel's sectorsize is a logical block size: a power of two >= 512.
    if (sectorsize < SECTOR_SIZE or sectorsize > MAX_SECTORSIZE or
            sectorsize & (sectorsize - 1)):
        raise LogError(f"bad sectorsize {sectorsize} in super block")
    if size < sectorsize:
        raise LogError(f"log is {size} bytes, shorter than its super block "
                       f"({sectorsize} bytes)")
    # Each entry takes at least one sectorsize block after the super one;
    # refuse a count that cannot fit before walking it.
    if nr_entries > (size - sectorsize) // sectorsize:
        raise LogError(f"super block claims {nr_entries} entries, but a log "
                       f"of {size} bytes holds at most "
                       f"{(size - sectorsize) // sectorsize}")

    entries = []
    pos = sectorsize            # entry 0 follows the super block
    for index in range(nr_entries):
        where = f"entry {index} at byte {pos}"
        if pos + sectorsize > size:
            raise LogError(f"{where}: header block runs past the end of the "
                           f"log ({size} bytes): log truncated")
        header = _pread_exact(fd, sectorsize, pos, where)
        sector, nr_sectors, flags, data_len = ENTRY.unpack_from(header)
        if flags & ~KNOWN_FLAGS:
            raise LogError(f"{where}: unknown flag bits {flags:#x}")
        mark = b""
        if flags & LOG_MARK_FLAG:
            # Mark text sits in the header block right after the 32-byte
            # header; the kernel caps it at sectorsize - 33 (kstrndup to
            # maxsize - 1) and stores strlen() bytes, no NUL.
            if data_len > sectorsize - ENTRY.size - 1:
                raise LogError(f"{where}: mark data_len {data_len} does not "
                               f"fit in a {sectorsize}-byte header block")
            if nr_sectors != 0:
                raise LogError(f"{where}: mark with nr_sectors {nr_sectors}")
            mark = header[ENTRY.size:ENTRY.size + data_len]
        elif data_len != 0:
            # Only marks carry private data in 6.12; the older inline-data
            # path (DAX logging) is not produced any more.
            raise LogError(f"{where}: non-mark entry with data_len "
                           f"{data_len} (unsupported inline data)")
        data_offset = pos + sectorsize
        # The kernel's next_sector arithmetic: the header block, then
        # nr_sectors blocks of data except for discards (no data logged).
        span = 0 if flags & LOG_DISCARD_FLAG else nr_sectors * sectorsize
        if data_offset + span > size:
            raise LogError(f"{where}: {nr_sectors} sectors of data run past "
                           f"the end of the log ({size} bytes): "
                           "log truncated")
        entries.append(Entry(index, flags, sector, nr_sectors, data_len,
                             mark, data_offset, sectorsize))
        pos = data_offset + span
    return Log(path, size, sectorsize, nr_entries, entries)


def read_log(path):
    """Opens and parses the log at path (file or block device)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return parse_log(fd, path)
    finally:
        os.close(fd)


def list_lines(log):
    """The output of "list", as a list of lines."""
    lines = [f"# entries {log.nr_entries} sectorsize {log.sectorsize}"]
    for e in log.entries:
        line = (f"{e.index} {flag_string(e.flags)} {e.sector512} "
                f"{e.nr_sectors512}")
        if e.flags & LOG_MARK_FLAG:
            line += " " + mark_text(e.mark)
        lines.append(line)
    return lines


def flush_points(log):
    """Indices of FLUSH/FUA entries: replaying [0, i + 1) ends on a flush."""
    return [e.index for e in log.entries
            if e.flags & (LOG_FLUSH_FLAG | LOG_FUA_FLAG)]


def marks(log):
    """(index, mark bytes) for every MARK entry."""
    return [(e.index, e.mark) for e in log.entries if e.flags & LOG_MARK_FLAG]


def group_start(log, point):
    """First index of the group of FLUSH entry point (point itself if it has none).

    The group is the run of plain entries (writes and discards, no FLUSH, FUA or MARK) logged
    directly before the FLUSH entry: the writes it took from the unflushed list when issued.
    """
    i = point
    while i > 0 and not log.entries[i - 1].flags & (LOG_FLUSH_FLAG | LOG_FUA_FLAG |
                                                    LOG_MARK_FLAG):
        i -= 1
    return i


@dataclass(frozen=True)
class CrashState:
    """A device state a crash just before entry `point` completed may leave.

    Entries [0, base) are whole; then `parts`, in log order: (entry index, kept), kept None for
    the whole entry or a tuple of (first unit, units) ranges of it (a torn write; units of the
    log's sectorsize).  Entries of the group (or the FUA write) not in parts are absent.
    """
    point: int
    base: int
    parts: tuple

    def describe(self, log):
        """One line: which entries are kept, torn or dropped."""
        cands = range(self.base, crash_candidates(log, self.point)[1])
        kept = {i: k for i, k in self.parts}
        words = []
        for i in cands:
            if i not in kept:
                words.append(f"{i}:dropped")
            elif kept[i] is None:
                words.append(f"{i}:kept")
            else:
                units = ",".join(f"{a}+{n}" for a, n in kept[i])
                words.append(f"{i}:torn[{units}]")
        return (f"crash before entry {self.point} completes: entries [0, {self.base}) "
                "then " + (" ".join(words) if words else "nothing"))


def crash_candidates(log, point):
    """(base, end): a crash just before entry point completes keeps [0, base) whole, and any
    subset of [base, end) whole, absent or torn (see "Crash states" above)."""
    e = log.entries[point]
    if e.flags & LOG_FLUSH_FLAG:
        return group_start(log, point), point
    if e.flags & LOG_FUA_FLAG and e.has_data:
        return point, point + 1
    return point + 1, point + 1


def _units(e):
    """Units (log sectors) of data an entry writes; 0 for discards and entries without data."""
    return e.nr_sectors if e.has_data else 0


def _tear(rng, n):
    """A random proper, non-empty subset of n >= 2 units, as (first, count) ranges."""
    while True:
        keep = [rng.random() < 0.5 for _ in range(n)]
        if any(keep) and not all(keep):
            break
    ranges, i = [], 0
    while i < n:
        if keep[i]:
            j = i
            while j < n and keep[j]:
                j += 1
            ranges.append((i, j - i))
            i = j
        else:
            i += 1
    return tuple(ranges)


def crash_states(log, point, rng, count):
    """Up to count distinct crash states just before entry point completes (see above).

    The first is "every candidate absent"; the others draw each candidate kept, absent or
    torn (a write of two units or more) at random.  The state with every candidate kept whole
    is left out: it is the replay to point itself (point + 1 for a FUA write).  Fewer than
    count when there are not that many (a group of one 1-unit write has one).
    """
    base, end = crash_candidates(log, point)
    cands = list(range(base, end))
    if not cands or count <= 0:
        return []
    states, seen = [], set()

    def add(parts):
        key = tuple(parts)
        if key in seen or all(k is None for _, k in key) and len(key) == len(cands):
            return
        seen.add(key)
        states.append(CrashState(point, base, key))

    add([])
    # Distinct states: 3^k - 1 at most when every candidate can tear (2^k - 1 when none can).
    limit = 1
    for i in cands:
        limit *= 3 if _units(log.entries[i]) >= 2 else 2
    tries = 0
    while len(states) < min(count, limit - 1) and tries < 50 * count:
        tries += 1
        parts = []
        for i in cands:
            r = rng.random()
            n = _units(log.entries[i])
            if r < 1 / 3:
                parts.append((i, None))
            elif r < 2 / 3 and n >= 2:
                parts.append((i, _tear(rng, n)))
        add(parts)
    return states


def _pwrite_all(fd, data, offset):
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(f"short write at byte {offset}")
        view = view[n:]
        offset += n


def _zero_range(fd, offset, length):
    """Zeroes [offset, offset + length) of the target (replays a discard).

    A discard's contents are undefined afterwards; zeroes are the
    deterministic choice, and what a device that zeroes discards shows.
    On a block device the kernel zeroes the range (BLKZEROOUT); on a regular
    file only the part before end of file is written, since there is nothing
    to discard past it.
    """
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        try:
            fcntl.ioctl(fd, BLKZEROOUT, struct.pack("=QQ", offset, length))
            return
        except OSError:
            pass                # fall back to writing zeroes
    elif stat.S_ISREG(st.st_mode):
        length = max(0, min(length, st.st_size - offset))
    zeroes = bytes(min(length, CHUNK))
    while length:
        n = min(length, CHUNK)
        _pwrite_all(fd, zeroes[:n], offset)
        offset += n
        length -= n


def replay(log, target, start, end):
    """Applies entries [start, end) of log to the path target, in log order.

    Writes put the logged data at byte sector512 * 512; discards zero their
    range; FLUSH/FUA/MARK entries without data change nothing.  The target is
    fsync()ed at the end.
    """
    if not 0 <= start <= end <= log.nr_entries:
        raise ValueError(f"bad range [{start}, {end}): the log has "
                         f"{log.nr_entries} entries")
    logfd = os.open(log.path, os.O_RDONLY)
    try:
        tfd = os.open(target, os.O_RDWR)
        try:
            st = os.fstat(tfd)
            if stat.S_ISBLK(st.st_mode):
                # A block device cannot grow: check every range first so
                # that nothing is written if one of them does not fit.
                dev_size = os.lseek(tfd, 0, os.SEEK_END)
                for e in log.entries[start:end]:
                    last = (e.sector512 + e.nr_sectors512) * SECTOR_SIZE
                    if last > dev_size:
                        raise ReplayError(
                            f"entry {e.index} reaches byte {last}, past the "
                            f"end of {target} ({dev_size} bytes)")
            for e in log.entries[start:end]:
                _apply_entry(logfd, tfd, e)
            os.fsync(tfd)
        finally:
            os.close(tfd)
    finally:
        os.close(logfd)


def _apply_entry(logfd, tfd, e, kept=None):
    """Writes entry e to the target (a discard zeroes its range); with kept, only those
    (first unit, units) ranges of its data (a torn write)."""
    offset = e.sector512 * SECTOR_SIZE
    length = e.nr_sectors512 * SECTOR_SIZE
    if e.flags & LOG_DISCARD_FLAG:
        _zero_range(tfd, offset, length)
        return
    if not e.has_data:
        return
    for first, units in kept if kept is not None else ((0, e.nr_sectors),):
        start, span = first * e.sectorsize, units * e.sectorsize
        done = 0
        while done < span:
            n = min(CHUNK, span - done)
            buf = _pread_exact(logfd, n, e.data_offset + start + done,
                               f"entry {e.index} data")
            _pwrite_all(tfd, buf, offset + start + done)
            done += n


def apply_state(log, target, state):
    """Applies a CrashState's parts to target, which must already hold [0, state.base)."""
    logfd = os.open(log.path, os.O_RDONLY)
    try:
        tfd = os.open(target, os.O_RDWR)
        try:
            for i, kept in state.parts:
                _apply_entry(logfd, tfd, log.entries[i], kept)
            os.fsync(tfd)
        finally:
            os.close(tfd)
    finally:
        os.close(logfd)


def read_entry_data(log, e, fd=None):
    """The data an entry wrote (b"" for entries without data)."""
    if not e.has_data:
        return b""
    own = fd is None
    if own:
        fd = os.open(log.path, os.O_RDONLY)
    try:
        return _pread_exact(fd, e.nr_sectors * e.sectorsize, e.data_offset,
                            f"entry {e.index} data")
    finally:
        if own:
            os.close(fd)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="logreplay.py",
        description="List and replay a dm-log-writes log.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, text in (("list", "list every entry (sectors in 512 B units)"),
                       ("points", "indices of FLUSH/FUA entries"),
                       ("marks", "index and text of every mark")):
        sub.add_parser(name, help=text).add_argument("log")
    rp = sub.add_parser("replay", help="apply entries [start, end) to TARGET")
    rp.add_argument("log")
    rp.add_argument("target")
    rp.add_argument("--start", type=int, default=0,
                    help="first entry to apply (default 0)")
    rp.add_argument("--end", type=int, default=None,
                    help="entry to stop before (default: all entries)")
    sp = sub.add_parser("states", help="crash states just before entry POINT "
                        "completes, one per line")
    sp.add_argument("log")
    sp.add_argument("point", type=int)
    sp.add_argument("--count", type=int, default=8)
    sp.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    try:
        log = read_log(args.log)
        if args.cmd == "list":
            out = list_lines(log)
        elif args.cmd == "points":
            out = [str(i) for i in flush_points(log)]
        elif args.cmd == "marks":
            out = [f"{i} {mark_text(m)}" for i, m in marks(log)]
        elif args.cmd == "states":
            if not 0 <= args.point < log.nr_entries:
                print(f"logreplay: no entry {args.point}: the log has "
                      f"{log.nr_entries} entries", file=sys.stderr)
                return 2
            out = [st.describe(log) for st in
                   crash_states(log, args.point, random.Random(args.seed),
                                args.count)]
        else:
            end = log.nr_entries if args.end is None else args.end
            if not 0 <= args.start <= end <= log.nr_entries:
                print(f"logreplay: bad range [{args.start}, {end}): the log "
                      f"has {log.nr_entries} entries", file=sys.stderr)
                return 2
            replay(log, args.target, args.start, end)
            out = []
    except LogError as err:
        print(f"logreplay: {args.log}: {err}", file=sys.stderr)
        return 2
    except (OSError, ReplayError) as err:
        print(f"logreplay: {err}", file=sys.stderr)
        return 1
    if out:
        try:
            print("\n".join(out))
            sys.stdout.flush()
        except BrokenPipeError:         # e.g. "logreplay.py list LOG | head"
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
