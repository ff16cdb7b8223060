#!/usr/bin/env bash
# Runs every guest test file (tests/guest/[0-9]*.sh, or those named) in one guest boot.
# A file that exits non-zero without reporting a failure counts as one failure.
set -u
here=$(cd "$(dirname "$0")" && pwd)
files=("$@")
[ ${#files[@]} -gt 0 ] || files=("$here"/[0-9]*.sh)
failed_files=0
for f in "${files[@]}"; do
  # A bare name is this folder's file, whatever the working directory holds (the guest's
  # working directory is the host's, where a stray file of that name must not run instead).
  case $f in */*) ;; *) f=$here/$f ;; esac
  echo "# --- $(basename "$f")"
  out=$(mktemp)
  start=$(date +%s)
  bash "$f" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  if [ "$rc" != 0 ] && ! grep -q '^not ok' "$out"; then
    echo "not ok - $(basename "$f") exited with status $rc"
  fi
  [ "$rc" != 0 ] && failed_files=$((failed_files + 1))
  echo "# $(basename "$f") took $(( $(date +%s) - start )) s"
  rm -f "$out"
  # Leave nothing behind for the next file: the loop files live in the guest's /tmp, a tmpfs
  # in RAM, and what one file leaves there (hundreds of MiB of logs and thin data) would fill
  # it for the next ones (their loop devices would then fail writes with ENOSPC).
  dmsetup remove_all --force >/dev/null 2>&1
  losetup -D 2>/dev/null
  rm -rf /tmp/wbrepl-img
  echo "# /tmp: $(df -h --output=used,size /tmp | tail -1 | xargs) used"
done
[ $failed_files = 0 ]
