#!/usr/bin/env bash
# Checkpoints end to end: dm-wbcache over a dm-repl primary on node A; on node B a dm-repl
# secondary with freeze_on_marker over a dm-thin volume, and a loop that takes a thin snapshot
# at every marker and thaws (what `wbrepl secondary run` does). Checks: bad input, a first
# checkpoint by hand, the block-level oracle (tests/guest/cpload.py: every image is the state of
# the workload at an instant of its checkpoint, 20+ checkpoints in all modes under load, the link
# blocked during some; writers that die fail the run), progress, abort and timeout with the link
# blocked, a link down past the timeout, ext4 with file churn (every image passes e2fsck -fn
# after its journal is replayed), checkpoints racing background writeback (images correct),
# and the control: dm-repl's own markers (no drain) after writeback rounds out of write order,
# whose images the oracle must reject for their order.
. "$(dirname "$0")/lib.sh"
here=$(cd "$(dirname "$0")" && pwd)
MB=64
CP_ORACLE=${WBREPL_CP_ORACLE:-hold,writethrough:16}
CP_ORDERED=${WBREPL_CP_ORDERED:-ordered:6}
CP_EXT4=${WBREPL_CP_EXT4:-10}
CP_RACE=${WBREPL_CP_RACE:-hold,writethrough:4}
CP_CONTROL=${WBREPL_CP_CONTROL:-8}

check "cp: nodes up" nodes_up
PORT=7900

# --- the stack ---------------------------------------------------------------------------------
PD=$(loopdev cp-p "$MB"); CD=$(loopdev cp-c 16)
TM=$(loopdev cp-tmeta 8); TD=$(loopdev cp-tdata 640)
S=$(sectors "$PD")
W=$((S - 8))   # the wbcache ends 4 KiB before the repl device: the marker region
check "cp: thin pool on B" dmsetup create cp-pool --table "0 $(sectors "$TD") thin-pool $TM $TD 128 0 1 skip_block_zeroing"
check "cp: thin volume 0" dmsetup message cp-pool 0 "create_thin 0"
check "cp: thin volume active" dmsetup create cp-thin --table "0 $S thin /dev/mapper/cp-pool 0"
check "cp: secondary over the thin volume" node_exec B dmsetup create cp-s --table \
  "0 $S repl secondary /dev/mapper/cp-thin $NODE_B_IP:$PORT 3 freeze_on_marker freeze_timeout 60000"
check "cp: primary" node_exec A dmsetup create cp-r --table "0 $S repl primary $PD $NODE_B_IP:$PORT 2 protocol async"
check "cp: wbcache over the primary" dmsetup create cp-w --table \
  "0 $W wbcache /dev/mapper/cp-r $CD 4096 4 high_watermark 90 low_watermark 80"
check "cp: connected" connected cp-r

# Node B's snapshot loop: at every marker, snapshot the thin volume (suspended, as dm-thin wants
# for create_snap), then thaw. Writes "marker-id thin-id label" lines to $SNAPMAP (the label the
# secondary recorded with the marker it is frozen at).
SNAPMAP=$IMG_DIR/snapmap
STOP=$IMG_DIR/snaploop.stop
rm -f "$SNAPMAP" "$STOP"
snaploop() {
  local next=1 st id
  while [ ! -e "$STOP" ]; do
    st=$(dmsetup status cp-s 2>/dev/null)
    if [[ $st =~ \ frozen\ ([0-9]+)\ marker_label\ ([^ ]+)\  ]]; then
      id=${BASH_REMATCH[1]} label=${BASH_REMATCH[2]}
      if dmsetup suspend cp-thin && dmsetup message cp-pool 0 "create_snap $next 0"; then
        echo "$id $next $label" >>"$SNAPMAP"
        next=$((next + 1))
      else
        echo "snaploop: snapshot of marker $id failed" >&2
      fi
      dmsetup resume cp-thin
      dmsetup message cp-s 0 thaw "$id"
    fi
    sleep 0.05
  done
}
snaploop 2>"$IMG_DIR/snaploop.err" &
SNAPPID=$!

# image_of LABEL: the thin id of the image taken at the marker with that label (waits for it:
# 30 s, scaled; on the debug kernel the image loop's snapshots came later than 30 s).
# Every marker of this file has a label of its own; ids do not identify images: dm-repl's own
# markers (the control) take the id after the last one sent, which a later checkpoint's id can
# repeat, and the race's fresh cache starts its ids at 1 again.
image_of() {
  local i t
  for i in $(seq "$(scaled 150)"); do
    t=$(awk -v l="$1" '$3 == l {t = $2; n++} END {if (n == 1) print t}' "$SNAPMAP" 2>/dev/null)
    [ -n "$t" ] && { echo "$t"; return 0; }
    sleep 0.2
  done
  return 1
}
# labels LOG: the labels of the checkpoints (or markers) of a cpload log that succeeded.
labels() { python3 -c "import json; print(' '.join(c['label'] for c in json.load(open('$1'))['checkpoints'] if 'id' in c))"; }
# images LOG PREFIX: reads the image of every marker of LOG into $IMG_DIR/PREFIX-LABEL (8 MiB,
# the workload's blocks) and sets ARGS to cpload check's --image options; the thin snapshots
# are deleted once read (the pool is 640 MiB).
images() {
  local l t
  ARGS=()
  [ -n "${WBREPL_LOGDIR:-}" ] && cp "$1" "$WBREPL_LOGDIR/" 2>/dev/null   # kept for inspection
  for l in $(labels "$1"); do
    t=$(image_of "$l") || { not_ok "$2: image of marker $l"; continue; }
    if dump_image "$t" "$IMG_DIR/$2-$l" 8; then ARGS+=(--image "$l:$IMG_DIR/$2-$l"); else not_ok "$2: read image $t"; fi
    dmsetup message cp-pool 0 "delete $t"
  done
}
# dump_image THIN_ID FILE [MB]: copies the first MB (default all) of an image to FILE.
dump_image() {
  local n=cp-img-$1 r=0
  dmsetup create "$n" --readonly --table "0 $S thin /dev/mapper/cp-pool $1" || return 1
  if [ -n "${3:-}" ]; then
    dd if="/dev/mapper/$n" of="$2" bs=1M count="$3" iflag=direct status=none || r=1
  else
    dd if="/dev/mapper/$n" of="$2" bs=1M iflag=direct status=none || r=1
  fi
  dm_remove "$n" >/dev/null || r=1
  return $r
}
cp_msg() { dmsetup message cp-w 0 checkpoint "$@"; }
# refused NAME LOG-TEXT CMD...: CMD fails and the kernel log says LOG-TEXT.
refused() {
  local name=$1 text=$2; shift 2
  dmesg_mark
  check_fails "$name" "$@"
  check_match "$name: the log says why" "$text" "$(dmesg_since)"
}

# --- bad input ---------------------------------------------------------------------------------
refused "bad: no mode" "mode must be hold, writethrough or ordered" dmsetup message cp-w 0 checkpoint
refused "bad: unknown mode" "mode must be hold, writethrough or ordered" cp_msg later
refused "bad: timeout 0" "timeout_ms must be 1..86400000" cp_msg hold x 0
refused "bad: timeout not a number" "timeout_ms must be 1..86400000" cp_msg hold x 10s
refused "bad: too many words" "too many arguments" cp_msg hold x 10 y
refused "bad: label over 64 bytes" "label must be printable ASCII" cp_msg hold "$(printf 'l%.0s' $(seq 65))"
refused "bad: ordered needs ordered mode" "mode ordered needs the cache in ordered mode" cp_msg ordered
refused "bad: abort with nothing to abort" "no checkpoint in progress" dmsetup message cp-w 0 abort
check "bad: mode writethrough" dmsetup message cp-w 0 mode writethrough
refused "bad: hold in writethrough mode" "new writes cannot be held" cp_msg hold
check "bad: mode writeback" dmsetup message cp-w 0 mode writeback
check "bad: suspend" dmsetup suspend cp-w
refused "bad: checkpoint while suspended" "the device is suspended" cp_msg hold
check "bad: resume" dmsetup resume cp-w
X=$(loopdev cp-x 8); XC=$(loopdev cp-xc 4)
check "bad: a wbcache over the whole of its origin" dmsetup create cp-x --table "0 $(sectors "$X") wbcache $X $XC 4096 0"
refused "bad: no marker region" "no marker region" dmsetup message cp-x 0 checkpoint hold
check "bad: remove it" dm_remove cp-x
check_match "bad: nothing was checkpointed" ' checkpoint idle cp_id - cp_left 0 cp_ms 0 last_cp - ' "$(dmsetup status cp-w)"

# --- one checkpoint by hand --------------------------------------------------------------------
dd if=/dev/urandom of="$IMG_DIR/one" bs=1M count=4 status=none
check "one: 4 MiB into the cache" dd if="$IMG_DIR/one" of=/dev/mapper/cp-w bs=1M seek=8 oflag=direct status=none
check "one: they are dirty in the cache" test "$(field cp-w dirty)" -ge 1024
out=$(cp_msg hold first-one 2>&1)
check_match "one: checkpoint hold answers with the marker id and timings" '^id [0-9]+ mode hold label first-one blocks [0-9]+ drain_ms [0-9]+ marker_ms [0-9]+ total_ms [0-9]+$' "$out"
id=$(sed -n 's/^id \([0-9]*\) .*/\1/p' <<<"$out")
check "one: the drained blocks include the 1024 written" test "$(sed -n 's/.* blocks \([0-9]*\) .*/\1/p' <<<"$out")" -ge 1024
check_match "one: status: last checkpoint ok" " checkpoint idle cp_id - cp_left 0 cp_ms 0 last_cp $id last_cp_result ok last_cp_ms [0-9]+$" "$(dmsetup status cp-w)"
check "one: the secondary recorded marker $id with its label" wait_status cp-s " marker $id marker_time_ns [0-9]+ frozen ($id|-) marker_label first-one markers_ignored 0$" 20
check "one: the primary saw it acknowledged" wait_status cp-r " marker $id marker_acked $id markers_refused 0 marker_ignored -$" 20
t=$(image_of first-one)
check "one: an image was taken at marker $id" test -n "$t"
check "one: read the image" dump_image "$t" "$IMG_DIR/one.img"
check "one: the image holds the 4 MiB" cmp <(dd if="$IMG_DIR/one.img" bs=1M skip=8 count=4 status=none) "$IMG_DIR/one"
check "one: ...and marker record $id at the end of the repl device" python3 -c "
import struct, sys
r = open('$IMG_DIR/one.img', 'rb').read()[($S - 8) * 512:][:512]
sys.exit(0 if r[:8] == b'WBRPMRK1' and struct.unpack_from('<Q', r, 8)[0] == $id else 1)"

# --- the oracle: 20+ checkpoints under load, in every mode --------------------------------------
# The link is blocked for 2 s twice during the run (netem loss 100%): checkpoints in flight then
# wait for the link, and the images must still be consistent. cpload fails the run if a writer
# dies, or if the writers did not keep writing between and during the checkpoints.
linkflap() {
  sleep 6; node_link A "loss 100%"; sleep 2; node_link A ""
  sleep 6; node_link A "loss 100%"; sleep 2; node_link A ""
}
linkflap &
FLAP=$!
t_oracle=$SECONDS
check "oracle: cpload run (4 writers; $CP_ORACLE, then $CP_ORDERED)" python3 "$here/cpload.py" run --dev /dev/mapper/cp-w --wbcache cp-w \
  --log "$IMG_DIR/cp.log" --blocks 2048 --threads 4 --label-prefix o --phase "$CP_ORACLE" --phase "$CP_ORDERED"
wait $FLAP
node_link A ""
grep '^cpload' "$T_OUT" | diag 40
check "oracle: in sync afterwards" synced cp-r 60
images "$IMG_DIR/cp.log" oracle
nimg=$((${#ARGS[@]} / 2))
check "oracle: at least 20 images ($nimg)" test "$nimg" -ge 20
check "oracle: every image is the workload at an instant of its checkpoint (order, lower, upper bound)" \
  python3 "$here/cpload.py" check --log "$IMG_DIR/cp.log" "${ARGS[@]}"
diag 40 <"$T_OUT"
check_match "oracle: ...none newer than its checkpoint (upper bound)" 'checkpoint images, 0 rejected \(order 0, lower 0, upper 0, torn 0;' "$(cat "$T_OUT")"
# Mutation, on real images: each image given as the previous marker's, as a wrong
# marker-to-snapshot mapping or a late freeze would give it. The writers wrote between the two
# checkpoints (cpload asks for 20 writes there), so every one must be rejected as newer than
# its checkpoint, and for nothing else (before, these passed).
shifted=() prev=
for ((i = 1; i < ${#ARGS[@]}; i += 2)); do
  [ -n "$prev" ] && shifted+=(--image "$prev:${ARGS[$i]#*:}")
  prev=${ARGS[$i]%%:*}
done
n=$((${#shifted[@]} / 2))
check_fails "oracle: mutation: each image given as the previous marker's is rejected" \
  python3 "$here/cpload.py" check --log "$IMG_DIR/cp.log" --allow-missing "${shifted[@]}"
check_match "oracle: ...all $n as newer than their checkpoint (upper), none for another rule" \
  "checkpoint images, $n rejected \(order 0, lower 0, upper $n, torn 0;" "$(cat "$T_OUT")"
rm -f "$IMG_DIR"/oracle-*

# Writers that die fail the run. The writers write through a linear device over the cache,
# which after the second checkpoint is swapped for dm-error (from cpload's after-checkpoint
# hook): every write then fails with EIO and the writers die in the middle of the run (before,
# the run printed its counts and exited 0 whatever the writers did). `ulimit -f 16`, the audit's
# way, does not limit writes to a block device on this kernel (blkdev_write_iter has no
# RLIMIT_FSIZE check): the host self-test does that one, on a file.
check "oracle: a linear device over the cache" dmsetup create cp-dead --table "0 $W linear /dev/mapper/cp-w 0"
kill_writes="[ {label} != d2-hold ] || { dmsetup suspend cp-dead && dmsetup reload cp-dead --table '0 $W error' && dmsetup resume cp-dead; }"
check_fails "oracle: writers that die fail the run" python3 "$here/cpload.py" run --dev /dev/mapper/cp-dead --wbcache cp-w \
  --log "$IMG_DIR/dead.log" --blocks 2048 --threads 4 --label-prefix d --phase hold:6 --after-checkpoint "$kill_writes"
check_match "oracle: ...saying which writer died, after how many writes, and why" \
  'writer [0-3] died after [1-9][0-9]* writes: OSError: \[Errno 5\] Input/output error' "$(cat "$T_OUT")"
check_match "oracle: ...after the second checkpoint, none after" 'checkpoint d2-hold: rc 0 .*cpload: [0-9]+ writes, 2 checkpoints, 0 failed, 4 writers died' "$(tr '\n' ' ' <"$T_OUT")"
grep 'cpload' "$T_OUT" | diag 12
check "oracle: remove the failing device" dm_remove cp-dead
echo "# oracle took $((SECONDS - t_oracle)) s"

# --- progress, abort, timeout, a link down past the timeout -------------------------------------
check "link: in sync" synced cp-r
check "link: 10 MiB dirty in the cache" dd if=/dev/urandom of=/dev/mapper/cp-w bs=1M count=10 seek=16 oflag=direct status=none
node_link A "loss 100%"
cp_msg hold stuck 60000 >"$IMG_DIR/stuck.out" 2>&1 &
CP=$!
check "link: status shows the checkpoint in progress" wait_status cp-w ' checkpoint hold cp_id [0-9]+ cp_left [1-9][0-9]* cp_ms [0-9]+ ' 10
sleep 1
check_match "link: ...still draining (the link is blocked)" ' checkpoint hold cp_id [0-9]+ cp_left [1-9]' "$(dmsetup status cp-w)"
refused "link: another checkpoint meanwhile" "another checkpoint is in progress" cp_msg writethrough
refused "link: mode change meanwhile" "a checkpoint is in progress" dmsetup message cp-w 0 mode ordered
refused "link: flush meanwhile" "a checkpoint is in progress" dmsetup message cp-w 0 flush
check "link: new writes go on meanwhile (held in the cache)" dd if=/dev/urandom of=/dev/mapper/cp-w bs=4k count=64 seek=9000 oflag=direct status=none
check "link: abort" dmsetup message cp-w 0 abort
wait $CP; rc=$?
check_eq "link: the aborted checkpoint failed" 1 "$((rc != 0))"
check_match "link: ...with ECANCELED" 'Operation canceled|ECANCELED|canceled' "$(cat "$IMG_DIR/stuck.out")"
check_match "link: status: aborted" ' checkpoint idle cp_id - cp_left 0 cp_ms 0 last_cp [0-9]+ last_cp_result aborted ' "$(dmsetup status cp-w)"
start=$(date +%s)
refused "link: a checkpoint interrupted by a signal (Ctrl-C)" "interrupted by a signal" timeout -s INT 2 dmsetup message cp-w 0 checkpoint hold sig 60000
check "link: ...ends at once" test $(($(date +%s) - start)) -le 6
check_match "link: ...counted as aborted" ' last_cp_result aborted ' "$(dmsetup status cp-w)"
# The link has been down since the first case: on a loaded host long enough (12 s) for the
# primary to give it up, and then writeback no longer waits and the next checkpoint's marker is
# refused at once (EIO) before any suspend (seen with a debug-kernel guest running alongside).
# Start the suspend case on a fresh outage.
node_link A ""
check "link: healed before the suspend case" synced cp-r 120
check "link: 10 MiB dirty for it" dd if=/dev/urandom of=/dev/mapper/cp-w bs=1M count=10 seek=16 oflag=direct status=none
node_link A "loss 100%"
cp_msg hold suspended 60000 >"$IMG_DIR/susp.out" 2>&1 &
CP=$!
check "link: another checkpoint in progress" wait_status cp-w ' checkpoint hold cp_id ' 10
start=$(date +%s)
timeout 60 dmsetup suspend cp-w &
SUSP=$!
wait $CP; rc=$?
check "link: a suspend during it ends it at once (not at its 60 s timeout)" test "$rc" != 0 -a $(($(date +%s) - start)) -le 10
check_match "link: ...as aborted (ECANCELED)" 'canceled' "$(cat "$IMG_DIR/susp.out")"
wait $SUSP; rc=$?
check_eq "link: the suspend completes (writeback stops once the link gives up)" 0 "$rc"
check "link: resume" dmsetup resume cp-w
# A fresh block for the timeout case: by now the primary may have given the link up (12 s
# without progress; the steps above take longer on a loaded host), and then the drain would
# not wait and the marker would be refused at once instead of the checkpoint timing out.
node_link A ""
check "link: healed before the timeout case" synced cp-r 120
check "link: 10 MiB dirty again" dd if=/dev/urandom of=/dev/mapper/cp-w bs=1M count=10 seek=16 oflag=direct status=none
node_link A "loss 100%"
start=$(date +%s)
refused "link: a checkpoint with a 3 s timeout" "timed out" cp_msg hold short 3000
el=$(($(date +%s) - start))
check "link: ...ended by its timeout (${el} s)" test "$el" -ge 3 -a "$el" -le 8
check_match "link: status: timeout" ' last_cp_result timeout ' "$(dmsetup status cp-w)"
check "link: the device is not stuck (writes complete)" timeout 10 dd if=/dev/urandom of=/dev/mapper/cp-w bs=4k count=16 seek=9100 oflag=direct status=none
check "link: the primary gives the link up (12 s)" wait_status cp-r ' primary connecting ' 30
refused "link: a checkpoint with the link down: the marker is refused" "the marker write failed" cp_msg hold down 20000
check_match "link: the primary refused the marker" ' markers_refused [1-9]' "$(dmsetup status cp-r)"
check_match "link: status: failed" ' last_cp_result failed ' "$(dmsetup status cp-w)"
node_link A ""
check "link: healed: resynced" synced cp-r 120
out=$(cp_msg writethrough healed 2>&1)
check_match "link: a checkpoint succeeds again" '^id [0-9]+ mode writethrough ' "$out"
id=$(sed -n 's/^id \([0-9]*\) .*/\1/p' <<<"$out")
t=$(image_of healed)
check "link: image of marker $id taken" test -n "$t"
check "link: in sync" synced cp-r
check "link: read the image" dump_image "$t" "$IMG_DIR/healed.img"
check "link: the image equals the primary's device" cmp "$IMG_DIR/healed.img" <(dd if="$PD" bs=1M iflag=direct status=none)
rm -f "$IMG_DIR"/*.img

# --- ext4 with file churn ------------------------------------------------------------------------
MNT=$IMG_DIR/mnt
mkdir -p "$MNT"
check "ext4: mkfs on the cache" mkfs.ext4 -q -F -b 4096 /dev/mapper/cp-w
check "ext4: mount" mount -o noatime /dev/mapper/cp-w "$MNT"
churn() {
  local i=0
  while [ ! -e "$IMG_DIR/churn.stop" ]; do
    i=$((i + 1))
    mkdir -p "$MNT/d$((i % 7))"
    cp -r "$WBREPL_ROOT/docs" "$MNT/d$((i % 7))/c$i"
    dd if=/dev/urandom of="$MNT/d$((i % 5))/f$i" bs=4k count=$((RANDOM % 64 + 1)) status=none 2>/dev/null
    rm -rf "$MNT/d$(((i + 3) % 7))/c$((i - 5))" "$MNT/d$(((i + 2) % 5))/f$((i - 9))"
    [ $((i % 10)) = 0 ] && sync
  done
}
rm -f "$IMG_DIR/churn.stop"
churn &
CH=$!
sleep 3
e4ids=()
declare -A e4labels
modes=(hold writethrough)
for k in $(seq "$CP_EXT4"); do
  m=${modes[$((k % 2))]}
  if out=$(cp_msg "$m" "ext4-$k" 2>&1); then
    id=$(sed -n 's/^id \([0-9]*\) .*/\1/p' <<<"$out"); e4ids+=("$id"); e4labels[$id]=$k
  else
    echo "# checkpoint $k: $out"
  fi
  sleep 1
done
touch "$IMG_DIR/churn.stop"; wait $CH
check "ext4: umount" umount "$MNT"
check "ext4: $CP_EXT4 checkpoints under churn (${#e4ids[@]} taken)" test "${#e4ids[@]}" -ge "$CP_EXT4"
clean=0
next=1000
for id in "${e4ids[@]}"; do
  t=$(image_of "ext4-${e4labels[$id]}") || { not_ok "ext4: image of marker $id"; continue; }
  # A writable snapshot of the image, to replay the journal (the image is crash-consistent:
  # as after a power loss), then a read-only check.
  if dmsetup message cp-pool 0 "create_snap $next $t" && dmsetup create cp-fsck --table "0 $S thin /dev/mapper/cp-pool $next"; then
    e2fsck -E journal_only -y /dev/mapper/cp-fsck >/dev/null 2>&1
    if e2fsck -fn /dev/mapper/cp-fsck >"$IMG_DIR/fsck.out" 2>&1; then
      clean=$((clean + 1)); echo "# IMAGE $id ext4-image fsck=clean"
    else
      not_ok "ext4: image of marker $id passes e2fsck -fn"; diag <"$IMG_DIR/fsck.out"
    fi
    dm_remove cp-fsck; dmsetup message cp-pool 0 "delete $next"
  else
    not_ok "ext4: snapshot of image $t"
  fi
  next=$((next + 1))
done
check_eq "ext4: every image passes e2fsck -fn" "${#e4ids[@]}" "$clean"
check "ext4: the live file system is clean too" e2fsck -fn /dev/mapper/cp-w

# --- checkpoints racing background writeback, and the control ----------------------------------
# The cache is swapped for a 4 MiB one (about 1000 blocks, half the workload's 2048) that writes
# back all the time. First 4 checkpoints (hold, writethrough) race its writeback (watermarks 90
# and 70, every block committed more than 200 ms ago: max_age): every image must be correct.
# Every block is stamped first (the device holds ext4's data until then: without the prestamp
# the images hold other data, rejected as torn).
t_race=$SECONDS
RCD=$(loopdev cp-rc 4)
# race_table OPTS...: flush, then cp-w on the 4 MiB cache with these options.
race_table() {
  dmsetup message cp-w 0 flush && synced cp-r 60 && dmsetup suspend cp-w &&
    dmsetup reload cp-w --table "0 $W wbcache /dev/mapper/cp-r $RCD 4096 $# $*" && dmsetup resume cp-w
}
check "race: a 4 MiB cache, high_watermark 90 low_watermark 70 max_age 200" race_table high_watermark 90 low_watermark 70 max_age 200
wb0=$(field cp-w writebacks)
check "race: cpload run (4 writers, 2048 blocks prestamped; $CP_RACE)" python3 "$here/cpload.py" run --dev /dev/mapper/cp-w \
  --wbcache cp-w --log "$IMG_DIR/race.log" --blocks 2048 --threads 4 --prestamp --label-prefix r --phase "$CP_RACE" --seed 5
grep '^cpload' "$T_OUT" | diag 10
wb=$(($(field cp-w writebacks) - wb0))
drained=$(python3 -c "import json; print(sum(c.get('blocks', 0) for c in json.load(open('$IMG_DIR/race.log'))['checkpoints']))")
echo "# race: $wb blocks written back, $drained of them by the checkpoints' drains, 2048 at most by the prestamp's flush"
check "race: background writeback ran: more blocks written back than the prestamp and the drains ($wb > 2048 + $drained)" \
  test "$wb" -gt $((2048 + drained))
check "race: in sync" synced cp-r 60
images "$IMG_DIR/race.log" race
check "race: every image is correct" python3 "$here/cpload.py" check --log "$IMG_DIR/race.log" "${ARGS[@]}"
diag 10 <"$T_OUT"
check_match "race: ...none rejected" 'checkpoint images, 0 rejected \(order 0, lower 0, upper 0, torn 0;' "$(cat "$T_OUT")"
rm -f "$IMG_DIR"/race-*

# The control: dm-repl's own markers (no drain), 0.5 s apart, on the same cache without max_age:
# writeback only in rounds from 90 down to 70 % dirty, which pick blocks in slot order, not in
# write order, and writes that find the cache full go around it to the origin. (max_age writes
# back every block committed before some commit: the origin stays a prefix, and so do images of
# markers without the drain; so does the origin right after a checkpoint's drain: see
# docs/testing.md.) Every block is stamped first (and written back), so no image holds zeroes,
# and the first marker waits for the first round to have written back 100 blocks. Their images
# must be rejected, and for their order (they hold a write issued after another write completed
# that they do not hold), at least 3 of every 4.
check "race: the same cache, high_watermark 90 low_watermark 70, no max_age" race_table high_watermark 90 low_watermark 70
wb0=$(field cp-w writebacks); wa0=$(field cp-w write_around)
WB0=$IMG_DIR/ctl-wb0
rm -f "$WB0"
round="w=\$(dmsetup status cp-w | sed -n 's/.* writebacks \([0-9]*\) .*/\1/p'); [ -e $WB0 ] || echo \$w >$WB0; [ \$w -ge \$((\$(cat $WB0) + 100)) ]"
check "control: cpload run (4 writers, 2048 blocks prestamped; after a writeback round, $CP_CONTROL dm-repl markers)" \
  python3 "$here/cpload.py" run --dev /dev/mapper/cp-w --wbcache cp-w --repl cp-r --log "$IMG_DIR/ctl.log" --blocks 2048 \
  --threads 4 --prestamp --label-prefix c --phase "until:$round" --phase "repl:$CP_CONTROL" --seed 7
grep '^cpload' "$T_OUT" | diag 12
wb=$(($(field cp-w writebacks) - wb0)); wa=$(($(field cp-w write_around) - wa0))
echo "# control: $wb blocks written back (2048 of the prestamp at most), $wa written around the cache"
check "control: in sync" synced cp-r 60
images "$IMG_DIR/ctl.log" control
check "control: the images are rejected for their order (at least 3 of 4)" \
  python3 "$here/cpload.py" check --log "$IMG_DIR/ctl.log" "${ARGS[@]}"
diag 12 <"$T_OUT"
check_match "control: ...all $CP_CONTROL rejected, none holding zeroes or a torn block (not for missing data)" \
  "control images, $CP_CONTROL rejected \(order [0-9]+, lower [0-9]+, upper [0-9]+, torn 0; 0 hold zeroes\)" "$(cat "$T_OUT")"
rm -f "$IMG_DIR"/control-*
echo "# race and control took $((SECONDS - t_race)) s"

touch "$STOP"; wait $SNAPPID
check_eq "cp: the snapshot loop had no errors" "" "$(cat "$IMG_DIR/snaploop.err")"
check "cp: remove the stack" dm_remove cp-w cp-r cp-s cp-thin cp-pool
nodes_down
finish
