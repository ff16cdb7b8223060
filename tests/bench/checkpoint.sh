#!/usr/bin/env bash
# make bench-checkpoint: what a checkpoint costs, in one guest run. A benchmark, not a test: it
# reports numbers and ratios.
#
# Stack (one guest; both nodes in the root network namespace, over two addresses on lo):
#   node A: dm-wbcache (cache: loop on tmpfs) -> dm-repl primary (async) -> dm-delay (the slow
#           origin disk: WBREPL_BENCH_DELAY_MS per write, default 2) -> loop on tmpfs
#   node B: dm-repl secondary (freeze_on_marker) -> dm-thin volume, with `wbrepl secondary run`
#           taking an image at every marker (--keep 1: the thin pool holds the volume and
#           one image)
#
# Every round (WBREPL_BENCH_ROUNDS, default 3):
# 1. The origin's write bandwidth, as dm-wbcache sees it (fio on the dm-repl device, with no
#    cache above it, so replication is included): 4k random writes at QD64 (writeback_jobs, the
#    number of copies a drain runs at once) and 1M sequential writes at QD16.
# 2. Drain: for each size in WBREPL_BENCH_DIRTY_MB (default "8 32") and each pattern (4k random
#    writes, every block once; 1M sequential), dirty that much data in a clean cache, then
#    `checkpoint hold`: its drain_ms against the bound = dirty bytes / the origin's bandwidth
#    for that pattern.
# 3. Application latency: fio 4k random writes, QD1, WBREPL_BENCH_IOPS per second (default
#    500), zipf:1.2 over 64 MiB, for WBREPL_BENCH_SECONDS (default 20): p99 of the total latency
#    with no checkpoint (the baseline), then with checkpoints back to back (one every
#    WBREPL_BENCH_CP_EVERY_MS, default 2000, after the previous one ended) in `hold`, in
#    `writethrough`, then (the cache switched to `ordered`) a baseline in ordered mode and
#    `ordered` checkpoints. A control run sends the `flush` message the same way: writeback
#    without a checkpoint (a flush writes back until the cache is clean, so under this load
#    one flush spans most of the run: continuous writeback).
# 4. Marker to image: for every checkpoint, the time from the checkpoint message returning (the
#    marker is durable at the primary) to `wbrepl secondary run` reporting the image.
# The table shows every round; RATIO lines are ratios of the medians over the rounds. The drain
# RATIO line is the worst case (largest drain/bound) over the sizes and patterns. A drain with
# no bound (nothing drained, or no origin bandwidth measured) ends the benchmark with an error.
set -u
. "$(dirname "$0")/lib.sh"
: "${WBREPL_ROOT:?run me through qemu/run-guest.sh}"
WBREPL=$WBREPL_ROOT/target/release/wbrepl
DELAY=${WBREPL_BENCH_DELAY_MS:-2}
ROUNDS=${WBREPL_BENCH_ROUNDS:-3}
SIZES=${WBREPL_BENCH_DIRTY_MB:-8 32}
SECS=${WBREPL_BENCH_SECONDS:-20}
IOPS=${WBREPL_BENCH_IOPS:-500}
CP_EVERY=${WBREPL_BENCH_CP_EVERY_MS:-2000}
CP_EVERY_S=$(printf '%d.%03d' $((CP_EVERY / 1000)) $((CP_EVERY % 1000)))
MB=320          # origin (and secondary volume) size
CACHE_MB=160    # cache device: high watermark 90 % is never reached by what the bench writes
IP_A=10.99.9.1
IP_B=10.99.9.2
PORT=7950
DIR=/tmp/bench-cp

die() { echo "bench-checkpoint: ERROR: $*" >&2; exit 1; }   # the EXIT trap tears down
step() { "$@" >"$DIR.out" 2>&1 || { cat "$DIR.out" >&2; die "failed: $*"; }; }

LOOPS=()
SECPID=
cleanup() {
  local rc=$? d
  trap - EXIT
  [ -n "$SECPID" ] && kill "$SECPID" 2>/dev/null && wait "$SECPID" 2>/dev/null
  udevadm settle 2>/dev/null
  for d in bc-w bc-r bc-s bc-thin bc-pool bc-slow; do
    dmsetup info "$d" >/dev/null 2>&1 && dmsetup remove --retry "$d" >/dev/null 2>&1
  done
  for d in "${LOOPS[@]}"; do losetup -d "$d" 2>/dev/null; done
  rm -rf "$DIR"/*
  for d in 1 2 3 4 5; do   # the stamper may still hold the events file for a moment
    umount "$DIR" 2>/dev/null && { rmdir "$DIR"; break; }
    sleep 0.2
  done
  rm -f "$DIR.out"
  ip addr del $IP_A/32 dev lo 2>/dev/null
  ip addr del $IP_B/32 dev lo 2>/dev/null
  exit $rc
}
trap cleanup EXIT

# --- setup ----------------------------------------------------------------------------------
command -v fio >/dev/null || die "fio not found"
[ -x "$WBREPL" ] || die "$WBREPL not built (make cli)"
modprobe dm-repl && modprobe dm-wbcache || die "cannot load the modules"
mkdir -p "$DIR" || die "mkdir $DIR"
# Origin and cache fully allocated; the thin pool's data device sparse (images come and go).
step mount -t tmpfs -o size=$((MB + CACHE_MB + 1024 + 64))M bench-cp "$DIR"
step ip link set lo up
step ip addr add $IP_A/32 dev lo
step ip addr add $IP_B/32 dev lo
dev() {  # NAME MB [sparse]
  if [ -n "${3:-}" ]; then truncate -s "$2M" "$DIR/$1"; else fallocate -l "$2M" "$DIR/$1"; fi || die "cannot make $DIR/$1"
  losetup -f --show "$DIR/$1" || die "losetup $DIR/$1"
}
PO=$(dev origin $MB) && LOOPS+=("$PO")
PC=$(dev cache $CACHE_MB) && LOOPS+=("$PC")
TM=$(dev tmeta 16) && LOOPS+=("$TM")
TD=$(dev tdata 1024 sparse) && LOOPS+=("$TD")
S=$(blockdev --getsz "$PO")
W=$((S - 8))    # the wbcache ends 4 KiB before the repl device's end: the marker region
step dmsetup create bc-slow --table "0 $S delay $PO 0 0 $PO 0 $DELAY"
step dmsetup create bc-pool --table "0 $(blockdev --getsz "$TD") thin-pool $TM $TD 128 0 1 skip_block_zeroing"
step dmsetup message bc-pool 0 "create_thin 0"
step dmsetup create bc-thin --table "0 $S thin /dev/mapper/bc-pool 0"
step dmsetup create bc-s --table "0 $S repl secondary /dev/mapper/bc-thin $IP_B:$PORT 3 freeze_on_marker freeze_timeout 30000"
step dmsetup create bc-r --table "0 $S repl primary /dev/mapper/bc-slow $IP_B:$PORT 2 protocol async"

repl_synced() {
  [[ $(dmsetup status bc-r) =~ \ primary\ connected\ .*\ inflight\ 0\ inflight_bytes\ 0\ lag_ms\ [0-9]+\ dirty_kb\ 0\ resync\ -\ peer_data\ consistent\  ]]
}
wait_for() {  # SECONDS CMD...
  local t=$1 i; shift
  for i in $(seq $((t * 10))); do "$@" && return 0; sleep 0.1; done
  return 1
}
wait_for 30 repl_synced || die "dm-repl did not connect: $(dmsetup status bc-r)"

# The secondary's image loop; every line it prints stamped with the time it arrived (ns).
STATE=$DIR/state
# $SECPID is wbrepl itself (not a pipeline, which `wait` would wait for as a whole): killing it
# ends the stamper too, at end of file.
"$WBREPL" --json secondary run bc-s --state-dir "$STATE" --keep 1 2>"$DIR/secondary.err" > >(
  python3 -u -c '
import sys, time
for line in sys.stdin:
    print(time.time_ns(), line, end="", flush=True)' >"$DIR/events") &
SECPID=$!
wait_for 10 grep -q '"started"' "$DIR/events" || die "wbrepl secondary run did not start: $(cat "$DIR/secondary.err")"

# fio_write DEV ARGS...: prints "iops MBps p99_lat_us p50_lat_us"
fio_write() {
  local dev=$1; shift
  fio --name=b --filename="$dev" --direct=1 --ioengine=libaio --lat_percentiles=1 \
      --output-format=json "$@" 2>"$DIR.out" |
    python3 -c '
import json, sys
w = json.load(sys.stdin)["jobs"][0]["write"]
p = w["lat_ns"]["percentile"]
print("%.0f %.1f %.0f %.0f" % (w["iops"], w["bw_bytes"] / 1e6, p["99.000000"] / 1000, p["50.000000"] / 1000))' ||
    { cat "$DIR.out" >&2; die "fio failed: $*"; }
}
field() { dmsetup status "$1" | sed -n "s/.* $2 \([^ ]*\).*/\1/p"; }

# checkpoint MODE: one checkpoint; appends "id sent_ns answer" to $DIR/cps; prints the answer.
checkpoint() {
  local a
  a=$(dmsetup message bc-w 0 checkpoint "$1" "bench-$1") || { echo "checkpoint $1 failed" >&2; return 1; }
  echo "${a#id } $(date +%s%N)" | awk '{print $1, $NF}' >>"$DIR/cps"
  echo "$a"
}
answer() { sed -n "s/.* $2 \([0-9]*\).*/\1/p" <<<"$1"; }

cache_up() {  # MODE
  dd if=/dev/zero of="$PC" bs=1M count=1 oflag=direct status=none   # a fresh cache
  step dmsetup create bc-w --table "0 $W wbcache /dev/mapper/bc-r $PC 4096 6 high_watermark 90 low_watermark 80 mode $1"
}
cache_down() { step dmsetup message bc-w 0 flush; step dmsetup remove --retry bc-w; }
# A clean cache and a replication with nothing in flight.
quiesce() {
  step dmsetup message bc-w 0 flush
  wait_for 120 repl_synced || die "dm-repl not in sync: $(dmsetup status bc-r)"
}

app() { fio_write /dev/mapper/bc-w --rw=randwrite --bs=4k --iodepth=1 --rate_iops="$IOPS" --size=64M \
          --random_distribution=zipf:1.2 --time_based --runtime="$SECS"; }
# during MODE: the application with checkpoints in MODE back to back; prints its figures and
# the number of checkpoints taken. MODE "flush" is the control: the `flush` message instead
# (writeback, no checkpoint), so the cost of writing back under load can be told from the cost
# of the checkpoint itself.
during() {
  local stop=$DIR/stop pid out
  rm -f "$stop"
  # No python in the loop: its start-up is a burst of CPU in the guest that the application
  # would feel (the control sends only one flush, the checkpoint loops several).
  ( while [ ! -e "$stop" ]; do
      sleep "$CP_EVERY_S"
      [ -e "$stop" ] && break
      if [ "$1" = flush ]; then
        dmsetup message bc-w 0 flush >/dev/null && echo flush >>"$DIR/flushes" || echo "flush failed" >&2
      else
        checkpoint "$1" >/dev/null || echo "checkpoint $1 failed" >&2
      fi
    done ) &
  pid=$!
  out=$(app)
  touch "$stop"; wait "$pid"
  echo "$out"
}

declare -A R   # R[name#round,case] = figures
DRAIN_CASES=()
for mb in $SIZES; do DRAIN_CASES+=("rand$mb" "seq$mb"); done
: >"$DIR/cps"

for r in $(seq "$ROUNDS"); do
  echo "# round $r: the origin's write bandwidth (dm-repl over dm-delay ${DELAY} ms, no cache above)"
  wait_for 120 repl_synced || die "dm-repl not in sync: $(dmsetup status bc-r)"
  R[bw#$r,rand]=$(fio_write /dev/mapper/bc-r --rw=randwrite --bs=4k --iodepth=64 --size=128M --time_based --runtime=5 --ramp_time=2)
  wait_for 120 repl_synced || die "dm-repl not in sync: $(dmsetup status bc-r)"
  R[bw#$r,seq]=$(fio_write /dev/mapper/bc-r --rw=write --bs=1M --iodepth=16 --size=128M --time_based --runtime=5 --ramp_time=2)
  echo "  4k random QD64: ${R[bw#$r,rand]}; 1M sequential QD16: ${R[bw#$r,seq]} (IOPS MB/s p99_us p50_us)"

  echo "# round $r: drains (checkpoint hold of a cache holding only that dirty data)"
  cache_up writeback
  for c in "${DRAIN_CASES[@]}"; do
    quiesce
    mb=${c#rand}; mb=${mb#seq}
    if [ "${c#rand}" != "$c" ]; then
      fio_write /dev/mapper/bc-w --rw=randwrite --bs=4k --iodepth=32 --size="${mb}M" >/dev/null
      bw=$(awk '{print $2}' <<<"${R[bw#$r,rand]}")
    else
      fio_write /dev/mapper/bc-w --rw=write --bs=1M --iodepth=4 --size="${mb}M" >/dev/null
      bw=$(awk '{print $2}' <<<"${R[bw#$r,seq]}")
    fi
    dirty=$(field bc-w dirty)
    a=$(checkpoint hold) || die "checkpoint failed: $(dmsetup status bc-w)"
    blocks=$(answer "$a" blocks); drain=$(answer "$a" drain_ms)
    # A bound of zero (nothing drained, or no bandwidth measured) is an error: its ratio would
    # read as the best drain of all.
    [ "${blocks:-0}" -gt 0 ] 2>/dev/null || die "$c: the checkpoint drained no block (dirty $dirty): nothing to set against a bound ($a)"
    bound=$(python3 - "$blocks" "$bw" 2>/dev/null <<'EOF'
import math, sys
blocks, bw = int(sys.argv[1]), float(sys.argv[2])
b = blocks * 4096 / (bw * 1e6) * 1000 if bw > 0 else 0
if not (math.isfinite(b) and b > 0):
    sys.exit(1)
print("%.0f" % b if b >= 10 else "%.3g" % b)
EOF
) || die "$c: no bound for $blocks blocks at an origin bandwidth of '$bw' MB/s"
    R[drain#$r,$c]="$dirty $blocks $drain $bound $(answer "$a" marker_ms) $(answer "$a" total_ms)"
    echo "  $c: dirty $dirty blocks, drained $blocks in $drain ms, bound $bound ms ($a)"
  done

  echo "# round $r: application latency (4k random writes QD1 at $IOPS IOPS, zipf:1.2 over 64 MiB, ${SECS} s)"
  quiesce
  R[app#$r,base]=$(app)
  quiesce; : >"$DIR/flushes"
  R[app#$r,flush]="$(during flush) $(wc -l <"$DIR/flushes")"
  for m in hold writethrough; do
    quiesce; n0=$(wc -l <"$DIR/cps")
    R[app#$r,$m]="$(during "$m") $(( $(wc -l <"$DIR/cps") - n0 ))"
  done
  quiesce
  step dmsetup message bc-w 0 mode ordered
  R[app#$r,base-ordered]=$(app)
  quiesce; n0=$(wc -l <"$DIR/cps")
  R[app#$r,ordered]="$(during ordered) $(( $(wc -l <"$DIR/cps") - n0 ))"
  for c in base flush hold writethrough base-ordered ordered; do echo "  $c: ${R[app#$r,$c]}"; done
  dmsetup status bc-w; echo "  thin pool: $(dmsetup status bc-pool)"
  cache_down
done

# Marker to image: each checkpoint's message return against its image's arrival.
wait_for 30 python3 -c "
import sys
want = {l.split()[0] for l in open('$DIR/cps')}
got = {l.split('\"marker_id\":')[1].split(',')[0] for l in open('$DIR/events') if '\"event\":\"image\"' in l}
sys.exit(0 if want <= got else 1)" || echo "bench-checkpoint: not every checkpoint has its image (see below)"
M2I=$(python3 - "$DIR/cps" "$DIR/events" <<'EOF'
import json, statistics, sys
# Marker ids start again in every round (a fresh cache): a checkpoint's image is the first
# image event of its id that arrived after the checkpoint returned.
sent = [tuple(map(int, l.split())) for l in open(sys.argv[1])]
img = {}
for l in open(sys.argv[2]):
    t, j = l.split(" ", 1)
    e = json.loads(j)
    if e.get("event") == "image":
        img.setdefault(int(e["image"]["marker_id"]), []).append(int(t))
d = []
for i, t in sent:
    later = [a for a in img.get(i, []) if a >= t]
    if later:
        d.append((min(later) - t) / 1e6)
d.sort()
if d:
    print("%d %d %.0f %.0f %.0f" % (len(sent), len(d), statistics.median(d), d[int(0.9 * (len(d) - 1))], d[-1]))
else:
    print("%d 0 0 0 0" % len(sent))
EOF
)
grep -E '"(no_image|error)"' "$DIR/events" | head -5

# --- report ---------------------------------------------------------------------------------
echo
printf '%-6s %-8s %8s %8s %9s %9s %8s %10s\n' round case dirty drained drain_ms bound_ms ratio marker_ms
for r in $(seq "$ROUNDS"); do
  for c in "${DRAIN_CASES[@]}"; do
    read -r dirty blocks drain bound mk _ <<<"${R[drain#$r,$c]}"
    printf '%-6s %-8s %8s %8s %9s %9s %8s %10s\n' "$r" "$c" "$dirty" "$blocks" "$drain" "$bound" "$(ratio "$drain" "$bound")" "$mk"
  done
done
echo
printf '%-6s %-14s %8s %8s %10s %10s %6s\n' round case IOPS MB/s p99_us p50_us cps
for r in $(seq "$ROUNDS"); do
  for c in base flush hold writethrough base-ordered ordered; do
    read -r iops mbps p99 p50 n <<<"${R[app#$r,$c]}"
    printf '%-6s %-14s %8s %8s %10s %10s %6s\n' "$r" "$c" "$iops" "$mbps" "$p99" "$p50" "${n:--}"
  done
done
read -r ncp nimg m2i_med m2i_p90 m2i_max <<<"$M2I"
echo
echo "MARKER-TO-IMAGE $nimg of $ncp checkpoints have an image: median $m2i_med ms, p90 $m2i_p90 ms, max $m2i_max ms"
# median over the rounds of field F of R[KIND#round,CASE]
med() { local k=$1 c=$2 f=$3 v=() r; for r in $(seq "$ROUNDS"); do v+=("$(awk -v f="$f" '{print $f}' <<<"${R[$k#$r,$c]}")"); done
        printf '%s\n' "${v[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
worst=0
for c in "${DRAIN_CASES[@]}"; do
  x=$(ratio "$(med drain "$c" 3)" "$(med drain "$c" 4)") || die "drain/bound-$c: the median bound is zero or missing"
  echo "RATIO drain/bound-$c = $x"
  worst=$(python3 -c "print(max($worst, $x))")
done
echo "RATIO drain/bound = $worst"
base=$(med app base 3); base_o=$(med app base-ordered 3)
echo "RATIO p99-during-flush/baseline = $(ratio "$(med app flush 3)" "$base") (the control: writeback without a checkpoint)"
echo "RATIO p99-during-hold/baseline = $(ratio "$(med app hold 3)" "$base")"
echo "RATIO p99-during-writethrough/baseline = $(ratio "$(med app writethrough 3)" "$base")"
echo "RATIO p99-during-ordered/baseline = $(ratio "$(med app ordered 3)" "$base_o")"
