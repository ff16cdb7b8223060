# SPDX-License-Identifier: GPL-2.0
"""The oracle of wirefuzz.py, tested on the host (`wirefuzz.py self-test`, in make host-test).

The fuzzers run over TCP on 127.0.0.1 against stand-in peers written here: a secondary and a
primary that follow the model (the fuzzer's own verdicts, so any failure reported against them
is the checker's) and broken ones. The checker must pass the faithful peers and report each broken
one for the right reason:
  secondary side: accept-all (acknowledges and applies every frame, never closes: every case
  the model refuses must be reported, each one), ack-bad (acknowledges the bad frame, then
  refuses it), leak (writes a refused write frame's data to its disk), wrong-reason (logs another
  reason), late (refuses, but closes after the timeout), early-pong (sends a PONG right after each
  ACK: a keepalive comes only after 2 s of silence);
  primary side: accept-all (never refuses), wrong-reason, count-bad (counts a refused ACK as
  acknowledged: its status differs), eio (fails the write from above that a refused ACK covered,
  as dm-repl did before its fix).
And mutations of the model itself, against faithful stand-ins (which keep the true model): a
fuzzer predicting "accepted" for frames refused as 'payload field out of range', on either side,
or "refused" for a PONG, must report the first case of each target in which its verdict differs
(and no other).
Prints "wirefuzz self-test: ok" or the failures (exit 1).
"""
import socket
import struct
import threading
import time

import wirefuzz as W
from replwire import (ACK, ACK_MARKER_IGNORED, AUTH, BARRIER, BARRIER_FLUSH, BARRIER_RESYNC_DONE, CLOSE, HDR,
                      HELLO, HELLO_AUTH, HELLO_INCONSISTENT, LEN_RANGE, MAC_LEN, MARKER, MAX_PAYLOAD, PING, PONG,
                      RESYNC, ROLE_PRIMARY, ROLE_SECONDARY, WRITE, WRITE_FIXED, Closed, Timeout, fields, frame,
                      hello_payload, marker_payload, parse_hello, proof, recv_exact, session_keys, write_fixed)

SCALE = 0.15
KEY = "self-test secret"
# The stand-ins judge frames with the model as written, even when a mutation test below changes
# the fuzzer's copy (W.sec_frame_verdict, W.pri_frame_verdict).
SEC_FRAME_VERDICT = W.sec_frame_verdict
PRI_FRAME_VERDICT = W.pri_frame_verdict


class SimEnv:
    """The fuzzers' environment with stand-ins for the kernel: log lines, status and messages
    come from the stand-in peers."""
    sim = True
    scale = SCALE

    def __init__(self):
        self.log = W.Log()
        self.peers = {}

    def status(self, name):
        return self.peers[name].status()

    def message(self, name, *words):
        return self.peers[name].message(words)

    def read_device(self, path, size):
        return bytes(self.peers[path].m.disk[:size])

    def pwrite(self, t, offset, data):
        return self.peers[t.name].pwrite(offset, data)

    def connect(self, host, port):
        s = socket.create_connection((host, port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def listener(self, host, port):
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((host, port))
        ls.listen(8)
        return ls


def read_header(s):
    return recv_exact(s, HDR)


class SimSecondary:
    """A secondary on 127.0.0.1 that does what the model says (mode "faithful") or not."""

    def __init__(self, env, conf, mode):
        self.env, self.mode = env, mode
        self.m = W.SecTarget(conf, 0)  # its state: the model's own bookkeeping
        self.key = self.m.key
        self.ls = env.listener("127.0.0.1", 0)
        conf["port"] = self.ls.getsockname()[1]
        self.frozen = None
        self.thawed = threading.Event()
        self.stop = False
        threading.Thread(target=self.serve, daemon=True).start()

    def log(self, text):
        self.env.log.add(text)

    def status(self):
        e = self.m.status_expected()
        if self.frozen is not None:
            e["frozen"] = str(self.frozen)
        return e

    def message(self, words):
        if words[0] == "thaw" and self.frozen is not None and int(words[1]) == self.frozen:
            self.frozen = None
            self.thawed.set()
            return 0, ""
        return 1, "EINVAL"

    def serve(self):
        while not self.stop:
            try:
                c, addr = self.ls.accept()
            except OSError:
                return
            who = "%s:%d" % addr
            c.settimeout(5)
            try:
                self.connection(c, who)
            except (Closed, Timeout, OSError):
                pass
            except Exception as e:  # noqa: BLE001 (a bug of the stand-in: shown in the log)
                self.log("stand-in error: %r" % e)
                import traceback
                traceback.print_exc()
            try:
                c.close()
            except OSError:
                pass

    def refuse(self, c, who, reason, at_handshake=False, f=None):
        if self.mode == "accept-all":
            return False  # goes on as if the frame were fine
        if self.mode == "ack-bad" and f is not None:
            c.sendall(frame(ACK, 0, self.tx, struct.pack("<QQ", fields(f[:HDR])[4], 0), self.ksp))
        if self.mode == "wrong-reason":
            reason = W.R_MAC if reason != W.R_MAC else W.R_CRC
        if self.mode == "late":
            time.sleep(W.SECONDARY_DEAD_S * SCALE + 0.5)
        self.m.dropped += 1
        if at_handshake:
            self.log("repl: refused connection from %s: %s" % (who, reason))
        else:
            self.log("repl: session with %s ended: %s" % (who, reason))
        c.shutdown(socket.SHUT_RDWR)
        return True

    def connection(self, c, who):
        m = self.m
        h = read_header(c)
        r = W.hdr_reason(h)
        if (r or h[5] != HELLO) and self.refuse(c, who, r or W.R_UNEXP(h[5]), True):
            return
        p = recv_exact(c, min(fields(h)[5], 4096))
        hp = h + p
        where, reason = W.sec_hello_verdict(self.key, m.sectors, hp)
        if where == "before" and self.refuse(c, who, reason, True):
            return
        flags = (HELLO_AUTH if self.key else 0) | (0 if m.consistent else HELLO_INCONSISTENT)
        hs = frame(HELLO, flags, 0, hello_payload(ROLE_SECONDARY, m.sectors, bytes(W.random.randbytes(32))))
        c.sendall(hs)
        if where == "after" and self.refuse(c, who, reason, True):
            return
        self.kps = self.ksp = None
        self.tx = expect = 1
        if self.key:
            h = read_header(c)
            r = W.hdr_reason(h) or (W.R_LEN if fields(h)[5] > MAC_LEN else None)
            if r and self.refuse(c, who, r, True):
                return
            pa = h + recv_exact(c, min(fields(h)[5], 4096))
            r = W.auth_reason(self.key, ROLE_PRIMARY, hp, hs, pa)
            if r and self.refuse(c, who, r, True):
                return
            c.sendall(frame(AUTH, 0, 1, proof(self.key, ROLE_SECONDARY, hp, hs)))
            self.kps, self.ksp = session_keys(self.key, hp, hs)
            self.tx = expect = 2
        m.sessions += 1
        self.log("repl: primary %s connected" % who)
        while True:
            h = read_header(c)
            r = W.hdr_reason(h)
            n = fields(h)[5]
            if r and self.refuse(c, who, r):
                return
            try:
                p = recv_exact(c, n) if n <= MAX_PAYLOAD else b""
            except Closed:
                return self.refuse(c, who, W.R_RESET)
            v = SEC_FRAME_VERDICT(m.sectors, self.kps, expect, h + p) if not r else W.Verdict("refused", r)
            if v.kind == "refused":
                if self.mode in ("leak", "accept-all") and h[5] in (WRITE, RESYNC) and len(p) > WRITE_FIXED:
                    sector = struct.unpack_from("<Q", p, 0)[0] % m.sectors
                    data = p[WRITE_FIXED:][:(m.sectors - sector) * 512]
                    m.disk[sector * 512:sector * 512 + len(data)] = data
                if self.refuse(c, who, v.reason, f=h + p):
                    return
                # accept-all: acknowledged like any frame.
                c.sendall(frame(ACK, 0, self.tx, struct.pack("<QQ", fields(h)[4], m.durable_epoch), self.ksp))
                self.tx += 1
                expect += 1
                continue
            if v.kind == "closed":
                self.log("repl: primary %s closed the session" % who)
                return c.shutdown(socket.SHUT_RDWR)
            expect += 1
            seen = m.apply(v)
            fl = ACK_MARKER_IGNORED if seen == "ignored" else 0
            freeze = seen == "recorded" and m.freeze
            if freeze:
                # Frozen before the marker is acknowledged, as dm-repl does.
                off = 0 if v.ty == MARKER else WRITE_FIXED + 8
                self.thawed.clear()
                self.frozen = struct.unpack_from("<Q", v.p, off)[0]
            c.sendall(frame(ACK, fl, self.tx, struct.pack("<QQ", v.seq, m.durable_epoch), self.ksp))
            self.tx += 1
            if self.mode == "early-pong":
                c.sendall(frame(PONG, 0, self.tx, bytes(8), self.ksp))
                self.tx += 1
            if freeze:
                while not self.thawed.wait(2 * SCALE):
                    c.sendall(frame(PONG, 0, self.tx, bytes(8), self.ksp))
                    self.tx += 1


class SimPrimary:
    """A primary connecting to the fuzzer's port: handshake, a resync of its device, markers
    and writes on request; takes our frames as the model says (mode "faithful") or not."""

    def __init__(self, env, conf, mode):
        self.env, self.mode = env, mode
        self.name = conf["name"]
        self.sectors = conf["sectors"]
        self.key = conf["key"].encode() if conf.get("key") else None
        self.sync = conf.get("sync", False)
        self.first = 2 if self.key else 1
        self.disk = bytearray(self.sectors * 512)
        self.counters = {"connects": 0, "acked": 0, "marker": 0, "marker_acked": 0, "marker_ignored": 0}
        self.last_err = None
        self.conn = None
        self.lock = threading.Lock()
        self.stop = False

    def start(self, port):
        self.port = port
        threading.Thread(target=self.run, daemon=True).start()

    def status(self):
        with self.lock:
            d = {k: ("-" if k.startswith("marker") and not v else str(v)) for k, v in self.counters.items()}
            d["peer_data"] = "consistent" if self.conn and self.conn["consistent"] else "behind"
        return d

    def log(self, text):
        self.env.log.add(text)

    def send(self, ty, flags, payload, kind):
        with self.lock:
            c = self.conn
            if c is None:
                return None
            seq = c["next"]
            c["next"] += 1
            c["window"].append((seq, kind))
            c["pushed"] = seq
        c["sock"].sendall(frame(ty, flags, seq, payload, c["kps"]))
        return seq

    def message(self, words):
        if words[0] != "marker":
            return 1, "EINVAL"
        c = self.conn
        if c is None or not c["consistent"]:
            return 1, "EBUSY"
        with self.lock:
            self.counters["marker"] += 1
            mid = self.counters["marker"]
        seq = self.send(MARKER, 0, marker_payload(mid, 1, b"x".ljust(64, b"\0")), "marker")
        with self.lock:
            c["marker"] = (seq, mid)
        return 0, str(mid)

    def pwrite(self, offset, data):
        c = self.conn
        self.disk[offset:offset + len(data)] = data
        ev = threading.Event()
        with self.lock:
            c["waiting"].append(ev)
        self.send(WRITE, 0, write_fixed(offset // 512, 1) + data, "write")
        self.send(BARRIER, BARRIER_FLUSH, struct.pack("<Q", 1), "barrier")
        if self.sync:
            ev.wait(10)
            return ev.result if hasattr(ev, "result") else None
        return None

    def run(self):
        who = "127.0.0.1:%d" % self.port
        while not self.stop:
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=1)
            except OSError:
                time.sleep(0.02)
                continue
            s.settimeout(5)
            try:
                why = self.connection(s, who)
            except (Closed, Timeout, OSError):
                why = "socket error -104"
            with self.lock:
                c, self.conn = self.conn, None
            if c:
                for ev in c["waiting"]:
                    ev.set()
            if why is not None:
                self.log("repl: connection to %s lost: %s" % (who, why) if c else
                         "repl: cannot connect to %s: %s; retrying" % (who, why))
            try:
                s.close()
            except OSError:
                pass

    def refuse_hs(self, why):
        code = W.connect_code(why)
        logged = code != self.last_err
        self.last_err = code
        return why if logged else None

    def connection(self, s, who):
        hp = frame(HELLO, HELLO_AUTH if self.key else 0, 0, hello_payload(ROLE_PRIMARY, self.sectors, W.random.randbytes(32)))
        s.sendall(hp)
        h = read_header(s)
        accept_all = self.mode == "accept-all"
        r = W.hdr_reason(h)
        if not accept_all and (r or h[5] != HELLO):
            return self.refuse_hs(r or W.R_UNEXP(h[5]))
        hs = h + recv_exact(s, min(fields(h)[5], 4096))
        r, inconsistent = W.pri_hello_verdict(self.key, self.sectors, hs)
        if r and not accept_all:
            return self.refuse_hs(r)
        kps = ksp = None
        if self.key:
            s.sendall(frame(AUTH, 0, 1, proof(self.key, ROLE_PRIMARY, hp, hs)))
            h = read_header(s)
            r = W.hdr_reason(h) or (W.R_LEN if fields(h)[5] > MAC_LEN else None)
            if r and not accept_all:
                return self.refuse_hs(r)
            pa = h + recv_exact(s, min(fields(h)[5], 4096))
            r = W.auth_reason(self.key, ROLE_SECONDARY, hp, hs, pa)
            if r and not accept_all:
                return self.refuse_hs(r)
            kps, ksp = session_keys(self.key, hp, hs)
        c = {"sock": s, "kps": kps, "next": self.first, "window": [], "pushed": self.first - 1, "marker": None,
             "consistent": False, "waiting": [], "acked": self.first - 1, "done_seq": None}
        with self.lock:
            self.conn = c
            self.counters["connects"] += 1
        self.last_err = None
        if inconsistent or accept_all:
            self.send(RESYNC, 0, write_fixed(0, 0) + bytes(self.disk), "resync")
            c["done_seq"] = self.send(BARRIER, BARRIER_FLUSH | BARRIER_RESYNC_DONE, bytes(8), "barrier")
        st = W.PSession(W.PriTarget({"name": self.name, "host": "", "port": 0, "sectors": self.sectors,
                                     "key": KEY if self.key else None}, 0), ksp)
        while True:
            h = read_header(s)
            n = fields(h)[5]
            r = W.hdr_reason(h) or (W.R_LEN if n > W.PRIMARY_RX_BUF else None)
            if r and not accept_all:
                return r
            p = recv_exact(s, n) if n <= MAX_PAYLOAD else b""
            with self.lock:
                st.pushed, st.marker, st.acked = c["pushed"], c["marker"], c["acked"]
            v = PRI_FRAME_VERDICT(st, h + p) if not r else W.Verdict("refused", r)
            if accept_all and v.kind == "refused":
                st.expect += 1
                continue
            if v.kind == "refused":
                if self.mode == "count-bad" and v.reason == W.R_FIELD and h[5] == ACK:
                    sq = struct.unpack_from("<Q", p, 0)[0]
                    if sq > c["acked"]:
                        with self.lock:
                            self.counters["acked"] += min(sq, c["pushed"] + 5) - c["acked"]
                if self.mode == "eio":
                    for ev in c["waiting"]:
                        ev.result = "Input/output error (errno 5)"
                        ev.set()
                return W.R_MAC if self.mode == "wrong-reason" and v.reason != W.R_MAC else v.reason
            if v.kind == "closed":
                return W.R_CLOSED if self.mode != "wrong-reason" else W.R_CRC
            st.expect += 1
            if v.ty != ACK:
                continue
            sq = struct.unpack_from("<Q", v.p, 0)[0]
            with self.lock:
                if v.flags & ACK_MARKER_IGNORED and c["marker"] and c["marker"][0] == sq:
                    self.counters["marker_ignored"] = c["marker"][1]
                    c["marker"] = None
                if sq > c["acked"]:
                    self.counters["acked"] += sq - c["acked"]
                    c["acked"] = sq
                if c["marker"] and c["acked"] >= c["marker"][0]:
                    self.counters["marker_acked"] = max(self.counters["marker_acked"], c["marker"][1])
                    c["marker"] = None
                if c["done_seq"] is not None and c["acked"] >= c["done_seq"]:
                    c["consistent"] = True
                    c["done_seq"] = None
                if any(k == "write" and q <= sq for q, k in c["window"]):
                    for ev in c["waiting"]:
                        ev.set()
                c["window"] = [(q, k) for q, k in c["window"] if q > sq]


failures = []


def expect(cond, what):
    if not cond:
        failures.append(what)


def sec_run(mode, cases, targets=4, with_device=True):
    env = SimEnv()
    conf = {"targets": []}
    for i in range(targets):
        tc = {"name": "sim-s%d" % i, "host": "127.0.0.1", "port": 0, "sectors": 16384,
              "key": KEY if i % 2 else None, "freeze": i == 2, "device": "sim-s%d" % i if with_device else None}
        conf["targets"].append(tc)
        sim = SimSecondary(env, tc, mode)
        env.peers[tc["name"]] = sim
    t0 = time.monotonic()
    log = []

    class Out:
        def write(self, s):
            log.append(s)

        def flush(self):
            pass
    fails, total = W.run_secondary(env, conf, cases, 7, out=Out(), check_every=10, stop_on_failure=(mode != "accept-all"))
    for sim in env.peers.values():
        sim.stop = True
        sim.ls.close()
    return fails, total, time.monotonic() - t0, "".join(log)


def pri_run(mode, cases, targets=4):
    env = SimEnv()
    conf = {"targets": []}
    sims = []
    for i in range(targets):
        tc = {"name": "sim-p%d" % i, "host": "127.0.0.1", "port": 0, "sectors": 256,
              "key": KEY if i % 2 else None, "sync": i >= 2, "device": "sim-p%d" % i}
        conf["targets"].append(tc)
        sim = SimPrimary(env, tc, mode)
        env.peers[tc["name"]] = sim
        sims.append(sim)
    ready = {}

    def started(ports):
        for sim, port in zip(sims, ports):
            sim.start(port)
    log = []

    class Out:
        def write(self, s):
            log.append(s)

        def flush(self):
            pass
    t0 = time.monotonic()
    fails, total = W.run_primary(env, conf, cases, 11, out=Out(), on_listen=started, stop_on_failure=(mode != "accept-all"))
    for sim in sims:
        sim.stop = True
    del ready
    return fails, total, time.monotonic() - t0, "".join(log)


def model_mutant(side, mutant):
    """Runs the fuzzer of `side` with a wrong model against faithful stand-ins; returns its
    failures, the cases in which the wrong model's verdict differed from the true one, the log."""
    where = threading.local()
    flipped = set()
    case_fn = "sec_case" if side == "secondary" else "pri_case"
    true_case = getattr(W, case_fn)

    def case(env, t, case, rng, nonces):
        where.case = case
        return true_case(env, t, case, rng, nonces)

    def flip(v):
        if mutant == "accept-field" and v.kind == "refused" and v.reason == W.R_FIELD:
            v = W.Verdict("accepted", ty=v.ty, p=v.p, flags=v.flags, seq=v.seq)
        elif mutant == "refuse-pong" and v.kind == "accepted" and v.ty == PONG:
            v = W.Verdict("refused", W.R_UNEXP(PONG))
        else:
            return v
        flipped.add(where.case)
        return v

    def sec_verdict(*a, **k):
        v = SEC_FRAME_VERDICT(*a, **k)
        if v.kind == "refused" and v.reason == W.R_FIELD:
            # (The true verdict's fields, for the fuzzer to apply the frame as it would.)
            h, p = a[3][:HDR], a[3][HDR:]
            v = W.Verdict("refused", v.reason, ty=h[5], p=p, flags=fields(h)[3], seq=fields(h)[4])
        return flip(v)

    def pri_verdict(st, f):
        v = PRI_FRAME_VERDICT(st, f)
        if v.kind == "refused" and v.reason == W.R_FIELD:
            h, p = f[:HDR], f[HDR:]
            v = W.Verdict("refused", v.reason, ty=h[5], p=p, flags=fields(h)[3], seq=fields(h)[4])
        return flip(v)
    setattr(W, case_fn, case)
    W.sec_frame_verdict, W.pri_frame_verdict = sec_verdict, pri_verdict
    try:
        if side == "secondary":
            fails, total, dt, log = sec_run("faithful", 48)
        else:
            fails, total, dt, log = pri_run("faithful", 48)
    finally:
        setattr(W, case_fn, true_case)
        W.sec_frame_verdict, W.pri_frame_verdict = SEC_FRAME_VERDICT, PRI_FRAME_VERDICT
    return fails, flipped, log


def main():
    t0 = time.monotonic()
    # The secondary side.
    fails, total, dt, log = sec_run("faithful", 80)
    expect(not fails, "secondary, faithful stand-in: %d failures reported:\n%s" % (len(fails), log))
    expect(total["refused"] >= 40 and total["closed"] >= 5, "secondary, faithful stand-in: too few cases ran:\n%s" % log)
    fails, total, dt, log = sec_run("accept-all", 24)
    bad = total["predicted refused"]
    expect(bad > 10 and total["reported refused"] == bad,
           "secondary, accept-everything stand-in: %d of %d bad frames reported:\n%s" % (total["reported refused"], bad, log))
    for mode, words in (("ack-bad", "after the bad frame instead of a refusal"),
                        ("leak", "REFUSED FRAMES' DATA ON THE DISK"),
                        ("wrong-reason", "refused for another reason"),
                        ("late", "not closed within"),
                        ("early-pong", "from a secondary without freeze_on_marker")):
        fails, total, dt, log = sec_run(mode, 24)
        expect(fails and all(words in f for f in fails),
               "secondary, %s stand-in: expected every failure to say '%s':\n%s" % (mode, words, log))
    # The primary side.
    fails, total, dt, log = pri_run("faithful", 60)
    expect(not fails, "primary, faithful stand-in: %d failures reported:\n%s" % (len(fails), log))
    expect(total["refused"] >= 30 and total["closed"] >= 3, "primary, faithful stand-in: too few cases ran:\n%s" % log)
    fails, total, dt, log = pri_run("accept-all", 16)
    bad = total["predicted refused"]
    expect(bad > 8 and total["reported refused"] == bad,
           "primary, accept-everything stand-in: %d of %d bad frames reported:\n%s" % (total["reported refused"], bad, log))
    for mode, words in (("wrong-reason", "refused for another reason"),
                        ("count-bad", "status differs from the model: acked"),
                        ("eio", "the write from above failed")):
        fails, total, dt, log = pri_run(mode, 60)
        expect(fails and all(words in f for f in fails),
               "primary, %s stand-in: expected every failure to say '%s':\n%s" % (mode, words, log))
    # Mutations of the model (the stand-ins keep the true one): a fuzzer whose model predicts
    # "accepted" for frames refused as 'payload field out of range' (writes beyond the device,
    # reserved bytes, labels; ACKs of frames not sent, misplaced ACK_MARKER_IGNORED), or "refused"
    # for a PONG, must report the first such case of each target, and nothing else.
    for side, mutant in (("secondary", "accept-field"), ("primary", "accept-field"), ("primary", "refuse-pong")):
        fails, flipped, log = model_mutant(side, mutant)
        named = ["case %d" % c for c in flipped]
        expect(flipped and fails and all(any(n + " " in f or n + ":" in f for n in named) for f in fails),
               "%s side, model mutant %s: %d cases flipped (%s), expected each failure to name one:\n%s" % (
                   side, mutant, len(flipped), sorted(flipped)[:20], log))
    if failures:
        for f in failures:
            print("wirefuzz self-test FAILED: " + f)
        return 1
    print("wirefuzz self-test: ok (%.0f s)" % (time.monotonic() - t0))
    return 0
