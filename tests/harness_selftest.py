#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Self-test of the test harness itself: python3 tests/harness_selftest.py (in make host-test).

Shows that each of its checks rejects what it should:
  - .ci/run clears TESTS, WBREPL_*, PROPTEST_* (and MAKEFLAGS, MAKEFILES, which could carry
    them) before make: `.ci/run --print-env` under a polluted environment shows make nothing,
    while the same environment reaches make without it, and reaches it through a copy of .ci/run
    whose clearing is removed (the mutation);
  - .ci/run's last line and exit status: a copy of .ci/run over a stand-in `make test` printing
    known results: skips are counted, an ignored cargo test or a failed guest check fails;
  - tests/guestcount.py on made-up guest logs: a file that runs fewer checks than
    tests/guest/expected-checks lists fails, a file missing from the table fails, a file that
    did not run fails, an unlisted skip (or one with no reason) fails, a listed one passes and
    is counted as skipped, a guest that ended badly fails, a stale table line fails;
  - the repository's own tables: every tests/guest/[0-9]*.sh is listed, and nothing else;
  - qemu/scan-console.sh (the kernel-report detector of every guest run, the debug kernel's
    included) on made-up consoles: a clean debug-kernel boot passes; a lockdep report (circular
    dependency, inconsistent lock state, also with its WARNING: line garbled by interleaved
    output), a KASAN report, "BUG: sleeping function called from invalid context", an ODEBUG
    report, a plain WARNING fail; the allowed DRBD warning passes (and is copied aside), but
    not with a KASAN line inside its block, nor a lockdep report next to it.
Prints "harness self-test: ok" (counted by .ci/run) or the failures, exit 1.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True
import guestcount  # noqa: E402

failures = []


def expect(cond, what, detail=""):
    if not cond:
        failures.append(what + (f"\n    {detail}" if detail else ""))


POLLUTED = {
    "TESTS": "20-lifecycle.sh",
    "WBREPL_REPL_FUZZ": "1",
    "WBREPL_PL_POINTS_BLOCK": "1",
    "PROPTEST_CASES": "1",
    "MAKEFLAGS": "TESTS=30-fio.sh",
}


def clean_base_env():
    # The environment this test runs in (under make host-test: MAKEFLAGS, MAKELEVEL) minus
    # everything that would decide the outcome.
    return {k: v for k, v in os.environ.items()
            if not re.match(r"^(TESTS|WBREPL_.*|PROPTEST_.*|MAKE.*|MFLAGS|GNUMAKEFLAGS)$", k)}


def make_sees(out):
    m = re.search(r"^make sees TESTS='(.*)' PROPTEST_CASES='(.*)' MAKEFLAGS='(.*)'$", out, re.M)
    e = re.search(r"^make exports: (.*)\(end\)$", out, re.M)
    if not m or not e:
        return None
    return {"TESTS": m.group(1), "PROPTEST_CASES": m.group(2), "MAKEFLAGS": m.group(3),
            "exports": e.group(1).split()}


def leaked(seen):
    """What of the polluted environment make saw."""
    bad = []
    if seen["TESTS"]:
        bad.append("TESTS=" + seen["TESTS"])
    if seen["PROPTEST_CASES"]:
        bad.append("PROPTEST_CASES=" + seen["PROPTEST_CASES"])
    if "TESTS=" in seen["MAKEFLAGS"]:
        bad.append("MAKEFLAGS=" + seen["MAKEFLAGS"])
    bad += seen["exports"]
    return bad


def test_ci_env(tmp):
    evil = os.path.join(tmp, "evil.mk")
    with open(evil, "w") as f:
        f.write("TESTS := 10-autoload.sh\n")
    env = dict(clean_base_env(), **POLLUTED, MAKEFILES=evil)

    def run(cmd, cwd=ROOT):
        r = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
        return r.returncode, r.stdout

    rc, out = run(["bash", ".ci/run", "--print-env"])
    seen = make_sees(out)
    expect(rc == 0 and seen is not None, ".ci/run --print-env runs make ci-env", out)
    if seen:
        expect(leaked(seen) == [], ".ci/run: nothing of the polluted environment reaches make",
               f"leaked: {leaked(seen)}\n{out}")
    # The probe can see what leaks: the same environment, straight to make.
    rc, out = run(["make", "--no-print-directory", "ci-env"])
    seen = make_sees(out)
    expect(seen is not None and {"TESTS=", "PROPTEST_CASES=", "WBREPL_REPL_FUZZ="} <= set(seen["exports"])
           and seen["TESTS"] == "30-fio.sh", "the probe sees a polluted environment without .ci/run", out)
    # Mutation: .ci/run without its clearing lets it through.
    mut = os.path.join(tmp, "mut")
    os.makedirs(os.path.join(mut, ".ci"))
    shutil.copy(os.path.join(ROOT, "Makefile"), mut)
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        src = f.read()
    mutated = src.replace('cleared+=("$v"); unset "$v" ;;', 'cleared+=("$v") ;;')
    expect(mutated != src, "the mutation applies to .ci/run (its clearing line changed?)")
    with open(os.path.join(mut, ".ci", "run"), "w") as f:
        f.write(mutated)
    rc, out = run(["bash", ".ci/run", "--print-env"], cwd=mut)
    seen = make_sees(out)
    expect(seen is not None and len(leaked(seen)) >= 4,
           "mutation: a .ci/run that does not clear is caught (the environment reaches make)", out)


FAKE_MAKEFILE = """\
test:
\t@cat results.txt
\t@exit $$(cat status.txt)
"""


def test_ci_summary(tmp):
    d = os.path.join(tmp, "ci")
    os.makedirs(os.path.join(d, ".ci"))
    shutil.copy(os.path.join(ROOT, ".ci", "run"), os.path.join(d, ".ci", "run"))
    with open(os.path.join(d, "Makefile"), "w") as f:
        f.write(FAKE_MAKEFILE)
    cargo = ("test result: ok. 79 passed; 0 failed; {ign} ignored; 0 measured; 0 filtered out;"
             " finished in 1.00s\n"
             "test result: ok. 62 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n")
    cases = [
        # (what, cargo ignored, guest line, make status, want last line, want exit 0)
        ("all pass", 0, "guest tests: 1103 passed, 0 failed, 0 skipped (logs: x)", 0,
         "1246 passed, 0 failed, 0 skipped", True),
        ("listed skips are counted", 0, "guest tests: 1101 passed, 0 failed, 2 skipped", 0,
         "1244 passed, 0 failed, 2 skipped", True),
        ("a failed guest check fails", 0, "guest tests: 1100 passed, 3 failed, 0 skipped", 1,
         "1243 passed, 3 failed, 0 skipped", False),
        ("an ignored cargo test fails", 1, "guest tests: 1103 passed, 0 failed, 0 skipped", 0,
         "1246 passed, 1 failed, 1 skipped", False),
        ("make failing with no failed check fails", 0, "", 2,
         "143 passed, 1 failed, 0 skipped", False),
    ]
    for what, ign, guest, status, want, ok in cases:
        with open(os.path.join(d, "results.txt"), "w") as f:
            f.write(cargo.format(ign=ign) + (guest + "\n" if guest else "") + "ktap.py self-test: ok\n"
                    "logreplay self-test: ok\n")
        with open(os.path.join(d, "status.txt"), "w") as f:
            f.write(str(status))
        r = subprocess.run(["bash", ".ci/run"], cwd=d, env=clean_base_env(), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
        last = r.stdout.rstrip("\n").split("\n")[-1]
        expect(last == want and (r.returncode == 0) == ok, f".ci/run summary: {what}",
               f"last line {last!r} (want {want!r}), exit {r.returncode}")


EXP = {"00-a.sh": 3, "10-b.sh": 2}
SKIPS = {("10-b.sh", "b: optional feature"): "the feature is optional"}


def log(*parts):
    return "\n".join(parts) + "\n"


A_OK = ("# --- 00-a.sh", "ok - a: one", "ok - a: two", "#   a diagnostic", "ok - a: three",
        "# 00-a.sh took 1 s")
B_OK = ("# --- 10-b.sh", "ok - b: one", "ok - b: two")


def judge(text, asked=("00-a.sh", "10-b.sh"), status=0, all_files=None):
    lines, p, f, s = guestcount.judge(text, list(asked), EXP, SKIPS, status, all_files)
    return lines, p, f, s


def failed_with(lines, pattern):
    return any(l.startswith("not ok - ") and re.search(pattern, l) for l in lines)


def test_counts():
    lines, p, f, s = judge(log(*A_OK, *B_OK))
    expect((p, f, s) == (5, 0, 0) and lines[-1] == "guest tests: 5 passed, 0 failed, 0 skipped",
           "counts: every file at its count passes", "\n".join(lines))

    # A file that runs fewer checks than listed (it stopped early: its last check never ran).
    lines, p, f, s = judge(log(*A_OK[:-2], *B_OK))
    expect(f == 1 and failed_with(lines, r"00-a\.sh ran 2 checks, fewer than the 3"),
           "counts: a file running fewer checks than listed fails", "\n".join(lines))

    # A file that is not in the table (a new file).
    lines, p, f, s = judge(log(*A_OK, *B_OK, "# --- 20-new.sh", "ok - new: one"),
                           asked=("00-a.sh", "10-b.sh", "20-new.sh"))
    expect(f == 1 and failed_with(lines, r"20-new\.sh is not in tests/guest/expected-checks"),
           "counts: a file missing from the table fails", "\n".join(lines))

    # A file asked for that never ran (the guest died before it).
    lines, p, f, s = judge(log(*A_OK))
    expect(f == 1 and failed_with(lines, r"10-b\.sh did not run"),
           "counts: a file that did not run fails", "\n".join(lines))

    # Skips: a listed one is counted (toward the file's count, and as skipped, not passed).
    listed = ("# --- 10-b.sh", "ok - b: one", "ok - b: optional feature # SKIP no such feature here")
    lines, p, f, s = judge(log(*A_OK, *listed))
    expect((p, f, s) == (4, 0, 1) and lines[-1] == "guest tests: 4 passed, 0 failed, 1 skipped",
           "skips: a listed skip passes and is reported", "\n".join(lines))
    # ... an unlisted one fails (mutation: the same log with the check renamed).
    unlisted = ("# --- 10-b.sh", "ok - b: one", "ok - b: two # SKIP not today")
    lines, p, f, s = judge(log(*A_OK, *unlisted))
    expect(f == 1 and s == 1 and failed_with(lines, r"check 'b: two' skipped \(not today\).*does not list"),
           "skips: an unlisted skip fails", "\n".join(lines))
    # ... and so does a listed one in another file, and one with no reason.
    lines, p, f, s = judge(log("# --- 00-a.sh", "ok - a: one", "ok - a: two",
                               "ok - b: optional feature # SKIP moved", *B_OK))
    expect(f == 1 and failed_with(lines, r"00-a\.sh: check 'b: optional feature' skipped"),
           "skips: a skip listed for another file fails", "\n".join(lines))
    lines, p, f, s = judge(log(*A_OK, "# --- 10-b.sh", "ok - b: one", "ok - b: optional feature # SKIP"))
    expect(f == 1 and failed_with(lines, r"skipped with no reason"),
           "skips: a skip with no reason fails", "\n".join(lines))
    # TAP's directive is case-insensitive.
    lines, p, f, s = judge(log(*A_OK, "# --- 10-b.sh", "ok - b: one", "ok - b: two # skip lower case"))
    expect(s == 1 and f == 1, "skips: '# skip' in lower case is a skip too", "\n".join(lines))

    # Failed checks are counted; a bad guest status with none fails once.
    lines, p, f, s = judge(log(*A_OK, "# --- 10-b.sh", "ok - b: one", "not ok - b: two"))
    expect(f == 1 and lines[-1] == "guest tests: 4 passed, 1 failed, 0 skipped",
           "counts: a failed check is a failure", "\n".join(lines))
    lines, p, f, s = judge(log(*A_OK, *B_OK), status=99)
    expect(f == 1 and failed_with(lines, r"guest run ended with status 99"),
           "counts: a guest that ended with an error fails", "\n".join(lines))

    # A full run: a table line naming a file that no longer exists fails.
    lines, p, f, s = judge(log(*A_OK), asked=("00-a.sh",), all_files=["00-a.sh"])
    expect(f == 1 and failed_with(lines, r"lists 10-b\.sh, which does not exist"),
           "counts: a stale table line fails a full run", "\n".join(lines))

    # The command line, as tests/run-guest-tests.sh calls it.
    with tempfile.TemporaryDirectory() as t:
        g = os.path.join(t, "guest")
        os.makedirs(g)
        for n in EXP:
            open(os.path.join(g, n), "w").close()
        with open(os.path.join(g, "expected-checks"), "w") as f:
            f.write("# comment\n" + "".join(f"{n}  {c}\n" for n, c in EXP.items()))
        with open(os.path.join(g, "allowed-skips"), "w") as f:
            f.write("# comment\n10-b.sh | b: optional feature | the feature is optional\n")
        with open(os.path.join(t, "guest.log"), "w") as f:
            f.write(log(*A_OK, *listed))
        base = [sys.executable, os.path.join(HERE, "guestcount.py"), "--expected",
                os.path.join(g, "expected-checks"), "--skips", os.path.join(g, "allowed-skips")]
        r = subprocess.run(base + [os.path.join(t, "guest.log"), "--all"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        expect(r.returncode == 0 and r.stdout.endswith("guest tests: 4 passed, 0 failed, 1 skipped\n"),
               "guestcount.py --all: a good run exits 0", r.stdout)
        open(os.path.join(g, "30-unlisted.sh"), "w").close()
        r = subprocess.run(base + [os.path.join(t, "guest.log"), "--all"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        expect(r.returncode == 1 and "not ok - 30-unlisted.sh is not in tests/guest/expected-checks" in r.stdout,
               "guestcount.py --all: an unlisted file present fails the run", r.stdout)
        r = subprocess.run(base + ["--status", "1", os.path.join(t, "none.log"), "10-b.sh"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        expect(r.returncode == 1 and "not ok - 10-b.sh did not run" in r.stdout,
               "guestcount.py: no log at all fails", r.stdout)
        with open(os.path.join(g, "expected-checks"), "a") as f:
            f.write("40-bad.sh  many\n")
        r = subprocess.run(base + [os.path.join(t, "guest.log"), "--all"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        expect(r.returncode == 2 and "want 'FILE COUNT'" in r.stdout,
               "guestcount.py: a malformed table is an error", r.stdout)


def test_repo_tables():
    g = os.path.join(HERE, "guest")
    exp = guestcount.read_expected(os.path.join(g, "expected-checks"))
    guestcount.read_skips(os.path.join(g, "allowed-skips"))
    files = {n for n in os.listdir(g) if guestcount.TEST_FILE.match(n)}
    expect(files - set(exp) == set(), "tests/guest/expected-checks lists every guest test file",
           f"missing: {sorted(files - set(exp))}")
    expect(set(exp) - files == set(), "tests/guest/expected-checks lists no other file",
           f"stale: {sorted(set(exp) - files)}")


CLEAN_DEBUG_BOOT = """\
[    0.000000] Linux version 6.12.57 (root@host) (Debian clang version 14.0.6) #1 SMP PREEMPT
[    0.000000] kasan: KernelAddressSanitizer initialized (generic)
[    0.120000] Lock dependency validator: Copyright (c) 2006 Red Hat, Inc., Ingo Molnar
[    0.120000] ... MAX_LOCKDEP_SUBCLASSES:  8
[    0.120000] ... MAX_LOCK_DEPTH:          48
[    0.120000] ... MAX_LOCKDEP_KEYS:        8192
[    0.120000]  memory used by lock dependency info: 40000 kB
[    0.900000] kmemleak: Kernel memory leak detector initialized (mem pool available: 15000)
[    5.000000] device-mapper: wbcache: loaded cache: 12 dirty
[    9.000000] reboot: Power down
"""

LOCKDEP_CIRCULAR = """\
[   42.100000] ======================================================
[   42.100000] WARNING: possible circular locking dependency detected
[   42.100000] 6.12.57 #1 Not tainted
[   42.100000] ------------------------------------------------------
[   42.100000] kworker/0:1/33 is trying to acquire lock:
[   42.100000] ffff888004a1c0f8 (&cache->lock){..-.}-{2:2}, at: dmcore_spin_lock_irqsave+0x1a/0x30 [dm_wbcache]
[   42.100000] but task is already holding lock:
[   42.100000] stack backtrace:
[   42.100000] Call Trace:
[   42.100000]  <TASK>
[   42.100000]  dump_stack_lvl+0x5d/0x80
[   42.100000]  </TASK>
"""

LOCKDEP_GARBLED = """\
[   42.100000] ================================
[   42.100000] WARNI[   42.100001] dm-repl: connected
[   42.100000] NG: inconsistent lock state
[   42.100000] inconsistent {IN-HARDIRQ-W} -> {HARDIRQ-ON-W} usage.
"""

KASAN_UAF = """\
[   77.000000] ==================================================================
[   77.000000] BUG: KASAN: slab-use-after-free in wbcache::io::complete+0x2c/0x90 [dm_wbcache]
[   77.000000] Read of size 8 at addr ffff888006c3a010 by task ksoftirqd/1/21
[   77.000000] ==================================================================
"""

ATOMIC_SLEEP = """\
[   12.000000] BUG: sleeping function called from invalid context at kernel/locking/mutex.c:585
[   12.000000] in_atomic(): 1, irqs_disabled(): 1, non_block: 0, pid: 301, name: dmsetup
[   12.000000] preempt_count: 1, expected: 0
"""

ODEBUG = """\
[   30.000000] ------------[ cut here ]------------
[   30.000000] ODEBUG: free active (active state 0) object: ffff888005f1e2a8 object type: work_struct hint: repl::flush_work+0x0/0x40 [dm_repl]
[   30.000000] ---[ end trace 0000000000000000 ]---
"""

PLAIN_WARNING = """\
[   20.000000] ------------[ cut here ]------------
[   20.000000] WARNING: CPU: 1 PID: 400 at block/blk-core.c:800 submit_bio_noacct+0x10/0x20
[   20.000000] Call Trace:
[   20.000000] ---[ end trace 0000000000000000 ]---
"""

DRBD_WARNING = """\
[   60.000000] ------------[ cut here ]------------
[   60.000000] do not call blocking ops when !TASK_RUNNING; state=1 set at [<0000000012345678>] drbd_worker+0x1b0/0x5e0 [drbd]
[   60.000000] WARNING: CPU: 0 PID: 512 at kernel/sched/core.c:8697 __might_sleep+0x5a/0x70
[   60.000000] Call Trace:
[   60.000000]  maybe_send_barrier+0x3f/0x80 [drbd]
[   60.000000]  drbd_worker+0x2a0/0x5e0 [drbd]
[   60.000000] ---[ end trace 0000000000000000 ]---
"""


def scan_console(text, allow=()):
    # qemu/scan-console.sh on TEXT as the console: (exit status, kernel-errors.txt, allowed-warnings.txt).
    with tempfile.TemporaryDirectory() as d:
        con = os.path.join(d, "console.log")
        with open(con, "w") as f:
            f.write(text)
        args = [os.path.join(ROOT, "qemu", "scan-console.sh"), con, d]
        for a in allow:
            args += ["--allow-warning", a]
        r = subprocess.run(args, capture_output=True, text=True)

        def read(name):
            p = os.path.join(d, name)
            return open(p).read() if os.path.exists(p) else ""
        return r.returncode, read("kernel-errors.txt"), read("allowed-warnings.txt")


def drbd_known_warning():
    m = re.search(r"^DRBD_KNOWN_WARNING := (.*)$", open(os.path.join(ROOT, "Makefile")).read(), re.M)
    return m.group(1).strip() if m else "(no DRBD_KNOWN_WARNING in the Makefile)"


def test_console_scan():
    drbd = drbd_known_warning()
    rc, errs, _ = scan_console(CLEAN_DEBUG_BOOT, [drbd])
    expect(rc == 0 and not errs, "scan-console: a clean debug-kernel boot passes", f"status {rc}: {errs}")
    cases = [
        ("a lockdep circular dependency", LOCKDEP_CIRCULAR, "possible circular locking"),
        ("a lockdep report with its WARNING: line garbled", LOCKDEP_GARBLED, "inconsistent lock state"),
        ("a KASAN report", KASAN_UAF, "BUG: KASAN: slab-use-after-free"),
        ("sleeping in atomic context", ATOMIC_SLEEP, "BUG: sleeping function called from invalid context"),
        ("an ODEBUG report", ODEBUG, "ODEBUG: free active"),
        ("a plain WARNING", PLAIN_WARNING, "WARNING: CPU: 1 PID: 400"),
        ("a lockdep report next to the allowed DRBD warning", DRBD_WARNING + LOCKDEP_CIRCULAR,
         "possible circular locking"),
        ("the DRBD warning with a KASAN line in its block",
         DRBD_WARNING.replace("Call Trace:", "BUG: KASAN: use-after-free in drbd_worker\n[   60.0] Call Trace:"),
         "KASAN"),
    ]
    for what, text, line in cases:
        rc, errs, _ = scan_console(CLEAN_DEBUG_BOOT + text, [drbd])
        expect(rc == 1 and line in errs, f"scan-console: {what} fails the run",
               f"status {rc}, kernel-errors.txt: {errs!r}")
    rc, errs, allowed = scan_console(CLEAN_DEBUG_BOOT + DRBD_WARNING, [drbd])
    expect(rc == 0 and "maybe_send_barrier" in allowed, "scan-console: the allowed DRBD warning passes",
           f"status {rc}: {errs!r}")
    rc, errs, _ = scan_console(CLEAN_DEBUG_BOOT + DRBD_WARNING)
    expect(rc == 1 and "WARNING:" in errs, "scan-console: the DRBD warning fails when not allowed",
           f"status {rc}: {errs!r}")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for t in (test_counts, test_repo_tables, test_console_scan, lambda: test_ci_env(tmp), lambda: test_ci_summary(tmp)):
            try:
                t()
            except Exception as e:  # noqa: BLE001 - report and go on
                failures.append(f"{getattr(t, '__name__', 'test')}: {type(e).__name__}: {e}")
    for f in failures:
        print("FAIL:", f)
    print("harness self-test: ok" if not failures else f"harness self-test: FAILED ({len(failures)} failure(s))")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
