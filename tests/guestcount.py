#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Counts a guest run's checks per test file and holds each file to its expected count.

    guestcount.py [--status RC] [--logs DIR] [--expected FILE] [--skips FILE] [--all] GUEST_LOG [TEST...]

GUEST_LOG is the guest's output (logs/<time>-guest-tests/guest.log): tests/guest/run-all.sh
starts each file's part with "# --- <file>", and every check is one TAP line, "ok - NAME",
"not ok - NAME" or a skip, "ok - NAME # SKIP REASON". TEST... are the files the run was asked
for (names or paths); --all says it was asked for every tests/guest/[0-9]*.sh.

A failure, printed as a "not ok - ..." line and counted with the failed checks:
  - a file that ran fewer checks (skips included) than tests/guest/expected-checks lists for it,
    or that did not run at all (a guest that died before it);
  - a file that ran and is not listed there (a new file must be added);
  - with --all, a listed file that does not exist (a renamed or deleted file);
  - a skip whose file and check name tests/guest/allowed-skips does not list, or with no reason;
  - --status RC not 0 with no failed check (a kernel error, crash or timeout).
Prints one line per file ("# counts: ...") and ends with
    guest tests: N passed, M failed, K skipped
Exit status 0 if M is 0, else 1; 2 for a usage or table error.
"""
import argparse
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
GUEST = os.path.join(HERE, "guest")
EXPECTED = os.path.join(GUEST, "expected-checks")
SKIPS = os.path.join(GUEST, "allowed-skips")

FILE_START = re.compile(r"^# --- (\S+)\s*$")
# Guest test files: the numbered ones are the suite; debug-*.sh run only where asked
# (make test-debug).
TEST_FILE = re.compile(r"^([0-9]|debug-).*\.sh$")
OK = re.compile(r"^ok\b")
NOT_OK = re.compile(r"^not ok\b")
# TAP's SKIP directive: "# SKIP" (any case) after the description; the reason follows it.
SKIP = re.compile(r"^ok\b(?:\s*-)?\s*(.*?)\s*#\s*skip\b\s*(.*)$", re.IGNORECASE)


class TableError(Exception):
    pass


def read_expected(path):
    """{file: minimum count} from lines "FILE COUNT" ("#" comments, blank lines ignored)."""
    table = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) < 1:
                raise TableError(f"{path}:{n}: want 'FILE COUNT' (COUNT at least 1), got {line!r}")
            if parts[0] in table:
                raise TableError(f"{path}:{n}: {parts[0]} listed twice")
            table[parts[0]] = int(parts[1])
    return table


def read_skips(path):
    """{(file, check name): reason} from lines "FILE | CHECK NAME | WHY THE SKIP IS ACCEPTABLE"."""
    table = {}
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = [p.strip() for p in line.split("|")]
            if len(parts) != 3 or not all(parts):
                raise TableError(f"{path}:{n}: want 'FILE | CHECK NAME | REASON', got {line!r}")
            table[(parts[0], parts[1])] = parts[2]
    return table


def parse_log(text):
    """[(file, passed, failed, [(name, reason)...])] in the order the files ran; checks before
    the first file header (none expected) go to a file named "(before any file)"."""
    files, cur = [], None
    for line in text.splitlines():
        m = FILE_START.match(line)
        if m:
            cur = [m.group(1), 0, 0, []]
            files.append(cur)
            continue
        if not (OK.match(line) or NOT_OK.match(line)):
            continue
        if cur is None:
            cur = ["(before any file)", 0, 0, []]
            files.append(cur)
        if NOT_OK.match(line):
            cur[2] += 1
            continue
        m = SKIP.match(line)
        if m:
            cur[3].append((m.group(1), m.group(2).strip()))
        else:
            cur[1] += 1
    return [tuple(f) for f in files]


def judge(text, asked, expected, skips, status=0, all_files=None, logs=""):
    """Returns (lines to print, passed, failed, skipped). asked: the file names the run was asked
    for; all_files: every test file present (for stale table entries), or None."""
    out, problems = [], []
    runs = parse_log(text)
    by_name = {}
    for name, p, f, sk in runs:
        q = by_name.setdefault(name, [0, 0, []])
        q[0] += p
        q[1] += f
        q[2] += sk
    passed = sum(q[0] for q in by_name.values())
    failed = sum(q[1] for q in by_name.values())
    skipped = sum(len(q[2]) for q in by_name.values())
    names = list(dict.fromkeys(list(asked) + [n for n, *_ in runs]))
    for name in names:
        p, f, sk = by_name.get(name, (0, 0, []))
        ran = p + f + len(sk)
        want = expected.get(name)
        out.append(f"# counts: {name}: {p} passed, {f} failed, {len(sk)} skipped"
                   + (f" (expected at least {want})" if want is not None else " (not in the table)"))
        if want is None:
            problems.append(f"{name} is not in tests/guest/expected-checks"
                            f" (it ran {ran} checks): add it with its count")
        elif name not in by_name:
            problems.append(f"{name} did not run (expected at least {want} checks)")
        elif ran < want:
            problems.append(f"{name} ran {ran} checks, fewer than the {want}"
                            " tests/guest/expected-checks lists")
        elif ran > want:
            out.append(f"# note: {name} ran {ran} checks, more than the {want} listed:"
                       " raise its line in tests/guest/expected-checks")
        for check, reason in sk:
            if not reason:
                problems.append(f"{name}: check '{check}' skipped with no reason")
            elif (name, check) not in skips:
                problems.append(f"{name}: check '{check}' skipped ({reason}), and"
                                " tests/guest/allowed-skips does not list it")
    if all_files is not None:
        for name in sorted(set(expected) - set(all_files)):
            problems.append(f"tests/guest/expected-checks lists {name}, which does not exist")
    for p in problems:
        out.append(f"not ok - {p}")
    failed += len(problems)
    if status != 0 and failed == 0:
        out.append(f"not ok - guest run ended with status {status} (kernel error, crash or timeout"
                   + (f": see {logs})" if logs else ")"))
        failed = 1
    out.append(f"guest tests: {passed} passed, {failed} failed, {skipped} skipped"
               + (f" (logs: {logs})" if logs else ""))
    return out, passed, failed, skipped


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--status", type=int, default=0)
    ap.add_argument("--logs", default="")
    ap.add_argument("--expected", default=EXPECTED)
    ap.add_argument("--skips", default=SKIPS)
    ap.add_argument("--all", action="store_true")
    ap.add_argument("log")
    ap.add_argument("tests", nargs="*")
    a = ap.parse_args(argv[1:])
    try:
        expected = read_expected(a.expected)
        skips = read_skips(a.skips)
    except (OSError, TableError) as e:
        print(f"guestcount.py: {e}", file=sys.stderr)
        return 2
    try:
        with open(a.log, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        text = ""                          # no log: every file asked for "did not run"
    asked = [os.path.basename(t) for t in a.tests]
    all_files = None
    if a.all:
        all_files = sorted(n for n in os.listdir(os.path.dirname(os.path.abspath(a.expected)))
                           if TEST_FILE.match(n))
        asked = [n for n in all_files if n[0].isdigit()]
    lines, _, failed, _ = judge(text, asked, expected, skips, a.status, all_files, a.logs)
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
