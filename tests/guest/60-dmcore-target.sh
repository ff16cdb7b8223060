#!/usr/bin/env bash
# dmcore against the real device-mapper core, through the `dmcore_test` target of
# dmcore_kunit.ko: the suspend/resume hooks, end_io and status rewriting, per-bio data from map
# to end_io, and kernel TCP connects from the sender's network namespace (with timeouts).
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
