#!/usr/bin/env bash
# dm-wbcache: structure-aware fuzzing of the metadata load (issue 14). `wbmetafuzz`
# (tests/tools) writes cache images with valid checksums and one kind of damage each (or none:
# wbrepl_core::wbfuzz, 25 kinds) onto a cache device, predicts the verdict with the kernel's own
# load steps run in userspace (wbrepl_core::wbload) and creates the target over each: it must
# load the image with the same counts and epoch, format the device, or refuse it with the same
# message, within 10 s, with no kernel error (the harness scans the console). Two caches of
# 8 MiB of 4 KiB blocks (2030 entries) and 4 MiB of 512-byte blocks (7700: images with
# thousands of entries naming one block). The seed is printed; WBREPL_METAFUZZ_SEED repeats a
# run, WBREPL_METAFUZZ_CASES sets the number of images (make test-long: 20 000).
. "$(dirname "$0")/lib.sh"

F=$WBREPL_ROOT/target/release/wbmetafuzz
N=${WBREPL_METAFUZZ_CASES:-500}
SEED=${WBREPL_METAFUZZ_SEED:-$(date +%s)}
O=$(loopdev mf-origin 64); C4=$(loopdev mf-cache4k 8); C5=$(loopdev mf-cache512 4)
echo "# wbmetafuzz seed $SEED"
# Each run prints the images per kind of damage and its time (kept in the log).
fuzz() {
  local out rc
  out=$("$F" --origin "$O" "$@" 2>&1); rc=$?
  sed 's/^/#   /' <<<"$out" | grep -v 'MISMATCH' | tail -n 30
  grep 'MISMATCH' <<<"$out" | head -n 20
  return $rc
}
fuzz --cache "$C4" --block-size 4096 --seed "$SEED" --count $((N / 2)); rc=$?
check_eq "metafuzz: $((N / 2)) images, 4 KiB blocks (seed $SEED): the kernel did as predicted" 0 "$rc"
fuzz --cache "$C5" --block-size 512 --seed $((SEED + N)) --count $((N - N / 2)); rc=$?
check_eq "metafuzz: $((N - N / 2)) images, 512-byte blocks (seed $((SEED + N))): the kernel did as predicted" 0 "$rc"
# The oracle rejects wrong predictions: with every prediction altered, every image mismatches.
check "metafuzz (oracle): 40 altered predictions are all rejected" \
  "$F" --origin "$O" --cache "$C4" --block-size 4096 --seed "$SEED" --count 40 --mutate
cleanup_dm
finish
