#!/usr/bin/env bash
# `make demo`: builds the wbrepl stack with dmsetup in a guest and runs a verified fio workload
# through it. Today's stack: app -> dm-wbcache -> dm-repl (primary) -> local disk, with both
# targets in their foundation (pass-through) form; checkpoints and the replica come with the
# next issues.
set -euo pipefail
: "${WBREPL_ROOT:?run me through qemu/run-guest.sh (make demo)}"
say() { printf '\n== %s\n' "$*"; }
img=/tmp/wbrepl-demo; mkdir -p "$img"
truncate -s 256M "$img/disk"; truncate -s 64M "$img/ssd"
DISK=$(losetup -f --show "$img/disk"); SSD=$(losetup -f --show "$img/ssd")
S=$(blockdev --getsz "$DISK")

say "devices: local disk $DISK, cache SSD $SSD ($((S / 2048)) MiB volume)"
say "dm-repl (primary) on the local disk"
echo "dmsetup create demo_repl --table \"0 $S repl primary $DISK 10.99.0.2:7789 2 protocol async\""
dmsetup create demo_repl --table "0 $S repl primary $DISK 10.99.0.2:7789 2 protocol async"
say "dm-wbcache on top, caching on the SSD"
echo "dmsetup create demo_wbc --table \"0 $S wbcache /dev/mapper/demo_repl $SSD 4096 2 mode writeback\""
dmsetup create demo_wbc --table "0 $S wbcache /dev/mapper/demo_repl $SSD 4096 2 mode writeback"
dmsetup ls --tree -o ascii
say "tables"; dmsetup table | grep '^demo_'
if [ -x "$WBREPL_ROOT/target/release/wbrepl" ]; then
  say "wbrepl status (the CLI walks the dm stack)"
  "$WBREPL_ROOT/target/release/wbrepl" status
fi
say "fio: 64 MiB 4k random writes + mixed-size random read/write, verified with crc32c"
fio --name=demo --filename=/dev/mapper/demo_wbc --direct=1 --ioengine=libaio --iodepth=32 \
    --rw=randrw --bssplit=4k/60:64k/30:512k/10 --size=64M --verify=crc32c --verify_fatal=1 \
    --verify_state_save=0 --group_reporting | grep -E 'read:|write:|lat \(usec\): min|err='
say "status after the workload"; dmsetup status | grep '^demo_'
say "write everything back: dmsetup message demo_wbc 0 flush"
dmsetup message demo_wbc 0 flush
dmsetup status demo_wbc
say "the disk under the stack holds exactly what the application sees"
if cmp <(dd if=/dev/mapper/demo_wbc iflag=direct bs=1M status=none) <(dd if="$DISK" iflag=direct bs=1M status=none); then
  echo "identical ($((S / 2048)) MiB compared)"
else
  echo "MISMATCH"; exit 1
fi
dmsetup remove demo_wbc demo_repl
losetup -d "$DISK" "$SSD"
say "demo done"
