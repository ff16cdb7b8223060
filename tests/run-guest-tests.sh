#!/usr/bin/env bash
# Runs the guest tests (all of tests/guest/[0-9]*.sh, or the files named) in ONE guest boot, then
# tests/guestcount.py holds every file to its count in tests/guest/expected-checks and every skip
# to tests/guest/allowed-skips, and prints "guest tests: N passed, M failed, K skipped". A file
# that runs fewer checks than listed (or none: a guest that died before it), a file not listed,
# an unlisted skip, and a guest that crashes, times out or logs a kernel error are failures even
# if every check that ran passed.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
# WBREPL_LOGNAME: the log folder's name after the time (make test-debug: debug-guest-tests).
logdir=$root/logs/$(date +%Y%m%d-%H%M%S)-${WBREPL_LOGNAME:-guest-tests}
# WBREPL_ALLOW_WARNING: a known kernel warning of code that is not ours (the Makefile passes the
# in-tree DRBD 8.4's, which 92-checkpoint-drbd.sh triggers): see qemu/run-guest.sh.
allow=()
[ -n "${WBREPL_ALLOW_WARNING:-}" ] && allow=(--allow-warning "$WBREPL_ALLOW_WARNING")
"$root/qemu/run-guest.sh" --logdir "$logdir" "${allow[@]}" "$root/tests/guest/run-all.sh" "$@"
rc=$?
which=(--all)
[ $# -gt 0 ] && which=("$@")
python3 "$root/tests/guestcount.py" --status "$rc" --logs "$logdir" "$logdir/guest.log" "${which[@]}"
