#!/usr/bin/env bash
# dmcore against the real device-mapper core, through the `dmcore_test` target of
# dmcore_kunit.ko: the suspend/resume hooks, end_io and status rewriting, per-bio data from map
# to end_io, references to a target that outlive it (dtr waits for them), and kernel TCP
# connects from the sender's network namespace (with timeouts).
. "$(dirname "$0")/lib.sh"

D=$(loopdev dev 32)
S=$(sectors "$D")
field() { dmsetup status dt | sed -n "s/.* $1 \([0-9]*\).*/\1/p"; }

check "dmcore_test: module loads" modprobe dmcore_kunit
check_match "dmcore_test: target registered" 'dmcore_test +v1\.0\.0' "$(dmsetup targets)"
dmesg_mark
check_fails "dmcore_test: bad table refused" dmsetup create dt_bad --table "0 $S dmcore_test"
check_match "dmcore_test: ...with its ti->error" 'dmcore_test: dmcore_test takes one device \(-22\)' "$(dmesg_since)"
check "dmcore_test: create" dmsetup create dt --table "0 $S dmcore_test $D"
check_eq "hooks: create = preresume + resume" "1 1" "$(field preresume) $(field resume)"
check_eq "hooks: no suspend yet" "0 0" "$(field presuspend) $(field postsuspend)"
check "io: 4 MiB of writes" dd if=/dev/urandom of=/dev/mapper/dt bs=64k count=64 oflag=direct status=none
check "io: flush (fsync)" dd if=/dev/zero of=/dev/mapper/dt bs=4k count=1 conv=fsync status=none
check "hooks: suspend" dmsetup suspend dt
check_eq "hooks: suspend = presuspend + postsuspend" "1 1" "$(field presuspend) $(field postsuspend)"
map=$(field map); endio=$(field end_io)
check_match "per-bio: bios were mapped ($map)" '^[1-9][0-9]*$' "$map"
check_eq "per-bio: every mapped bio reached end_io (none in flight while suspended)" "$map" "$endio"
check_eq "per-bio: data set in map arrived in end_io, and started zeroed" "0" "$(field perbio_bad)"
check "hooks: resume" dmsetup resume dt
check_eq "hooks: second resume" "2 2" "$(field preresume) $(field resume)"

check "end_io: inject one failure" dmsetup message dt 0 fail_next 1
check_fails "end_io: the next write fails with EIO" dd if=/dev/zero of=/dev/mapper/dt bs=4k count=1 oflag=direct status=none
check_eq "end_io: one status rewritten" "1" "$(field injected)"
check "end_io: the write after succeeds" dd if=/dev/zero of=/dev/mapper/dt bs=4k count=1 oflag=direct status=none
check_fails "messages: bad message refused" dmsetup message dt 0 fail_next many

# Events: TargetHandle::event() wakes `dmsetup wait` and bumps the event number.
ev=$(dmsetup info -c --noheadings -o events dt | tr -d ' ')
( sleep 1; dmsetup message dt 0 event ) &
check "events: dmsetup wait returns on the target's event" timeout 10 dmsetup wait dt "$ev"
wait
check_eq "events: event number advanced" "$((ev + 1))" "$(dmsetup info -c --noheadings -o events dt | tr -d ' ')"

# Partial acceptance: map takes 8 sectors of anything larger; dm resubmits the rest.
check "split: reload with split 8" bash -c "dmsetup reload dt --table '0 $S dmcore_test $D split 8' && dmsetup suspend dt && dmsetup resume dt"
check_eq "split: table prints the split" "0 $S dmcore_test $(devnum "$D") split 8" "$(dmsetup table dt)"
check "split: fio verify with 64k-1M bios" fio_verify /dev/mapper/dt --rw=randwrite --bsrange=64k-1M --iodepth=8 --size=16M
check_match "split: bios were split ($(field partial))" '^[1-9][0-9]*$' "$(field partial)"
check "split: fsync'd writes too" dd if=/dev/urandom of=/dev/mapper/dt bs=256k count=8 conv=fsync oflag=direct status=none
check "split: suspend (nothing in flight)" dmsetup suspend dt
check_eq "split: every piece went through map and end_io" "$(field map)" "$(field end_io)"
check_eq "split: per-bio data still right for split bios" "0" "$(field perbio_bad)"
check "split: resume" dmsetup resume dt

# Clone and submit: writes go down as clones; the parent completes when its clone does.
check "clone: reload with clone" bash -c "dmsetup reload dt --table '0 $S dmcore_test $D clone' && dmsetup suspend dt && dmsetup resume dt"
check_eq "clone: table prints it" "0 $S dmcore_test $(devnum "$D") clone" "$(dmsetup table dt)"
check "clone: fio 4k QD32 verify" fio_verify /dev/mapper/dt --rw=randwrite --bs=4k --iodepth=32 --size=16M
check "clone: fio mixed-size randrw verify" fio_verify /dev/mapper/dt --rw=randrw --bssplit=4k/50:64k/40:512k/10 --iodepth=16 --size=16M --offset=16M
check "clone: FUA and flushed writes" dd if=/dev/urandom of=/dev/mapper/dt bs=64k count=16 oflag=direct,sync conv=fsync status=none
check "clone: suspend (nothing in flight)" dmsetup suspend dt
check_match "clone: writes were cloned ($(field cloned))" '^[1-9][0-9]*$' "$(field cloned)"
check_eq "clone: every clone completed its parent" "$(field cloned)" "$(field clones_done)"
check_eq "clone: every parent still went through end_io" "$(field map)" "$(field end_io)"
check_eq "clone: per-bio data intact across clone completion" "0" "$(field perbio_bad)"
check "clone: resume" dmsetup resume dt

# A bio returned from map that is not the one being mapped (issue 13, item 14): in `stash` mode
# each write is kept by the target and the one kept before it is returned as Kill (or Requeue).
# dmcore must fail that foreign bio itself and leave the mapped one to the target. Before the
# fix it told device-mapper to kill (requeue) the mapped bio, which the target still held (a
# double completion later), and the foreign bio was never completed (its writer hung).
for how in stash stash_requeue; do
  check "$how: reload" bash -c "dmsetup reload dt --table '0 $S dmcore_test $D $how' && dmsetup suspend dt && dmsetup resume dt"
  check_eq "$how: table prints it" "0 $S dmcore_test $(devnum "$D") $how" "$(dmsetup table dt)"
  dmesg_mark
  timeout 20 dd if=/dev/zero of=/dev/mapper/dt bs=4k count=1 oflag=direct status=none & A=$!
  check "$how: write A is kept" wait_status dt ' stashed 1$' 10
  timeout 20 dd if=/dev/zero of=/dev/mapper/dt bs=4k count=1 seek=1 oflag=direct status=none & B=$!
  check "$how: write B is kept" wait_status dt ' stashed 2$' 10
  a_rc=0; wait $A || a_rc=$?
  check_eq "$how: A, returned from B's map, failed with EIO at once (dd exit 1, 124 = hung)" 1 "$a_rc"
  check_match "$how: ...and dmcore said why" "dmcore: dmcore_test: map returned a foreign bio" "$(dmesg_since)"
  check "$how: B is still the target's (in flight)" kill -0 $B
  check "$how: release B" dmsetup message dt 0 release
  b_rc=0; wait $B || b_rc=$?
  check_eq "$how: B completed once, successfully" 0 "$b_rc"
  check "$how: suspend (nothing in flight)" dmsetup suspend dt
  check_eq "$how: every mapped bio completed through end_io exactly once" "$(field map)" "$(field end_io)"
  check "$how: resume" dmsetup resume dt
done
dmesg_mark
check_fails "dmcore_test: repeated option refused" dmsetup create dt_bad2 --table "0 $S dmcore_test $D clone clone"
check_match "dmcore_test: ...with its ti->error" 'unknown or repeated option' "$(dmesg_since)"

# References that outlive the target (review: TargetHandle and Device stayed valid after dtr
# only by convention). With `late_event MS`, ctr gives a clone of its TargetHandle to a work
# item on the system workqueue, which the target's Drop does not wait for: MS ms after the
# private data is dropped it raises an event with the handle and drops it. dmcore's dtr must
# wait for that last reference, and say so. Before the fix the remove returned at once and the
# work item then used the freed dm_target and table.
L=$(loopdev late 8)
LS=$(sectors "$L")
check "late_event: create" dmsetup create dt_late --table "0 $LS dmcore_test $L late_event 2000"
check_eq "late_event: table prints it" "0 $LS dmcore_test $(devnum "$L") late_event 2000" "$(dmsetup table dt_late)"
udevadm settle 2>/dev/null
dmesg_mark
t0=$(date +%s%N)
check "late_event: remove" dmsetup remove --retry dt_late
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
log=$(dmesg_since)
check "late_event: the remove waited for the handle (${ms} ms, at least 1800)" test "$ms" -ge 1800
check_match "late_event: dtr said it waits" 'dmcore: dmcore_test: dtr waits for 1 references to the target that outlive its private data' "$log"
check_match "late_event: the event was raised, then dtr returned (before the remove did)" \
  'dmcore_test: late event raised 2000 ms after .*dmcore: dmcore_test: dtr waited [0-9]+ ms for the last reference' "$log"
check_eq "late_event: no kernel error" "" "$(grep -E 'BUG:|WARNING:|Oops|general protection|KASAN|Call Trace:' <<<"$log")"
# The same for a ctr that fails after giving a handle away: it returns once the handle is gone.
dmesg_mark
t0=$(date +%s%N)
check_fails "late_event: a failing ctr is refused" dmsetup create dt_late_bad --table "0 $LS dmcore_test $L late_event 1000 fail"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
log=$(dmesg_since)
check "late_event: ...after waiting for the handle (${ms} ms, at least 900)" test "$ms" -ge 900
check_match "late_event: the failed ctr waited for the event's handle" \
  'dmcore: dmcore_test: failed ctr waits for 1 references.*late event raised 1000 ms after .*dmcore: dmcore_test: failed ctr waited [0-9]+ ms' "$log"
check_match "late_event: ...with its ti->error" 'dmcore_test: failing as asked \(-22\)' "$log"
check_eq "late_event: no kernel error after the failed ctr" "" "$(grep -E 'BUG:|WARNING:|Oops|general protection|KASAN|Call Trace:' <<<"$log")"

# Kernel sockets live in the namespace of the process that sends the message.
check "net: nodes up" nodes_up
check "net: node B listens" node_listen B 7792 "$IMG_DIR/got"
out=$(node_exec A dmsetup message dt 0 connect $NODE_B_IP:7792 3000)
wait
check_match "net: connect from node A's namespace" "^connected $NODE_A_IP:[0-9]+\$" "$out"
check_eq "net: node B got the bytes, from A" "$NODE_A_IP hello dmcore" "$(cat "$IMG_DIR/got.peer" 2>/dev/null) $(cat "$IMG_DIR/got" 2>/dev/null)"
check_eq "net: the root namespace has no route to node B" "error -101" "$(dmsetup message dt 0 connect $NODE_B_IP:7792 1000)"
check_eq "net: nothing listening is a refusal" "error -111" "$(node_exec A dmsetup message dt 0 connect $NODE_B_IP:7799 1000)"
check "net: cut the link" node_link A "loss 100%"
t0=$(date +%s%N)
out=$(node_exec A dmsetup message dt 0 connect $NODE_B_IP:7793 1500)
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
check_eq "net: connect over a cut link times out" "error -110" "$out"
check_match "net: ...after about the timeout (${ms} ms)" '^(1[4-9][0-9][0-9]|[2-4][0-9][0-9][0-9])$' "$ms"
check "net: heal the link" node_link A ""
check "net: nodes down" nodes_down

check "dmcore_test: remove" dm_remove dt
check "dmcore_test: rmmod" rmmod dmcore_kunit
cleanup_dm
finish
