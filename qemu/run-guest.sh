#!/usr/bin/env bash
# Boots the wbrepl guest kernel under QEMU (virtme-ng: the host's root file system, read-only,
# with writable overlays) and runs one command in it. Returns the command's exit status.
#
#   qemu/run-guest.sh [--logdir DIR] [--timeout SECONDS] [--allow-warning REGEX]... COMMAND [ARGS...]
#
# - TCG by default; WBREPL_KVM=1 tries KVM (it hung on this machine kind, see docs/testing.md).
# - The guest kernel panics on any oops or hung task (the run then ends with status 255).
# - The kernel console goes to DIR/console.log; the command's output to the terminal and
#   DIR/guest.log. After the run the console is scanned for BUG:/WARNING:/Oops/general
#   protection/KASAN/hung-task/soft-lockup lines (and the debug kernel's lockdep, ODEBUG and RCU
#   reports; qemu/scan-console.sh, which tests/harness_selftest.py feeds made-up consoles):
#   any of them fails the run (status 99), and the lines are printed.
#   --allow-warning REGEX (repeatable) exempts a known warning of code that is not ours: a
#   "cut here" ... "end trace" block with a WARNING: line, no BUG:/Oops/KASAN/panic line, whose
#   text (its lines joined by spaces) matches REGEX (awk ERE) is left out of the scan and copied
#   to DIR/allowed-warnings.txt. The Makefile passes the in-tree DRBD 8.4's known warning
#   (bench-repl, guest-test, test-debug).
# - A debug kernel (CONFIG_KASAN=y in KDIR's .config; make test-debug) gets 4 GiB and
#   kasan_multi_shot.
# - Inside the guest (qemu/guest-init.sh): debugfs is mounted, our modules are installed under
#   /lib/modules/$(uname -r)/extra for autoloading, $WBREPL_ROOT is this repository and
#   $WBREPL_LOGDIR the (writable) log directory; dmesg is saved to DIR/dmesg.txt.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
logdir="" timeout=${WBREPL_GUEST_TIMEOUT:-3600} allowed=()
while [ $# -gt 0 ]; do
  case "$1" in
    --logdir) logdir=$2; shift 2;;
    --timeout) timeout=$2; shift 2;;
    --allow-warning) allowed+=("$2"); shift 2;;
    *) break;;
  esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--logdir DIR] [--timeout S] [--allow-warning REGEX]... COMMAND [ARGS...]" >&2; exit 2; }
# The guest starts in /tmp: make a script path given relative to here absolute.
if [ -e "$1" ]; then set -- "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")" "${@:2}"; fi
kdir=${KDIR:-$("$root/qemu/build-kernel.sh" --kdir)}
[ -f "$kdir/arch/x86/boot/bzImage" ] || { echo "no built kernel in $kdir: run 'make kernel'" >&2; exit 2; }
if [ -z "$logdir" ]; then
  logdir=$root/logs/$(date +%Y%m%d-%H%M%S)-$(basename "$1" .sh)
fi
mkdir -p "$logdir"
logdir=$(cd "$logdir" && pwd)

accel=(--disable-kvm)
[ "${WBREPL_KVM:-0}" = 1 ] && accel=()
# The debug kernel (qemu/kernel-debug.config, make test-debug): KASAN reports every bad access,
# not only the first; 4 GiB of memory, as KASAN's shadow (an eighth of it), its quarantine and
# kmemleak's objects take from what the tests' /tmp (half of the memory) would otherwise get.
mem=3G append="oops=panic hung_task_panic=1 softlockup_panic=1"
if grep -q '^CONFIG_KASAN=y' "$kdir/.config" 2>/dev/null; then
  mem=4G append="$append kasan_multi_shot"
fi
# WBREPL_* settings of the caller (e.g. test sizes) reach the guest command.
fwd=()
while IFS= read -r v; do fwd+=("$v"); done < <(env | grep -E '^WBREPL_[A-Z0-9_]+=' || true)
cmd=$(printf '%q ' env "${fwd[@]}" "$root/qemu/guest-init.sh" "$root" "$logdir" "$@")

set +e
timeout -k 10 "$timeout" vng --run "$kdir" "${accel[@]}" --cpus 2 --memory "$mem" -v \
  --rwdir "$logdir" --cwd /tmp \
  --append "$append" \
  -- "$cmd" 2>"$logdir/console.log" | tee "$logdir/guest.log"
rc=${PIPESTATUS[0]}
set -e
[ $rc = 124 ] && echo "[run-guest] guest timed out after ${timeout}s" >&2

# The console's kernel reports (qemu/scan-console.sh: the patterns, the allowed warnings).
allow_args=()
for re in "${allowed[@]}"; do allow_args+=(--allow-warning "$re"); done
if ! "$root/qemu/scan-console.sh" "$logdir/console.log" "$logdir" "${allow_args[@]}"; then
  echo "[run-guest] console tail:" >&2
  tail -n 60 "$logdir/console.log" >&2
  [ $rc = 0 ] && rc=99
fi
if [ $rc != 0 ] && [ ! -s "$logdir/dmesg.txt" ]; then
  cp "$logdir/console.log" "$logdir/dmesg.txt" 2>/dev/null || true
fi
echo "[run-guest] exit $rc, logs in $logdir" >&2
exit $rc
