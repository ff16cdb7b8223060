#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Structure-aware fuzzing of dm-repl's wire protocol (issue 14), both receive paths.

    wirefuzz.py secondary CONFIG.json --cases N --seed S
        A stand-in primary against real secondaries (the targets of CONFIG): one TCP connection
        per case, the handshake (with the HMAC proofs and per-direction session keys when the
        target has a key), a prefix of valid frames, then one fuzzed frame.
    wirefuzz.py primary CONFIG.json --cases N --seed S [--ready FILE]
        A stand-in secondary for real primaries: listens on every target's port (FILE is created
        once it does), and for each connection of a primary runs one case: a fuzzed HELLO or AUTH,
        or a session in which the primary's frames (its resync, a write, a marker) are
        acknowledged in part and then one fuzzed frame is sent.
    wirefuzz.py self-test
        The oracle's own test, on the host (make host-test): the same fuzzers against stand-ins
        that behave as the model says (no failure may be reported) and against broken ones (a peer
        that accepts everything, one that acknowledges the bad frame, one whose refused frames'
        data reaches its disk, one that logs another reason, one that counts a refused ACK): each
        must be reported, every bad frame of the accept-everything peer individually.

Every frame is built field by field with a valid CRC-32C (and a valid MAC under the session key
of its direction when the link is authenticated), except where the CRC or MAC is the field being
fuzzed, so that it reaches the decoders and state machines behind them. The verdict for each
frame (accepted, or refused with the exact kernel-log reason) comes from a model of docs/repl.md
written here (`*_verdict`), mirroring the order in which dm-repl checks a frame: header (magic,
version, type, flags, length), CRC, MAC, sequence number, then the payload's fields and whether
the frame is allowed at that point. A case passes when dm-repl does exactly that:
  - a refused frame: the connection is closed within the phase's timeout, nothing acknowledges
    the frame (no ACK at all reaches a stand-in primary after it; a primary's counters do not
    move), and the kernel log names this connection (its port) and the predicted reason;
  - an accepted frame: it is acknowledged (with the predicted ACK_MARKER_IGNORED flag and
    durable epoch), and the session goes on until our CLOSE ("closed by the peer"/"closed the
    session" in the log);
  - at the end (and every 100 cases) each target's status equals the model's counters, and a
    secondary's whole data device equals the model's image: every accepted write in stream
    order, zeroes elsewhere. Refused write frames carry data tagged WIREFUZZ-REFUSED, aimed at a
    zone of the device that no valid write covers (or beyond the device), so any of it on the
    disk is reported with its case.
The seed is printed: the same seed, case count and targets give the same cases in the same order.
"""
import argparse
import collections
import errno
import json
import mmap
import os
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from replwire import (  # noqa: E402
    ACK, ACK_MARKER_IGNORED, AUTH, BARRIER, BARRIER_FLUSH, BARRIER_RESYNC_DONE, CLOSE, FLAG_MASK, HDR, HELLO,
    HELLO_AUTH, HELLO_INCONSISTENT, LABEL_LEN, LEN_RANGE, MAC_LEN, MAGIC, MARKER, MAX_DATA, MAX_PAYLOAD, NAMES,
    PING, PONG, RESYNC, ROLE_PRIMARY, ROLE_SECONDARY, VERSION, WRITE, WRITE_FIXED, WRITE_FUA, Closed, Timeout,
    check, crc32c, crc32c_combine, fields, frame, header, hello_payload, hmac256, label_ok, label_word,
    marker_payload, marker_record, parse_hello, parse_record, proof, read_frame, seal, session_keys, shift_by,
    write_fixed)

U64 = 2**64 - 1
# The kernel's texts (rust/core/src/wire.rs WireError::as_str, rust/repl/link.rs LinkError).
R_MAGIC = "bad magic"
R_VERSION = "unsupported protocol version (this node speaks protocol 2: run the same wbrepl release on both nodes)"
R_TYPE = "unknown frame type"
R_FLAGS = "unknown flags"
R_LEN = "payload length not allowed for the frame type"
R_CRC = "CRC-32C mismatch"
R_MAC = "MAC mismatch"
R_SEQ = "unexpected sequence number (replayed or lost frame)"
R_FIELD = "payload field out of range"
R_ROLE = "peer role is not the complement of ours"
R_AUTHMIS = "authentication required by one side only"
R_AUTH = "authentication failed"
R_SMALL = "secondary device smaller than the primary's"
R_RESET = "socket error -104"
R_TIMEDOUT = "socket error -110"
R_CLOSED = "closed by the peer"


def R_UNEXP(ty):
    return "unexpected frame type %d" % ty


# Receive buffers: a primary reads every frame into 64 bytes, a handshake's AUTH into 32.
PRIMARY_RX_BUF = 64
# Timeouts of dm-repl (docs/repl.md): a drop after these may be the timeout, not the frame.
HANDSHAKE_S = 5.0
SECONDARY_DEAD_S = 15.0
# A secondary serving a session that sent nothing for this long sends a PONG (keepalive); the
# model accepts one from a secondary that is not frozen only after this much silence, less the
# slack (gaps are measured when frames are *read*: the previous frame may have been read late,
# together with the PONG). The slack scales with WBREPL_TIME_SCALE; from a scale of 4 on it
# covers the whole 2 s and the check cannot fire (on the debug kernel, scale 10, a PONG was read
# 0.00 s after a queued frame the fuzzer read late).
KEEPALIVE_S = 2.0
KEEPALIVE_SLACK_S = 0.5
PRIMARY_DEAD_S = 12.0
# Kernel-log rate limit of a secondary (10 lines per 5 s): we keep to at most LOG_LINES lines in
# any LOG_WINDOW seconds per target, so that every line of ours is logged.
LOG_LINES = 9
LOG_WINDOW = 6.5


class Fail(Exception):
    """A case failed (the message says how)."""


# --- the kernel log --------------------------------------------------------------------------

class Log:
    """Kernel log lines as they arrive, for each case to find its own (they name its port)."""

    def __init__(self):
        self.lines = []
        self.cv = threading.Condition()

    def add(self, text):
        with self.cv:
            self.lines.append(text)
            self.cv.notify_all()

    def mark(self):
        with self.cv:
            return len(self.lines)

    def wait(self, regex, start, timeout):
        """The first match of regex in a line from index start on, waiting up to timeout s."""
        end = time.monotonic() + timeout
        i = start
        with self.cv:
            while True:
                while i < len(self.lines):
                    m = regex.search(self.lines[i])
                    if m:
                        return m
                    i += 1
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cv.wait(left)

    def grep(self, regex, start=0):
        with self.cv:
            return [x for x in self.lines[start:] if regex.search(x)]


class Line:
    """Finds a kernel-log line "...<head><rest><tail>" and gives rest as group(1): a regular
    expression's interface without compiling one per case (slow in Python under TCG)."""

    def __init__(self, head, tail=""):
        self.head, self.tail = head, tail

    def search(self, line):
        i = line.find(self.head)
        if i < 0 or not line.endswith(self.tail):
            return None
        rest = line[i + len(self.head):len(line) - len(self.tail)]
        return type("Match", (), {"group": lambda _self, k=1: rest})()


def kmsg_reader(path, log):
    """Reads /dev/kmsg from its end in a thread; each record's text goes to log."""
    fd = os.open(path, os.O_RDONLY)
    os.lseek(fd, 0, os.SEEK_END)

    def run():
        while True:
            try:
                rec = os.read(fd, 8192)
            except OSError as e:
                if e.errno == errno.EPIPE:  # records overwritten before we read them
                    log.add("wirefuzz: kernel log records lost")
                    continue
                raise
            text = rec.decode("utf-8", "replace")
            log.add(text.split(";", 1)[1].split("\n", 1)[0] if ";" in text else text)
    threading.Thread(target=run, daemon=True).start()


def parse_status(line):
    """A dm-repl status line as a dict: role, state, then its key/value pairs."""
    t = line.split()
    i = t.index("repl")
    d = {"role": t[i + 1], "state": t[i + 2]}
    rest = t[i + 3:]
    for k, v in zip(rest[::2], rest[1::2]):
        d[k] = v
    return d


class RealEnv:
    """dm-repl in this kernel: sockets, /dev/kmsg, dmsetup, the data devices."""
    sim = False
    scale = 1.0

    def __init__(self, kmsg="/dev/kmsg"):
        self.log = Log()
        kmsg_reader(kmsg, self.log)

    def status(self, name):
        r = subprocess.run(["dmsetup", "status", name], capture_output=True, text=True)
        if r.returncode != 0:
            raise Fail("dmsetup status %s: %s" % (name, r.stderr.strip()))
        return parse_status(r.stdout)

    def message(self, name, *words):
        r = subprocess.run(["dmsetup", "message", name, "0", *words], capture_output=True, text=True)
        return r.returncode, (r.stdout + r.stderr).strip()

    def read_device(self, path, size):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        out = bytearray()
        buf = mmap.mmap(-1, 1 << 20)
        try:
            while len(out) < size:
                n = os.preadv(fd, [buf], len(out))
                if n <= 0:
                    break
                out += buf[:min(n, size - len(out))]
        finally:
            os.close(fd)
            buf.close()
        return bytes(out)

    def pwrite(self, t, offset, data):
        """An O_DIRECT write to target t's device; returns None or the error's text."""
        path = t.device
        buf = mmap.mmap(-1, len(data))
        buf.write(data)
        # (The primary may connect, and so a case begin, before its device node exists.)
        for _ in range(200):
            if os.path.exists(path):
                break
            time.sleep(0.1)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
            try:
                n = os.pwritev(fd, [buf], offset)
            finally:
                os.close(fd)
            return None if n == len(data) else "short write (%d)" % n
        except OSError as e:
            return "%s (errno %d)" % (e.strerror, e.errno)
        finally:
            buf.close()

    def connect(self, host, port):
        s = socket.create_connection((host, port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def listener(self, host, port):
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((host, port))
        ls.listen(4)
        return ls


def shut(s):
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


def send(s, data, scale=1.0):
    """Sends all of data; False if the peer closed meanwhile (it may refuse a frame before its
    payload). A peer that stops reading for 60 s fails the case (a frame sent in part would be
    waited for until a timeout: no refusal of ours could be told from it)."""
    s.settimeout(60 * scale)
    try:
        s.sendall(data)
        return True
    except socket.timeout:
        raise Fail("could not send a %d-byte frame within 60 s" % len(data)) from None
    except OSError:
        return False


# --- the model: what dm-repl does with a frame ---------------------------------------------

def hdr_reason(h):
    """Header::decode: why a header is refused before its payload is read, or None."""
    magic, version, ty, flags, seq, n, crc, mac = fields(h)
    if magic != MAGIC:
        return R_MAGIC
    if version != VERSION:
        return R_VERSION
    if ty not in LEN_RANGE:
        return R_TYPE
    if flags & ~FLAG_MASK.get(ty, 0):
        return R_FLAGS
    lo, hi = LEN_RANGE[ty]
    if not lo <= n <= hi or (ty in (WRITE, RESYNC) and (n - WRITE_FIXED) % 512):
        return R_LEN
    return None


def open_reason(h, p, key, seq, pcrc=None):
    """wire::open after the payload is read: CRC, MAC (zero without a key), sequence number."""
    magic, version, ty, flags, fseq, n, fcrc, mac = fields(h)
    zeroed = bytes(h[:20]) + bytes(HDR - 20)
    if n > len(p):
        return R_RESET  # (a frame sent in part: the receiver waits for the rest until we close)
    if pcrc is not None and n == len(p):
        c = crc32c_combine(crc32c(zeroed), pcrc, n)
    else:
        c = crc32c(p[:n], crc32c(zeroed))
    p = p[:n]
    if c != fcrc:
        return R_CRC
    if mac != (hmac256(key, zeroed, p) if key is not None else bytes(MAC_LEN)):
        return R_MAC
    if fseq != seq:
        return R_SEQ
    return None


def sec_hello_verdict(key, sectors, f):
    """A secondary's handling of the first frame of a connection (link::handshake):
    ('before', reason): refused before it sends its HELLO; ('after', reason): after; ('ok', None)."""
    h, p = f[:HDR], f[HDR:]
    r = hdr_reason(h)
    if r:
        return "before", r
    if h[5] != HELLO:
        return "before", R_UNEXP(h[5])
    r = open_reason(h, p, None, 0)
    if r:
        return "before", r
    role, reserved, claimed, _ = parse_hello(p)
    if role not in (ROLE_PRIMARY, ROLE_SECONDARY) or any(reserved):
        return "before", R_FIELD
    flags = fields(h)[3]
    if flags & HELLO_INCONSISTENT and role != ROLE_SECONDARY:
        return "after", R_FLAGS
    if role == ROLE_SECONDARY:
        return "after", R_ROLE
    if bool(flags & HELLO_AUTH) != (key is not None):
        return "after", R_AUTHMIS
    if sectors < claimed:
        return "after", R_SMALL
    return "ok", None


def auth_reason(key, peer_role, hp, hs, f, seq=1):
    """The handshake's AUTH step (received into 32 bytes, no MAC yet): the reason it is refused,
    or None."""
    h, p = f[:HDR], f[HDR:]
    r = hdr_reason(h)
    if r:
        return r
    if fields(h)[5] > MAC_LEN:
        return R_LEN
    r = open_reason(h, p, None, seq)
    if r:
        return r
    if h[5] != AUTH:
        return R_UNEXP(h[5])
    if p != proof(key, peer_role, hp, hs):
        return R_AUTH
    return None


def pri_hello_verdict(key, sectors, f):
    """A primary's handling of the secondary's HELLO: (reason or None, inconsistent flag)."""
    h, p = f[:HDR], f[HDR:]
    r = hdr_reason(h)
    if r:
        return r, False
    if h[5] != HELLO:
        return R_UNEXP(h[5]), False
    r = open_reason(h, p, None, 0)
    if r:
        return r, False
    role, reserved, claimed, _ = parse_hello(p)
    if role not in (ROLE_PRIMARY, ROLE_SECONDARY) or any(reserved):
        return R_FIELD, False
    flags = fields(h)[3]
    if flags & HELLO_INCONSISTENT and role != ROLE_SECONDARY:
        return R_FLAGS, False
    if role == ROLE_PRIMARY:
        return R_ROLE, False
    if bool(flags & HELLO_AUTH) != (key is not None):
        return R_AUTHMIS, False
    if claimed < sectors:
        return R_SMALL, False
    return None, bool(flags & HELLO_INCONSISTENT)


class Verdict:
    """What the receiver does with a frame: kind 'refused' (reason), 'accepted' or 'closed'."""

    def __init__(self, kind, reason=None, ty=None, p=None, flags=0, seq=None):
        self.kind, self.reason, self.ty, self.p, self.flags, self.seq = kind, reason, ty, p, flags, seq

    def __repr__(self):
        return "%s%s" % (self.kind, " (%s)" % self.reason if self.reason else "")


def sec_frame_verdict(sectors, key, expect, f, truncated=False, pcrc=None):
    """A secondary's handling of a frame in a session (secondary.rs serve/apply_write/
    apply_control) whose next expected sequence number is `expect`. `pcrc`: the CRC-32C of the
    payload, if known (the frame's CRC is then combined from it: the Python CRC is slow)."""
    h, p = f[:HDR], f[HDR:]
    r = hdr_reason(h)
    if r:
        return Verdict("refused", r)
    if truncated:
        return Verdict("refused", R_RESET)
    r = open_reason(h, p, key, expect, pcrc=pcrc)
    if r:
        return Verdict("refused", r)
    _, _, ty, flags, seq, n, _, _ = fields(h)
    if ty in (WRITE, RESYNC):
        sector = struct.unpack_from("<Q", p, 0)[0]
        if any(p[16:24]) or sector + (n - WRITE_FIXED) // 512 > sectors:
            return Verdict("refused", R_FIELD)
    elif ty == MARKER:
        if not label_ok(p[16:16 + LABEL_LEN]):
            return Verdict("refused", R_FIELD)
    elif ty == CLOSE:
        return Verdict("closed", ty=ty, seq=seq)
    elif ty not in (BARRIER, PING):
        return Verdict("refused", R_UNEXP(ty))
    return Verdict("accepted", ty=ty, p=p, flags=flags, seq=seq)


def pri_frame_verdict(st, f):
    """A primary's handling of a frame from its secondary (primary.rs run_receiver, acked). st:
    the session's model (expect, key, pushed: the highest sequence number the primary has
    pushed, marker: (seq, id) of the marker it waits for or None)."""
    h, p = f[:HDR], f[HDR:]
    r = hdr_reason(h)
    if r:
        return Verdict("refused", r)
    _, _, ty, flags, seq, n, _, _ = fields(h)
    if n > PRIMARY_RX_BUF:
        return Verdict("refused", R_LEN)
    r = open_reason(h, p, st.key, st.expect)
    if r:
        return Verdict("refused", r)
    if ty == ACK:
        s = struct.unpack_from("<Q", p, 0)[0]
        if s > st.pushed:
            return Verdict("refused", R_FIELD)
        if flags & ACK_MARKER_IGNORED and not (st.marker and st.marker[0] >= s):
            return Verdict("refused", R_FIELD)
        return Verdict("accepted", ty=ty, p=p, flags=flags, seq=seq)
    if ty == PONG:
        return Verdict("accepted", ty=ty, p=p, seq=seq)
    if ty == CLOSE:
        return Verdict("closed", ty=ty, seq=seq)
    return Verdict("refused", R_UNEXP(ty))


# --- data ------------------------------------------------------------------------------------

TAG_OK = b"WIREFUZZ-ACCEPTD"
TAG_BAD = b"WIREFUZZ-REFUSED"


# Sector fillers with their CRCs: a tagged sector is a unique 36-byte tag and one of these, so
# that its CRC is combined from the tag's and the filler's instead of computed over 512 bytes;
# the sectors between tagged ones are whole fillers.
_FILL = [random.Random("filler %d" % i).randbytes(512 - 36) for i in range(61)]
_FILL_CRC = [crc32c(b) for b in _FILL]
_FILL512 = [random.Random("sector %d" % i).randbytes(512) for i in range(61)]
_FILL512_CRC = [crc32c(b) for b in _FILL512]
_SHIFT_FILL = shift_by(512 - 36)
_SHIFT_SECTOR = shift_by(512)


def tagged(rng, tag, tidx, case, fidx, sector, n):
    """(data, its CRC-32C): n sectors, the first and every eighth starting with tag and (target,
    case, frame, sector), so that whoever finds one on a disk knows which frame put it there."""
    out = []
    c = None
    for k in range(n):
        i = rng.randrange(len(_FILL))
        if k % 8 == 0:
            head = tag + struct.pack("<IIIQ", tidx, case, fidx, (sector + k) & U64)
            out.append(head)
            out.append(_FILL[i])
            sc = _SHIFT_FILL(crc32c(head)) ^ _FILL_CRC[i]
        else:
            out.append(_FILL512[i])
            sc = _FILL512_CRC[i]
        c = sc if c is None else _SHIFT_SECTOR(c) ^ sc
    return b"".join(out), c


def write_payload(sector, epoch, data, dcrc, reserved=bytes(8)):
    """A write's payload and its CRC-32C, from its data's."""
    fixed = write_fixed(sector, epoch, reserved)
    return fixed + data, crc32c_combine(crc32c(fixed), dcrc, len(data))


def describe(sector_bytes):
    if sector_bytes[:16] in (TAG_OK, TAG_BAD):
        t, c, f, s = struct.unpack_from("<IIIQ", sector_bytes, 16)
        kind = "accepted" if sector_bytes[:16] == TAG_OK else "REFUSED"
        return "data of an %s frame (target %d, case %d, frame %d, sector %d)" % (kind, t, c, f, s)
    if not any(sector_bytes):
        return "zeroes"
    if parse_record(sector_bytes):
        return "a marker record"
    return "other data (%s...)" % sector_bytes[:16].hex()


def nsectors(rng):
    """Sectors of a write: mostly small (the CRC in Python is slow), sometimes up to the 1 MiB
    limit (more than 32 take the secondary's large receive buffers)."""
    r = rng.random()
    if r < 0.45:
        return 1
    if r < 0.8:
        return rng.randint(2, 8)
    if r < 0.95:
        return rng.randint(9, 32)
    if r < 0.99:
        return rng.randint(33, 256)
    if r < 0.998:
        return rng.randint(257, 1024)
    return 2048


def epoch_value(rng, cur):
    return rng.choice([cur, cur, cur, cur + 1, cur + 1, 0, U64, rng.getrandbits(64), max(cur - 1, 0)]) & U64


def label_value(rng):
    r = rng.random()
    if r < 0.1:
        return bytes(LABEL_LEN)
    n = LABEL_LEN if r < 0.2 else rng.randint(1, LABEL_LEN - 1)
    return bytes(rng.randint(0x20, 0x7E) for _ in range(n)) + bytes(LABEL_LEN - n)


def id_value(rng):
    return rng.choice([rng.randint(1, 1000), rng.getrandbits(64), U64, 1, rng.getrandbits(32)])


# --- fuzzing a secondary (we are the primary) -------------------------------------------------

class SecTarget:
    """A real secondary and the model of what it holds and counts."""

    def __init__(self, conf, tidx):
        self.tidx = tidx
        self.name = conf["name"]
        self.host, self.port = conf["host"], conf["port"]
        self.sectors = conf["sectors"]
        self.device = conf.get("device")
        self.key = conf["key"].encode() if conf.get("key") else None
        self.freeze = conf.get("freeze", False)
        self.marker_start = self.sectors - conf.get("marker_sectors", 8)
        # A zone of the device no valid write covers: refused writes with in-range sectors aim
        # there (so does all of their data if it leaks).
        self.zone = (self.sectors // 2, self.sectors // 2 + 2048)
        assert self.zone[1] + 2048 + 8 <= self.sectors and self.zone[0] >= 2048
        # The model (status fields and the device's contents).
        self.disk = bytearray(self.sectors * 512)
        self.consistent = True
        self.durable_epoch = 0
        self.applied = self.applied_bytes = self.resync_bytes = 0
        self.sessions = self.dropped = 0
        self.markers = self.markers_ignored = 0
        self.marker = None  # (id, time, label) of the last recorded one
        self.prev_kps = None  # the previous session's key primary -> secondary
        self.prev_frames = {}  # valid frames of the previous session, by sequence number
        self.log_times = collections.deque()  # end times of our cases' log lines (pacing)
        self.epoch = 1
        self.stats = collections.Counter()
        self.failed = None

    def status_expected(self):
        e = {
            "applied": str(self.applied), "applied_bytes": str(self.applied_bytes),
            "resync_bytes": str(self.resync_bytes), "epoch": str(self.durable_epoch),
            "data": "consistent" if self.consistent else "inconsistent",
            "sessions": str(self.sessions), "dropped": str(self.dropped),
            "markers_ignored": str(self.markers_ignored),
            "frozen": "-",  # every case thaws what it froze
        }
        # A marker recorded with id 0 is shown as none (status prints ids 0 as "-").
        if self.marker is None or self.marker[0] == 0:
            e.update({"markers": "0", "marker": "-", "marker_time_ns": "-"})
        else:
            e.update({"markers": str(self.markers), "marker": str(self.marker[0]), "marker_time_ns": str(self.marker[1])})
        e["marker_label"] = label_word(self.marker[2]) if self.marker else "-"
        return e

    def apply(self, v):
        """Effects of an accepted frame on the model; returns ('ignored'|'recorded'|None) for
        markers (a marker frame or a record written into the marker region)."""
        self.applied += 1
        ty, p = v.ty, v.p
        if ty in (WRITE, RESYNC):
            sector = struct.unpack_from("<Q", p, 0)[0]
            data = p[WRITE_FIXED:]
            if ty == RESYNC:
                self.consistent = False
                self.resync_bytes += len(data)
            self.applied_bytes += len(data)
            self.disk[sector * 512:sector * 512 + len(data)] = data
            if ty == WRITE and sector >= self.marker_start:
                rec = parse_record(data[:512])
                if rec:
                    return self.marker_seen(*rec)
        elif ty == MARKER:
            mid, t = struct.unpack_from("<QQ", p, 0)
            return self.marker_seen(mid, t, bytes(p[16:16 + LABEL_LEN]))
        elif ty == BARRIER:
            if v.flags & (BARRIER_FLUSH | BARRIER_RESYNC_DONE):
                e = struct.unpack_from("<Q", p, 0)[0]
                if e > 0:
                    self.durable_epoch = e
            if v.flags & BARRIER_RESYNC_DONE:
                self.consistent = True
        return None

    def marker_seen(self, mid, t, label):
        if not self.consistent:
            self.markers_ignored += 1
            return "ignored"
        self.markers += 1
        self.marker = (mid, t, label)
        return "recorded"


class Sent:
    def __init__(self, seq, f, ty, marker=None):
        self.seq, self.f, self.ty, self.marker = seq, f, ty, marker


class FakePrimary:
    """One connection to a secondary, as its primary."""

    def __init__(self, env, t, case, rng):
        self.env, self.t, self.case, self.rng = env, t, case, rng
        self.t_conn = time.monotonic()
        self.s = env.connect(t.host, t.port)
        self.s.settimeout(10 * env.scale)
        self.who = "%s:%d" % self.s.getsockname()
        self.kps = self.ksp = None
        self.tx = 0  # our next sequence number (= the secondary's next expected)
        self.rx = 0  # the secondary's next sequence number
        self.fidx = 0
        self.acked = None  # highest sequence number acknowledged
        self.sent = []  # valid frames sent, not yet acknowledged
        self.freezes = collections.deque()  # markers that freeze the secondary, in order
        self.frozen_bytes = 0  # bytes sent while it may be frozen (TCP buffers hold them)
        self.pongs = 0
        self.last_rx = self.prev_rx = self.t_conn  # when the last two frames came (connect: before the handshake)
        self.frames = {}  # valid frames sent, by sequence number (for a replay next session)
        self.fam = "-"

    def fail(self, msg):
        raise Fail("%s case %d (%s, %s): %s" % (self.t.name, self.case, self.who, self.fam, msg))

    # Receiving from the secondary.
    def read(self, timeout):
        self.s.settimeout(timeout * self.env.scale)
        h, p = read_frame(self.s)
        if p is None:
            self.fail("the secondary sent a frame claiming %d payload bytes" % fields(h)[5])
        why = check(h, p, self.ksp, self.rx)
        if why:
            self.fail("the secondary sent an invalid frame (%s): %s" % (why, (h + p).hex()[:240]))
        self.rx += 1
        self.prev_rx, self.last_rx = self.last_rx, time.monotonic()
        return h[5], fields(h)[3], p

    def take_ack(self, ty, flags, p):
        """Checks one frame of the secondary in a session: an ACK (cumulative, in order, flagged
        exactly at the markers it did not record), a PONG while frozen, or a keepalive PONG after
        KEEPALIVE_S of silence."""
        if ty == PONG:
            gap = self.last_rx - self.prev_rx
            if not self.t.freeze and gap < KEEPALIVE_S - KEEPALIVE_SLACK_S * self.env.scale:
                self.fail("PONG %.2f s after the secondary's previous frame, from a secondary without "
                          "freeze_on_marker (a keepalive comes after %.0f s of silence)" % (gap, KEEPALIVE_S))
            self.pongs += 1
            return
        if ty != ACK:
            self.fail("the secondary sent a %s frame in a session" % NAMES.get(ty, ty))
        s, durable = struct.unpack("<QQ", p)
        if self.acked is not None and s <= self.acked:
            self.fail("ACK %d after ACK %d (not increasing)" % (s, self.acked))
        if not self.sent or s > self.sent[-1].seq:
            self.fail("ACK %d acknowledges a frame not sent as valid (last valid: %s)" %
                      (s, self.sent[-1].seq if self.sent else self.acked))
        ign = [x for x in self.sent if x.seq <= s and x.marker == "ignored"]
        if ign and (ign[0].seq != s or not flags & ACK_MARKER_IGNORED):
            self.fail("ACK %d (flags %d) passes over marker frame %d, which was not recorded and must be "
                      "acknowledged on its own with ACK_MARKER_IGNORED" % (s, flags, ign[0].seq))
        if flags & ACK_MARKER_IGNORED and not ign:
            self.fail("ACK %d flags ACK_MARKER_IGNORED, but frame %d is not a marker the secondary ignored" % (s, s))
        self.sent = [x for x in self.sent if x.seq > s]
        self.acked = s
        if not self.sent and not self.freezes and durable != self.t.durable_epoch:
            self.fail("ACK %d: durable epoch %d, expected %d" % (s, durable, self.t.durable_epoch))

    def await_acks(self, upto, timeout=20):
        """Reads ACKs until every valid frame up to `upto` is acknowledged."""
        end = time.monotonic() + timeout * self.env.scale
        while self.acked is None or self.acked < upto:
            try:
                ty, flags, p = self.read(max(0.05, end - time.monotonic()) / self.env.scale)
            except Timeout:
                self.fail("no ACK up to frame %d within %d s (last ACK: %s)" % (upto, timeout, self.acked))
            except Closed:
                self.fail("connection closed before frame %d was acknowledged (last ACK: %s)" % (upto, self.acked))
            self.take_ack(ty, flags, p)

    def quiet(self, seconds):
        """Nothing but PONGs may arrive for `seconds` (and the connection stays up)."""
        end = time.monotonic() + seconds * self.env.scale
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            try:
                ty, flags, p = self.read(left / self.env.scale)
            except Timeout:
                return
            except Closed:
                self.fail("connection closed while the secondary was frozen")
            self.take_ack(ty, flags, p)

    def thaw(self):
        """The secondary froze at the first marker of `freezes`: its ACK has come (or comes now),
        no frame after it is applied meanwhile, status says frozen; then `thaw <id>`."""
        m = self.freezes[0]
        self.await_acks(m.seq)
        if self.sent:
            self.quiet(0.2)
            if self.acked != m.seq:
                self.fail("frames after marker %d were acknowledged while frozen" % m.seq)
        st = self.env.status(self.t.name)
        mid = struct.unpack_from("<Q", m.f, HDR if m.ty == MARKER else HDR + WRITE_FIXED + 8)[0]
        if st.get("frozen") != str(mid):
            self.fail("after marker %d the status says frozen %s" % (mid, st.get("frozen")))
        rc, out = self.env.message(self.t.name, "thaw", str(mid))
        if rc != 0:
            self.fail("thaw %d: %s" % (mid, out))
        self.freezes.popleft()
        self.frozen_bytes = 0

    # Sending.
    def next_seq(self):
        return self.tx

    def send_valid(self, f, v):
        """Sends a frame the model accepts and applies its effects."""
        if v.kind != "accepted":
            raise AssertionError("generated a valid frame that the model refuses: %r" % v)
        if self.freezes and self.frozen_bytes + len(f) > 32768:
            while self.freezes:
                self.thaw()
        if not send(self.s, f, self.env.scale):
            self.fail("connection closed while sending valid frame %d" % v.seq)
        if self.freezes:
            self.frozen_bytes += len(f)
        seen = self.t.apply(v)
        self.tx += 1
        x = Sent(v.seq, f, v.ty, seen)
        self.sent.append(x)
        if len(f) <= 4096:
            self.frames[v.seq] = f
        if seen == "recorded" and self.t.freeze:
            self.freezes.append(x)
        return x

    def settle(self):
        """Every valid frame sent is acknowledged (thawing the secondary at each freeze)."""
        while self.freezes:
            self.thaw()
        if self.sent:
            self.await_acks(self.sent[-1].seq)


def plan_valid(rng, t, case, fidx):
    """The heavy part of a valid frame (a write's data and its CRC), made before the case's
    connection is opened: under TCG the Python takes seconds for a large write, and a secondary
    drops a primary that sends nothing for 15 s."""
    kinds = [WRITE] * 40 + [RESYNC] * 8 + [BARRIER] * 14 + [MARKER] * (3 if t.freeze else 7) + [PING] * 6 + ["mwrite"] * 5
    k = rng.choice(kinds)
    if k not in (WRITE, RESYNC, "mwrite"):
        return {"kind": k}
    if k == "mwrite":
        n = rng.randint(1, 8)
        sector = rng.randint(t.marker_start, t.sectors - n)
    else:
        n = nsectors(rng)
        r = rng.random()
        if r < 0.1:
            sector = 0
        elif r < 0.2:
            sector = t.sectors - n
        elif r < 0.6:
            sector = rng.randint(0, t.zone[0] - n)
        else:
            sector = rng.randint(t.zone[1], t.sectors - n)
    data, dcrc = tagged(rng, TAG_OK, t.tidx, case, fidx, sector, n)
    if k == "mwrite" and rng.random() < 0.7:
        # A marker record (or a broken one: ordinary data).
        rec = bytearray(marker_record(id_value(rng), rng.getrandbits(63), label_value(rng)))
        if rng.random() < 0.2:
            rec[rng.randrange(512)] ^= 1 << rng.randrange(8)
        data = bytes(rec) + data[512:]
        dcrc = crc32c(data)
    return {"kind": k, "sector": sector, "data": data, "dcrc": dcrc}


def valid_frame(rng, t, fp, plan):
    """A valid frame of any kind a primary may send in a session (from its plan), with its
    verdict."""
    seq = fp.next_seq()
    k = plan["kind"]
    flags = 0
    if k in (WRITE, RESYNC, "mwrite"):
        ty = RESYNC if k == RESYNC else WRITE
        epoch = 0 if ty == RESYNC and rng.random() < 0.8 else epoch_value(rng, t.epoch)
        if ty == WRITE:
            t.epoch = epoch
        flags = WRITE_FUA if rng.random() < 0.2 else 0
        p, pcrc = write_payload(plan["sector"], epoch, plan["data"], plan["dcrc"])
    elif k == BARRIER:
        ty = k
        flags = rng.choice([0, BARRIER_FLUSH, BARRIER_FLUSH, BARRIER_FLUSH, BARRIER_RESYNC_DONE,
                            BARRIER_FLUSH | BARRIER_RESYNC_DONE])
        p = struct.pack("<Q", epoch_value(rng, t.epoch) if not flags & BARRIER_RESYNC_DONE or rng.random() < 0.3 else 0)
    elif k == MARKER:
        ty = k
        p = marker_payload(id_value(rng) if rng.random() < 0.95 else 0, rng.getrandbits(63), label_value(rng))
    else:
        ty = PING
        p = rng.randbytes(8)
    if ty not in (WRITE, RESYNC):
        pcrc = crc32c(p)
    f = frame(ty, flags, seq, p, fp.kps, payload_crc=pcrc)
    return f, sec_frame_verdict(t.sectors, fp.kps, seq, f, pcrc=pcrc)


def plan_bad(rng, t, case):
    """The data a refused write frame carries (tagged as refused), aimed at the zone; made
    before the connection is opened, as plan_valid."""
    n = nsectors(rng)
    sector = rng.randint(t.zone[0], t.zone[1] - n)
    data, dcrc = tagged(rng, TAG_BAD, t.tidx, case, 0, sector, n)
    return n, sector, data, dcrc


def bad_frame(rng, t, fp, plan):
    """A frame built from a valid one with one thing wrong (almost always: the model decides),
    its CRC and MAC made valid unless they are the thing. Returns (family, frame, truncate_at,
    the CRC-32C of its payload or None if the payload was changed after it was sealed)."""
    seq = fp.next_seq()
    fam = rng.choices(
        ["magic", "version", "type", "flags", "length", "crc", "mac", "seq", "sector", "reserved", "label",
         "wrongtype", "truncated", "bitflip"],
        [4, 4, 5, 9, 12, 6, 10, 10, 14, 5, 5, 9, 3, 4])[0]
    key = fp.kps
    # The base frame: a write aimed at the zone (with data tagged as refused), or a control frame.
    base = rng.choice([WRITE, WRITE, WRITE, RESYNC, BARRIER, MARKER, PING, CLOSE])
    if fam in ("sector", "reserved"):
        base = rng.choice([WRITE, WRITE, RESYNC])
    elif fam == "label":
        base = MARKER
    elif fam == "truncated":
        base = rng.choice([WRITE, WRITE, RESYNC, MARKER, BARRIER])
    n, sector, data, dcrc = plan
    flags = 0
    if base in (WRITE, RESYNC):
        if fam == "sector":
            sector = rng.choice([t.sectors - n + 1, t.sectors, t.sectors + rng.randint(1, 1 << 20),
                                 2**64 - n + rng.randint(0, n - 1) if n > 1 else U64, U64, 2**63,
                                 2**64 - 1 - rng.randint(0, 4096)])
        reserved = bytes(8)
        if fam == "reserved":
            r = bytearray(8)
            r[rng.randrange(8)] = rng.randint(1, 255)
            reserved = bytes(r)
        p, pcrc = write_payload(sector, t.epoch, data, dcrc, reserved)
        flags = WRITE_FUA if rng.random() < 0.3 else 0
    elif base == BARRIER:
        p = struct.pack("<Q", t.epoch)
        flags = BARRIER_FLUSH
    elif base == MARKER:
        label = bytearray(label_value(rng))
        if fam == "label":
            end = label.find(b"\0")
            end = LABEL_LEN if end < 0 else end
            if end < LABEL_LEN - 1 and rng.random() < 0.4:
                # Text after the NUL padding.
                label[rng.randint(end + 1, LABEL_LEN - 1)] = rng.randint(1, 255)
            else:
                # A byte of the text that is not printable ASCII.
                label[rng.randrange(end) if end else 0] = rng.choice([rng.randint(1, 0x1F), 0x7F, rng.randint(0x80, 0xFF)])
        p = marker_payload(id_value(rng), rng.getrandbits(63), bytes(label))
    elif base == PING:
        p = rng.randbytes(8)
    else:
        p = struct.pack("<I", rng.getrandbits(32))
    ty = base
    ln = None
    version, magic = VERSION, MAGIC
    if fam == "magic":
        magic = rng.choice([rng.randbytes(4), b"WBRQ", b"wbrp", b"PRBW", bytes(4)])
        if magic == MAGIC:
            magic = b"XBRP"
    elif fam == "version":
        version = rng.choice([0, 1, 3, rng.randint(4, 255)])
    elif fam == "type":
        ty = rng.choice([0, 11, 12, 99, 255, rng.randint(11, 255)])
    elif fam == "flags":
        mask = FLAG_MASK.get(ty, 0)
        bits = [b for b in range(16) if not (1 << b) & mask]
        flags |= 1 << rng.choice(bits)
        if rng.random() < 0.3:
            flags |= rng.getrandbits(16) & ~mask
    elif fam == "length":
        lo, hi = LEN_RANGE[ty]
        choices = [lo - 1, hi + 1, 0, 0xFFFFFFFF, rng.randint(hi + 1, 0xFFFFFFFF)]
        if lo > 0:
            choices.append(rng.randint(0, lo - 1))
        if ty in (WRITE, RESYNC):
            choices += [WRITE_FIXED + 512 * rng.randint(1, 2048) + rng.randint(1, 511), WRITE_FIXED, MAX_PAYLOAD + 512]
        ln = rng.choice(choices) & 0xFFFFFFFF
    elif fam == "seq":
        seq = rng.choice([seq - 1, seq + 1, seq + rng.randint(2, 1000), 0, U64, seq + 2**32, seq - 2 if seq >= 2 else 5]) & U64
        if seq == fp.next_seq():
            seq += 1
    elif fam == "wrongtype":
        ty = rng.choice([HELLO, AUTH, ACK, PONG])
        p = {HELLO: hello_payload(ROLE_PRIMARY, t.sectors, rng.randbytes(32)), AUTH: rng.randbytes(32),
             ACK: struct.pack("<QQ", max(seq - 1, 0), 0), PONG: bytes(8)}[ty]
        flags = 0
    if base not in (WRITE, RESYNC) or fam == "wrongtype":
        pcrc = crc32c(p)
    h = header(ty, flags, seq, len(p) if ln is None else ln, version=version, magic=magic)
    mac = None
    crc = None
    if fam == "mac":
        if key is not None:
            other = [bytes(MAC_LEN), hmac256(t.key, bytes(h), p), hmac256(fp.ksp, bytes(h), p),
                     hmac256(key, bytes(header(ty, flags, seq + 1, len(p))), p), rng.randbytes(MAC_LEN)]
            if t.prev_kps:
                other.append(hmac256(t.prev_kps, bytes(h), p))
            mac = rng.choice(other)
        else:
            mac = rng.choice([rng.randbytes(MAC_LEN), hmac256(b"correct horse battery staple", bytes(h), p),
                              bytes(31) + b"\x01"])
    f = seal(h, p, key, mac=mac, payload_crc=pcrc) + p
    if fam == "crc":
        c = struct.unpack_from("<I", f, 20)[0] ^ rng.randint(1, 0xFFFFFFFF)
        f = f[:20] + struct.pack("<I", c) + f[24:]
    elif fam == "bitflip":
        b = bytearray(f)
        i = rng.randrange(len(b) * 8)
        b[i // 8] ^= 1 << (i % 8)
        f = bytes(b)
        if i >= HDR * 8:
            pcrc = None  # the payload changed: the model computes its CRC
    cut = None
    if fam == "truncated":
        cut = HDR + rng.randrange(len(p))
    elif fam == "mac" and key is not None and seq in t.prev_frames and rng.random() < 0.4:
        # The frame with this sequence number of the previous session, replayed as it was.
        f = t.prev_frames[seq]
        fam = "replay"
        pcrc = None
    return fam, f, cut, pcrc


def hello_case(rng, t, fp, nonce):
    """Our HELLO with one thing wrong (or unusual but valid)."""
    fam = rng.choice(["magic", "version", "type", "flags", "seq", "length", "crc", "mac", "role", "reserved",
                      "sectors", "authflag", "inconsistent", "nonce"])
    flags = HELLO_AUTH if t.key else 0
    role, reserved, claimed = ROLE_PRIMARY, bytes(7), t.sectors
    ty, seq, version, magic, ln, mac = HELLO, 0, VERSION, MAGIC, None, None
    if fam == "magic":
        magic = rng.choice([b"WBRQ", rng.randbytes(4), bytes(4)])
        magic = b"XBRP" if magic == MAGIC else magic
    elif fam == "version":
        version = rng.choice([0, 1, 3, 255])
    elif fam == "type":
        ty = rng.choice([AUTH, WRITE, BARRIER, PING, ACK, 0, 11, 200])
    elif fam == "flags":
        flags |= 1 << rng.randint(2, 15)
    elif fam == "seq":
        seq = rng.choice([1, 2, U64, rng.getrandbits(64) | 1])
    elif fam == "length":
        ln = rng.choice([47, 49, 0, 32, 0xFFFFFFFF, 1 << 20])
    elif fam == "mac":
        mac = rng.randbytes(MAC_LEN)
    elif fam == "role":
        role = rng.choice([0, ROLE_SECONDARY, 3, 255])
    elif fam == "reserved":
        r = bytearray(7)
        r[rng.randrange(7)] = rng.randint(1, 255)
        reserved = bytes(r)
    elif fam == "sectors":
        claimed = rng.choice([t.sectors + 1, U64, 2**63, 0, t.sectors - 1, 1])
    elif fam == "authflag":
        flags ^= HELLO_AUTH
    elif fam == "inconsistent":
        flags |= HELLO_INCONSISTENT
    elif fam == "nonce":
        nonce = bytes(32)
    p = hello_payload(role, claimed, nonce, reserved)
    if ty == WRITE:
        p = write_fixed(0, 1) + bytes(512)
    elif ty in (AUTH,):
        p = rng.randbytes(32)
    elif ty in (BARRIER, PING):
        p = bytes(8)
    elif ty == ACK:
        p = bytes(16)
    h = header(ty, flags, seq, len(p) if ln is None else ln, version=version, magic=magic)
    f = seal(h, p, None, mac=mac) + p
    if fam == "crc":
        f = f[:20] + struct.pack("<I", struct.unpack_from("<I", f, 20)[0] ^ 0x5A5A) + f[24:]
    return "hello-" + fam, f


def auth_case(rng, t, hp, hs):
    """Our AUTH with one thing wrong."""
    fam = rng.choice(["random", "reflected", "transcript", "wrongkey", "seq", "length", "mac", "crc", "type", "flags"])
    good = proof(t.key, ROLE_PRIMARY, hp, hs)
    p, seq, ty, flags, ln, mac = good, 1, AUTH, 0, None, None
    if fam == "random":
        p = rng.randbytes(32)
    elif fam == "reflected":
        p = proof(t.key, ROLE_SECONDARY, hp, hs)
    elif fam == "transcript":
        b = bytearray(hp)
        b[HDR + 16 + rng.randrange(32)] ^= 1
        p = proof(t.key, ROLE_PRIMARY, bytes(b), hs)
    elif fam == "wrongkey":
        p = proof(b"a different secret", ROLE_PRIMARY, hp, hs)
    elif fam == "seq":
        seq = rng.choice([0, 2, U64])
    elif fam == "length":
        ln = rng.choice([31, 33, 0, 0xFFFFFFFF])
    elif fam == "mac":
        mac = rng.choice([rng.randbytes(32), hmac256(t.key, b"x")])
    elif fam == "type":
        ty = rng.choice([PING, ACK, HELLO, WRITE])
        p = {PING: bytes(8), ACK: bytes(16), HELLO: hello_payload(ROLE_PRIMARY, t.sectors, bytes(32)),
             WRITE: write_fixed(0, 0) + bytes(512)}[ty]
    elif fam == "flags":
        flags = 1 << rng.randint(0, 15)
    h = header(ty, flags, seq, len(p) if ln is None else ln)
    f = seal(h, p, None, mac=mac) + p
    if fam == "crc":
        f = f[:20] + struct.pack("<I", struct.unpack_from("<I", f, 20)[0] ^ 1) + f[24:]
    return "auth-" + fam, f


def expect_refused(env, fp, start, regex, reason, limit, sent_at, allow=None):
    """The peer closes within `limit` s of `sent_at` with nothing (but `allow`ed frames) sent,
    and the kernel log names this connection and `reason`."""
    while True:
        left = sent_at + limit * env.scale - time.monotonic()
        if left <= 0:
            fp.fail("not closed within %.0f s after the bad frame (expected: %s)" % (limit, reason))
        try:
            h, p = read_frame_raw(fp.s, left)
        except Timeout:
            continue
        except Closed:
            break
        if allow is None or not allow(h, p):
            fp.fail("got a %s frame (%s) after the bad frame instead of a refusal (%s)" %
                    (NAMES.get(h[5], h[5]), (h + (p or b"")).hex()[:200], reason))
    m = env.log.wait(regex, start, 5 * env.scale)
    if not m:
        fp.fail("no kernel log line for this connection (expected: %s)" % reason)
    if m.group(1) != reason:
        fp.fail("refused for another reason: logged '%s', expected '%s'" % (m.group(1), reason))
    return time.monotonic() - sent_at


def read_frame_raw(s, timeout):
    s.settimeout(max(timeout, 0.01))
    return read_frame(s)


def pace(env, t, need):
    """Waits until `need` more log lines of target t fit under the secondary's rate limit."""
    if env.sim:
        return
    while True:
        now = time.monotonic()
        while t.log_times and t.log_times[0] < now - LOG_WINDOW:
            t.log_times.popleft()
        if len(t.log_times) + need <= LOG_LINES:
            return
        time.sleep(t.log_times[0] + LOG_WINDOW - now + 0.01)


def sec_case(env, t, case, rng, nonces):
    """One case against secondary t. Returns (verdict kind, reason, family)."""
    start = env.log.mark()
    # Everything slow to make is made before connecting.
    n_prefix = rng.choice([0, 1, 1, 2, 2, 3, 4, 5, 8, 12])
    plans = [plan_valid(rng, t, case, k + 1) for k in range(n_prefix + 1)]
    bad_plan = plan_bad(rng, t, case)
    fp = FakePrimary(env, t, case, rng)
    who = fp.who
    re_refused = Line("repl: refused connection from %s: " % who)
    re_ended = Line("repl: session with %s ended: " % who)
    re_closed = Line("repl: primary %s " % who, " the session")  # "closed"
    re_connected = Line("repl: primary %s connected" % who)
    try:
        r = rng.random()
        hs_fuzz = "hello" if r < 0.12 else ("auth" if t.key and r < 0.2 else None)
        nonce = rng.randbytes(32)
        if hs_fuzz == "hello":
            fam, hp = hello_case(rng, t, fp, nonce)
            fp.fam = fam
        else:
            fam, hp = None, frame(HELLO, HELLO_AUTH if t.key else 0, 0, hello_payload(ROLE_PRIMARY, t.sectors, nonce))
        where, reason = sec_hello_verdict(t.key, t.sectors, hp)
        at = time.monotonic()
        send(fp.s, scale=env.scale, data=hp)
        if where == "before":
            t.dropped += 1
            t.predicted = "refused"
            expect_refused(env, fp, start, re_refused, reason, HANDSHAKE_S, at)
            return "refused", reason, fam
        # The secondary's HELLO: valid, its flags say auth and consistency as the model does.
        try:
            fp.s.settimeout(10 * env.scale)
            h, p = read_frame(fp.s)
        except (Closed, Timeout):
            fp.fail("no HELLO from the secondary (our HELLO: %s)" % hp.hex()[:120])
        why = check(h, p, None, 0)
        if why or h[5] != HELLO:
            fp.fail("the secondary's HELLO is not valid: %s %s" % (why, h.hex()))
        hs = h + p
        role, res, sec, snonce = parse_hello(p)
        want = (HELLO_AUTH if t.key else 0) | (0 if t.consistent else HELLO_INCONSISTENT)
        if (role, res, sec, fields(h)[3]) != (ROLE_SECONDARY, bytes(7), t.sectors, want):
            fp.fail("the secondary's HELLO says role %d, sectors %d, flags %d (expected %d)" % (role, sec, fields(h)[3], want))
        if snonce in nonces:
            fp.fail("the secondary's HELLO nonce repeats an earlier one")
        nonces.add(snonce)
        if where == "after":
            t.dropped += 1
            t.predicted = "refused"
            expect_refused(env, fp, start, re_refused, reason, HANDSHAKE_S, time.monotonic())
            return "refused", reason, fam
        fp.tx = fp.rx = 1
        if t.key:
            if hs_fuzz == "auth":
                fam, pa = auth_case(rng, t, hp, hs)
                fp.fam = fam
            else:
                pa = frame(AUTH, 0, 1, proof(t.key, ROLE_PRIMARY, hp, hs))
            reason = auth_reason(t.key, ROLE_PRIMARY, hp, hs, pa)
            at = time.monotonic()
            send(fp.s, scale=env.scale, data=pa)
            if reason:
                t.dropped += 1
                t.predicted = "refused"
                expect_refused(env, fp, start, re_refused, reason, HANDSHAKE_S, at)
                return "refused", reason, fam
            fp.s.settimeout(10 * env.scale)
            try:
                h, p = read_frame(fp.s)
            except (Closed, Timeout):
                # Our AUTH sent 5 s or more after we connected (this process starved of CPU under
                # TCG): the secondary's handshake timeout (5 s in all) must have ended it, and
                # says so. Counted and reported, not a failure; sent sooner, it is one.
                late = at - fp.t_conn
                if late >= HANDSHAKE_S * env.scale:
                    m = env.log.wait(re_refused, start, 5 * env.scale)
                    if m and m.group(1) == R_TIMEDOUT:
                        t.dropped += 1
                        t.predicted = "refused"
                        return "slow", R_TIMEDOUT, "late-auth"
                fp.fail("no AUTH from the secondary (our AUTH sent %.1f s after connecting)" % late)
            if check(h, p, None, 1) or h[5] != AUTH or p != proof(t.key, ROLE_SECONDARY, hp, hs):
                fp.fail("the secondary's AUTH is not its proof: %s" % (h + p).hex())
            fp.kps, fp.ksp = session_keys(t.key, hp, hs)
            fp.tx = fp.rx = 2
        t.sessions += 1
        if not env.log.wait(re_connected, start, 5 * env.scale):
            fp.fail("no 'primary ... connected' line in the kernel log")
        # A prefix of valid frames, acknowledged.
        for k in range(n_prefix):
            f, v = valid_frame(rng, t, fp, plans[k])
            fp.send_valid(f, v)
            if rng.random() < 0.3:
                fp.settle()
        # Either everything is acknowledged, or (on a freeze_on_marker secondary) the last frame
        # was a marker it froze at, and the last frame will wait behind the freeze.
        behind_freeze = bool(fp.freezes) and fp.freezes[-1] is (fp.sent[-1] if fp.sent else fp.freezes[-1]) \
            and rng.random() < 0.5
        if behind_freeze:
            while len(fp.freezes) > 1:
                fp.thaw()
            fp.await_acks(fp.freezes[0].seq)
        else:
            fp.settle()
        # The last frame: valid (then CLOSE), a CLOSE, or fuzzed.
        r = rng.random()
        cut = pcrc = None
        if fam is not None or r < 0.1:
            f, v = valid_frame(rng, t, fp, plans[-1])
            fam = fam or "valid-%s" % NAMES[v.ty]
            fp.fam = fam
            fp.send_valid(f, v)
            fp.settle()
            f = frame(CLOSE, 0, fp.next_seq(), rng.randbytes(4), fp.kps)
        elif r < 0.13:
            fam, f = "close", frame(CLOSE, 0, fp.next_seq(), rng.randbytes(4), fp.kps)
        else:
            fam, f, cut, pcrc = bad_frame(rng, t, fp, bad_plan)
        fp.fam = fam
        if cut is None and fields(f[:HDR])[5] > len(f) - HDR:
            cut = len(f)  # (its length field says more than it has, say a flipped bit: we close after it)
        v = sec_frame_verdict(t.sectors, fp.kps, fp.next_seq(), f, truncated=cut is not None and cut < HDR + fields(f[:HDR])[5],
                              pcrc=pcrc)
        if v.kind == "accepted":
            # A fuzzed frame the model accepts after all: applied like any, then CLOSE.
            fp.send_valid(f, v)
            fp.settle()
            f = frame(CLOSE, 0, fp.next_seq(), bytes(4), fp.kps)
            v = sec_frame_verdict(t.sectors, fp.kps, fp.next_seq(), f)
        t.prev_kps = fp.kps
        t.prev_frames = fp.frames if fp.kps else {}
        at = time.monotonic()
        send(fp.s, scale=env.scale, data=f if cut is None else f[:cut])
        if cut is not None:
            try:
                fp.s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if fp.freezes:
            # Not read while frozen: the connection stays (PONGs may come); thawed, it is taken.
            fp.quiet(0.3)
            fp.thaw()
            at = time.monotonic()
        # PONGs: a frozen secondary's, or a keepalive (the refusal may come after 2 s of silence).
        allow = lambda h, p: h[5] == PONG
        if v.kind == "closed":
            t.predicted = "closed"
            expect_refused(env, fp, start, re_closed, "closed", SECONDARY_DEAD_S, at, allow)
            return "closed", None, fam
        t.dropped += 1
        t.predicted = "refused"
        expect_refused(env, fp, start, re_ended, v.reason, SECONDARY_DEAD_S, at, allow)
        return "refused", v.reason, fam
    finally:
        shut(fp.s)


def compare_status(name, got, want):
    bad = ["%s %s (expected %s)" % (k, got.get(k), v) for k, v in want.items() if got.get(k) != v]
    if bad:
        raise Fail("%s: status differs from the model: %s" % (name, "; ".join(bad)))


def check_secondary(env, t):
    """The target's status and its whole data device against the model."""
    if t.device:
        got = env.read_device(t.device, len(t.disk))
        if got != bytes(t.disk):
            diffs = [s for s in range(t.sectors) if got[s * 512:(s + 1) * 512] != t.disk[s * 512:(s + 1) * 512]]
            leaked = [s for s in diffs if got[s * 512:s * 512 + 16] == TAG_BAD]
            msg = ["%d sectors differ from the model" % len(diffs)]
            if leaked:
                msg.append("REFUSED FRAMES' DATA ON THE DISK: %s" % "; ".join(
                    "sector %d: %s" % (s, describe(got[s * 512:(s + 1) * 512])) for s in leaked[:5]))
            for s in diffs[:5]:
                msg.append("sector %d holds %s, expected %s" % (s, describe(got[s * 512:(s + 1) * 512]),
                                                                 describe(t.disk[s * 512:(s + 1) * 512])))
            raise Fail("%s: %s" % (t.name, "; ".join(msg)))
    compare_status(t.name, env.status(t.name), t.status_expected())


def run_secondary(env, conf, cases, seed, out=sys.stdout, check_every=100, stop_on_failure=True):
    targets = [SecTarget(c, i) for i, c in enumerate(conf["targets"])]
    failures = []
    lock = threading.Lock()
    nonces = set()
    times = []

    def worker(t):
        mine = [i for i in range(cases) if i % len(targets) == t.tidx]
        for k, i in enumerate(mine):
            rng = random.Random("%d/%d" % (seed, i))
            pace(env, t, 2)
            t.predicted = None
            try:
                kind, reason, fam = sec_case(env, t, i, rng, nonces)
                t.stats[kind] += 1
                t.stats["%s: %s" % (kind, reason or fam)] += 1
                t.stats["family " + (fam or "?")] += 1
                if (k + 1) % check_every == 0:
                    check_secondary(env, t)
            except Fail as e:
                t.failed = str(e)
            except Exception:  # noqa: BLE001 (a bug of ours, or a socket error: reported)
                t.failed = "%s case %d: %s" % (t.name, i, traceback.format_exc(limit=4))
            t.log_times.append(time.monotonic())
            t.log_times.append(time.monotonic())
            t.stats["predicted " + str(t.predicted)] += 1
            if t.failed:
                t.stats["reported " + str(t.predicted)] += 1
                with lock:
                    failures.append(t.failed + (" (stopped fuzzing this target)" if stop_on_failure else ""))
                if stop_on_failure:
                    return
                t.failed = None
        try:
            if stop_on_failure or not failures:
                check_secondary(env, t)
        except Fail as e:
            with lock:
                failures.append(str(e))
    t0, c0 = time.monotonic(), time.process_time()
    threads = [threading.Thread(target=worker, args=(t,)) for t in targets]
    for x in threads:
        x.start()
    for x in threads:
        x.join()
    dt = time.monotonic() - t0
    print("# time: %.0f s, of which this process's CPU %.0f s" % (dt, time.process_time() - c0), file=out)
    total = collections.Counter()
    for t in targets:
        total.update(t.stats)
        print("# %s%s%s: %d cases: %d refused, %d closed by us after valid frames, %d slow; %d sessions, "
              "%d frames applied, %d markers recorded, %d ignored" % (
                  t.name, " (auth)" if t.key else "", " (freeze_on_marker)" if t.freeze else "",
                  t.stats["refused"] + t.stats["closed"] + t.stats["slow"], t.stats["refused"], t.stats["closed"],
                  t.stats["slow"], t.sessions, t.applied,
                  t.markers, t.markers_ignored), file=out)
    print("# reasons: " + "; ".join("%s %d" % (k[9:], v) for k, v in sorted(total.items()) if k.startswith("refused: ")), file=out)
    print("# families: " + ", ".join("%s %d" % (k[7:], v) for k, v in sorted(total.items()) if k.startswith("family ")), file=out)
    n = total["refused"] + total["closed"] + total["slow"]
    if total["slow"] > max(2, n // 50):
        failures.append("%d cases timed out in the handshake, our AUTH 5 s or more after connecting (more than 2%%: "
                        "this process was too slow to test what it should)" % total["slow"])
    print("wirefuzz secondary: seed %d: %d cases on %d targets (%d refused frames, %d closed after valid frames, "
          "%d handshakes timed out as we were slow) in %.0f s: %d failures" % (
              seed, n, len(targets), total["refused"], total["closed"], total["slow"], dt, len(failures)), file=out)
    for f in failures:
        print("FAIL: " + f, file=out)
    return failures, total


# --- fuzzing a primary (we are the secondary) -------------------------------------------------

class PriTarget:
    """A real primary (it connects to us) and the model of its counters."""

    def __init__(self, conf, tidx):
        self.tidx = tidx
        self.name = conf["name"]
        self.host, self.port = conf["host"], conf["port"]
        self.sectors = conf["sectors"]
        self.device = conf.get("device")
        self.key = conf["key"].encode() if conf.get("key") else None
        self.sync = conf.get("sync", False)
        self.first = 2 if self.key else 1
        self.connects = 0
        self.acked = 0
        self.marker = None
        self.marker_acked = None
        self.marker_ignored = None
        self.last_err = None  # the connector logs a failure only when it differs from the last
        self.disk = bytearray(self.sectors * 512)  # what the primary's device holds
        self.prev_ksp = None
        self.stats = collections.Counter()
        self.listener = None
        self.failed = None

    def status_expected(self):
        def ident(x):
            return "-" if not x else str(x)
        return {"connects": str(self.connects), "acked": str(self.acked), "marker": ident(self.marker),
                "marker_acked": ident(self.marker_acked), "marker_ignored": ident(self.marker_ignored)}


class PSession:
    """The model of one session with a primary: what the primary will check our frames against."""

    def __init__(self, t, key):
        self.key = key  # K_SP: our frames' MAC key
        self.expect = t.first  # the primary's next expected sequence number from us
        self.pushed = t.first - 1  # the highest sequence number received from it
        self.acked = t.first - 1
        self.marker = None  # (seq, id) of the marker it waits for
        self.quiet = False  # it has nothing more to send for a while (no frame near `pushed`)


class FakeSecondary:
    """One connection from a primary, as its secondary."""

    def __init__(self, env, t, case, rng, sock):
        self.env, self.t, self.case, self.rng, self.s = env, t, case, rng, sock
        self.who = "%s:%d" % (t.host, t.port)
        self.kps = self.ksp = None
        self.rx = 0
        self.tx = 0
        self.frames = []  # (seq, type, flags, payload) received in the session
        self.done_barrier = None
        self.writes = []

    def fail(self, msg):
        raise Fail("%s case %d: %s" % (self.t.name, self.case, msg))

    def read(self, timeout):
        """The primary's next frame, checked (its CRC up to 4 KiB of payload: the Python CRC is
        slow; with a key the MAC covers the rest)."""
        self.s.settimeout(timeout * self.env.scale)
        h, p = read_frame(self.s)
        if p is None:
            self.fail("the primary sent a frame claiming %d payload bytes" % fields(h)[5])
        why = check(h, p, self.kps, self.rx, verify_crc=len(p) <= 4096)
        if why:
            self.fail("the primary sent an invalid frame (%s): %s" % (why, (h + p).hex()[:200]))
        self.rx += 1
        return h, p

    def session_frame(self, h, p, st):
        """Takes a frame of the primary's in a session: records it, checks its data."""
        _, _, ty, flags, seq, n, _, _ = fields(h)
        if ty not in (WRITE, RESYNC, BARRIER, MARKER, PING, CLOSE):
            self.fail("the primary sent a %s frame in a session" % NAMES.get(ty, ty))
        if ty in (WRITE, RESYNC):
            sector = struct.unpack_from("<Q", p, 0)[0]
            data = p[WRITE_FIXED:]
            want = bytes(self.t.disk[sector * 512:sector * 512 + len(data)])
            if ty == RESYNC and data != want:
                self.fail("RESYNC_WRITE of sector %d does not hold the primary's data" % sector)
            if ty == WRITE:
                if not any(data == w[1] and sector * 512 == w[0] for w in self.writes):
                    self.fail("WRITE of sector %d holds data we did not write there" % sector)
        if ty == BARRIER and flags & BARRIER_RESYNC_DONE:
            self.done_barrier = seq
        if ty == MARKER:
            st.marker = (seq, struct.unpack_from("<Q", p, 0)[0])
        self.frames.append((seq, ty, flags, p))
        st.pushed = seq

    def until(self, st, cond, timeout, what):
        end = time.monotonic() + timeout * self.env.scale
        while not cond():
            left = end - time.monotonic()
            if left <= 0:
                self.fail("timed out waiting for %s (frames so far: %s)" % (what, [NAMES.get(f[1]) for f in self.frames]))
            try:
                h, p = self.read(min(left / self.env.scale, 0.5))
            except Timeout:
                continue
            except Closed:
                self.fail("connection closed waiting for %s" % what)
            self.session_frame(h, p, st)

    def send_ack(self, st, s, flags=0):
        f = frame(ACK, flags, st.expect, struct.pack("<QQ", s, 0), self.ksp)
        v = pri_frame_verdict(st, f)
        assert v.kind == "accepted", v
        self.apply(st, v)
        send(self.s, f, self.env.scale)

    def apply(self, st, v):
        st.expect += 1
        if v.ty != ACK:
            return
        s = struct.unpack_from("<Q", v.p, 0)[0]
        if v.flags & ACK_MARKER_IGNORED and st.marker and st.marker[0] == s:
            self.t.marker_ignored = st.marker[1]
            st.marker = None
        if s > st.acked:
            self.t.acked += s - st.acked
            st.acked = s
        if st.marker and st.acked >= st.marker[0]:
            self.t.marker_acked = max(self.t.marker_acked or 0, st.marker[1])
            st.marker = None


def pri_bad_frame(rng, t, fs, st):
    """A frame for the primary's receiver: mostly ACKs and PONGs with one thing wrong; returns
    (family, frame)."""
    fam = rng.choices(["ack-beyond", "ack-ignored", "ack-flags", "length", "seq", "crc", "mac", "magic",
                       "version", "type", "wrongtype", "pong-flags", "bitflip"],
                      [14, 16, 6, 8, 10, 6, 10, 3, 3, 4, 10, 3, 3])[0]
    seq = st.expect
    ty, flags, ver, magic, ln, mac = ACK, 0, VERSION, MAGIC, None, None
    s = st.acked if st.acked >= t.first else st.pushed
    p = struct.pack("<QQ", s, rng.getrandbits(64))
    if fam == "ack-beyond":
        margin = 1 if st.quiet else 1000
        s = rng.choice([st.pushed + margin, st.pushed + margin + rng.randint(0, 5000), U64, 2**63,
                        st.pushed + 2**32, st.pushed + margin + 1])
        p = struct.pack("<QQ", s, 0)
    elif fam == "ack-ignored":
        # ACK_MARKER_IGNORED on a frame that is no marker (or with no marker sent at all).
        cands = [x[0] for x in fs.frames if x[1] != MARKER and (not st.marker or x[0] > st.marker[0])]
        recent = cands[-3:]
        cands += [0, t.first - 1, st.acked]
        # Mostly one of the frames of this phase (a write waiting for its ACK, its barrier).
        s = rng.choice(recent if recent and rng.random() < 0.7 else cands)
        if st.marker and s <= st.marker[0]:
            s = st.marker[0] + 1 if st.marker[0] + 1 <= st.pushed else st.pushed + 1000
        p = struct.pack("<QQ", s, 0)
        flags = ACK_MARKER_IGNORED
    elif fam == "ack-flags":
        flags = 1 << rng.randint(1, 15)
    elif fam == "length":
        ty = rng.choice([ACK, PONG])
        lo, hi = LEN_RANGE[ty]
        ln = rng.choice([lo - 1, hi + 1, 0, 64, 65, 0xFFFFFFFF])
        if ty == PONG:
            p = bytes(8)
    elif fam == "seq":
        seq = rng.choice([seq - 1, seq + 1, seq + 7, 0, U64, seq - 2 if seq >= 2 else 9])
        if seq == st.expect:
            seq += 1
    elif fam == "mac":
        if st.key is not None:
            choices = [bytes(32), hmac256(t.key, b"x"), rng.randbytes(32)]
            mac = rng.choice(choices)
        else:
            mac = rng.randbytes(32)
    elif fam == "magic":
        magic = rng.choice([b"WBRQ", bytes(4), rng.randbytes(4)])
        magic = b"XBRP" if magic == MAGIC else magic
    elif fam == "version":
        ver = rng.choice([0, 1, 3, 200])
    elif fam == "type":
        ty = rng.choice([0, 11, 77, 255])
    elif fam == "wrongtype":
        ty = rng.choice([HELLO, AUTH, WRITE, BARRIER, MARKER, PING, RESYNC])
        p = {HELLO: hello_payload(ROLE_SECONDARY, t.sectors, rng.randbytes(32)), AUTH: rng.randbytes(32),
             WRITE: write_fixed(0, 1) + bytes(512), RESYNC: write_fixed(0, 0) + bytes(512),
             BARRIER: struct.pack("<Q", 1), MARKER: marker_payload(1, 1, bytes(64)), PING: bytes(8)}[ty]
    elif fam == "pong-flags":
        ty, flags, p = PONG, 1 << rng.randint(0, 15), bytes(8)
    h = header(ty, flags, seq, len(p) if ln is None else ln, version=ver, magic=magic)
    f = seal(h, p, st.key, mac=mac) + p
    if fam == "crc":
        f = f[:20] + struct.pack("<I", struct.unpack_from("<I", f, 20)[0] ^ rng.randint(1, 0xFFFFFFFF)) + f[24:]
    elif fam == "bitflip":
        b = bytearray(f)
        i = rng.randrange(len(b) * 8)
        b[i // 8] ^= 1 << (i % 8)
        f = bytes(b)
    return fam, f


def pri_hello_case(rng, t, flags):
    """The secondary's HELLO with one thing wrong (or unusual but valid)."""
    fam = rng.choice(["magic", "version", "type", "flags", "seq", "length", "crc", "mac", "role", "reserved",
                      "small", "large", "authflag", "nonce"])
    role, reserved, claimed = ROLE_SECONDARY, bytes(7), t.sectors
    ty, seq, ver, magic, ln, mac = HELLO, 0, VERSION, MAGIC, None, None
    if fam == "magic":
        magic = rng.choice([b"WBRQ", bytes(4)])
    elif fam == "version":
        ver = rng.choice([0, 1, 3])
    elif fam == "type":
        ty = rng.choice([AUTH, ACK, PONG, 0, 99])
    elif fam == "flags":
        flags |= 1 << rng.randint(2, 15)
    elif fam == "seq":
        seq = rng.choice([1, U64])
    elif fam == "length":
        ln = rng.choice([47, 49, 0, 0xFFFFFFFF])
    elif fam == "mac":
        mac = rng.randbytes(32)
    elif fam == "role":
        role = rng.choice([0, ROLE_PRIMARY, 3, 255])
    elif fam == "reserved":
        r = bytearray(7)
        r[rng.randrange(7)] = rng.randint(1, 255)
        reserved = bytes(r)
    elif fam == "small":
        claimed = rng.choice([t.sectors - 1, 0, 16])
    elif fam == "large":
        claimed = rng.choice([t.sectors + 1, U64, 2**40])
    elif fam == "authflag":
        flags ^= HELLO_AUTH
    elif fam == "nonce":
        pass
    p = hello_payload(role, claimed, bytes(32) if fam == "nonce" else rng.randbytes(32), reserved)
    if ty == AUTH:
        p = rng.randbytes(32)
    elif ty == ACK:
        p = bytes(16)
    elif ty == PONG:
        p = bytes(8)
    h = header(ty, flags, seq, len(p) if ln is None else ln, version=ver, magic=magic)
    f = seal(h, p, None, mac=mac) + p
    if fam == "crc":
        f = f[:20] + struct.pack("<I", struct.unpack_from("<I", f, 20)[0] ^ 0x10) + f[24:]
    return "hello-" + fam, f


def connect_code(reason):
    """The connector logs a failure only when its kind differs from the last one (a wire error
    by its kind, a socket error by its errno, anything else as one kind)."""
    if reason.startswith("unexpected frame type"):
        return "other"
    return reason


def pri_case(env, t, case, rng, nonces):
    """One case: the primary's next connection. Returns (kind, reason, family)."""
    start = env.log.mark()
    # The first connection may wait for the primary to be created; then backoff is at most 5 s.
    limit = 30 if t.connects or t.stats else 600
    t.listener.settimeout(limit * env.scale)
    try:
        sock, _ = t.listener.accept()
    except socket.timeout:
        raise Fail("%s case %d: the primary did not connect within %d s" % (t.name, case, limit)) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    fs = FakeSecondary(env, t, case, rng, sock)
    who = fs.who
    re_lost = Line("repl: connection to %s lost: " % who)
    re_cannot = Line("repl: cannot connect to %s: " % who, "; retrying")
    writer = None
    done = False
    try:
        sock.settimeout(10 * env.scale)
        try:
            h, p = read_frame(sock)
        except (Closed, Timeout):
            fs.fail("no HELLO from the primary")
        hp = h + p
        if check(h, p, None, 0) or h[5] != HELLO:
            fs.fail("the primary's HELLO is not valid: %s" % hp.hex())
        role, res, sec, pnonce = parse_hello(p)
        if (role, res, sec, fields(h)[3]) != (ROLE_PRIMARY, bytes(7), t.sectors, HELLO_AUTH if t.key else 0):
            fs.fail("the primary's HELLO says role %d sectors %d flags %d" % (role, sec, fields(h)[3]))
        if pnonce in nonces:
            fs.fail("the primary's HELLO nonce repeats an earlier one")
        nonces.add(pnonce)
        fs.rx = 1
        flags = (HELLO_AUTH if t.key else 0) | HELLO_INCONSISTENT
        r = rng.random()
        fam = None
        if r < 0.15:
            fam, hs = pri_hello_case(rng, t, flags)
        else:
            hs = frame(HELLO, flags, 0, hello_payload(ROLE_SECONDARY, t.sectors, rng.randbytes(32)))
        reason, inconsistent = pri_hello_verdict(t.key, t.sectors, hs)
        at = time.monotonic()
        send(sock, scale=env.scale, data=hs)

        def refused_at_handshake(reason, at):
            code = connect_code(reason)
            logged = code != t.last_err
            t.last_err = code
            t.predicted = "refused"
            if logged:
                expect_refused(env, fs, start, re_cannot, reason, HANDSHAKE_S, at)
            else:
                expect_closed(env, fs, HANDSHAKE_S, at, reason)
            return "refused", reason, fam
        if reason:
            return refused_at_handshake(reason, at)
        fs.tx = 1
        if t.key:
            try:
                h, p = read_frame_raw(sock, 10 * env.scale)
            except (Closed, Timeout):
                fs.fail("no AUTH from the primary")
            if check(h, p, None, 1) or h[5] != AUTH or p != proof(t.key, ROLE_PRIMARY, hp, hs):
                fs.fail("the primary's AUTH is not its proof: %s" % (h + p).hex())
            fs.rx = 2
            pa = frame(AUTH, 0, 1, proof(t.key, ROLE_SECONDARY, hp, hs))
            if fam is None and rng.random() < 0.12:
                fam, pa = auth_case_pri(rng, t, hp, hs)
            reason = auth_reason(t.key, ROLE_SECONDARY, hp, hs, pa)
            at = time.monotonic()
            send(sock, scale=env.scale, data=pa)
            if reason:
                return refused_at_handshake(reason, at)
            fs.kps, fs.ksp = session_keys(t.key, hp, hs)
            fs.tx = 2
        # Installed: the primary resyncs (we said we are inconsistent) or goes on.
        t.connects += 1
        t.last_err = None
        st = PSession(t, fs.ksp)
        phase = rng.choice(["early", "resync", "quiet", "quiet", "write", "write", "marker"])
        if not inconsistent:
            phase = "early"
        if phase != "early":
            fs.until(st, lambda: fs.frames, 15, "the primary's first frame")
        if phase == "resync" and rng.random() < 0.5:
            fs.send_ack(st, fs.frames[0][0])
        if phase in ("quiet", "write", "marker"):
            fs.until(st, lambda: fs.done_barrier is not None, 20, "the resync-done barrier")
            fs.send_ack(st, st.pushed)
            st.quiet = True
        if phase == "write":
            # A write from above: its WRITE frame, then the flush barrier that follows writes.
            n = rng.choice([1, 8])
            sector = rng.randrange(0, t.sectors - 8 - n) // n * n
            data = rng.randbytes(n * 512)
            fs.writes.append((sector * 512, data))
            res = {}

            def do_write():
                r = env.pwrite(t, sector * 512, data)
                res["t"] = time.monotonic()
                res["r"] = r
            # In sync with us first, or the write stays local (and dirty).
            wait_field(env, fs, t.name, "peer_data", "consistent", 10)
            writer = threading.Thread(target=do_write)
            writer.start()
            # (An async write may complete before its frame is read here: 5 s more for it.)
            fs.until(st, lambda: any(x[1] == WRITE for x in fs.frames) or time.monotonic() > res.get("t", 1e18) + 5 * env.scale,
                     30, "the WRITE frame")
            if not any(x[1] == WRITE for x in fs.frames):
                fs.fail("the write from above completed (%s) without a WRITE frame" % (res["r"] or "successfully"))
            w = max(x[0] for x in fs.frames if x[1] == WRITE)
            fs.until(st, lambda: any(x[1] == BARRIER and x[0] > w for x in fs.frames), 10, "the flush barrier after the write")
            st.quiet = True
            time.sleep(0.1 * env.scale)  # its local write completes meanwhile
        if phase == "marker":
            wait_field(env, fs, t.name, "peer_data", "consistent", 10)
            for _ in range(50):
                rc, out = env.message(t.name, "marker", "wf%d" % case)
                if rc == 0:
                    break
                time.sleep(0.1 * env.scale)
            if rc != 0:
                fs.fail("marker message refused: %s" % out)
            mid = int(out)
            if t.marker is not None and mid != t.marker + 1:
                fs.fail("marker id %d after %d" % (mid, t.marker))
            t.marker = mid
            fs.until(st, lambda: st.marker is not None, 10, "the MARKER frame")
            st.quiet = True
        # The last frame.
        r = rng.random()
        if fam is not None or r < 0.12:
            fam = fam or "valid"
            f = valid_pri_frame(rng, t, fs, st)
        elif r < 0.15:
            fam, f = "close", frame(CLOSE, 0, st.expect, bytes(4), st.key)
        else:
            fam, f = pri_bad_frame(rng, t, fs, st)
        v = pri_frame_verdict(st, f)
        if v.kind == "accepted":
            fs.apply(st, v)
            send(sock, scale=env.scale, data=f)
            f = frame(CLOSE, 0, st.expect, bytes(4), st.key)
            v = pri_frame_verdict(st, f)
        at = time.monotonic()
        send(sock, scale=env.scale, data=f)
        allow = lambda h, p: h[5] in (WRITE, RESYNC, BARRIER, MARKER, PING, CLOSE)  # noqa: E731
        reason = R_CLOSED if v.kind == "closed" else v.reason
        t.predicted = v.kind
        expect_refused(env, fs, start, re_lost, reason, PRIMARY_DEAD_S, at, allow)
        t.prev_ksp = fs.ksp
        done = True
        return ("closed" if v.kind == "closed" else "refused"), reason, fam
    finally:
        shut(sock)
        if writer is not None:
            # The write from above completes, and succeeds: a refused frame loses nothing.
            writer.join(30 * env.scale)
            if done and writer.is_alive():
                raise Fail("%s case %d (%s): the write from above did not complete within 30 s" % (t.name, case, fam))
            if done and res.get("r"):
                raise Fail("%s case %d (%s): the write from above failed: %s" % (t.name, case, fam, res["r"]))
            s, d = fs.writes[-1]
            t.disk[s:s + len(d)] = d


def auth_case_pri(rng, t, hp, hs):
    fam = rng.choice(["random", "reflected", "wrongkey", "seq", "length", "type", "mac"])
    good = proof(t.key, ROLE_SECONDARY, hp, hs)
    p, seq, ty, ln, mac = good, 1, AUTH, None, None
    if fam == "random":
        p = rng.randbytes(32)
    elif fam == "reflected":
        p = proof(t.key, ROLE_PRIMARY, hp, hs)
    elif fam == "wrongkey":
        p = proof(b"guess", ROLE_SECONDARY, hp, hs)
    elif fam == "seq":
        seq = rng.choice([0, 2])
    elif fam == "length":
        ln = rng.choice([31, 33])
    elif fam == "type":
        ty = rng.choice([PONG, ACK, HELLO])
        p = {PONG: bytes(8), ACK: bytes(16), HELLO: hello_payload(ROLE_SECONDARY, t.sectors, bytes(32))}[ty]
    elif fam == "mac":
        mac = rng.randbytes(32)
    h = header(ty, 0, seq, len(p) if ln is None else ln)
    return "auth-" + fam, seal(h, p, None, mac=mac) + p


def valid_pri_frame(rng, t, fs, st):
    """An accepted frame with an unusual value: a duplicate or exact ACK, a PONG, the marker's
    ACK with or without ACK_MARKER_IGNORED, ACK_MARKER_IGNORED below a pending marker."""
    choices = ["dup", "exact", "pong"]
    if st.marker:
        choices += ["marker", "marker-ignored", "marker-ignored", "below-marker"]
    k = rng.choice(choices)
    flags = 0
    if k == "dup":
        s = rng.choice([0, t.first - 1, st.acked, max(st.acked - 1, 0)])
    elif k == "exact":
        s = st.pushed
    elif k == "pong":
        return frame(PONG, 0, st.expect, rng.randbytes(8), st.key)
    elif k == "marker":
        s = st.marker[0]
    elif k == "marker-ignored":
        s, flags = st.marker[0], ACK_MARKER_IGNORED
    else:
        s, flags = rng.randint(0, st.marker[0] - 1), ACK_MARKER_IGNORED
    return frame(ACK, flags, st.expect, struct.pack("<QQ", s, rng.getrandbits(64)), st.key)


def wait_field(env, fs, name, key, value, timeout):
    end = time.monotonic() + timeout * env.scale
    while True:
        st = env.status(name)
        if st.get(key) == value:
            return
        if time.monotonic() > end:
            fs.fail("%s stays %s %s (expected %s)" % (name, key, st.get(key), value))
        time.sleep(0.05 * env.scale)


def expect_closed(env, fs, limit, at, reason):
    """A refusal the connector does not log (the same kind as the last one): the connection is
    closed in time and nothing is sent."""
    while True:
        left = at + limit * env.scale - time.monotonic()
        if left <= 0:
            fs.fail("not closed within %.0f s (expected: %s)" % (limit, reason))
        try:
            h, p = read_frame_raw(fs.s, left)
        except Timeout:
            continue
        except Closed:
            return
        fs.fail("got a %s frame instead of a refusal (%s)" % (NAMES.get(h[5], h[5]), reason))


def run_primary(env, conf, cases, seed, ready=None, out=sys.stdout, on_listen=None, stop_on_failure=True):
    targets = [PriTarget(c, i) for i, c in enumerate(conf["targets"])]
    for t in targets:
        t.listener = env.listener(t.host, t.port)
        t.port = t.listener.getsockname()[1]
    if ready:
        with open(ready, "w") as f:
            json.dump([t.port for t in targets], f)
    if on_listen:
        on_listen([t.port for t in targets])
    failures = []
    lock = threading.Lock()
    nonces = set()

    def worker(t):
        mine = [i for i in range(cases) if i % len(targets) == t.tidx]
        for i in mine:
            rng = random.Random("%d/p%d" % (seed, i))
            t.predicted = None
            try:
                kind, reason, fam = pri_case(env, t, i, rng, nonces)
                t.stats[kind] += 1
                t.stats["%s: %s" % (kind, reason)] += 1
                t.stats["family " + (fam or "?")] += 1
            except Fail as e:
                t.failed = str(e)
            except Exception:  # noqa: BLE001
                t.failed = "%s case %d: %s" % (t.name, i, traceback.format_exc(limit=4))
            t.stats["predicted " + str(t.predicted)] += 1
            if t.failed:
                t.stats["reported " + str(t.predicted)] += 1
                with lock:
                    failures.append(t.failed + (" (stopped fuzzing this target)" if stop_on_failure else ""))
                if stop_on_failure:
                    return
                t.failed = None
    t0, c0 = time.monotonic(), time.process_time()
    threads = [threading.Thread(target=worker, args=(t,)) for t in targets]
    for x in threads:
        x.start()
    for x in threads:
        x.join()
    dt = time.monotonic() - t0
    print("# time: %.0f s, of which this process's CPU %.0f s" % (dt, time.process_time() - c0), file=out)
    for t in targets:
        t.listener.close()
    # Counters, once nothing connects any more.
    time.sleep(0.5 * env.scale)
    for t in targets:
        if t.failed or not stop_on_failure:
            continue
        try:
            compare_status(t.name, env.status(t.name), t.status_expected())
        except Fail as e:
            failures.append(str(e))
    total = collections.Counter()
    for t in targets:
        total.update(t.stats)
        print("# %s%s (%s): %d cases: %d refused, %d closed after accepted frames; %d connections, %d frames acknowledged" % (
            t.name, " (auth)" if t.key else "", "sync" if t.sync else "async", t.stats["refused"] + t.stats["closed"],
            t.stats["refused"], t.stats["closed"], t.connects, t.acked), file=out)
    print("# reasons: " + "; ".join("%s %d" % (k[9:], v) for k, v in sorted(total.items()) if k.startswith("refused: ")), file=out)
    print("# families: " + ", ".join("%s %d" % (k[7:], v) for k, v in sorted(total.items()) if k.startswith("family ")), file=out)
    n = total["refused"] + total["closed"]
    print("wirefuzz primary: seed %d: %d cases on %d targets (%d refused frames, %d closed after accepted frames) "
          "in %.0f s: %d failures" % (seed, n, len(targets), total["refused"], total["closed"], dt, len(failures)), file=out)
    for f in failures:
        print("FAIL: " + f, file=out)
    return failures, total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("secondary", "primary"):
        s = sub.add_parser(name)
        s.add_argument("config")
        s.add_argument("--cases", type=int, required=True)
        s.add_argument("--seed", type=int, required=True)
        s.add_argument("--ready")
    sub.add_parser("self-test")
    a = ap.parse_args()
    if a.cmd == "self-test":
        import wirefuzz_selftest
        return wirefuzz_selftest.main()
    with open(a.config) as f:
        conf = json.load(f)
    env = RealEnv(conf.get("kmsg", "/dev/kmsg"))
    print("# wirefuzz %s: seed %d, %d cases" % (a.cmd, a.seed, a.cases), flush=True)
    if a.cmd == "secondary":
        failures, _ = run_secondary(env, conf, a.cases, a.seed)
    else:
        failures, _ = run_primary(env, conf, a.cases, a.seed, a.ready)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
