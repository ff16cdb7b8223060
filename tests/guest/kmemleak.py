#!/usr/bin/env python3
"""kmemleak's report, judged for leaks of our kernel modules (the debug kernel's leak check).

    kmemleak.py scan REPORT          ask kmemleak to scan (twice, as its documentation advises:
                                     an object must be unreferenced in two scans) and save what
                                     it reports to REPORT
    kmemleak.py judge REPORT [--expect MODULE]
                                     without --expect: exit 1 if an unreferenced object has one
                                     of our modules (dm_wbcache, dm_repl, dmcore_kunit, or a bare
                                     address: a module unloaded since, and only ours are modules)
                                     in its allocation backtrace, printing each; with --expect: exit 0
                                     only if one has MODULE in it (the planted leak is found)
    kmemleak.py self-test            the judge on made-up reports (make host-test)

kmemleak (CONFIG_DEBUG_KMEMLEAK; the debug kernel has no background scan) reports an object
that nothing in memory points to any more once it is older than 5 s, with the backtrace of its
allocation; a frame of a module is printed "symbol+0x1c/0x80 [module]". Objects allocated by
other code (DRBD, the block layer) are listed as seen, not judged: they are not ours to fix and
some are known false positives.
"""
import re
import sys
import time

KMEMLEAK = "/sys/kernel/debug/kmemleak"
HEADER = re.compile(r"^unreferenced object (0x[0-9a-f]+) \(size (\d+)\):")
MODULE = re.compile(r"\[([A-Za-z0-9_]+)\]\s*$")
# A frame printed as a bare address: its module was unloaded before the report was read. In the
# test kernels every driver is built in but ours, so such a frame is one of ours.
UNLOADED = "(unloaded module)"
BARE = re.compile(r"^\s+(\[<[0-9a-f]+>\]\s+)?0x[0-9a-f]+\s*$")
OURS = ("dm_wbcache", "dm_repl", "dmcore_kunit", UNLOADED)


def parse(text):
    """The report's objects: a list of (header line, lines of the record, modules in its backtrace).
    A frame is a line of the record after its "backtrace" line: "    symbol+0x1c/0x80 [module]"
    (6.12), "    [<ffffffffc0a1b2c3>] symbol+... [module]" (older kernels), or a bare address."""
    objs = []
    in_trace = False
    for line in text.splitlines():
        if HEADER.match(line):
            objs.append([line, [line], set()])
            in_trace = False
        elif objs and line.startswith(" "):
            objs[-1][1].append(line)
            if line.strip().startswith("backtrace"):
                in_trace = True
            elif in_trace:
                m = MODULE.search(line)
                if m:
                    objs[-1][2].add(m.group(1))
                elif BARE.search(line):
                    objs[-1][2].add(UNLOADED)
        else:
            in_trace = False
    return [(h, lines, mods) for h, lines, mods in objs]


def judge(text, expect=None):
    """(exit status, lines to print)."""
    objs = parse(text)
    if expect is not None:
        found = [o for o in objs if expect in o[2]]
        out = [f"kmemleak: {len(objs)} unreferenced objects; {len(found)} allocated by {expect}"]
        for _, lines, _ in (found or objs)[:3]:
            out += lines
        return (0 if found else 1), out
    ours = [o for o in objs if o[2] & set(OURS)]
    others = {}
    for _, _, mods in objs:
        for m in mods or {"(built-in)"}:
            others[m] = others.get(m, 0) + 1
    out = [f"kmemleak: {len(objs)} unreferenced objects, {len(ours)} allocated by our modules"
           + (f"; by module: {', '.join(f'{k} {v}' for k, v in sorted(others.items()))}" if objs else "")]
    for _, lines, _ in ours:
        out += lines
    for _, lines, _ in [o for o in objs if o not in ours][:3]:
        out += ["(not ours)"] + lines
    return (1 if ours else 0), out


def scan(report):
    with open(KMEMLEAK, "w") as f:
        f.write("scan")
    time.sleep(6)                         # an object must be seen unreferenced by two scans
    with open(KMEMLEAK, "w") as f:
        f.write("scan")
    with open(KMEMLEAK) as f:
        text = f.read()
    with open(report, "w") as f:
        f.write(text)
    print(f"kmemleak: scanned, {len(parse(text))} unreferenced objects (report in {report})")
    return 0


def record(addr, frames, size=4096, old=False):
    return "\n".join([f"unreferenced object {addr} (size {size}):",
                      '  comm "dmsetup", pid 812, jiffies 4294939012',
                      "  hex dump (first 32 bytes):",
                      "    5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a 5a  ZZZZZZZZZZZZZZZZ",
                      "  backtrace (crc 3c1e5b21):"]
                     + [(f"    [<ffffffff8{i:07x}>] {fr}" if old else f"    {fr}") for i, fr in enumerate(frames)])


def self_test():
    fails = 0

    def expect(cond, what):
        nonlocal fails
        print(("ok - " if cond else "not ok - ") + what)
        fails += 0 if cond else 1

    ours = record("0xffff888104a1c000", ["__kmalloc_noprof+0x1f0/0x3c0",
                                          "_RNvXs_CsdmcoreNtB5_10TestTarget3ctr+0x2a1/0x9c0 [dmcore_kunit]",
                                          "dm_table_add_target+0x2bc/0x6e0", "table_load+0x1d8/0x650"])
    wb = record("0xffff888104a1d000", ["__kmalloc_noprof+0x1f0/0x3c0",
                                        "_RNvMs_Cs4wbcache6Shared9slow_write+0x99/0x400 [dm_wbcache]"])
    repl = record("0xffff888104a1e000", ["kmem_cache_alloc_noprof+0x150/0x300",
                                          "_RNv...Primary4send+0x10/0x80 [dm_repl]"])
    drbd = record("0xffff888104a1f000", ["__kmalloc_noprof+0x1f0/0x3c0",
                                          "drbd_adm_attach+0x2d1/0x1650 [drbd]"], 64)
    core = record("0xffff888104a20000", ["kmem_cache_alloc_noprof+0x150/0x300", "alloc_pid+0x6b/0x5a0"], 224)
    rc, _ = judge("")
    expect(rc == 0, "an empty report passes")
    rc, _ = judge(drbd + "\n" + core + "\n")
    expect(rc == 0, "leaks of other code (DRBD, the core) are listed, not judged")
    for what, rec in (("dm_wbcache", wb), ("dm_repl", repl), ("dmcore_kunit", ours)):
        rc, out = judge(drbd + "\n" + rec + "\n" + core + "\n")
        expect(rc == 1 and any(f"[{what}]" in ln for ln in out), f"a leak allocated in {what} fails, and is printed")
    rc, _ = judge(ours.replace(" [dmcore_kunit]", ""))
    expect(rc == 0, "a frame with no module is not ours")
    rc, _ = judge(ours.replace("[dmcore_kunit]", "[dmcore_kunitx]"))
    expect(rc == 0, "only our exact module names count")
    rc, out = judge(drbd + "\n" + ours + "\n", expect="dmcore_kunit")
    expect(rc == 0 and "1 allocated by dmcore_kunit" in out[0], "--expect finds the planted leak")
    rc, _ = judge(drbd + "\n" + wb + "\n", expect="dmcore_kunit")
    expect(rc == 1, "--expect fails when the planted leak is missing")
    rc, out = judge(ours.replace("_RNvXs_CsdmcoreNtB5_10TestTarget3ctr+0x2a1/0x9c0 [dmcore_kunit]", "0xffffffffc0a1b2c3"))
    expect(rc == 1 and any("0xffffffffc0a1b2c3" in ln for ln in out),
           "a frame of an unloaded module (a bare address: only ours are modules) fails")
    old = record("0xffff888104a21000", ["__kmalloc_noprof+0x1f0/0x3c0", "Shared::new+0x10/0x80 [dm_wbcache]"], old=True)
    rc, _ = judge(old)
    expect(rc == 1, "the older format (\"[<address>] symbol\") is read too")
    rc, _ = judge(ours.replace("  backtrace (crc 3c1e5b21):", "  backtrace:").replace("[dmcore_kunit]", "[dmcore_kunit]"))
    expect(rc == 1, "a backtrace header without its crc is read too")
    rc, _ = judge(record("0xffff888104a22000", ["__kmalloc_noprof+0x1f0/0x3c0"]).replace(
        "  comm \"dmsetup\"", "  comm \"dm_wbcache [x]\""))
    expect(rc == 0, "a module-like word outside the backtrace is not a frame")
    rc, _ = judge("kmemleak: some message\n" + wb.replace("unreferenced object", "referenced object"))
    expect(rc == 0, "only 'unreferenced object' records are objects")
    print(f"kmemleak.py self-test: {'ok' if fails == 0 else f'{fails} failed'}")
    return 1 if fails else 0


def main(argv):
    if len(argv) >= 3 and argv[1] == "scan":
        return scan(argv[2])
    if len(argv) >= 3 and argv[1] == "judge":
        expect = None
        if len(argv) == 5 and argv[3] == "--expect":
            expect = argv[4]
        elif len(argv) != 3:
            print(__doc__, file=sys.stderr)
            return 2
        try:
            with open(argv[2], encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as e:
            print(f"kmemleak.py: {e}", file=sys.stderr)
            return 2
        rc, out = judge(text, expect)
        print("\n".join(out))
        return rc
    if len(argv) == 2 and argv[1] == "self-test":
        return self_test()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
