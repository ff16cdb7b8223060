#!/usr/bin/env bash
# make bench-wbcache: dm-wbcache vs in-tree dm-writecache (SSD mode) vs the origin alone, in one
# guest run on the same devices. A benchmark, not a test: it reports numbers and ratios.
#
# Devices: the cache is a loop device on tmpfs (fast); the origin is a loop device on tmpfs
# behind dm-delay (slow: WBREPL_BENCH_DELAY_MS per write, default 2 ms). Workloads (fio, direct
# I/O, libaio), each after a ramp-up: 4k random writes at QD32 and QD1 with a zipf:1.2 access
# pattern, and 1M sequential writes. dm-writecache and dm-wbcache run in alternation,
# WBREPL_BENCH_ROUNDS times (default 3, each on a fresh cache): the table shows every round and
# the ratios are of the medians, so that one noisy round (TCG on a shared host) does not decide.
# Ends with one "RATIO ..." line per comparison.
set -u
. "$(dirname "$0")/lib.sh"
: "${WBREPL_ROOT:?run me through qemu/run-guest.sh}"
DELAY=${WBREPL_BENCH_DELAY_MS:-2}
RUNTIME=${WBREPL_BENCH_RUNTIME:-10}
ROUNDS=${WBREPL_BENCH_ROUNDS:-3}
mkdir -p /dev/shm/bench
truncate -s 384M /dev/shm/bench/origin
truncate -s 128M /dev/shm/bench/cache
O=$(losetup -f --show /dev/shm/bench/origin)
C=$(losetup -f --show /dev/shm/bench/cache)
S=$(blockdev --getsz "$O")
dmsetup create b_slow --table "0 $S delay $O 0 0 $O 0 $DELAY"
SLOW=/dev/mapper/b_slow

fresh_cache() { dd if=/dev/zero of="$C" bs=1M count=1 oflag=direct status=none; }

# run NAME DEV FIO-ARGS...: prints "iops p50_us p99_us MBps"
run() {
  local dev=$2; shift 2
  fio --name=b --filename="$dev" --direct=1 --ioengine=libaio --time_based --runtime="$RUNTIME" \
      --ramp_time=3 --size=256M --output-format=json "$@" 2>/dev/null |
    python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]["write"]
p = j["clat_ns"]["percentile"]
print("%.0f %.0f %.0f %.1f" % (j["iops"], p["50.000000"] / 1000, p["99.000000"] / 1000, j["bw_bytes"] / 1e6))'
}

declare -A R
bench_dev() {
  local name=$1 dev=$2
  R[$name,qd32]=$(run "$name" "$dev" --rw=randwrite --bs=4k --iodepth=32 --random_distribution=zipf:1.2)
  R[$name,qd1]=$(run "$name" "$dev" --rw=randwrite --bs=4k --iodepth=1 --random_distribution=zipf:1.2)
  R[$name,seq]=$(run "$name" "$dev" --rw=write --bs=1M --iodepth=4)
}

echo "# origin alone (dm-delay ${DELAY} ms per write)"
bench_dev origin "$SLOW"
names=(origin)
for r in $(seq "$ROUNDS"); do
  echo "# round $r: dm-writecache (SSD mode, block 4096, defaults)"
  fresh_cache
  dmsetup create b_wc --table "0 $S writecache s $SLOW $C 4096 0"
  bench_dev "writecache#$r" /dev/mapper/b_wc
  dmsetup status b_wc
  dmsetup remove b_wc

  echo "# round $r: dm-wbcache (block 4096, defaults)"
  fresh_cache
  dmsetup create b_wbc --table "0 $S wbcache $SLOW $C 4096 0"
  bench_dev "wbcache#$r" /dev/mapper/b_wbc
  dmsetup status b_wbc
  dmsetup remove b_wbc
  names+=("writecache#$r" "wbcache#$r")
done

printf '\n%-14s %-22s %10s %10s %10s %10s\n' target workload IOPS p50_us p99_us MB/s
for n in "${names[@]}"; do
  for w in qd32 qd1 seq; do
    read -r iops p50 p99 mbps <<<"${R[$n,$w]}"
    case $w in qd32) wl="4k randwrite QD32 zipf";; qd1) wl="4k randwrite QD1 zipf";; seq) wl="1M seq write QD4";; esac
    printf '%-14s %-22s %10s %10s %10s %10s\n' "$n" "$wl" "$iops" "$p50" "$p99" "$mbps"
  done
done
# median TARGET WORKLOAD FIELD(1 iops, 3 p99, 4 MB/s): median and ratio from lib.sh
wq32=$(median wbcache qd32 1); cq32=$(median writecache qd32 1)
wq1=$(median wbcache qd1 1); cq1=$(median writecache qd1 1)
w99=$(median wbcache qd1 3); c99=$(median writecache qd1 3)
wseq=$(median wbcache seq 4); cseq=$(median writecache seq 4)
echo
echo "MEDIAN of $ROUNDS rounds: wbcache qd32 $wq32 IOPS, qd1 $wq1 IOPS (p99 $w99 us), seq $wseq MB/s;" \
     "dm-writecache qd32 $cq32 IOPS, qd1 $cq1 IOPS (p99 $c99 us), seq $cseq MB/s"
for r in $(seq "$ROUNDS"); do
  read -r a _ _ _ <<<"${R[wbcache#$r,qd32]}"; read -r b _ _ _ <<<"${R[writecache#$r,qd32]}"
  read -r _ _ c _ <<<"${R[wbcache#$r,qd1]}"; read -r _ _ d _ <<<"${R[writecache#$r,qd1]}"
  echo "round $r: qd32 IOPS ratio $(ratio "$a" "$b"), qd1 p99 ratio (writecache/wbcache) $(ratio "$d" "$c")"
done
echo
# Kernel memory per cache block: MemFree drop when creating a device over a 4 GiB (sparse)
# cache minus the drop for a 64 MiB one, over the difference in blocks (fixed costs cancel).
# (tmpfs pages the metadata occupies are counted back: MemFree + Shmem.)
memfree() { sync; echo 3 >/proc/sys/vm/drop_caches; awk '/^MemFree:/ {f=$2} /^Shmem:/ {s=$2} END {print f + s}' /proc/meminfo; }
mem_per_block() {  # TARGET-NAME TABLE-PREFIX(up to the cache) TABLE-SUFFIX
  local sizes=(64M 4G) d=() n=() k
  for k in 0 1; do
    truncate -s 0 /dev/shm/bench/mcache; truncate -s "${sizes[$k]}" /dev/shm/bench/mcache
    local mc; mc=$(losetup -f --show /dev/shm/bench/mcache)
    local before; before=$(memfree)
    dmsetup create b_mem --table "$2 $mc $3"
    d[$k]=$((before - $(memfree)))
    if [ "$1" = wbcache ]; then n[$k]=$(dmsetup status b_mem | sed -n 's/.* blocks \([0-9]*\) .*/\1/p')
    else n[$k]=$(dmsetup status b_mem | awk '{print $5}'); fi
    dmsetup remove b_mem; losetup -d "$mc"
  done
  python3 -c "print('%.1f' % ((${d[1]} - ${d[0]}) * 1024 / (${n[1]} - ${n[0]})))"
}
echo "MEM bytes-per-cache-block wbcache $(mem_per_block wbcache "0 $S wbcache $SLOW" "4096 0") dm-writecache $(mem_per_block writecache "0 $S writecache s $SLOW" "4096 0") (MemFree+Shmem drop, 4 GiB cache minus 64 MiB cache, per block)"
echo "RATIO iops-4k-randwrite-qd32 wbcache/dm-writecache = $(ratio "$wq32" "$cq32")"
echo "RATIO iops-4k-randwrite-qd1 wbcache/dm-writecache = $(ratio "$wq1" "$cq1")"
echo "RATIO p99-4k-randwrite-qd1 dm-writecache/wbcache = $(ratio "$c99" "$w99")"
echo "RATIO mbps-1m-seqwrite wbcache/dm-writecache = $(ratio "$wseq" "$cseq")"
dmsetup remove b_slow
losetup -d "$O" "$C"
