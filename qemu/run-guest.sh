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
#   protection/KASAN/hung-task/soft-lockup lines: any of them fails the run (status 99), and
#   the lines are printed. --allow-warning REGEX (repeatable) exempts a known warning of code
#   that is not ours: a "cut here" ... "end trace" block with a WARNING: line, no BUG:/Oops/
#   KASAN/panic line, whose text (its lines joined by spaces) matches REGEX (awk ERE) is left
#   out of the scan and copied to DIR/allowed-warnings.txt. Only make bench-repl uses it.
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
# WBREPL_* settings of the caller (e.g. test sizes) reach the guest command.
fwd=()
while IFS= read -r v; do fwd+=("$v"); done < <(env | grep -E '^WBREPL_[A-Z0-9_]+=' || true)
cmd=$(printf '%q ' env "${fwd[@]}" "$root/qemu/guest-init.sh" "$root" "$logdir" "$@")

set +e
timeout -k 10 "$timeout" vng --run "$kdir" "${accel[@]}" --cpus 2 --memory 3G -v \
  --rwdir "$logdir" --cwd /tmp \
  --append "oops=panic hung_task_panic=1 softlockup_panic=1" \
  -- "$cmd" 2>"$logdir/console.log" | tee "$logdir/guest.log"
rc=${PIPESTATUS[0]}
set -e
[ $rc = 124 ] && echo "[run-guest] guest timed out after ${timeout}s" >&2

bad='BUG:|WARNING:|Oops|general protection|KASAN|blocked for more than|soft lockup|Kernel panic|Call Trace:'
# The console with the allowed warnings' blocks blanked (line numbers kept).
scan() {
  if [ ${#allowed[@]} = 0 ]; then cat "$logdir/console.log"; return; fi
  printf '%s\n' "${allowed[@]}" | awk -v out="$logdir/allowed-warnings.txt" '
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
    END { if (inblk) flush() }' - "$logdir/console.log" || cat "$logdir/console.log"
}
rm -f "$logdir/allowed-warnings.txt"
if scan | grep -nE "$bad" > "$logdir/kernel-errors.txt"; then
  echo "[run-guest] kernel errors in the guest console ($logdir/console.log):" >&2
  head -n 40 "$logdir/kernel-errors.txt" >&2
  echo "[run-guest] console tail:" >&2
  tail -n 60 "$logdir/console.log" >&2
  [ $rc = 0 ] && rc=99
else
  rm -f "$logdir/kernel-errors.txt"
fi
if [ $rc != 0 ] && [ ! -s "$logdir/dmesg.txt" ]; then
  cp "$logdir/console.log" "$logdir/dmesg.txt" 2>/dev/null || true
fi
echo "[run-guest] exit $rc, logs in $logdir" >&2
exit $rc
