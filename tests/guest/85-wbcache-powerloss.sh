#!/usr/bin/env bash
# dm-wbcache power loss, the xfstests generic/482 way: dm-log-writes sits under both the cache
# and the origin (two dm-linear slices of one logged device, so one log orders all their
# writes). A workload runs; then the log is replayed onto a blank image up to each point that
# ends in a FLUSH or FUA, wbcache is rebuilt on that image (through a dm-snapshot, so the
# image stays pristine for the next point), and we check:
#   - the table loads at every point;
#   - block workload: every write acknowledged before the last completed flush reads back
#     (tests/guest/powerloss.py is the oracle);
#   - ext4 workload: the filesystem mounts (journal replay) and `e2fsck -fn` is clean.
. "$(dirname "$0")/lib.sh"
R="python3 $WBREPL_ROOT/tests/logreplay.py"
PL="python3 $WBREPL_ROOT/tests/guest/powerloss.py"

CS=$((32 * 2048)); OS=$((64 * 2048))       # cache and origin slices, in sectors
POINTS_BLOCK=${WBREPL_PL_POINTS_BLOCK:-45}  # replay points per run (make test-long raises them)
POINTS_EXT4=${WBREPL_PL_POINTS_EXT4:-15}
POINTS_FULL=${WBREPL_PL_POINTS_FULL:-25}

# stack_on DEV: the cache and origin slices of DEV and a wbcache over them ("pl" names).
stack_on() {
  dmsetup create pl_c --table "0 $CS linear $1 0" &&
  dmsetup create pl_o --table "0 $OS linear $1 $CS" &&
  dmsetup create pl_wbc --table "0 $OS wbcache /dev/mapper/pl_o /dev/mapper/pl_c 4096 $2"
}
unstack() { dm_remove pl_wbc pl_c pl_o; }

# pick N FILE: N indices spread evenly over the lines of FILE (always the last one).
pick() { awk -v n="$1" '{a[NR]=$1} END {if (NR==0) exit; s=NR/n; if (s<1) s=1; for (i=s; i<NR; i+=s) print a[int(i)]; print a[NR]}' "$2" | uniq; }

# last_mark POINT MARKS: the step of the last "s<step>" mark logged before POINT (0: none).
last_mark() { awk -v p="$1" '$1 < p && $2 ~ /^s[0-9]+$/ {m = substr($2, 2)} END {print m + 0}' "$2"; }

# replay_points NAME N CHECK [AFTER]: replays the log in $LOG at N points (entries after AFTER);
# CHECK is run with the step of the last mark and must succeed on /dev/mapper/pl_wbc.
replay_points() {
  local name=$1 n=$2 check_fn=$3 after=${4:--1} prev=0 p step cnt=0 failed=0
  $R points "$LOG" | awk -v a="$after" '$1 > a' >"$IMG_DIR/points"
  $R marks "$LOG" >"$IMG_DIR/marks"
  check "$name: the log has enough FLUSH/FUA points ($(wc -l <"$IMG_DIR/points"))" test "$(wc -l <"$IMG_DIR/points")" -ge "$n"
  local work; work=$(loopdev work 128)
  local cow; cow=$(loopdev cow 64)
  for p in $(pick "$n" "$IMG_DIR/points"); do
    $R replay "$LOG" "$work" --start "$prev" --end $((p + 1)) >"$T_OUT" 2>&1 || { not_ok "$name: replay to $p"; diag <"$T_OUT"; failed=1; break; }
    prev=$((p + 1))
    step=$(last_mark "$p" "$IMG_DIR/marks")
    cnt=$((cnt + 1))
    if ! dmsetup create pl_snap --table "0 $(sectors "$work") snapshot $work $cow N 8" >"$T_OUT" 2>&1; then
      not_ok "$name: snapshot at point $p"; diag <"$T_OUT"; failed=1; break
    fi
    dmesg_mark
    if ! stack_on /dev/mapper/pl_snap 0 >"$T_OUT" 2>&1; then
      not_ok "$name: point $p (entry $p, durable step $step): wbcache does not load"; diag <"$T_OUT"; dmesg_since | diag 5; failed=1
    elif ! "$check_fn" "$step" >"$T_OUT" 2>&1; then
      not_ok "$name: point $p (durable step $step): check failed"; diag <"$T_OUT"; failed=1
    fi
    unstack >/dev/null 2>&1; dm_remove pl_snap >/dev/null 2>&1
    [ $failed = 0 ] || break
  done
  [ $failed = 0 ] && ok "$name: $cnt replay points, each loads and passes the check"
  echo "# $name: $cnt replay points"
  losetup -d "$work" "$cow"
}

# --- block workload -----------------------------------------------------------------------------------
DATA=$(loopdev pl-data 96); LOG=$(loopdev pl-log 512)
check "block: log-writes over the data device" dmsetup create pl_lw --table "0 $(sectors "$DATA") log-writes $DATA $LOG"
check "block: wbcache over its two slices (busy writeback)" stack_on /dev/mapper/pl_lw "4 high_watermark 5 low_watermark 1"
check "block: workload (300 steps: whole, partial and multi-block writes; fsync and O_DSYNC; mode switches; a flush)" \
  $PL run /dev/mapper/pl_wbc "$IMG_DIR/steps.json" pl_lw
check "block: the workload's final state verifies live" $PL check /dev/mapper/pl_wbc "$IMG_DIR/steps.json" 300
check "block: tear down (log-writes writes its final mark)" dm_remove pl_wbc pl_c pl_o pl_lw
block_check() { $PL check /dev/mapper/pl_wbc "$IMG_DIR/steps.json" "$1"; }
replay_points block "$POINTS_BLOCK" block_check
losetup -d "$DATA" "$LOG"

# --- block workload into a full cache ------------------------------------------------------------------
# A 512 KiB cache (125 blocks) under the workload's 4 MiB range, no background writeback until
# it is full: the cache fills, so writes also go to the origin directly (write_around), wait
# for space, and rewrite committed versions in place.
CS=1024
DATA=$(loopdev pl-data 96); LOG=$(loopdev pl-log 512)
check "full: log-writes over the data device" dmsetup create pl_lw --table "0 $(sectors "$DATA") log-writes $DATA $LOG"
check "full: wbcache with a 512 KiB cache over its two slices" stack_on /dev/mapper/pl_lw "4 high_watermark 100 low_watermark 100"
check "full: workload (300 steps)" $PL run /dev/mapper/pl_wbc "$IMG_DIR/steps.json" pl_lw
check "full: the workload's final state verifies live" $PL check /dev/mapper/pl_wbc "$IMG_DIR/steps.json" 300
check_match "full: writes went around the full cache" ' write_around [1-9][0-9]* ' "$(dmsetup status pl_wbc)"
check "full: tear down" dm_remove pl_wbc pl_c pl_o pl_lw
replay_points full "$POINTS_FULL" block_check
losetup -d "$DATA" "$LOG"
CS=$((32 * 2048))

# --- ext4 workload --------------------------------------------------------------------------------------
DATA=$(loopdev pl-data 96); LOG=$(loopdev pl-log 512)
check "ext4: log-writes over the data device" dmsetup create pl_lw --table "0 $(sectors "$DATA") log-writes $DATA $LOG"
check "ext4: wbcache over its two slices" stack_on /dev/mapper/pl_lw "4 high_watermark 20 low_watermark 10"
check "ext4: mkfs" mkfs.ext4 -q -b 4096 /dev/mapper/pl_wbc
check "ext4: mark" dmsetup message pl_lw 0 mark mkfs
MNT=$IMG_DIR/mnt; mkdir -p "$MNT"
check "ext4: mount" mount -t ext4 /dev/mapper/pl_wbc $MNT
churn() {
  local i
  for i in $(seq 1 24); do
    mkdir -p $MNT/d$((i % 5))
    dd if=/dev/urandom of=$MNT/d$((i % 5))/f$i bs=4k count=$((1 + RANDOM % 64)) status=none
    [ $((i % 3)) = 0 ] && cp $MNT/d$((i % 5))/f$i $MNT/copy$i
    [ $((i % 4)) = 0 ] && rm -f $MNT/d$(((i + 2) % 5))/f$((i - 2))
    [ $((i % 6)) = 0 ] && dmsetup message pl_wbc 0 mode $([ $((i % 12)) = 0 ] && echo ordered || echo writeback)
    [ $((i % 2)) = 0 ] && sync
  done
}
check "ext4: file churn with syncs" churn
check "ext4: unmount" umount $MNT
check "ext4: clean live" e2fsck -fn /dev/mapper/pl_wbc
check "ext4: tear down" dm_remove pl_wbc pl_c pl_o pl_lw
# Points before mkfs finished have no filesystem yet: start at the mark.
ext4_check() {
  mount -t ext4 /dev/mapper/pl_wbc $MNT && umount $MNT && e2fsck -fn /dev/mapper/pl_wbc
}
replay_points ext4 "$POINTS_EXT4" ext4_check "$($R marks "$LOG" | awk '$2 == "mkfs" {print $1}')"
losetup -d "$DATA" "$LOG"

cleanup_dm
finish
