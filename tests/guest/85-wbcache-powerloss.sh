#!/usr/bin/env bash
# dm-wbcache power loss, the xfstests generic/482 way: dm-log-writes sits under both the cache
# and the origin (two dm-linear slices of one logged device, so one log orders all their
# writes). A workload runs; then the log is replayed onto a blank image up to points that end
# in a FLUSH or FUA, and to crash states just before such a point completes (CrashMonkey style:
# the writes the flush was to make durable kept, dropped or torn at random; see "Crash states"
# in tests/logreplay.py); wbcache is rebuilt on each (through a dm-snapshot, so the image stays
# pristine for the next one), and we check:
#   - the table loads at every point and state;
#   - block workloads: every write acknowledged before the last completed flush reads back, and
#     no sector holds older data, another sector's data or garbage (tests/guest/powerloss.py);
#   - ext4 workload: the filesystem mounts (journal replay) and `e2fsck -fn` is clean;
#   - the origin alone, at every prefix of the log and at crash states of every flush that
#     wrote it: always zeroes or a write of that sector; in ordered mode at an epoch boundary
#     (plus part of the next epoch's writeback); before each checkpoint's marker exactly a
#     prefix of the writes (powerloss.py origin).
. "$(dirname "$0")/lib.sh"
PL="python3 $WBREPL_ROOT/tests/guest/powerloss.py"

CS=$((32 * 2048)); OS=$((64 * 2048))       # cache and origin slices, in sectors
POINTS_BLOCK=${WBREPL_PL_POINTS_BLOCK:-30}  # replay points per run (make test-long raises them)
POINTS_EXT4=${WBREPL_PL_POINTS_EXT4:-10}
POINTS_FULL=${WBREPL_PL_POINTS_FULL:-15}
POINTS_ORDERED=${WBREPL_PL_POINTS_ORDERED:-10}
STATES=${WBREPL_PL_STATES:-1}               # crash states rebuilt before each replay point
SUBSETS=${WBREPL_PL_SUBSETS:-16}            # origin-alone crash states per flush of origin writes
SEED=${WBREPL_PL_SEED:-$((RANDOM * 32768 + RANDOM))}
echo "# crash states: seed $SEED (WBREPL_PL_SEED=$SEED repeats them)"

# stack_on DEV OPTS [LEN]: the cache and origin slices of DEV and a wbcache over them ("pl" names).
stack_on() {
  dmsetup create pl_c --table "0 $CS linear $1 0" &&
  dmsetup create pl_o --table "0 $OS linear $1 $CS" &&
  dmsetup create pl_wbc --table "0 ${3:-$OS} wbcache /dev/mapper/pl_o /dev/mapper/pl_c 4096 $2"
}

# result_of FILE: the fields of the "RESULT ..." line powerloss.py prints last.
result_of() { sed -n 's/^RESULT //p' "$1" | tail -n 1; }

# replay_points NAME N [LEN] ARGS...: replays $LOG to N FLUSH/FUA points and $STATES crash states
# before each (powerloss.py replay), rebuilding a wbcache of length LEN on each; ARGS choose
# the check (--hist FILE: the block oracle; --mnt DIR: ext4) and --after ENTRY.
replay_points() {
  local name=$1 n=$2 len=$3 r; shift 3
  local work; work=$(loopdev work 128)
  local cow; cow=$(loopdev cow 64)
  $PL replay --name "$name" --log "$LOG" --work "$work" --cow "$cow" --cache-sectors $CS \
    --origin-sectors $OS --len "$len" --points "$n" --states "$STATES" --seed "$SEED" "$@" >"$T_OUT" 2>&1
  r=$?
  read -r np ns nf < <(result_of "$T_OUT")
  if [ $r = 0 ] && [ "${np:-0}" -ge "$n" ]; then
    ok "$name: $np replay points and $ns crash states, each loads and passes the check"
  else
    not_ok "$name: replay points and crash states (exit $r)"
  fi
  grep '^#' "$T_OUT" | tail -n 30
  losetup -d "$work" "$cow"
}

# origin_check NAME ARGS...: the origin alone over every prefix of $LOG (powerloss.py origin).
O_OUT=$IMG_DIR/origin.out
origin_check() {
  local name=$1; shift
  $PL origin --name "$name" --log "$LOG" --origin-start $CS --marker-sector $((CS + OS - 8)) \
    --subsets "$SUBSETS" --seed "$SEED" "$@" >"$O_OUT" 2>&1
  local r=$?
  grep -v '^RESULT' "$O_OUT" | head -n 40
  return $r
}

# --- block workload -----------------------------------------------------------------------------------
DATA=$(loopdev pl-data 96); LOG=$(loopdev pl-log 512)
check "block: log-writes over the data device" dmsetup create pl_lw --table "0 $(sectors "$DATA") log-writes $DATA $LOG"
check "block: wbcache over its two slices (busy writeback)" stack_on /dev/mapper/pl_lw "4 high_watermark 5 low_watermark 1"
check "block: workload (300 steps: whole, partial and multi-block writes; fsync and O_DSYNC; mode switches; a flush)" \
  $PL run /dev/mapper/pl_wbc "$IMG_DIR/steps.json" pl_lw
check "block: the workload's final state verifies live" $PL check /dev/mapper/pl_wbc "$IMG_DIR/steps.json" 300
check "block: tear down (log-writes writes its final mark)" dm_remove pl_wbc pl_c pl_o pl_lw
replay_points block "$POINTS_BLOCK" $OS --hist "$IMG_DIR/steps.json"
if origin_check block --hist "$IMG_DIR/steps.json"; then
  ok "block: the origin alone holds only zeroes and writes of each sector, at every prefix"
else
  not_ok "block: the origin alone holds only zeroes and writes of each sector, at every prefix"
fi
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
replay_points full "$POINTS_FULL" $OS --hist "$IMG_DIR/steps.json"
# The control: this origin is at no epoch boundary (writes went around a cache full of older
# dirty blocks), so the epoch oracle, run over the whole log, must reject some of its prefixes
# and crash states; the check that every sector holds zeroes or one of its writes must pass.
if origin_check full --hist "$IMG_DIR/steps.json" --ordered-until '*' --control; then
  read -r pre sub rej mk err < <(result_of "$O_OUT")
  check_match "full: control: the epoch oracle rejects the origin of a full writeback cache ($rej of $((pre + sub)) states)" '^[1-9]' "$rej"
else
  not_ok "full: control: the origin alone of a full cache holds only zeroes and writes of each sector"
fi
losetup -d "$DATA" "$LOG"
CS=$((32 * 2048))

# --- ordered workload with checkpoints -----------------------------------------------------------------
# The cache in ordered mode from its creation, writing back all the time (max_age 200 ms), the
# target 8 sectors short of its origin (the marker region); checkpoints (ordered, hold) from a
# second thread while the writes go on; after step 200 the mode goes to writeback and the
# checkpoints to hold and writethrough.
DATA=$(loopdev pl-data 96); LOG=$(loopdev pl-log 512)
check "ordered: log-writes over the data device" dmsetup create pl_lw --table "0 $(sectors "$DATA") log-writes $DATA $LOG"
check "ordered: wbcache in ordered mode, writing back all the time" \
  stack_on /dev/mapper/pl_lw "8 mode ordered high_watermark 10 low_watermark 5 max_age 200" $((OS - 8))
check "ordered: workload (300 steps, checkpoints from a second thread)" \
  $PL run-ordered /dev/mapper/pl_wbc "$IMG_DIR/steps.json" pl_lw
grep -v '^$' "$T_OUT" | diag 3
check "ordered: the workload's final state verifies live" $PL check /dev/mapper/pl_wbc "$IMG_DIR/steps.json" 300
check "ordered: tear down" dm_remove pl_wbc pl_c pl_o pl_lw
if origin_check ordered --hist "$IMG_DIR/steps.json" --ordered-until mode-writeback; then
  read -r pre sub rej mk err < <(result_of "$O_OUT")
  ok "ordered: the origin alone is at an epoch boundary at all $pre prefixes and $sub crash states of ordered mode"
  check_match "ordered: before every marker the origin is exactly a prefix of the writes ($mk markers)" '^[1-9]' "$mk"
else
  not_ok "ordered: the origin alone at an epoch boundary, a prefix at every marker"
  not_ok "ordered: before every marker the origin is exactly a prefix of the writes"
fi
replay_points ordered "$POINTS_ORDERED" $((OS - 8)) --hist "$IMG_DIR/steps.json"
losetup -d "$DATA" "$LOG"

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
replay_points ext4 "$POINTS_EXT4" $OS --mnt "$MNT" \
  --after "$(python3 "$WBREPL_ROOT/tests/logreplay.py" marks "$LOG" | awk '$2 == "mkfs" {print $1}')"
losetup -d "$DATA" "$LOG"

cleanup_dm
finish
