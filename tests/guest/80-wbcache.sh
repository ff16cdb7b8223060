#!/usr/bin/env bash
# dm-wbcache caching behaviour: fio verification across modes, mode switches, flush and reload;
# watermarks; messages; metadata validation (foreign data, bit flips); failing cache and origin
# legs under load. Power loss is tests/guest/85-wbcache-powerloss.sh.
. "$(dirname "$0")/lib.sh"

O=$(loopdev origin 384); C=$(loopdev cache 48)
S=$(sectors "$O")
cn=$(devnum "$C")
status() { dmsetup status "$1"; }
field() { status "$1" | sed -n "s/.* $2 \([0-9a-z]*\).*/\1/p"; }

# A reproducible workload for verify_only later: fixed seed, same arguments.
wl_rand() { fio_verify "$1" --rw=randwrite --bs=4k --iodepth=32 --size=64M --randrepeat=1 --randseed=11 "${@:2}"; }
wl_mixed() { fio_verify "$1" --rw=randrw --bssplit=4k/50:16k/20:64k/20:512k/10 --iodepth=16 --size=32M \
  --offset=96M --randrepeat=1 --randseed=12 "${@:2}"; }
wl_small() { fio_verify "$1" --rw=randwrite --bsrange=512-7680 --blockalign=512 --iodepth=8 --size=8M \
  --offset=160M --randrepeat=1 --randseed=13 "${@:2}"; }
verify_all() {
  check "$1: 4k randwrite data verifies" wl_rand /dev/mapper/wbc --verify_only
  check "$1: mixed-size data verifies" wl_mixed /dev/mapper/wbc --verify_only
  check "$1: sub-block data verifies" wl_small /dev/mapper/wbc --verify_only
}

# --- caching in writeback mode -------------------------------------------------------------------
check "create on a blank cache device (formats it)" dmsetup create wbc --table "0 $S wbcache $O $C 4096 0"
check_match "formatted, nothing dirty" "^0 $S wbcache ok writeback 4096 blocks [0-9]+ free [0-9]+ dirty 0 " "$(status wbc)"
total=$(field wbc blocks)
check "fio 4k randwrite QD32 verify" wl_rand /dev/mapper/wbc
check "fio 4k randwrite QD1 verify" fio_verify /dev/mapper/wbc --rw=randwrite --bs=4k --iodepth=1 --size=4M --offset=200M
check "fio mixed-size randrw QD16 verify" wl_mixed /dev/mapper/wbc
check "fio sub-block (512 B..7.5 KiB) writes verify" wl_small /dev/mapper/wbc
check "fio randrw 4k QD32 verify (reads hit the cache)" fio_verify /dev/mapper/wbc --rw=randrw --bs=4k --iodepth=32 --size=16M --offset=220M
check_match "writes were cached (write_misses counted)" ' write_misses [1-9][0-9]* ' "$(status wbc)"
check_match "reads were served from the cache" ' read_hits [1-9][0-9]* ' "$(status wbc)"
check_match "partial writes took the slow path" ' slow_writes [1-9][0-9]* ' "$(status wbc)"
check_match "dirty blocks are held back (origin behind)" '^[1-9][0-9]*$' "$(field wbc dirty)"
# Default watermarks 50/45: once the workload stops, writeback brings dirty to about 45%.
check "writeback settles between the watermarks" bash -c "for i in \$(seq 100); do d=\$(dmsetup status wbc | sed -n 's/.* dirty \([0-9]*\) .*/\1/p'); [ \$((d * 100 / $total)) -le 50 ] && [ \$((d * 100 / $total)) -ge 40 ] && exit 0; sleep 0.2; done; exit 1"
verify_all "writeback"

# --- mode switches --------------------------------------------------------------------------------
check_eq "message mode writethrough" "mode writethrough" "$(dmsetup message wbc 0 mode writethrough)"
check "writethrough: new writes verify" fio_verify /dev/mapper/wbc --rw=randwrite --bs=4k --iodepth=8 --size=8M --offset=240M
verify_all "after the switch to writethrough"
check "writethrough drains the cache by itself" bash -c "for i in \$(seq 100); do dmsetup status wbc | grep -q ' dirty 0 ' && exit 0; sleep 0.2; done; exit 1"
check "writethrough with an empty cache: writes go straight to the origin" \
  fio_verify /dev/mapper/wbc --rw=randwrite --bs=4k --iodepth=8 --size=4M --offset=244M
check_match "... counted as write_through" ' write_through [1-9][0-9]* ' "$(status wbc)"
check "the origin alone holds that data" fio_verify "$O" --rw=randwrite --bs=4k --iodepth=8 --size=4M --offset=244M --verify_only
check_eq "message mode ordered" "mode ordered" "$(dmsetup message wbc 0 mode ordered)"
check "ordered: fio verify" wl_rand /dev/mapper/wbc
check "ordered: fio mixed verify" wl_mixed /dev/mapper/wbc
e0=$(field wbc epoch)
check "ordered: flush from above (fsync)" python3 -c "import os; fd=os.open('/dev/mapper/wbc', os.O_RDWR); os.fsync(fd); os.fsync(fd)"
check_match "ordered: flushes are counted" ' flushes [1-9][0-9]* ' "$(status wbc)"
check "ordered: each flush closed an epoch" test "$(field wbc epoch)" -ge $((e0 + 2))
verify_all "ordered"
check_eq "message mode writeback" "mode writeback" "$(dmsetup message wbc 0 mode writeback)"

# --- flush (drain) and reload ------------------------------------------------------------------------
check_eq "message flush" "flushed" "$(dmsetup message wbc 0 flush)"
check_match "nothing dirty, nothing releasing after flush" ' dirty 0 writeback 0 releasing 0 ' "$(status wbc)"
check "after flush the origin alone verifies (4k)" wl_rand "$O" --verify_only
check "after flush the origin alone verifies (mixed)" wl_mixed "$O" --verify_only
check "after flush the device equals the origin" same_data /dev/mapper/wbc "$O"
check "dirty the cache again" wl_rand /dev/mapper/wbc
dirty=$(field wbc dirty)
dmesg_mark
check "reload the same table (suspend, resume)" bash -c "dmsetup reload wbc --table '0 $S wbcache $O $C 4096 0' && dmsetup suspend wbc && dmsetup resume wbc"
check_match "the new table loaded the dirty blocks from disk" "wbcache $cn: loaded commit [0-9]+: $dirty dirty blocks" "$(dmesg_since)"
verify_all "after reload"
check "remove with dirty blocks" dm_remove wbc
check "create again on the same devices" dmsetup create wbc --table "0 $S wbcache $O $C 4096 0"
check_eq "all dirty blocks are back" "$dirty" "$(field wbc dirty)"
verify_all "after remove and create"
check "flush_on_suspend: reload with it" bash -c "dmsetup reload wbc --table '0 $S wbcache $O $C 4096 1 flush_on_suspend' && dmsetup suspend wbc && dmsetup resume wbc"
check "flush_on_suspend: dirty the cache" wl_mixed /dev/mapper/wbc
check "flush_on_suspend: suspend" dmsetup suspend wbc
check_match "flush_on_suspend: suspended with nothing dirty" ' dirty 0 writeback 0 releasing 0 ' "$(status wbc)"
check "flush_on_suspend: the origin alone verifies" wl_mixed "$O" --verify_only
check "flush_on_suspend: reload without it and resume" bash -c "dmsetup reload wbc --table '0 $S wbcache $O $C 4096 0' && dmsetup resume wbc"

# --- watermarks ------------------------------------------------------------------------------------
check "watermarks: low 5" dmsetup message wbc 0 low_watermark 5
check "watermarks: high 10" dmsetup message wbc 0 high_watermark 10
check "watermarks: writeback down to the low watermark" bash -c "for i in \$(seq 150); do d=\$(dmsetup status wbc | sed -n 's/.* dirty \([0-9]*\) .*/\1/p'); [ \$((d * 100 / $total)) -lt 10 ] && exit 0; sleep 0.2; done; exit 1"
check "watermarks: data still verifies" wl_rand /dev/mapper/wbc --verify_only
check "watermarks: high 100 low 100 (no background writeback)" bash -c "dmsetup message wbc 0 high_watermark 100 && dmsetup message wbc 0 low_watermark 100"
check "fill the cache beyond its size: writes wait for space or go around it, nothing is lost" \
  fio_verify /dev/mapper/wbc --rw=write --bs=64k --iodepth=8 --size=80M --offset=256M
check "... and verify" fio_verify /dev/mapper/wbc --rw=write --bs=64k --iodepth=8 --size=80M --offset=256M --verify_only
check_match "... blocks the full cache had nothing of went to the origin directly" ' write_around [1-9][0-9]* ' "$(status wbc)"
check "1 MiB writes (one bio over many cache blocks) verify" \
  fio_verify /dev/mapper/wbc --rw=randwrite --bs=1M --iodepth=4 --size=32M --offset=200M
flush_verify_1m() { dmsetup message wbc 0 flush && fio_verify /dev/mapper/wbc --rw=randwrite --bs=1M --iodepth=4 --size=32M --offset=200M --verify_only; }
check "... and verify after a flush" flush_verify_1m
check "watermarks back to 50/45" bash -c "dmsetup message wbc 0 low_watermark 45 && dmsetup message wbc 0 high_watermark 50"

# --- messages: bad input ------------------------------------------------------------------------------
bad_msg() {
  local want=$1; shift
  dmesg_mark
  # "--": a word like "-1" must reach the kernel, not dmsetup's option parser.
  check_fails "bad message '$*' refused" dmsetup message wbc 0 -- "$@"
  check_match "... logged: $want" "$want" "$(dmesg_since)"
}
bad_msg "message 'mode': Invalid mode: must be writeback, writethrough or ordered" mode
bad_msg "message 'mode': Invalid mode" mode fast
bad_msg "message 'mode': Invalid mode" mode WRITEBACK
bad_msg "message 'high_watermark': value must be 0..100" high_watermark
bad_msg "message 'high_watermark': value must be 0..100" high_watermark 101
bad_msg "message 'high_watermark': value must be 0..100" high_watermark -1
bad_msg "message 'high_watermark': value must be 0..100" high_watermark 0x10
bad_msg "message 'high_watermark': value must be 0..100" high_watermark 99999999999999999999
bad_msg "message 'low_watermark': value must be 0..100" low_watermark ten
bad_msg "message 'low_watermark': low_watermark must not exceed high_watermark" low_watermark 60
bad_msg "message 'high_watermark': low_watermark must not exceed high_watermark" high_watermark 40
bad_msg "message 'flush' takes no argument" flush now
bad_msg "message 'clear_stats' takes no argument" clear_stats all
bad_msg "message 'mode': too many arguments" mode writeback now
bad_msg "unrecognised message 'drain'" drain
bad_msg "unrecognised message 'Flush'" Flush
check "the device still works after bad messages" wl_rand /dev/mapper/wbc --verify_only
check "remove" dm_remove wbc

# --- metadata validation ---------------------------------------------------------------------------
# refuse NAME EXPECTED-LOG-TEXT: creating the device must fail at resume with that text.
refuse() {
  dmesg_mark
  check_fails "metadata: $1: refused" dmsetup create wbm --table "0 $S wbcache $O $C 4096 0"
  check_match "metadata: $1: says why" "wbcache $cn: cannot use the cache device: $2" "$(dmesg_since)"
  dmsetup remove wbm >/dev/null 2>&1 || true
}
check "metadata: save the cache image" dd if="$C" of="$IMG_DIR/cache.img" bs=1M iflag=direct status=none
restore() { dd if="$IMG_DIR/cache.img" of="$C" bs=1M oflag=direct conv=notrunc status=none; }
flip() { python3 - "$C" "$1" "$2" <<'PY'
import os, sys
dev, off, bit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(dev, os.O_RDWR)
b = bytearray(os.pread(fd, 1, off)); b[0] ^= 1 << bit
os.pwrite(fd, bytes(b), off); os.fsync(fd)
PY
}
python3 -c "import os; open('$IMG_DIR/junk','wb').write(os.urandom(8192))"
dd if="$IMG_DIR/junk" of="$C" bs=8192 count=1 oflag=direct conv=notrunc status=none
refuse "foreign data in the superblocks" "Cache device holds no wbcache superblock"
restore
flip 100 3; flip $((4096 + 100)) 3
refuse "bit flips in both superblock copies" "Superblock checksum mismatch"
restore
# The copy with the older commit is damaged: nothing is lost. The newer one: the previous commit
# is used, exactly as after a crash that tore the superblock write (documented).
older=$(python3 -c "
import struct
b = open('$IMG_DIR/cache.img', 'rb').read(8192)
s0, s1 = struct.unpack_from('<Q', b, 56)[0], struct.unpack_from('<Q', b, 4096 + 56)[0]
print(0 if s0 < s1 else 1)")
for copy in $older $((1 - older)); do
  flip $((copy * 4096 + 24)) 0
  dmesg_mark
  check "metadata: superblock copy $copy damaged: the other copy is used" dmsetup create wbm --table "0 $S wbcache $O $C 4096 0"
  check_match "metadata: ... with a warning" "one superblock copy is unreadable" "$(dmesg_since)"
  if [ "$copy" = "$older" ]; then
    check "metadata: ... (older copy damaged) and all data verifies" wl_rand /dev/mapper/wbm --verify_only
  else
    check "metadata: ... (newer copy damaged) and the device reads" dd if=/dev/mapper/wbm of=/dev/null bs=1M iflag=direct status=none
  fi
  dm_remove wbm >/dev/null 2>&1
  restore
done
# Random single-bit flips across the entry table: each is caught by an entry checksum.
entries_end=$(( 8192 + total * 32 ))
for i in $(seq 12); do
  off=$(( 8192 + (RANDOM * 32768 + RANDOM) % (entries_end - 8192) ))
  flip $off $((RANDOM % 8))
  refuse "random bit flip at byte $off of the entry table" "metadata entry [0-9]+: Cache metadata entry checksum mismatch"
  restore
done
check "metadata: the restored image loads" dmsetup create wbm --table "0 $S wbcache $O $C 4096 0"
check "metadata: ... with all data" wl_rand /dev/mapper/wbm --verify_only
dm_remove wbm
dmesg_mark
check_fails "metadata: a table with another length is refused" dmsetup create wbm2 --table "0 $((S - 8)) wbcache $O $C 4096 0"
check_match "metadata: ... says why" "Target length differs from when the cache was formatted" "$(dmesg_since)"
dmsetup remove wbm2 >/dev/null 2>&1 || true
check "metadata: flush and remove" bash -c "dmsetup create wbm --table '0 $S wbcache $O $C 4096 0' && dmsetup message wbm 0 flush && dmsetup remove wbm"

# --- failing legs ------------------------------------------------------------------------------------
# The cache and origin sit on dm-linear devices whose tables are swapped for dm-error under load.
check "legs: linear cache and origin" bash -c "dmsetup create lc --table '0 $(sectors "$C") linear $C 0' && dmsetup create lo --table '0 $S linear $O 0'"
# A fresh cache device for the legs, and no background writeback: all data stays cached.
dd if=/dev/zero of="$C" bs=8192 count=1 oflag=direct conv=notrunc status=none
wl_leg() { fio_verify "$1" --rw=randwrite --bs=4k --iodepth=16 --size=16M --randrepeat=1 --randseed=14 "${@:2}"; }
check "legs: wbcache over them" dmsetup create wbl --table "0 $S wbcache /dev/mapper/lo /dev/mapper/lc 4096 4 high_watermark 100 low_watermark 100"
check "legs: dirty data" wl_leg /dev/mapper/wbl
swap() { dmsetup load "$1" --table "$2" && dmsetup suspend --noflush "$1" && dmsetup resume "$1"; }
check "legs: origin fails (dm-error)" swap lo "0 $S error"
dmsetup message wbl 0 high_watermark 0 >/dev/null 2>&1; dmsetup message wbl 0 low_watermark 0 >/dev/null 2>&1
check_fails "legs: flush fails while the origin fails" timeout 60 dmsetup message wbl 0 flush
check_match "legs: status says degraded, writeback errors counted" "^0 $S wbcache degraded .* wb_errors [1-9]" "$(status wbl)"
check "legs: reads still served from the cache" wl_leg /dev/mapper/wbl --verify_only
check "legs: origin back" swap lo "0 $S linear $O 0"
check_eq "legs: flush succeeds once the origin is back" "flushed" "$(timeout 120 dmsetup message wbl 0 flush)"
check_match "legs: healthy again, nothing dirty" "^0 $S wbcache ok .* dirty 0 " "$(status wbl)"
check "legs: all data reached the origin" wl_leg "$O" --verify_only
wl_leg2() { fio_verify "$1" --rw=randwrite --bs=4k --iodepth=16 --size=16M --offset=32M --randrepeat=1 --randseed=15 "${@:2}"; }
check "legs: new dirty data" wl_leg2 /dev/mapper/wbl
check "legs: origin flaky (dm-flakey: up 2 s, down 1 s)" swap lo "0 $S flakey $O 0 2 1"
check "legs: flush retried until it gets through" bash -c 'for i in $(seq 40); do timeout 60 dmsetup message wbl 0 flush >/dev/null 2>&1 && exit 0; sleep 0.5; done; exit 1'
check "legs: origin steady again" swap lo "0 $S linear $O 0"
check "legs: nothing lost through the flaky origin" wl_leg2 "$O" --verify_only
(fio --name=load --filename=/dev/mapper/wbl --direct=1 --ioengine=libaio --rw=randwrite --bs=4k \
   --iodepth=16 --size=64M --time_based --runtime=8 >/dev/null 2>&1; echo "fio exit $?" >"$IMG_DIR/fio.rc") &
sleep 3
check "legs: cache fails under load (dm-error)" swap lc "0 $(sectors "$C") error"
wait
check_match "legs: the workload saw errors" 'fio exit [1-9]' "$(cat "$IMG_DIR/fio.rc")"
check_match "legs: status says failed" "^0 $S wbcache failed " "$(status wbl)"
check_fails "legs: writes fail cleanly" dd if=/dev/zero of=/dev/mapper/wbl bs=4k count=1 oflag=direct status=none
check "legs: the device can be removed" dm_remove wbl lc lo

cleanup_dm
finish
