#!/usr/bin/env bash
# Runs every guest test file (tests/guest/[0-9]*.sh, or those named) in one guest boot.
# A file that exits non-zero without reporting a failure counts as one failure.
set -u
here=$(cd "$(dirname "$0")" && pwd)
files=("$@")
[ ${#files[@]} -gt 0 ] || files=("$here"/[0-9]*.sh)
failed_files=0
for f in "${files[@]}"; do
  [ -f "$f" ] || f=$here/$f
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
  # Leave nothing behind for the next file.
  dmsetup remove_all --force >/dev/null 2>&1
  losetup -D 2>/dev/null
done
[ $failed_files = 0 ]
