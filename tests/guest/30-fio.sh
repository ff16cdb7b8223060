#!/usr/bin/env bash
# fio --verify=crc32c through dm-wbcache, dm-repl and the stack (wbcache on repl), at QD1 and
# QD32, 4k and mixed sizes; re-verified (verify_only) after a table reload.
. "$(dirname "$0")/lib.sh"

O=$(loopdev origin 128); C=$(loopdev cache 32); D=$(loopdev data 128)
S=$(sectors "$O")

# verify_suite NAME DEV: the workloads every layer must pass.
verify_suite() {
  local n=$1 dev=$2
  check "$n: fio 4k randwrite QD32 verify" fio_verify "$dev" --rw=randwrite --bs=4k --iodepth=32 --size=48M
  check "$n: fio 4k randwrite QD1 verify" fio_verify "$dev" --rw=randwrite --bs=4k --iodepth=1 --size=8M --offset=64M
  check "$n: fio mixed-size randrw QD32 verify" fio_verify "$dev" --rw=randrw --bssplit=4k/50:16k/20:64k/20:512k/10 \
    --iodepth=32 --size=32M --offset=80M
  check "$n: fio 512-byte unaligned-size writes verify" fio_verify "$dev" --rw=randwrite --bsrange=512-7680 \
    --blockalign=512 --iodepth=8 --size=4M --offset=120M
}

check "wbcache: create" dmsetup create f_wbc --table "0 $S wbcache $O $C 4096 0"
verify_suite wbcache /dev/mapper/f_wbc
check "wbcache: message flush writes everything back" dmsetup message f_wbc 0 flush
check_match "wbcache: nothing dirty after the flush" ' dirty 0 ' "$(dmsetup status f_wbc)"
check "wbcache: device equals origin after the flush" same_data /dev/mapper/f_wbc "$O"
check "wbcache: reload (mode switch) keeps data" bash -c "dmsetup reload f_wbc --table '0 $S wbcache $O $C 4096 2 mode writethrough' && dmsetup suspend f_wbc && dmsetup resume f_wbc"
check "wbcache: re-verify after reload (verify_only)" fio_verify /dev/mapper/f_wbc --rw=randwrite --bs=4k --iodepth=32 --size=48M --verify_only
check "wbcache: remove" dm_remove f_wbc

check "repl: create primary" dmsetup create f_repl --table "0 $S repl primary $D 10.0.0.2:7789 0"
verify_suite repl /dev/mapper/f_repl
check "repl: device equals data device" same_data /dev/mapper/f_repl "$D"

check "stack: wbcache on repl" dmsetup create f_stack --table "0 $S wbcache /dev/mapper/f_repl $C 4096 0"
verify_suite stack /dev/mapper/f_stack
check "stack: flush" dmsetup message f_stack 0 flush
check "stack: top equals bottom" same_data /dev/mapper/f_stack "$D"
check "stack: remove" dm_remove f_stack f_repl

cleanup_dm
finish
