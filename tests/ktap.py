#!/usr/bin/env python3
"""Turns KUnit KTAP results into one TAP-style line per test case.

    ktap.py FILE...        each FILE is a /sys/kernel/debug/kunit/<suite>/results
    ktap.py --self-test    checks the parser itself on known inputs

Prints "ok - kunit/<suite>/<case>" or "not ok - ..." per case and exits 1 if any case failed,
any suite reported fewer cases than its plan (a crash mid-suite), or no case was found at all.
"""
import re
import sys

CASE = re.compile(r"^ {4}(not )?ok (\d+) (\S+)(?:\s+#\s*(SKIP.*))?")
PLAN = re.compile(r"^ {4}1\.\.(\d+)")
SUBTEST = re.compile(r"^ {4}# Subtest: (\S+)|^\s*# Subtest: (\S+)")
SUITE = re.compile(r"^(not )?ok \d+ (\S+)")


def parse(text, default_suite="?"):
    """Returns (lines, failed): TAP lines for the cases and whether anything failed."""
    suite, plan, seen, lines, failed = default_suite, None, 0, [], False
    suite_verdict = None
    for raw in text.splitlines():
        m = SUBTEST.match(raw)
        if m:
            suite = m.group(1) or m.group(2)
            continue
        m = PLAN.match(raw)
        if m:
            plan = int(m.group(1))
            continue
        m = CASE.match(raw)
        if m:
            seen += 1
            bad = m.group(1) is not None
            skip = m.group(4)
            name = f"kunit/{suite}/{m.group(3)}"
            if bad:
                failed = True
                lines.append(f"not ok - {name}")
            elif skip:
                lines.append(f"ok - {name} # {skip}")
            else:
                lines.append(f"ok - {name}")
            continue
        m = SUITE.match(raw)
        if m:
            suite_verdict = m.group(1) is None
    if plan is not None and seen < plan:
        failed = True
        lines.append(f"not ok - kunit/{suite}: {seen} of {plan} cases reported (crash?)")
    if seen == 0:
        failed = True
        lines.append(f"not ok - kunit/{suite}: no test cases found")
    if suite_verdict is False and not failed:
        failed = True
        lines.append(f"not ok - kunit/{suite}: suite reported failure")
    return lines, failed


def self_test():
    good = "KTAP version 1\n    # Subtest: s\n    1..2\n    ok 1 a\n    ok 2 b # SKIP no net\n" \
           "# s: pass:1 fail:0 skip:1 total:2\nok 1 s\n"
    bad = "    # Subtest: s\n    1..2\n    ok 1 a\n    # b: EXPECTATION FAILED\n    not ok 2 b\nnot ok 1 s\n"
    crashed = "    # Subtest: s\n    1..3\n    ok 1 a\n"
    empty = "KTAP version 1\n1..0\n"
    assert parse(good) == (["ok - kunit/s/a", "ok - kunit/s/b # SKIP no net"], False), parse(good)
    lines, failed = parse(bad)
    assert failed and "not ok - kunit/s/b" in lines, lines
    lines, failed = parse(crashed)
    assert failed and lines[-1].startswith("not ok - kunit/s: 1 of 3"), lines
    assert parse(empty)[1], "an empty result must fail"
    print("ktap.py self-test: ok")


def main(argv):
    if argv[1:] == ["--self-test"]:
        self_test()
        return 0
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    any_failed = False
    for path in argv[1:]:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines, failed = parse(f.read(), default_suite=path.split("/")[-2] if "/" in path else path)
        print("\n".join(lines))
        any_failed |= failed
    return 1 if any_failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
