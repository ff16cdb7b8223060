#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""The dm-repl wire protocol, version 2, written again from docs/repl.md ("Wire protocol") for
the tests: frames with their CRC-32C and HMAC-SHA256, payloads, the handshake's proofs and
per-direction session keys, marker records, and a frame reader.

Deliberately independent of rust/core/src/wire.rs: the fuzzer (wirefuzz.py) checks the kernel
against the document, so it must not share the kernel's code (a MAC computed over the wrong bytes
by both would go unnoticed). `python3 replwire.py` checks the CRC against the CRC-32C check value
and HMAC-SHA256 against RFC 4231.
"""
import hashlib
import hmac
import socket
import struct

MAGIC = b"WBRP"
VERSION = 2
HDR = 56
MAC_LEN = 32
NONCE_LEN = 32
HELLO, AUTH, WRITE, BARRIER, ACK, MARKER, PING, PONG, RESYNC, CLOSE = range(1, 11)
NAMES = {HELLO: "HELLO", AUTH: "AUTH", WRITE: "WRITE", BARRIER: "BARRIER", ACK: "ACK", MARKER: "MARKER",
         PING: "PING", PONG: "PONG", RESYNC: "RESYNC_WRITE", CLOSE: "CLOSE"}
HELLO_AUTH = 1
HELLO_INCONSISTENT = 2
WRITE_FUA = 1
BARRIER_FLUSH = 1
BARRIER_RESYNC_DONE = 2
ACK_MARKER_IGNORED = 1
ROLE_PRIMARY = 1
ROLE_SECONDARY = 2
WRITE_FIXED = 24
MAX_DATA = 1 << 20
MAX_PAYLOAD = WRITE_FIXED + MAX_DATA
HELLO_LEN = 48
LABEL_LEN = 64
MARKER_LEN = 16 + LABEL_LEN
# Flag bits each type defines, and its allowed payload lengths (the "Frame types" table).
FLAG_MASK = {HELLO: HELLO_AUTH | HELLO_INCONSISTENT, WRITE: WRITE_FUA, RESYNC: WRITE_FUA,
             BARRIER: BARRIER_FLUSH | BARRIER_RESYNC_DONE, ACK: ACK_MARKER_IGNORED}
LEN_RANGE = {HELLO: (HELLO_LEN, HELLO_LEN), AUTH: (MAC_LEN, MAC_LEN), WRITE: (WRITE_FIXED + 512, MAX_PAYLOAD),
             RESYNC: (WRITE_FIXED + 512, MAX_PAYLOAD), BARRIER: (8, 8), ACK: (16, 16), MARKER: (MARKER_LEN, MARKER_LEN),
             PING: (8, 8), PONG: (8, 8), CLOSE: (4, 4)}
# The handshake's labels.
PROOF_LABEL = {ROLE_PRIMARY: b"wbrepl-v2 auth primary", ROLE_SECONDARY: b"wbrepl-v2 auth secondary"}
KEY_P2S = b"wbrepl-v2 key primary to secondary"
KEY_S2P = b"wbrepl-v2 key secondary to primary"
MARKER_MAGIC = b"WBRPMRK1"

# --- CRC-32C (Castagnoli, reflected), slicing by 8.
_POLY = 0x82F63B78
_T = [[0] * 256 for _ in range(8)]
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ _POLY if _c & 1 else _c >> 1
    _T[0][_i] = _c
for _k in range(1, 8):
    for _i in range(256):
        _p = _T[_k - 1][_i]
        _T[_k][_i] = (_p >> 8) ^ _T[0][_p & 0xFF]
_T0, _T1, _T2, _T3, _T4, _T5, _T6, _T7 = _T


def crc32c(data, crc=0):
    """CRC-32C of data, continuing a CRC of what came before it (0 to start)."""
    c = crc ^ 0xFFFFFFFF
    mv = memoryview(data).cast("B")
    n8 = len(mv) - len(mv) % 8
    for (a,) in struct.iter_unpack("<Q", mv[:n8]):
        x = c ^ (a & 0xFFFFFFFF)
        h = a >> 32
        c = (_T7[x & 0xFF] ^ _T6[(x >> 8) & 0xFF] ^ _T5[(x >> 16) & 0xFF] ^ _T4[x >> 24]
             ^ _T3[h & 0xFF] ^ _T2[(h >> 8) & 0xFF] ^ _T1[(h >> 16) & 0xFF] ^ _T0[h >> 24])
    for b in mv[n8:]:
        c = _T0[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


# Combining CRCs: the CRC of A || B from those of A and B (zlib's crc32_combine, for CRC-32C).
# An operator on the CRC register is kept as 4 tables of 256 (it is linear over GF(2)).
def _op(fn):
    return tuple([fn(i << (8 * k)) for i in range(256)] for k in range(4))


def _apply(op, c):
    return op[0][c & 0xFF] ^ op[1][(c >> 8) & 0xFF] ^ op[2][(c >> 16) & 0xFF] ^ op[3][c >> 24]


# _ZEROS[k]: 2^k zero bytes through the register (built here once: threads share it).
_ZEROS = [_op(lambda x: _T0[x & 0xFF] ^ (x >> 8))]
for _k in range(1, 22):
    _ZEROS.append(_op(lambda x, t=_ZEROS[-1]: _apply(t, _apply(t, x))))


def crc32c_shift(c, n):
    """The CRC register c after n more zero bytes (n < 4 MiB)."""
    assert 0 <= n < 1 << len(_ZEROS)
    k = 0
    while n:
        if n & 1:
            c = _apply(_ZEROS[k], c)
        n >>= 1
        k += 1
    return c


def shift_by(n):
    """A function: the CRC register after n more zero bytes (tables made once, for a fixed n)."""
    op = _op(lambda x: crc32c_shift(x, n))
    return lambda c: _apply(op, c)


def crc32c_combine(crc_a, crc_b, len_b):
    """CRC-32C of A || B, given CRC-32C of A, of B and the length of B."""
    return crc32c_shift(crc_a, len_b) ^ crc_b


def hmac256(key, *parts):
    m = hmac.new(key, digestmod=hashlib.sha256)
    for p in parts:
        m.update(p)
    return m.digest()


def header(ty, flags, seq, length, version=VERSION, magic=MAGIC):
    """A header with zero CRC and MAC fields; every field may be out of range (the fuzzer's)."""
    return (magic + bytes([version & 0xFF, ty & 0xFF]) + struct.pack("<HQI", flags & 0xFFFF, seq & (2**64 - 1), length & 0xFFFFFFFF)
            + bytes(HDR - 20))


def seal(hdr, payload, key=None, crc=None, mac=None, payload_crc=None):
    """The header with its CRC (of the header with zero CRC and MAC, then the payload) and its MAC
    (HMAC-SHA256 under `key` of the same bytes; zero without a key). `crc`/`mac` override them;
    `payload_crc`, the CRC-32C of the payload alone, saves computing it again."""
    zeroed = bytes(hdr[:20]) + bytes(HDR - 20)
    if crc is not None:
        c = crc
    elif payload_crc is not None:
        c = crc32c_combine(crc32c(zeroed), payload_crc, len(payload))
    else:
        c = crc32c(payload, crc32c(zeroed))
    if mac is None:
        mac = hmac256(key, zeroed, payload) if key is not None else bytes(MAC_LEN)
    return zeroed[:20] + struct.pack("<I", c & 0xFFFFFFFF) + mac


def frame(ty, flags, seq, payload, key=None, length=None, payload_crc=None, **kw):
    """A whole frame: sealed header and payload. `length` overrides the header's length field."""
    h = header(ty, flags, seq, len(payload) if length is None else length, **kw)
    return seal(h, payload, key, payload_crc=payload_crc) + payload


def fields(hdr):
    """(magic, version, type, flags, seq, len, crc, mac) of a header."""
    flags, seq, n = struct.unpack_from("<HQI", hdr, 6)
    return hdr[:4], hdr[4], hdr[5], flags, seq, n, struct.unpack_from("<I", hdr, 20)[0], bytes(hdr[24:56])


def check(hdr, payload, key, seq, verify_crc=True):
    """Why a received frame is not valid (None if it is): everything a receiver checks but what is
    allowed in its conversation (the type, the payload's fields). The CRC is skipped without
    verify_crc (the Python CRC is slow on large frames; the MAC still covers them with a key)."""
    magic, version, ty, flags, fseq, n, crc, mac = fields(hdr)
    if magic != MAGIC:
        return "bad magic"
    if version != VERSION:
        return "version %d" % version
    if ty not in LEN_RANGE:
        return "type %d" % ty
    if flags & ~FLAG_MASK.get(ty, 0):
        return "flags %#x on %s" % (flags, NAMES[ty])
    lo, hi = LEN_RANGE[ty]
    if not lo <= n <= hi or n != len(payload):
        return "length %d of %s" % (n, NAMES[ty])
    zeroed = bytes(hdr[:20]) + bytes(HDR - 20)
    if verify_crc and crc32c(payload, crc32c(zeroed)) != crc:
        return "CRC-32C"
    want = hmac256(key, zeroed, payload) if key is not None else bytes(MAC_LEN)
    if not hmac.compare_digest(want, mac):
        return "MAC"
    if fseq != seq:
        return "sequence number %d, expected %d" % (fseq, seq)
    return None


# --- payloads

def hello_payload(role, sectors, nonce, reserved=bytes(7)):
    return bytes([role & 0xFF]) + reserved + struct.pack("<Q", sectors & (2**64 - 1)) + nonce


def parse_hello(p):
    return p[0], bytes(p[1:8]), struct.unpack_from("<Q", p, 8)[0], bytes(p[16:48])


def write_fixed(sector, epoch, reserved=bytes(8)):
    return struct.pack("<QQ", sector & (2**64 - 1), epoch & (2**64 - 1)) + reserved


def marker_payload(mid, time_ns, label):
    return struct.pack("<QQ", mid & (2**64 - 1), time_ns & (2**64 - 1)) + label


def label_ok(label):
    """Printable ASCII, then only NULs (rust/core/src/marker.rs label_ok)."""
    n = label.find(b"\0")
    n = len(label) if n < 0 else n
    return all(0x20 <= b < 0x7F for b in label[:n]) and not any(label[n:])


def label_word(label):
    """How status prints a label: its text up to the first NUL, blanks and other non-graphic
    bytes as _, - for none."""
    n = label.find(b"\0")
    t = label[: len(label) if n < 0 else n]
    return "".join(chr(b) if 0x21 <= b < 0x7F else "_" for b in t) or "-"


def marker_record(mid, time_ns, label):
    """A marker record (one sector), as a write into the marker region carries it."""
    b = MARKER_MAGIC + struct.pack("<QQ", mid & (2**64 - 1), time_ns & (2**64 - 1)) + label
    return b + struct.pack("<I", crc32c(b)) + bytes(512 - len(b) - 4)


def parse_record(sector):
    """(id, time, label) of a valid marker record, else None (rust/core/src/marker.rs decode)."""
    s = bytes(sector[:512])
    if len(s) < 512 or s[:8] != MARKER_MAGIC or any(s[92:]):
        return None
    if crc32c(s[:88]) != struct.unpack_from("<I", s, 88)[0]:
        return None
    label = s[24:88]
    if not label_ok(label):
        return None
    mid, t = struct.unpack_from("<QQ", s, 8)
    return mid, t, label


# --- handshake

def proof(key, role, primary_hello, secondary_hello):
    """A side's AUTH proof: HMAC(K, its role's label || both HELLO frames as sent, primary's first)."""
    return hmac256(key, PROOF_LABEL[role], primary_hello, secondary_hello)


def session_keys(key, primary_hello, secondary_hello):
    """(K_PS, K_SP): the MAC keys of the frames primary -> secondary and back."""
    return hmac256(key, KEY_P2S, primary_hello, secondary_hello), hmac256(key, KEY_S2P, primary_hello, secondary_hello)


# --- frames on a socket

class Closed(Exception):
    """The peer closed the connection (or reset it)."""


class Timeout(Exception):
    """Nothing (complete) arrived in time."""


def recv_exact(sock, n):
    """n bytes, or Closed / Timeout (socket timeout as set by the caller)."""
    out = bytearray()
    while len(out) < n:
        try:
            b = sock.recv(min(n - len(out), 1 << 20))
        except socket.timeout:
            raise Timeout() from None
        except OSError:
            raise Closed() from None
        if not b:
            raise Closed()
        out += b
    return bytes(out)


def read_frame(sock):
    """(header, payload) of the next frame. A length above MAX_PAYLOAD is returned with no payload
    read (the caller refuses it)."""
    h = recv_exact(sock, HDR)
    n = struct.unpack_from("<I", h, 16)[0]
    if n > MAX_PAYLOAD:
        return h, None
    return h, recv_exact(sock, n)


def self_check():
    assert crc32c(b"123456789") == 0xE3069283, "CRC-32C check value"
    assert crc32c(b"56789", crc32c(b"1234")) == 0xE3069283, "CRC-32C continued"
    t = hmac256(b"Jefe", b"what do ya want ", b"for nothing?")
    assert t.hex().startswith("5bdcc146") and t.hex().endswith("64ec3843"), "HMAC-SHA256 (RFC 4231 case 2)"
    import os
    a, b = os.urandom(1000), os.urandom(4321)
    assert crc32c_combine(crc32c(a), crc32c(b), len(b)) == crc32c(a + b), "CRC-32C combined"
    assert seal(header(WRITE, 0, 1, len(a)), a, payload_crc=crc32c(a)) == seal(header(WRITE, 0, 1, len(a)), a)
    f = frame(PING, 0, 3, bytes(8), key=b"k")
    assert check(f[:HDR], f[HDR:], b"k", 3) is None
    assert check(f[:HDR], f[HDR:], None, 3) == "MAC"
    print("replwire self-test: ok")


if __name__ == "__main__":
    self_check()
