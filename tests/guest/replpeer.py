#!/usr/bin/env python3
"""Stand-in dm-repl peers and a man in the middle, for the tests of issue 13 (items 11, 12).

    replpeer.py mitm LISTEN_HOST PORT TARGET_HOST TARGET_PORT SECONDS
        Relays every connection to the target, but clears HELLO_INCONSISTENT in the target's
        HELLO (fixing its CRC), as an attacker on the link could: with protocol 1 the proofs did
        not cover the HELLO flags, so the primary never learnt of an interrupted resync. Prints
        "mitm: N connections, M HELLOs changed, K bytes relayed after the handshake".
    replpeer.py cut LISTEN_HOST PORT TARGET_HOST TARGET_PORT SECONDS DIR
        Relays connections to the target in four acts, for the stale-resync test (item 6):
        connection 1 until DIR/cut exists; then every connection is closed at once until
        DIR/go exists; the next one is relayed until the primary's first RESYNC_WRITE, which
        is dropped with everything after it (the secondary never sees the resync begin): the
        link stalls there (nothing is read from the primary, whose sender blocks once the TCP
        buffers are full; DIR/stalled is created) until DIR/drain exists, then what the primary
        sends is read and dropped until it has sent nothing for 2 s, and the connection is
        closed (DIR/closed); later ones are relayed whole, and the types of the primary's frames
        are recorded (DIR/recording is created when that starts); ends when DIR/done exists (or
        after SECONDS). Prints "cut: stalled at the first RESYNC_WRITE; N bytes drained, then
        quiet" and "cut: reconnection: N WRITE frames before the first RESYNC_WRITE (index I of
        M frames); the first: TYPE ..." (the types up to that RESYNC_WRITE, at most 40).
    replpeer.py fake-primary HOST PORT SECTORS
        A primary without auth: a RESYNC_WRITE (the secondary is then inconsistent), then a
        MARKER. The marker's ACK must carry ACK_MARKER_IGNORED (exit 0), not count as recorded.
    replpeer.py fake-secondary HOST PORT SECTORS SECONDS
        A secondary without auth for one primary: acknowledges every frame, but a MARKER with
        ACK_MARKER_IGNORED (as a resyncing secondary does). Prints what it got.

The frame format is replfuzz.py's (docs/repl.md, "Wire protocol").
"""
import os
import select
import socket
import struct
import sys
import threading
import time

from replfuzz import ACK, HDR, HELLO, MARKER, RESYNC, WRITE, frame, hello, recv_all, write_payload

HELLO_INCONSISTENT = 2
ACK_MARKER_IGNORED = 1
HELLO_FRAME = HDR + 48


def read_frame(s):
    h = recv_all(s, HDR)
    if len(h) != HDR:
        return None, None, None, None
    ty, flags, seq, n = h[5], struct.unpack_from("<H", h, 6)[0], struct.unpack_from("<Q", h, 8)[0], struct.unpack_from("<I", h, 16)[0]
    p = recv_all(s, n)
    return ty, flags, seq, p


def mitm(lhost, port, thost, tport, seconds):
    stats = {"conns": 0, "changed": 0, "after": 0}
    lock = threading.Lock()

    def pipe(src, dst, first_hello):
        buf = b""
        try:
            if first_hello:
                buf = recv_all(src, HELLO_FRAME)
                if len(buf) == HELLO_FRAME and buf[5] == HELLO:
                    flags = struct.unpack_from("<H", buf, 6)[0]
                    if flags & HELLO_INCONSISTENT:
                        # Sealed anew (replfuzz.frame computes the CRC) with the flag cleared.
                        buf = frame(HELLO, flags & ~HELLO_INCONSISTENT, 0, buf[HDR:])
                        with lock:
                            stats["changed"] += 1
                dst.sendall(buf)
            while True:
                b = src.recv(65536)
                if not b:
                    break
                with lock:
                    stats["after"] += len(b)
                dst.sendall(b)
        except OSError:
            pass
        for x in (src, dst):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((lhost, port))
    ls.listen(4)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        r, _, _ = select.select([ls], [], [], 0.2)
        if not r:
            continue
        c, _ = ls.accept()
        try:
            t = socket.create_connection((thost, tport), timeout=5)
        except OSError:
            c.close()
            continue
        t.settimeout(None)
        stats["conns"] += 1
        threading.Thread(target=pipe, args=(c, t, False), daemon=True).start()
        threading.Thread(target=pipe, args=(t, c, True), daemon=True).start()
    print("mitm: %d connections, %d HELLOs changed, %d bytes relayed after the handshake"
          % (stats["conns"], stats["changed"], stats["after"]))


def relay_frames(src, dst, on_frame):
    """Relays whole frames from src to dst; on_frame(type) -> False drops it and stops."""
    while True:
        h = recv_all(src, HDR)
        if len(h) != HDR:
            return
        p = recv_all(src, struct.unpack_from("<I", h, 16)[0])
        if not on_frame(h[5]):
            return
        dst.sendall(h + p)


def stall_at_resync(c, t, d, stats):
    """Act 3 of `cut`: relays the primary's frames until its first RESYNC_WRITE (dropped, with
    everything after it), stalls until DIR/drain, drains until the primary is quiet, closes."""
    seen = []

    def until_resync(ty):
        if ty == RESYNC:
            seen.append(ty)
            return False
        return True
    try:
        relay_frames(c, t, until_resync)
    except OSError:
        pass
    if seen:
        open(d + "/stalled", "w").close()
        while not (os.path.exists(d + "/drain") or os.path.exists(d + "/done")):
            time.sleep(0.05)
        n = 0
        c.settimeout(2)
        try:
            while True:
                b = c.recv(1 << 20)
                if not b:
                    break
                n += len(b)
        except OSError:  # socket.timeout: quiet for 2 s
            pass
        stats["drained"] = n
    for x in (c, t):
        try:
            x.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    open(d + "/closed", "w").close()


def cut(lhost, port, thost, tport, seconds, d):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((lhost, port))
    ls.listen(4)
    end = time.monotonic() + seconds
    act = 1
    record = []
    threads = []
    stats = {}

    def close(*socks):
        for x in socks:
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def back(t, c):
        try:
            while True:
                b = t.recv(65536)
                if not b:
                    break
                c.sendall(b)
        except OSError:
            pass
        close(c, t)

    while time.monotonic() < end and not os.path.exists(d + "/done"):
        r, _, _ = select.select([ls], [], [], 0.1)
        if act == 1 and os.path.exists(d + "/cut"):
            for x in threads:
                close(*x)
            act = 2
        if not r:
            continue
        c, _ = ls.accept()
        if act == 2 and not os.path.exists(d + "/go"):
            c.close()
            continue
        t = socket.create_connection((thost, tport), timeout=5)
        t.settimeout(None)
        threads.append((c, t))
        threading.Thread(target=back, args=(t, c), daemon=True).start()
        if act == 1:
            threading.Thread(target=lambda c=c, t=t: (relay_frames(c, t, lambda ty: True), close(c, t)), daemon=True).start()
        elif act == 2:
            act = 3
            threading.Thread(target=stall_at_resync, args=(c, t, d, stats), daemon=True).start()
        else:
            act = 4
            open(d + "/recording", "w").close()

            def rec(ty):
                record.append(ty)
                return True
            threading.Thread(target=lambda c=c, t=t: (relay_frames(c, t, rec), close(c, t)), daemon=True).start()
    if "drained" in stats:
        print("cut: stalled at the first RESYNC_WRITE; %d bytes drained, then quiet" % stats["drained"])
    first = record.index(RESYNC) if RESYNC in record else len(record)
    before = sum(1 for ty in record[:first] if ty == WRITE)
    names = {HELLO: "HELLO", 2: "AUTH", WRITE: "WRITE", RESYNC: "RESYNC_WRITE", 4: "BARRIER", MARKER: "MARKER", 7: "PING", 10: "CLOSE"}
    print("cut: reconnection: %d WRITE frames before the first RESYNC_WRITE (index %d of %d frames); the first: %s"
          % (before, first, len(record), " ".join(names.get(ty, str(ty)) for ty in record[:first + 1][:40])))


def marker_payload(mid, label):
    lb = label.encode()
    return struct.pack("<QQ", mid, time.time_ns()) + lb + bytes(64 - len(lb))


def fake_primary(host, port, sectors):
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(frame(HELLO, 0, 0, hello(sectors)))
    ty, flags, seq, p = read_frame(s)
    if ty != HELLO:
        sys.exit("fake-primary: no HELLO from the secondary")
    s.sendall(frame(RESYNC, 0, 1, write_payload(64, os.urandom(4096))))
    s.sendall(frame(MARKER, 0, 2, marker_payload(77, "during-resync")))
    acks = []
    while not acks or acks[-1][1] < 2:
        ty, flags, seq, p = read_frame(s)
        if ty is None:
            sys.exit("fake-primary: connection closed; acks so far %s" % acks)
        if ty == ACK:
            acks.append((flags, struct.unpack_from("<Q", p, 0)[0]))
    s.close()
    print("fake-primary: acks (flags, seq): %s" % acks)
    marker_ack = [f for f, q in acks if q == 2]
    if marker_ack != [ACK_MARKER_IGNORED]:
        sys.exit("fake-primary: the marker's ACK does not say it was ignored")


def fake_secondary(host, port, sectors, seconds):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(1)
    ls.settimeout(seconds)
    c, _ = ls.accept()
    c.settimeout(seconds)
    ty, flags, seq, p = read_frame(c)
    if ty != HELLO:
        sys.exit("fake-secondary: no HELLO")
    h = bytes([2]) + bytes(7) + struct.pack("<Q", sectors) + os.urandom(32)
    c.sendall(frame(HELLO, 0, 0, h))
    tx = 1
    got = {}
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            ty, flags, seq, p = read_frame(c)
            if ty is None:
                break
            got[ty] = got.get(ty, 0) + 1
            f = ACK_MARKER_IGNORED if ty == MARKER else 0
            c.sendall(frame(ACK, f, tx, struct.pack("<QQ", seq, 0)))
            tx += 1
    except OSError:
        pass
    print("fake-secondary: frames by type %s" % sorted(got.items()))


def main():
    cmd = sys.argv[1]
    a = sys.argv[2:]
    if cmd == "mitm":
        mitm(a[0], int(a[1]), a[2], int(a[3]), float(a[4]))
    elif cmd == "cut":
        cut(a[0], int(a[1]), a[2], int(a[3]), float(a[4]), a[5])
    elif cmd == "fake-primary":
        fake_primary(a[0], int(a[1]), int(a[2]))
    elif cmd == "fake-secondary":
        fake_secondary(a[0], int(a[1]), int(a[2]), float(a[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
