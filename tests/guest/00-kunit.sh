#!/usr/bin/env bash
# KUnit suites of rust/dmcore: loading dmcore_kunit.ko runs them; every case is one result.
. "$(dirname "$0")/lib.sh"

suites=(dmcore_args dmcore_bio dmcore_crypto dmcore_net dmcore_sync)
check "kunit: module loads (suites run at load)" modprobe dmcore_kunit
files=()
for s in "${suites[@]}"; do
  f=/sys/kernel/debug/kunit/$s/results
  if [ -r "$f" ]; then files+=("$f"); else not_ok "kunit: suite $s registered"; fi
done
if [ ${#files[@]} -gt 0 ]; then
  out=$(python3 "$WBREPL_ROOT/tests/ktap.py" "${files[@]}")
  rc=$?
  echo "$out"
  T_SKIP=$((T_SKIP + $(grep -ciE '^ok .*# *skip\b' <<<"$out")))
  T_PASS=$((T_PASS + $(grep -c '^ok' <<<"$out") - $(grep -ciE '^ok .*# *skip\b' <<<"$out")))
  T_FAIL=$((T_FAIL + $(grep -c '^not ok' <<<"$out")))
  if [ $rc != 0 ]; then
    not_ok "kunit: all cases pass"
    for f in "${files[@]}"; do diag 60 <"$f"; done
  fi
fi
check "kunit: module unloads" rmmod dmcore_kunit
finish
