#!/usr/bin/env bash
# Checkpoints with another replication layer below the cache: dm-wbcache over the in-tree DRBD
# 8.4 (protocol C). The marker is an ordinary write, so DRBD replicates it like any other; the
# secondary side finds it by reading the marker region (the last 4 KiB of the DRBD device) on
# DRBD's backing device, a dm-thin volume, and snapshots it. DRBD cannot freeze at a marker, so
# an image is exact only if nothing reaches DRBD between the marker and the snapshot: here the
# cache writes back only at checkpoints (high_watermark 100, no max_age, a cache larger than
# the working set), which is the configuration docs/checkpoints.md describes for DRBD. The
# block oracle (cpload.py) checks every image.
#
# DRBD 8.4 in-tree cannot use network namespaces (it creates its sockets in init_net), so both
# nodes run in the root namespace over two addresses on lo, as `make bench-repl` does.
. "$(dirname "$0")/lib.sh"
here=$(cd "$(dirname "$0")" && pwd)
CPS=${WBREPL_CP_DRBD:-hold,writethrough:8}
IP_A=10.99.8.1
IP_B=10.99.8.2
if [ -x /usr/lib/drbd/drbdsetup-84 ]; then DRBDSETUP=/usr/lib/drbd/drbdsetup-84; else DRBDSETUP=drbdsetup; fi

if ! grep -q '^version: 8\.4\.' /proc/drbd 2>/dev/null || ! command -v drbdmeta >/dev/null; then
  not_ok "drbd: DRBD 8.4 and drbd-utils in the guest"
  finish; exit 1
fi
check "drbd: addresses on lo" bash -c "ip link set lo up && ip addr add $IP_A/32 dev lo && ip addr add $IP_B/32 dev lo"

# --- node B: DRBD's backing device is a thin volume (to be snapshotted) --------------------------
PA=$(loopdev cpd-a 72); TM=$(loopdev cpd-tmeta 8); TD=$(loopdev cpd-tdata 256); CD=$(loopdev cpd-c 24)
SA=$(sectors "$PA")
check "drbd: thin pool" dmsetup create cpd-pool --table "0 $(sectors "$TD") thin-pool $TM $TD 128 0 1 skip_block_zeroing"
check "drbd: thin volume" bash -c "dmsetup message cpd-pool 0 'create_thin 0' && dmsetup create cpd-thin --table '0 $SA thin /dev/mapper/cpd-pool 0'"
SB=/dev/mapper/cpd-thin
check "drbd: metadata" bash -c "drbdmeta --force 0 v08 $PA internal create-md && drbdmeta --force 1 v08 $SB internal create-md"
check "drbd: resources" bash -c "
  $DRBDSETUP new-resource cpd-a && $DRBDSETUP new-minor cpd-a 0 0 && $DRBDSETUP attach 0 $PA $PA internal &&
  $DRBDSETUP new-resource cpd-b && $DRBDSETUP new-minor cpd-b 1 0 && $DRBDSETUP attach 1 $SB $SB internal &&
  $DRBDSETUP connect cpd-a ipv4:$IP_A:7788 ipv4:$IP_B:7788 --protocol=C &&
  $DRBDSETUP connect cpd-b ipv4:$IP_B:7788 ipv4:$IP_A:7788 --protocol=C"
drbd_connected() { [ "$($DRBDSETUP cstate 0)" = Connected ] && [ "$($DRBDSETUP cstate 1)" = Connected ]; }
drbd_uptodate() { [ "$($DRBDSETUP dstate 0 2>/dev/null)" = UpToDate/UpToDate ]; }
wait_for() { local t=$1 i; shift; for i in $(seq $((t * 5))); do "$@" && return 0; sleep 0.2; done; return 1; }
check "drbd: connected" wait_for 30 drbd_connected
check "drbd: skip the initial sync (both blank)" $DRBDSETUP new-current-uuid 0 --clear-bitmap=yes
check "drbd: up to date" wait_for 30 drbd_uptodate
check "drbd: minor 0 primary" $DRBDSETUP primary 0
D=$(sectors /dev/drbd0)
W=$(((D - 8) / 8 * 8))
check "drbd: wbcache over /dev/drbd0, writing back only at checkpoints" dmsetup create cpd-w --table \
  "0 $W wbcache /dev/drbd0 $CD 4096 4 high_watermark 100 low_watermark 99"

# --- node B's watcher: the marker region of the DRBD data on the thin volume ---------------------
# DRBD's data area starts at sector 0 of its backing device (internal metadata is at the end), so
# the marker is at sector D - 8 of the thin volume. A new marker id there, with DRBD up to date
# (not resyncing: a resync is unordered), means the volume holds the checkpoint: snapshot it
# (dm-thin wants the origin suspended for create_snap).
MAP=$IMG_DIR/cpd-map; STOP=$IMG_DIR/cpd.stop
rm -f "$MAP" "$STOP"
python3 "$here/markerwatch.py" --dev $SB --sector $((D - 8)) --map "$MAP" --stop "$STOP" \
  --ready "[ \"\$($DRBDSETUP dstate 1)\" = UpToDate/UpToDate ]" \
  --on-marker "dmsetup suspend cpd-thin && dmsetup message cpd-pool 0 'create_snap {n} 0'; r=\$?; dmsetup resume cpd-thin; exit \$r" \
  2>"$IMG_DIR/cpd-watcher.err" &
WPID=$!
# The next checkpoint (whose drain reaches DRBD) waits until the watcher has taken the image of
# the last one: nothing may reach DRBD between a marker and its snapshot. Images are found by
# the marker's label (the watcher reads it from the record).
image_taken="for i in \$(seq $(scaled 300)); do grep -q ' {label}\$' $MAP && exit 0; sleep 0.1; done; exit 1"

# --- the oracle, with checkpoints spaced so the watcher sees each marker before the next drain ---
check "drbd: cpload run ($CPS; each waits for the last image)" python3 "$here/cpload.py" run --dev /dev/mapper/cpd-w --wbcache cpd-w \
  --log "$IMG_DIR/cpd.log" --blocks 2048 --threads 4 --label-prefix d --phase "$CPS" --interval 1 --after-checkpoint "$image_taken" --timeout-ms "$(scaled 60000)"
grep '^cpload' "$T_OUT" | diag 20
sleep 1
touch "$STOP"; wait $WPID
check_eq "drbd: the watcher had no errors" "" "$(cat "$IMG_DIR/cpd-watcher.err")"
[ -n "${WBREPL_LOGDIR:-}" ] && cp "$IMG_DIR/cpd.log" "$WBREPL_LOGDIR/" 2>/dev/null   # kept for inspection
args=()
for l in $(python3 -c "import json; print(' '.join(c['label'] for c in json.load(open('$IMG_DIR/cpd.log'))['checkpoints'] if 'id' in c))"); do
  t=$(awk -v l="$l" '$3 == l {t = $2; n++} END {if (n == 1) print t}' "$MAP")
  [ -n "$t" ] || { not_ok "drbd: the watcher saw marker $l (once)"; continue; }
  if dmsetup create cpd-img --readonly --table "0 $SA thin /dev/mapper/cpd-pool $t" &&
     dd if=/dev/mapper/cpd-img of="$IMG_DIR/cpd-img-$l" bs=1M count=8 iflag=direct status=none; then
    args+=(--image "$l:$IMG_DIR/cpd-img-$l")
  else
    not_ok "drbd: read the image of marker $l"
  fi
  dm_remove cpd-img >/dev/null 2>&1
done
n=$((${#args[@]} / 2))
check "drbd: an image at every checkpoint ($n)" test "$n" -ge 8
check "drbd: every image is the workload at an instant of its checkpoint (order, lower, upper bound)" \
  python3 "$here/cpload.py" check --log "$IMG_DIR/cpd.log" "${args[@]}"
diag 20 <"$T_OUT"
check_match "drbd: ...none newer than its checkpoint (the watcher's race: upper bound)" \
  'checkpoint images, 0 rejected \(order 0, lower 0, upper 0, torn 0;' "$(cat "$T_OUT")"
# Mutation: each image given as the previous marker's (what the watcher snapshotting after the
# next drain began would give): every one must be rejected as newer than its checkpoint.
shifted=() prev=
for ((i = 1; i < ${#args[@]}; i += 2)); do
  [ -n "$prev" ] && shifted+=(--image "$prev:${args[$i]#*:}")
  prev=${args[$i]%%:*}
done
n=$((${#shifted[@]} / 2))
check_fails "drbd: mutation: each image given as the previous marker's is rejected" \
  python3 "$here/cpload.py" check --log "$IMG_DIR/cpd.log" --allow-missing "${shifted[@]}"
check_match "drbd: ...all $n as newer than their checkpoint (upper), none for another rule" \
  "checkpoint images, $n rejected \(order 0, lower 0, upper $n, torn 0;" "$(cat "$T_OUT")"
rm -f "$IMG_DIR"/cpd-img-*

check "drbd: remove the cache" dm_remove cpd-w
check "drbd: down" bash -c "$DRBDSETUP down cpd-a && $DRBDSETUP down cpd-b"
check "drbd: remove the thin volume" dm_remove cpd-thin cpd-pool
ip addr del $IP_A/32 dev lo 2>/dev/null; ip addr del $IP_B/32 dev lo 2>/dev/null
finish
