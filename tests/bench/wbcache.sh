#!/usr/bin/env bash
# make bench-wbcache: dm-wbcache vs in-tree dm-writecache (SSD mode) vs the origin alone, in one
# guest run on the same devices. A benchmark, not a test: it reports numbers and ratios.
#
# Devices: the cache is a loop device over a fully allocated (fallocate) file on tmpfs (fast);
# the origin is a loop device over a fully allocated file on tmpfs behind dm-delay (slow:
# WBREPL_BENCH_DELAY_MS per write, default 2 ms). Both caches use the same two files, so neither
# pays for tmpfs allocating pages the other found allocated. Workloads (fio, direct I/O, libaio,
# WBREPL_BENCH_RUNTIME s each, default 10), each after a 3 s ramp-up: 4k random writes at QD32
# and QD1 with a zipf:1.2 access pattern, and 1M sequential writes. dm-writecache and dm-wbcache
# run in alternation, WBREPL_BENCH_ROUNDS times (default 3, each on a fresh cache), and take
# turns going first: dm-writecache in odd rounds, dm-wbcache in even ones. The table shows every
# round and the ratios are of the medians, so that one noisy round (TCG on a shared host) does
# not decide. Latencies are fio's total latency (`lat`: submission + completion), as in
# bench-repl; completion latency (`clat`) is printed too. A fio error, or a run that wrote
# nothing, ends the benchmark with an error. Ends with one "RATIO ..." line per comparison.
set -u
. "$(dirname "$0")/lib.sh"
: "${WBREPL_ROOT:?run me through qemu/run-guest.sh}"
DELAY=${WBREPL_BENCH_DELAY_MS:-2}
RUNTIME=${WBREPL_BENCH_RUNTIME:-10}
ROUNDS=${WBREPL_BENCH_ROUNDS:-3}
die() { echo "bench-wbcache: ERROR: $*" >&2; exit 1; }
mkdir -p /dev/shm/bench
# Fully allocated: a sparse tmpfs file would allocate pages during the first run's writes only.
rm -f /dev/shm/bench/origin /dev/shm/bench/cache
fallocate -l 384M /dev/shm/bench/origin || die "fallocate the origin (tmpfs full?)"
fallocate -l 128M /dev/shm/bench/cache || die "fallocate the cache (tmpfs full?)"
O=$(losetup -f --show /dev/shm/bench/origin) || die "losetup origin"
C=$(losetup -f --show /dev/shm/bench/cache) || die "losetup cache"
S=$(blockdev --getsz "$O")
dmsetup create b_slow --table "0 $S delay $O 0 0 $O 0 $DELAY" || die "dm-delay create"
SLOW=/dev/mapper/b_slow

fresh_cache() { dd if=/dev/zero of="$C" bs=1M count=1 oflag=direct status=none; }

# run NAME DEV FIO-ARGS...: prints "iops lat_p50_us lat_p99_us MBps clat_p50_us clat_p99_us";
# fails (with fio's messages) if fio fails, reports an error, or wrote nothing.
run() {
  local name=$1 dev=$2 out; shift 2
  out=$(fio --name=b --filename="$dev" --direct=1 --ioengine=libaio --time_based --runtime="$RUNTIME" \
      --ramp_time=3 --size=256M --lat_percentiles=1 --output-format=json "$@" 2>/dev/shm/bench/fio.err) ||
    { cat /dev/shm/bench/fio.err >&2; echo "fio failed on $name ($dev): $*" >&2; return 1; }
  python3 -c '
import json, sys
j = json.loads(sys.argv[1])["jobs"][0]
if j["error"]: sys.exit("fio error %d" % j["error"])
w = j["write"]
if not w["io_bytes"]: sys.exit("fio wrote nothing")
l, c = w["lat_ns"]["percentile"], w["clat_ns"]["percentile"]
print("%.0f %.0f %.0f %.1f %.0f %.0f" % (w["iops"], l["50.000000"] / 1000, l["99.000000"] / 1000,
      w["bw_bytes"] / 1e6, c["50.000000"] / 1000, c["99.000000"] / 1000))' "$out" ||
    { echo "fio on $name ($dev): $*" >&2; return 1; }
}

declare -A R
bench_dev() {
  local name=$1 dev=$2
  R[$name,qd32]=$(run "$name" "$dev" --rw=randwrite --bs=4k --iodepth=32 --random_distribution=zipf:1.2) || die "$name: 4k QD32"
  R[$name,qd1]=$(run "$name" "$dev" --rw=randwrite --bs=4k --iodepth=1 --random_distribution=zipf:1.2) || die "$name: 4k QD1"
  R[$name,seq]=$(run "$name" "$dev" --rw=write --bs=1M --iodepth=4) || die "$name: 1M sequential"
}

echo "# origin alone (dm-delay ${DELAY} ms per write)"
bench_dev origin "$SLOW"
names=(origin)
writecache_round() {
  echo "# round $1: dm-writecache (SSD mode, block 4096, defaults)"
  fresh_cache
  dmsetup create b_wc --table "0 $S writecache s $SLOW $C 4096 0" || die "dm-writecache create"
  bench_dev "writecache#$1" /dev/mapper/b_wc
  dmsetup status b_wc
  dmsetup remove b_wc || die "dm-writecache remove"
}
wbcache_round() {
  echo "# round $1: dm-wbcache (block 4096, defaults)"
  fresh_cache
  dmsetup create b_wbc --table "0 $S wbcache $SLOW $C 4096 0" || die "dm-wbcache create"
  bench_dev "wbcache#$1" /dev/mapper/b_wbc
  dmsetup status b_wbc
  dmsetup remove b_wbc || die "dm-wbcache remove"
}
for r in $(seq "$ROUNDS"); do
  # Take turns going first: whatever the first run of a round pays (a cold tmpfs, the writeback
  # of the previous round's origin writes still settling) falls on each cache in turn.
  if [ $((r % 2)) = 1 ]; then writecache_round "$r"; wbcache_round "$r"
  else wbcache_round "$r"; writecache_round "$r"; fi
  names+=("writecache#$r" "wbcache#$r")
done

echo
echo "(p50_us, p99_us: fio total latency, submission + completion; clat_p50/p99: completion only)"
printf '%-14s %-22s %10s %10s %10s %10s %11s %11s\n' target workload IOPS p50_us p99_us MB/s clat_p50_us clat_p99_us
for n in "${names[@]}"; do
  for w in qd32 qd1 seq; do
    read -r iops p50 p99 mbps cp50 cp99 <<<"${R[$n,$w]}"
    case $w in qd32) wl="4k randwrite QD32 zipf";; qd1) wl="4k randwrite QD1 zipf";; seq) wl="1M seq write QD4";; esac
    printf '%-14s %-22s %10s %10s %10s %10s %11s %11s\n' "$n" "$wl" "$iops" "$p50" "$p99" "$mbps" "$cp50" "$cp99"
  done
done
# median TARGET WORKLOAD FIELD(1 iops, 3 p99 of the total latency, 4 MB/s): median and ratio from lib.sh
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
rm -f /dev/shm/bench/origin /dev/shm/bench/cache /dev/shm/bench/mcache /dev/shm/bench/fio.err
