#!/usr/bin/env bash
# Runs the guest tests (all of tests/guest/[0-9]*.sh, or the files named) in ONE guest boot and
# prints "guest tests: N passed, M failed". A guest that crashes, times out or logs a kernel
# error counts as a failure even if every check passed.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
logdir=$root/logs/$(date +%Y%m%d-%H%M%S)-guest-tests
# WBREPL_ALLOW_WARNING: a known kernel warning of code that is not ours (the Makefile passes the
# in-tree DRBD 8.4's, which 92-checkpoint-drbd.sh triggers): see qemu/run-guest.sh.
allow=()
[ -n "${WBREPL_ALLOW_WARNING:-}" ] && allow=(--allow-warning "$WBREPL_ALLOW_WARNING")
"$root/qemu/run-guest.sh" --logdir "$logdir" "${allow[@]}" "$root/tests/guest/run-all.sh" "$@"
rc=$?
pass=$(grep -c '^ok ' "$logdir/guest.log" 2>/dev/null)
fail=$(grep -c '^not ok' "$logdir/guest.log" 2>/dev/null)
if [ "$rc" != 0 ] && [ "$fail" = 0 ]; then
  echo "not ok - guest run ended with status $rc (kernel error, crash or timeout: see $logdir)"
  fail=1
fi
echo "guest tests: $pass passed, $fail failed (logs: $logdir)"
[ "$rc" = 0 ] && [ "$fail" = 0 ]
