#!/usr/bin/env bash
# dmsetup create / table / status / message / suspend / resume / reload / remove, both targets.
. "$(dirname "$0")/lib.sh"

O=$(loopdev origin 64); C=$(loopdev cache 16); D=$(loopdev data 64); M=$(loopdev meta 8)
S=$(sectors "$O")
on=$(devnum "$O"); cn=$(devnum "$C"); dn=$(devnum "$D"); mn=$(devnum "$M")

# --- wbcache --------------------------------------------------------------------------------
check "wbcache: create" dmsetup create wbc --table "0 $S wbcache $O $C 4096 5 mode writethrough high_watermark 60 flush_on_suspend"
check_eq "wbcache: table prints the line back (canonical order, major:minor)" \
  "0 $S wbcache $on $cn 4096 5 high_watermark 60 mode writethrough flush_on_suspend" "$(dmsetup table wbc)"
check_match "wbcache: status fields" "^0 $S wbcache ok writethrough 4096 blocks [0-9]+ free [0-9]+ dirty 0 writeback 0 releasing 0 epoch 1 oldest_epoch 1 read_hits 0 read_misses [0-9]+ write_hits 0 write_misses 0 write_through 0 write_around 0 slow_writes 0 writebacks 0 wb_errors 0 flushes [0-9]+ commits [0-9]+ io_errors 0 checkpoint idle cp_id - cp_left 0 cp_ms 0 last_cp - last_cp_result - last_cp_ms 0\$" "$(dmsetup status wbc)"
dd if=/dev/urandom of="$IMG_DIR/pattern" bs=1M count=4 status=none
check "wbcache: write 4 MiB at 1 MiB" dd if="$IMG_DIR/pattern" of=/dev/mapper/wbc bs=1M seek=1 oflag=direct status=none
check "wbcache: writethrough with nothing cached writes to the origin directly" cmp -n $((4 << 20)) "$IMG_DIR/pattern" <(dd if="$O" bs=1M skip=1 count=4 iflag=direct status=none)
check "wbcache: and reads back through the target" cmp -n $((4 << 20)) "$IMG_DIR/pattern" <(dd if=/dev/mapper/wbc bs=1M skip=1 count=4 iflag=direct status=none)
check_match "wbcache: write-through writes are counted" 'write_through [1-9][0-9]* ' "$(dmsetup status wbc)"
check_eq "wbcache: message flush answers" "flushed" "$(dmsetup message wbc 0 flush)"
check "wbcache: message clear_stats" dmsetup message wbc 0 clear_stats
check_match "wbcache: counters cleared" 'read_hits 0 read_misses 0 write_hits 0 write_misses 0 write_through 0 write_around 0 slow_writes 0 writebacks 0 wb_errors 0 flushes 0 commits 0 io_errors 0 checkpoint idle '  "$(dmsetup status wbc)"
dmesg_mark
check_fails "wbcache: unknown message refused" dmsetup message wbc 0 frobnicate
check_match "wbcache: ... and the kernel log says it is unknown" "wbcache $cn: unrecognised message 'frobnicate'" "$(dmesg_since)"
check_fails "wbcache: message with extra words refused" dmsetup message wbc 0 flush now
check "wbcache: suspend" dmsetup suspend wbc
check_match "wbcache: info says suspended" 'State: +SUSPENDED' "$(dmsetup info wbc)"
check "wbcache: resume" dmsetup resume wbc
check_match "wbcache: info says active" 'State: +ACTIVE' "$(dmsetup info wbc)"
check "wbcache: reload a new table" dmsetup reload wbc --table "0 $S wbcache $O $C 4096 2 mode ordered"
check_eq "wbcache: the live table is unchanged until resume" \
  "0 $S wbcache $on $cn 4096 5 high_watermark 60 mode writethrough flush_on_suspend" "$(dmsetup table wbc)"
check "wbcache: suspend + resume swaps tables" bash -c "dmsetup suspend wbc && dmsetup resume wbc"
check_eq "wbcache: new table live" "0 $S wbcache $on $cn 4096 2 mode ordered" "$(dmsetup table wbc)"
check "wbcache: data kept across the reload" cmp -n $((4 << 20)) "$IMG_DIR/pattern" <(dd if=/dev/mapper/wbc bs=1M skip=1 count=4 iflag=direct status=none)
check_eq "wbcache: io_opt is the block size" "4096" "$(blockdev --getioopt /dev/mapper/wbc)"
dmesg_mark
check "wbcache: reload with another block size" dmsetup reload wbc --table "0 $S wbcache $O $C 8192 0"
check_fails "wbcache: ... is refused at resume (the metadata says 4096)" bash -c "dmsetup suspend wbc && dmsetup resume wbc"
check_match "wbcache: ... with a clear kernel-log line" "wbcache $cn: cannot use the cache device: Cache was formatted with a different block size" "$(dmesg_since)"
# device-mapper swaps the table in before preresume: the device stays suspended with it.
check_match "wbcache: ... the device stays suspended" 'State: +SUSPENDED' "$(dmsetup info wbc)"
check "wbcache: loading a good table again and resuming recovers" bash -c "dmsetup reload wbc --table '0 $S wbcache $O $C 4096 2 mode ordered' && dmsetup resume wbc"
check_eq "wbcache: good table live again" "0 $S wbcache $on $cn 4096 2 mode ordered" "$(dmsetup table wbc)"
check "wbcache: data still there" cmp -n $((4 << 20)) "$IMG_DIR/pattern" <(dd if=/dev/mapper/wbc bs=1M skip=1 count=4 iflag=direct status=none)
check_fails "wbcache: discard is not supported" blkdiscard -o 0 -l 1048576 /dev/mapper/wbc
check "wbcache: write-zeroes is emulated with writes" blkdiscard -z -o 0 -l 1048576 /dev/mapper/wbc
check "wbcache: ... and reads back zeroes" cmp -n 1048576 /dev/zero <(dd if=/dev/mapper/wbc bs=1M count=1 iflag=direct status=none)
check "wbcache: remove" dm_remove wbc

# --- repl -----------------------------------------------------------------------------------
check "repl: create primary" dmsetup create rp --table "0 $S repl primary $D 10.0.0.2:7789 6 protocol sync meta_dev $M marker_sectors 16"
check_eq "repl: table prints the line back" \
  "0 $S repl primary $dn 10.0.0.2:7789 6 protocol sync meta_dev $mn marker_sectors 16" "$(dmsetup table rp)"
check "repl: primary accepts writes" dd if="$IMG_DIR/pattern" of=/dev/mapper/rp bs=1M seek=2 oflag=direct status=none
check "repl: they land on the data device" cmp -n $((4 << 20)) "$IMG_DIR/pattern" <(dd if="$D" bs=1M skip=2 count=4 iflag=direct status=none)
check_match "repl: status fields (no peer: writes are local, their regions dirty)" \
  "^0 $S repl primary connecting peer 10.0.0.2:7789 protocol sync sent 0 sent_bytes 0 acked 0 acked_bytes 0 inflight 0 inflight_bytes 0 lag_ms 0 dirty_kb 4096 resync - peer_data behind writes [1-9][0-9]* connects 0 congested 0 refused 0 marker - marker_acked - markers_refused 0 marker_ignored -\$" "$(dmsetup status rp)"
# An unknown message must be refused as such (EINVAL), not for another reason: `marker x` is a
# real message, refused here only because no peer is connected (ENOTCONN). dm-repl writes no
# kernel-log line for either, so dmsetup's errno text tells them apart.
msg_err() { dmsetup message "$@" 2>&1 >/dev/null; echo "exit $?"; }
check_match "repl: an unknown message is refused as invalid (EINVAL)" \
  'message ioctl on rp +failed: Invalid argument.*exit 1$' "$(msg_err rp 0 frobnicate)"
check_match "repl: a known message with no peer is refused otherwise (ENOTCONN)" \
  'message ioctl on rp +failed: Transport endpoint is not connected.*exit 1$' "$(msg_err rp 0 marker x)"
check_match "repl: a known message with a missing argument is refused as invalid" \
  'message ioctl on rp +failed: Invalid argument.*exit 1$' "$(msg_err rp 0 marker)"
check "repl: suspend/resume" bash -c "dmsetup suspend rp && dmsetup resume rp"
check "repl: remove primary" dm_remove rp
keyctl add user wbrepl:k1 "lifecycle secret" @us >/dev/null
check "repl: create secondary" dmsetup create rs --table "0 $S repl secondary $D 0.0.0.0:7789 5 freeze_on_marker freeze_timeout 5000 auth wbrepl:k1"
check_eq "repl: secondary table (canonical order)" "0 $S repl secondary $dn 0.0.0.0:7789 5 auth wbrepl:k1 freeze_on_marker freeze_timeout 5000" "$(dmsetup table rs)"
check "repl: secondary serves reads" cmp -n $((4 << 20)) "$IMG_DIR/pattern" <(dd if=/dev/mapper/rs bs=1M skip=2 count=4 iflag=direct status=none)
check_fails "repl: secondary refuses writes from above" dd if=/dev/zero of=/dev/mapper/rs bs=4k count=1 oflag=direct status=none
check "repl: ...and the data device is untouched" cmp -n $((4 << 20)) "$IMG_DIR/pattern" <(dd if="$D" bs=1M skip=2 count=4 iflag=direct status=none)
check_match "repl: refused writes are counted" 'refused [1-9]' "$(dmsetup status rs)"
check "repl: remove secondary" dm_remove rs

# --- the stack: wbcache on repl on disk -------------------------------------------------------
check "stack: repl primary" dmsetup create st_repl --table "0 $S repl primary $D 10.0.0.2:7789 0"
check "stack: wbcache on top of it" dmsetup create st_wbc --table "0 $S wbcache /dev/mapper/st_repl $C 4096 0"
check "stack: write through the stack" dd if="$IMG_DIR/pattern" of=/dev/mapper/st_wbc bs=1M seek=8 oflag=direct status=none
check "stack: flush the cache" dmsetup message st_wbc 0 flush
check "stack: data reached the disk under repl" cmp -n $((4 << 20)) "$IMG_DIR/pattern" <(dd if="$D" bs=1M skip=8 count=4 iflag=direct status=none)
check_fails "stack: repl is busy while wbcache uses it" dmsetup remove st_repl
check "stack: remove top down" dm_remove st_wbc st_repl

cleanup_dm
check "unload: rmmod dm_wbcache" rmmod dm_wbcache
check "unload: rmmod dm_repl" rmmod dm_repl
finish
