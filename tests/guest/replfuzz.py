#!/usr/bin/env python3
"""Sends malformed dm-repl frames to a secondary and checks that each is refused.

    replfuzz.py HOST PORT SECTORS CASES [--auth]

Every case uses a fresh connection. Without --auth it completes the handshake as a primary,
sends one valid WRITE (which must be acknowledged: the session is alive), then one bad frame,
then closes its sending side. The bad frame must not be acknowledged (nothing more may arrive)
and the secondary must close the connection. Bad frames: every kind of single-bit flip of a
valid WRITE (header, CRC, MAC field, payload), oversized and truncated lengths, replayed and
skipped sequence numbers, frame types a primary never sends, unknown types and flags, writes
beyond the device. With --auth (the secondary requires authentication; this side has no key):
random bytes and a HELLO followed by a random proof, which must be refused before any
acknowledgement. Prints one summary line; exits 1 on any accepted bad frame.
"""
import os
import random
import socket
import struct
import sys

POLY = 0x82F63B78
TABLE = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ POLY if c & 1 else c >> 1
    TABLE.append(c)


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


HELLO, AUTH, WRITE, BARRIER, ACK, MARKER, PING, PONG, RESYNC, CLOSE = range(1, 11)
HDR = 56
VERSION = 2  # the protocol version (rust/core/src/wire.rs)


def frame(ty, flags, seq, payload, length=None):
    n = len(payload) if length is None else length
    hdr = b"WBRP" + bytes([VERSION, ty]) + struct.pack("<HQI", flags, seq, n)
    hdr += bytes(HDR - len(hdr))
    c = crc32c(hdr + payload)
    return hdr[:20] + struct.pack("<I", c) + bytes(32) + payload


def hello(sectors):
    return bytes([1]) + bytes(7) + struct.pack("<Q", sectors) + os.urandom(32)


def write_payload(sector, data):
    return struct.pack("<QQ", sector, 1) + bytes(8) + data


def recv_all(s, n):
    out = b""
    while len(out) < n:
        b = s.recv(n - len(out))
        if not b:
            break
        out += b
    return out


def rest(s):
    """Everything the peer sends until it closes (or 10 s pass)."""
    out = b""
    try:
        while True:
            b = s.recv(4096)
            if not b:
                return out, True
            out += b
    except OSError as e:
        if isinstance(e, socket.timeout):
            return out, False
        return out, True


def refused(s, name, failures):
    """Ends our side of the case; the peer must have sent nothing more and closed."""
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # already dropped by the secondary
    got, closed = rest(s)
    s.close()
    if got or not closed:
        failures.append("%s: %d bytes back, closed=%s" % (name, len(got), closed))


def connect(host, port):
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def session(host, port, sectors):
    s = connect(host, port)
    s.sendall(frame(HELLO, 0, 0, hello(sectors)))
    h = recv_all(s, HDR + 48)
    if len(h) != HDR + 48 or h[:4] != b"WBRP" or h[5] != HELLO:
        raise RuntimeError("no HELLO from the secondary")
    # A valid write, acknowledged: the session works.
    s.sendall(frame(WRITE, 0, 1, write_payload(8, bytes(4096))))
    a = recv_all(s, HDR + 16)
    if len(a) != HDR + 16 or a[5] != ACK:
        raise RuntimeError("valid WRITE not acknowledged")
    return s


def bad_frames(sectors, rng, n):
    good = frame(WRITE, 0, 2, write_payload(16, bytes(rng.getrandbits(8) for _ in range(1024))))
    cases = []
    # Every bit of the header, and bits of the payload.
    for bit in range(HDR * 8):
        b = bytearray(good)
        b[bit // 8] ^= 1 << (bit % 8)
        cases.append(("flip header bit %d" % bit, bytes(b)))
    while len(cases) < n - 12:
        b = bytearray(good)
        i = rng.randrange(HDR, len(b))
        b[i] ^= 1 << rng.randrange(8)
        cases.append(("flip payload byte %d" % i, bytes(b)))
    data = write_payload(16, bytes(4096))
    cases += [
        ("oversized length", frame(WRITE, 0, 2, data, length=(1 << 20) + 4096 + 24)),
        ("huge length", frame(WRITE, 0, 2, data, length=0xFFFFFFF0)),
        ("truncated payload", frame(WRITE, 0, 2, data)[:-100]),
        ("replayed sequence", frame(WRITE, 0, 1, data)),
        ("skipped sequence", frame(WRITE, 0, 3, data)),
        ("ACK from the primary", frame(ACK, 0, 2, bytes(16))),
        ("HELLO mid-session", frame(HELLO, 0, 2, hello(sectors))),
        ("AUTH mid-session", frame(AUTH, 0, 2, bytes(32))),
        ("unknown type", frame(99, 0, 2, bytes(8))),
        ("unknown flag", frame(WRITE, 0x8000, 2, data)),
        ("write beyond the device", frame(WRITE, 0, 2, write_payload(sectors - 4, bytes(4096)))),
        ("nonzero MAC without auth", frame(WRITE, 0, 2, data)[:24] + b"\x01" + bytes(31) + data),
    ]
    return cases


def main():
    host, port, sectors, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    auth = "--auth" in sys.argv
    rng = random.Random(int.from_bytes(os.urandom(8), "little"))
    failures = []
    done = 0
    if auth:
        cases = []
        for i in range(n):
            if i % 2:
                cases.append(("random bytes", os.urandom(rng.randrange(1, 300)), False))
            else:
                cases.append(("random proof", os.urandom(32), True))
        for name, payload, with_hello in cases:
            s = connect(host, port)
            if with_hello:
                s.sendall(frame(HELLO, 1, 0, hello(sectors)))
                h = recv_all(s, HDR + 48)
                if len(h) != HDR + 48:
                    failures.append(name + ": no HELLO")
                    s.close()
                    continue
                s.sendall(frame(AUTH, 0, 1, payload))
            else:
                s.sendall(payload)
            # Nothing after the HELLO: no proof of the secondary, no acknowledgement.
            refused(s, name, failures)
            done += 1
    else:
        for name, bad in bad_frames(sectors, rng, n):
            s = session(host, port, sectors)
            try:
                s.sendall(bad)
            except OSError:
                pass  # already dropped by the secondary
            refused(s, name, failures)
            done += 1
    print("fuzz: %d cases, %d accepted" % (done, len(failures)))
    for f in failures[:20]:
        print("  accepted: " + f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
