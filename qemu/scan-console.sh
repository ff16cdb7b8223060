#!/usr/bin/env bash
# The kernel-report detector of every guest run (qemu/run-guest.sh calls it on the console after
# the guest ends; tests/harness_selftest.py feeds it made-up consoles):
#
#   qemu/scan-console.sh CONSOLE OUTDIR [--allow-warning REGEX]...
#
# Exit 1, with the matching lines printed and saved (numbered) to OUTDIR/kernel-errors.txt, if
# CONSOLE has a line of a kernel report: BUG: (sleeping function called from invalid context,
# KASAN's reports, lockdep running out of table space, ...), WARNING:, Oops, general protection,
# KASAN, a hung task, a soft lockup, a panic, a Call Trace:; and the debug kernel's reports by
# their own words too, so a report whose first line is interleaved with other output still
# fails: lockdep's (circular, recursive, inconsistent, irq lock inversion, HARDIRQ-/SOFTIRQ-safe
# ordering, a lock held when returning to user space, a non-static key, and "lockdep is turned
# off", printed once lockdep has stopped checking after a report), DEBUG_OBJECTS' (ODEBUG:),
# RCU's (suspicious use, stalls), UBSAN's. Exit 0 otherwise.
#
# --allow-warning REGEX (repeatable) exempts a known warning of code that is not ours: a
# "cut here" ... "end trace" block with a WARNING: line and no BUG:/Oops/KASAN/panic/general
# protection line, whose text (its lines joined by spaces) matches REGEX (awk ERE), is left out
# of the scan and copied to OUTDIR/allowed-warnings.txt. Anything outside such a block (a lockdep
# report, which has no "cut here" line, included) is scanned as usual.
set -u
[ $# -ge 2 ] || { echo "usage: $0 CONSOLE OUTDIR [--allow-warning REGEX]..." >&2; exit 2; }
console=$1 outdir=$2; shift 2
allowed=()
while [ $# -gt 0 ]; do
  case "$1" in
    --allow-warning) allowed+=("$2"); shift 2;;
    *) echo "$0: unknown argument $1" >&2; exit 2;;
  esac
done
[ -r "$console" ] || { echo "$0: cannot read $console" >&2; exit 2; }

bad='BUG:|WARNING:|Oops|general protection|KASAN|blocked for more than|soft lockup|Kernel panic|Call Trace:'
bad+='|possible circular locking|inconsistent lock state|possible recursive locking|lock held when returning'
bad+='|possible irq lock inversion|HARDIRQ-safe|SOFTIRQ-safe|trying to register non-static key|lockdep is turned off'
bad+='|ODEBUG:|suspicious RCU usage|rcu: INFO:|detected stalls? on CPUs?|self-detected stall|UBSAN:'

# The console with the allowed warnings' blocks blanked (line numbers kept).
scan() {
  if [ ${#allowed[@]} = 0 ]; then cat "$console"; return; fi
  printf '%s\n' "${allowed[@]}" | awk -v out="$outdir/allowed-warnings.txt" '
    FNR == NR { re[++nre] = $0; next }
    function flush(   i, ok, text) {
      text = ""
      for (i = 1; i <= nb; i++) text = text " " blk[i]
      ok = text ~ /WARNING:/ && text !~ /BUG:|Oops|KASAN|Kernel panic|general protection/
      if (ok) { ok = 0; for (i = 1; i <= nre; i++) if (text ~ re[i]) ok = 1 }
      for (i = 1; i <= nb; i++) {
        if (ok) { print "" ; print blk[i] > out } else print blk[i]
      }
      nb = 0; inblk = 0
    }
    /------------\[ cut here \]------------/ { if (inblk) flush(); inblk = 1 }
    inblk { blk[++nb] = $0; if ($0 ~ /---\[ end trace/) flush(); next }
    { print }
    END { if (inblk) flush() }' - "$console" || cat "$console"
}
rm -f "$outdir/allowed-warnings.txt"
if scan | grep -nE "$bad" > "$outdir/kernel-errors.txt"; then
  echo "[run-guest] kernel errors in the guest console ($console):" >&2
  head -n 40 "$outdir/kernel-errors.txt" >&2
  exit 1
fi
rm -f "$outdir/kernel-errors.txt"
exit 0
