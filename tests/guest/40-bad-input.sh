#!/usr/bin/env bash
# Malformed table lines and messages: each is refused with its own ti->error text (checked in the
# kernel log) and a non-zero dmsetup exit; nothing oopses (the harness scans the console).
. "$(dirname "$0")/lib.sh"

O=$(loopdev origin 64); C=$(loopdev cache 16); D=$(loopdev data 64); M=$(loopdev meta 8)
B4K=$(loopdev big-sectors 16 4096)
S=$(sectors "$O")
on=$(devnum "$O")

# bad_table TARGET "TABLE PARAMS" "EXPECTED ti->error"
n=0
bad_table() {
  local target=$1 params=$2 msg=$3 len=${4:-$S}
  n=$((n + 1))
  dmesg_mark
  if dmsetup create "bad$n" --table "0 $len $target $params" >"$T_OUT" 2>&1; then
    not_ok "bad table $n ($target $params): accepted"
    dmsetup remove "bad$n" >/dev/null 2>&1
    return
  fi
  if dmesg_since | grep -qF -- "$target: $msg ("; then
    ok "bad table $n refused: $target: $msg"
  else
    not_ok "bad table $n ($target $params): no '$target: $msg' in the kernel log"
    dmesg_since | diag 5
  fi
}

W=wbcache
bad_table $W "" "Missing origin device"
bad_table $W "$O" "Missing cache device"
bad_table $W "$O $O 4096 0" "Origin and cache must be different devices"
bad_table $W "$O $on 4096 0" "Origin and cache must be different devices"
bad_table $W "$O $C" "Missing block size"
bad_table $W "$O $C 4095 0" "Invalid block size: must be a power of two from 512 to 65536"
bad_table $W "$O $C 256 0" "Invalid block size: must be a power of two from 512 to 65536"
bad_table $W "$O $C 99999999999999999999999 0" "Invalid block size: must be a power of two from 512 to 65536"
bad_table $W "$O $C $(printf '\xff\xfe') 0" "Invalid block size: must be a power of two from 512 to 65536"
bad_table $W "$O $C 4096" "Missing optional argument count"
bad_table $W "$O $C 4096 -1" "Invalid optional argument count"
bad_table $W "$O $C 4096 2 mode" "Optional argument count exceeds the arguments given"
bad_table $W "$O $C 4096 1 mode writeback" "Missing value for optional argument"
bad_table $W "$O $C 4096 0 extra" "Too many arguments (check the optional argument count)"
bad_table $W "$O $C 4096 1 bogus" "Unrecognised optional argument"
bad_table $W "$O $C 4096 2 high_watermark 101" "Invalid high_watermark: must be 0..100"
bad_table $W "$O $C 4096 4 high_watermark 10 low_watermark 20" "low_watermark must not exceed high_watermark"
bad_table $W "$O $C 4096 2 writeback_jobs 0" "Invalid writeback_jobs: must be 1..65536"
bad_table $W "$O $C 4096 2 max_age 99999999999" "Invalid max_age: must be 1..86400000 ms"
bad_table $W "$O $C 4096 2 mode fast" "Invalid mode: must be writeback, writethrough or ordered"
bad_table $W "$O $C 4096 4 mode ordered mode ordered" "Duplicate optional argument"
bad_table $W "/dev/nonexistent $C 4096 0" "Origin device lookup failed"
bad_table $W "$O /dev/nonexistent 4096 0" "Cache device lookup failed"
bad_table $W "/$(printf 'x%.0s' {1..5000}) $C 4096 0" "Origin device lookup failed"
bad_table $W "$O $B4K 512 0" "Block size is below a device's logical block size"
bad_table $W "$O $C 4096 0" "Target length must be a multiple of the block size" $((S - 1))
bad_table $W "$O $C 4096 0" "Origin device is smaller than the target" $((S * 2))

R=repl
bad_table $R "" "Missing role (primary or secondary)"
bad_table $R "master $D 10.0.0.2:7789 0" "Invalid role: must be primary or secondary"
bad_table $R "primary" "Missing data device"
bad_table $R "primary $D" "Missing address (a.b.c.d:port)"
bad_table $R "primary $D peer.example:7789 0" "Invalid address: must be an IPv4 a.b.c.d:port with port 1..65535"
bad_table $R "primary $D 10.0.0.2:70000 0" "Invalid address: must be an IPv4 a.b.c.d:port with port 1..65535"
bad_table $R "primary $D 10.0.0.2 0" "Invalid address: must be an IPv4 a.b.c.d:port with port 1..65535"
bad_table $R "primary $D 10.0.0.2:7789 2 protocol C" "Invalid protocol: must be async or sync"
bad_table $R "primary $D 10.0.0.2:7789 2 max_inflight_kb 1" "Invalid max_inflight_kb: must be 64..4194304"
bad_table $R "primary $D 10.0.0.2:7789 1 auth" "Missing value for optional argument"
bad_table $R "primary $D 10.0.0.2:7789 2 marker_sectors 12" "Invalid marker_sectors: must be a multiple of 8 (4 KiB)"
bad_table $R "primary $D 10.0.0.2:7789 1 freeze_on_marker" "freeze_on_marker and freeze_timeout are secondary options"
bad_table $R "secondary $D 10.0.0.2:7789 2 freeze_timeout 0" "Invalid freeze_timeout: must be 1..86400000 ms"
bad_table $R "primary /dev/nonexistent 10.0.0.2:7789 0" "Data device lookup failed"
bad_table $R "primary $D 10.0.0.2:7789 2 meta_dev /dev/nonexistent" "Metadata device lookup failed"
bad_table $R "primary $D 10.0.0.2:7789 2 meta_dev $(devnum "$D")" "meta_dev must differ from the data device"
bad_table $R "primary $D 10.0.0.2:7789 0" "Data device is smaller than the target" $((S * 2))
bad_table $R "primary $D 10.0.0.2:7789 0" "Target too small for its marker region" 8

echo "# $n malformed table lines tried"
check_eq "bad input: no device was left behind" "" "$(dmsetup ls | grep -E '^bad[0-9]+' || true)"

# Messages.
check "messages: a wbcache to talk to" dmsetup create msg_wbc --table "0 $S wbcache $O $C 4096 0"
check_fails "messages: unknown verb" dmsetup message msg_wbc 0 explode
check_fails "messages: extra words" dmsetup message msg_wbc 0 clear_stats please
check_fails "messages: non-UTF-8 verb" dmsetup message msg_wbc 0 "$(printf '\xff')"
check_fails "messages: very long verb" dmsetup message msg_wbc 0 "$(printf 'y%.0s' {1..4000})"
check "messages: the device still works" fio_verify /dev/mapper/msg_wbc --rw=randwrite --bs=4k --size=4M --iodepth=4
check "messages: remove" dm_remove msg_wbc

cleanup_dm
finish
