#!/usr/bin/env bash
# make bench-repl: dm-repl vs the in-tree DRBD 8.4 vs the local device alone, in one guest run.
# A benchmark, not a test: it reports numbers and ratios.
#
# Topology: both nodes of each product in the ROOT network namespace, talking over two
# addresses on lo (node A 10.99.9.1, node B 10.99.9.2). DRBD 8.4 creates its sockets in
# init_net only (sock_create_kern(&init_net, ...) in drivers/block/drbd/drbd_receiver.c) and
# its genetlink family is not netnsok, so it cannot use the wbrepl-a/wbrepl-b namespaces of the
# functional tests; dm-repl is put on the same path for fairness.
#
# Devices: loop devices over fully allocated (fallocate) files on a tmpfs of our own,
# WBREPL_BENCH_MB each (default 160), fresh for every phase: the local device alone; dm-repl's
# primary and secondary data devices; each DRBD pair's, with internal meta data at their end
# (drbdmeta create-md). fio writes the first WBREPL_BENCH_MB - 16 MiB of every device.
#
# Two phases per round, each with every product of its protocol set up together: "async" (the
# local device, dm-repl `protocol async`, DRBD protocol A, and DRBD protocol A with
# `data-integrity-alg crc32c`) and "sync" (dm-repl `protocol sync`, DRBD protocol C, DRBD C with
# crc32c). The crc32c pair is the like-for-like comparison (dm-repl always checks a CRC-32C of
# every frame; DRBD by default checks nothing beyond TCP's checksum); it is a second DRBD pair
# of its own (resources bench-c/bench-d, minors 2 and 3, port 7790) beside the plain one
# (bench-a/bench-b, minors 0 and 1, port 7789), so that it runs in the same phase. Within
# a phase each workload runs on every product back to back, so a pair of measurements is
# seconds apart; the order of the products alternates between rounds (odd rounds dm-repl,
# DRBD, DRBD crc32c; even rounds the reverse). DRBD's initial sync is skipped
# (new-current-uuid --clear-bitmap while connected). Before every workload all products of the
# phase are checked to be connected with nothing in flight (a product still draining its
# replication would slow the one measured), after it the measured one to be still on its first
# connection (a disconnection would mean a local-only, faster measurement).
#
# Workloads (fio, direct I/O, libaio, WBREPL_BENCH_SECONDS each, default 10, after a 3 s ramp):
# 4k random writes at QD32 and QD1, 1M sequential writes at QD4. WBREPL_BENCH_ROUNDS rounds
# (default 3). Latencies are fio's total latency (submission + completion, `lat`): DRBD is
# bio-based and does much of a write inside io_submit(), which fio counts as submission
# latency, so its completion latency (`clat`) alone undercounts (a QD1 clat p50 of 6-9 us was
# seen); clat is printed too. The table shows every round; the RATIO lines are ratios of the
# medians (TCG on a shared host moves single runs by tens of percent, at times several-fold).
set -u
. "$(dirname "$0")/lib.sh"
: "${WBREPL_ROOT:?run me through qemu/run-guest.sh}"
RUNTIME=${WBREPL_BENCH_SECONDS:-10}
ROUNDS=${WBREPL_BENCH_ROUNDS:-3}
MB=${WBREPL_BENCH_MB:-160}
FIO_MB=$((MB - 16))
IP_A=10.99.9.1
IP_B=10.99.9.2
DRBD_PORT=7789
REPL_PORT=7900
DIR=/tmp/bench-repl
if [ -x /usr/lib/drbd/drbdsetup-84 ]; then DRBDSETUP=/usr/lib/drbd/drbdsetup-84; else DRBDSETUP=drbdsetup; fi

die() { echo "bench-repl: ERROR: $*" >&2; exit 1; }   # the EXIT trap tears everything down
step() { "$@" >"$DIR.out" 2>&1 || { cat "$DIR.out" >&2; die "failed: $*"; }; }

# --- teardown -------------------------------------------------------------------------------
LOOPS=()
repl_down() {
  udevadm settle 2>/dev/null
  local d
  for d in br-p br-s; do
    dmsetup info "$d" >/dev/null 2>&1 && dmsetup remove --retry "$d"
  done
  ! dmsetup info br-p >/dev/null 2>&1 && ! dmsetup info br-s >/dev/null 2>&1
}
drbd_all_down() {
  local r
  for r in bench-a bench-b bench-c bench-d; do $DRBDSETUP down "$r" >/dev/null 2>&1; done
  ! grep -q '^ *[0-9]*: cs:' /proc/drbd
}
local_down() { :; }
devs_down() {
  local d
  for d in "${LOOPS[@]}"; do losetup -d "$d" 2>/dev/null; done
  LOOPS=()
  rm -f "$DIR"/*
}
cleanup() {
  local rc=$?
  trap - EXIT
  repl_down >/dev/null 2>&1
  drbd_all_down >/dev/null 2>&1
  devs_down
  umount "$DIR" 2>/dev/null && rmdir "$DIR"
  rm -f "$DIR.out" "$DIR.fio"
  ip addr del $IP_A/32 dev lo 2>/dev/null
  ip addr del $IP_B/32 dev lo 2>/dev/null
  exit $rc
}
trap cleanup EXIT

# --- setup ----------------------------------------------------------------------------------
command -v fio >/dev/null || die "fio not found"
command -v drbdmeta >/dev/null || die "drbdmeta not found (drbd-utils)"
[ -r /proc/drbd ] || die "no /proc/drbd: the guest kernel lacks CONFIG_BLK_DEV_DRBD"
grep -q '^version: 8\.4\.' /proc/drbd || die "DRBD is not 8.4: $(head -n 1 /proc/drbd)"
[ "$MB" -ge 64 ] || die "WBREPL_BENCH_MB must be at least 64"
modprobe dm-repl || die "cannot load dm-repl"
mkdir -p "$DIR" || die "mkdir $DIR"
step mount -t tmpfs -o size=$((7 * MB + 16))M bench-repl "$DIR"
step ip link set lo up
step ip addr add $IP_A/32 dev lo
step ip addr add $IP_B/32 dev lo

# fresh_dev NAME: a loop device over a fresh, fully allocated file; prints its path.
fresh_dev() {
  rm -f "$DIR/$1"
  fallocate -l "${MB}M" "$DIR/$1" || die "fallocate $DIR/$1 (tmpfs full?)"
  losetup -f --show "$DIR/$1" || die "losetup $DIR/$1"
}

# --- dm-repl --------------------------------------------------------------------------------
# wait_for SECONDS CMD...: until CMD succeeds.
wait_for() {
  local t=$1 i; shift
  for i in $(seq $((t * 5))); do "$@" && return 0; sleep 0.2; done
  return 1
}
repl_synced() {
  [[ $(dmsetup status br-p) =~ \ primary\ connected\ .*\ inflight\ 0\ inflight_bytes\ 0\ lag_ms\ 0\ dirty_kb\ 0\ resync\ -\ peer_data\ consistent\  ]]
}
repl_field() { dmsetup status br-p | sed -n "s/.* $1 \([^ ]*\).*/\1/p"; }
repl_up() {  # PROTOCOL
  local pd sd s
  pd=$(fresh_dev repl-p) && LOOPS+=("$pd") && sd=$(fresh_dev repl-s) && LOOPS+=("$sd") || exit 1
  s=$(blockdev --getsz "$pd")
  REPL_PORT=$((REPL_PORT + 1))
  step dmsetup create br-s --table "0 $s repl secondary $sd $IP_B:$REPL_PORT 0"
  step dmsetup create br-p --table "0 $s repl primary $pd $IP_B:$REPL_PORT 2 protocol $1"
  wait_for 30 repl_synced || die "dm-repl ($1) did not connect: $(dmsetup status br-p)"
  DEV[repl]=/dev/mapper/br-p
}
# Before any workload: connected, nothing in flight. After its own: still the first connection.
repl_before() { wait_for 120 repl_synced || die "dm-repl not in sync before a workload: $(dmsetup status br-p)"; }
repl_after() {
  [ "$(repl_field connects)" = 1 ] && [[ $(dmsetup status br-p) =~ \ primary\ connected\  ]] ||
    die "dm-repl lost its connection during the workload: $(dmsetup status br-p)"
}
repl_info() { dmsetup status br-p; dmsetup status br-s; }

# --- DRBD 8.4 -------------------------------------------------------------------------------
# Two pairs, each a primary resource on node A (10.99.9.1) and its peer on node B (10.99.9.2):
# pair 0 (kind "drbd") bench-a/bench-b, minors 0/1, port 7789; pair 1 (kind "drbdcrc", with a
# data-integrity-alg) bench-c/bench-d, minors 2/3, port 7790. Defaults for every disk and net
# option but the protocol (and the crc32c pair's data-integrity-alg).
DRBD_RES=(bench-a bench-b bench-c bench-d)
DRBD_MARK=()
drbd_state() { sed -n "s/^ *$1: \(cs:.*\)/\1/p" /proc/drbd; }
drbd_pair_synced() {  # PAIR
  local m
  for m in $((2 * $1)) $((2 * $1 + 1)); do
    [ "$($DRBDSETUP cstate "$m" 2>/dev/null)" = Connected ] &&
      [ "$($DRBDSETUP dstate "$m" 2>/dev/null)" = UpToDate/UpToDate ] || return 1
    # nothing pending, unacknowledged, in the application's queue or out of sync
    awk -v m="$m:" '$1 == m {f = 1; next} f {print; exit}' /proc/drbd |
      grep -q ' lo:0 pe:0 ua:0 ap:0 .* oos:0' || return 1
  done
}
drbd_pair_up() {  # PAIR PROTOCOL (A or C) [DATA-INTEGRITY-ALG]
  local i=$1 pd sd alg=${3:-} mp=$((2 * $1)) ms=$((2 * $1 + 1)) port=$((DRBD_PORT + $1))
  local rp=${DRBD_RES[$mp]} rs=${DRBD_RES[$ms]}
  pd=$(fresh_dev drbd$i-p) && LOOPS+=("$pd") && sd=$(fresh_dev drbd$i-s) && LOOPS+=("$sd") || exit 1
  step drbdmeta --force $mp v08 "$pd" internal create-md
  step drbdmeta --force $ms v08 "$sd" internal create-md
  step $DRBDSETUP new-resource $rp
  step $DRBDSETUP new-minor $rp $mp 0
  step $DRBDSETUP attach $mp "$pd" "$pd" internal
  step $DRBDSETUP new-resource $rs
  step $DRBDSETUP new-minor $rs $ms 0
  step $DRBDSETUP attach $ms "$sd" "$sd" internal
  step $DRBDSETUP connect $rp ipv4:$IP_A:$port ipv4:$IP_B:$port --protocol="$2" ${alg:+--data-integrity-alg=$alg}
  step $DRBDSETUP connect $rs ipv4:$IP_B:$port ipv4:$IP_A:$port --protocol="$2" ${alg:+--data-integrity-alg=$alg}
  wait_for 30 bash -c "[ \"\$($DRBDSETUP cstate $mp)\" = Connected ] && [ \"\$($DRBDSETUP cstate $ms)\" = Connected ]" ||
    die "DRBD ($rp, $2) did not connect: $(cat /proc/drbd)"
  [ "$($DRBDSETUP dstate $mp)" = Inconsistent/Inconsistent ] || die "DRBD: unexpected disk states: $(cat /proc/drbd)"
  # Skip the initial sync: both sides are blank, declare them identical.
  step $DRBDSETUP new-current-uuid $mp --clear-bitmap=yes
  wait_for 30 drbd_pair_synced "$i" || die "DRBD ($rp): initial sync not skipped: $(cat /proc/drbd)"
  step $DRBDSETUP primary $mp
  [ "$($DRBDSETUP role $mp)" = Primary/Secondary ] || die "DRBD: minor $mp is not primary: $(cat /proc/drbd)"
  DRBD_MARK[$i]="wbrepl-bench-mark-$$-$RANDOM-$i"
  echo "${DRBD_MARK[$i]}" >/dev/kmsg
}
drbd_pair_before() { wait_for 120 drbd_pair_synced "$1" || die "DRBD (${DRBD_RES[$((2 * $1))]}) not in sync before a workload: $(cat /proc/drbd)"; }
# A connection state change since the bring-up means DRBD disconnected (and resynced).
drbd_pair_after() {
  local mp=$((2 * $1))
  [ "$($DRBDSETUP cstate $mp)" = Connected ] &&
    ! dmesg | sed -n "/${DRBD_MARK[$1]}/,\$p" |
      grep -E "drbd (${DRBD_RES[$mp]}|${DRBD_RES[$((mp + 1))]}): .*conn\( Connected ->" ||
    die "DRBD (${DRBD_RES[$mp]}) lost its connection during the workload: $(cat /proc/drbd)"
}
drbd_pair_info() { drbd_state $((2 * $1)); drbd_state $((2 * $1 + 1)); }
drbd_pair_down() {
  local r mp=$((2 * $1))
  for r in ${DRBD_RES[$mp]} ${DRBD_RES[$((mp + 1))]}; do $DRBDSETUP down "$r" >/dev/null 2>&1; done
  ! grep -qE "^ *($mp|$((mp + 1))): cs:" /proc/drbd
}
drbd_up() { drbd_pair_up 0 "$@" && DEV[drbd]=/dev/drbd0; }
drbd_before() { drbd_pair_before 0; }
drbd_after() { drbd_pair_after 0; }
drbd_info() { drbd_pair_info 0; }
drbd_down() { drbd_pair_down 0; }
drbdcrc_up() { drbd_pair_up 1 "$@" && DEV[drbdcrc]=/dev/drbd2; }
drbdcrc_before() { drbd_pair_before 1; }
drbdcrc_after() { drbd_pair_after 1; }
drbdcrc_info() { drbd_pair_info 1; }
drbdcrc_down() { drbd_pair_down 1; }

# --- local ----------------------------------------------------------------------------------
local_up() { DEV[local]=$(fresh_dev local) && LOOPS+=("${DEV[local]}") || exit 1; }
local_before() { :; }
local_after() { :; }
local_info() { :; }

# --- workloads ------------------------------------------------------------------------------
# run DEV FIO-ARGS...: prints "iops lat_p50_us lat_p99_us MBps clat_p50_us clat_p99_us"
run() {
  local dev=$1 out; shift
  out=$(fio --name=b --filename="$dev" --direct=1 --ioengine=libaio --time_based --runtime="$RUNTIME" \
      --ramp_time=3 --size="${FIO_MB}M" --lat_percentiles=1 --output-format=json "$@" 2>"$DIR.fio") ||
    { cat "$DIR.fio" >&2; die "fio failed on $dev: $*"; }
  python3 -c '
import json, sys
j = json.loads(sys.argv[1])["jobs"][0]
if j["error"]: sys.exit("fio error %d" % j["error"])
w = j["write"]
l, c = w["lat_ns"]["percentile"], w["clat_ns"]["percentile"]
print("%.0f %.0f %.0f %.1f %.0f %.0f" % (w["iops"], l["50.000000"] / 1000, l["99.000000"] / 1000,
      w["bw_bytes"] / 1e6, c["50.000000"] / 1000, c["99.000000"] / 1000))' "$out" ||
    die "cannot read fio's output on $dev"
}

declare -A R DEV
# phase ROUND MODE PRODUCT:NAME:PROTOCOL[:EXTRA]...: sets the products up together (in the
# order given), runs each workload on each of them in turn, tears them down. EXTRA: DRBD's
# data-integrity-alg (kind drbdcrc).
phase() {
  local round=$1 mode=$2 p kind name proto extra w; shift 2
  echo "# round $round, $mode: setting up (at ${SECONDS} s)"
  for p in "$@"; do
    IFS=: read -r kind name proto extra <<<"$p"
    ${kind}_up "$proto" "$extra"
  done
  for w in qd32 qd1 seq; do
    for p in "$@"; do
      # Every product of the phase idle (replication drained), not only the one measured.
      local q
      for q in "$@"; do "${q%%:*}_before"; done
      IFS=: read -r kind name proto extra <<<"$p"
      case $w in
        qd32) R[$name#$round,$w]=$(run "${DEV[$kind]}" --rw=randwrite --bs=4k --iodepth=32) ;;
        qd1) R[$name#$round,$w]=$(run "${DEV[$kind]}" --rw=randwrite --bs=4k --iodepth=1) ;;
        seq) R[$name#$round,$w]=$(run "${DEV[$kind]}" --rw=write --bs=1M --iodepth=4) ;;
      esac
      [ -n "${R[$name#$round,$w]}" ] || die "$name round $round $w: no result"
      ${kind}_after
    done
  done
  for p in "$@"; do
    IFS=: read -r kind name proto extra <<<"$p"
    ${kind}_info | sed "s/^/#   $name: /"
    ${kind}_down || die "cannot take $name down: $(dmsetup status 2>&1; cat /proc/drbd)"
  done
  devs_down
  echo "# round $round, $mode: done (at ${SECONDS} s)"
}

echo "# bench-repl: $(head -n 1 /proc/drbd | sed 's/^version:/DRBD/'), drbdsetup $DRBDSETUP," \
     "drbd-utils $(dpkg-query -W -f '${Version}' drbd-utils 2>/dev/null)"
echo "# devices: loop over tmpfs, ${MB} MiB each, fio over the first ${FIO_MB} MiB;" \
     "${RUNTIME} s per workload after a 3 s ramp; $ROUNDS rounds; link: lo, $IP_A -> $IP_B"
names=()
for r in $(seq "$ROUNDS"); do
  # Odd rounds: dm-repl, DRBD, DRBD with crc32c; even rounds: the reverse. Like for like:
  # dm-repl checks a CRC-32C on every frame (both sides compute it); DRBD does so only with a
  # data-integrity-alg, the crc32c pair measured in the same phase as the others.
  if [ $((r % 2)) = 1 ]; then
    phase "$r" async local:local: repl:repl-async:async drbd:drbd-A:A drbdcrc:drbd-A-crc:A:crc32c
    phase "$r" sync repl:repl-sync:sync drbd:drbd-C:C drbdcrc:drbd-C-crc:C:crc32c
  else
    phase "$r" async local:local: drbdcrc:drbd-A-crc:A:crc32c drbd:drbd-A:A repl:repl-async:async
    phase "$r" sync drbdcrc:drbd-C-crc:C:crc32c drbd:drbd-C:C repl:repl-sync:sync
  fi
  names+=("local#$r" "repl-async#$r" "drbd-A#$r" "drbd-A-crc#$r" "repl-sync#$r" "drbd-C#$r" "drbd-C-crc#$r")
done

echo
echo "(p50_us, p99_us: fio total latency; clat_p50/p99: completion latency only)"
printf '%-14s %-18s %8s %8s %8s %8s %11s %11s\n' target workload IOPS p50_us p99_us MB/s clat_p50_us clat_p99_us
for n in "${names[@]}"; do
  for w in qd32 qd1 seq; do
    read -r iops p50 p99 mbps cp50 cp99 <<<"${R[$n,$w]}"
    case $w in qd32) wl="4k randwrite QD32";; qd1) wl="4k randwrite QD1";; seq) wl="1M seq write QD4";; esac
    printf '%-14s %-18s %8s %8s %8s %8s %11s %11s\n' "$n" "$wl" "$iops" "$p50" "$p99" "$mbps" "$cp50" "$cp99"
  done
done
# median TARGET WORKLOAD FIELD(1 iops, 2 p50, 3 p99, 4 MB/s): median and ratio from lib.sh
echo
echo "MEDIAN of $ROUNDS rounds:"
printf '%-12s %12s %12s %12s %12s %12s\n' target qd32_IOPS qd1_IOPS qd1_p50_us qd1_p99_us seq_MB/s
declare -A M
for t in local repl-async drbd-A drbd-A-crc repl-sync drbd-C drbd-C-crc; do
  M[$t,qd32]=$(median "$t" qd32 1); M[$t,qd1]=$(median "$t" qd1 1)
  M[$t,p50]=$(median "$t" qd1 2); M[$t,p99]=$(median "$t" qd1 3); M[$t,seq]=$(median "$t" seq 4)
  printf '%-12s %12s %12s %12s %12s %12s\n' "$t" "${M[$t,qd32]}" "${M[$t,qd1]}" "${M[$t,p50]}" "${M[$t,p99]}" "${M[$t,seq]}"
done
for r in $(seq "$ROUNDS"); do
  line="round $r:"
  for m in async:repl-async:drbd-A sync:repl-sync:drbd-C; do
    IFS=: read -r mode a b <<<"$m"
    read -r aq _ <<<"${R[$a#$r,qd32]}"; read -r bq _ <<<"${R[$b#$r,qd32]}"
    read -r _ _ _ as _ <<<"${R[$a#$r,seq]}"; read -r _ _ _ bs _ <<<"${R[$b#$r,seq]}"
    line+=" $mode repl/drbd qd32 IOPS $(ratio "$aq" "$bq"), seq MB/s $(ratio "$as" "$bs");"
  done
  echo "$line"
done
echo
echo "RATIO mbps-1m-seqwrite-async repl/drbd = $(ratio "${M[repl-async,seq]}" "${M[drbd-A,seq]}")"
echo "RATIO mbps-1m-seqwrite-sync repl/drbd = $(ratio "${M[repl-sync,seq]}" "${M[drbd-C,seq]}")"
echo "RATIO iops-4k-randwrite-qd32-async repl/drbd = $(ratio "${M[repl-async,qd32]}" "${M[drbd-A,qd32]}")"
echo "RATIO iops-4k-randwrite-qd32-sync repl/drbd = $(ratio "${M[repl-sync,qd32]}" "${M[drbd-C,qd32]}")"
echo "RATIO iops-4k-randwrite-qd1-sync repl/drbd = $(ratio "${M[repl-sync,qd1]}" "${M[drbd-C,qd1]}")"
# Against DRBD with data-integrity-alg crc32c (the same per-frame check dm-repl always does).
echo "RATIO mbps-1m-seqwrite-async repl/drbd-crc32c = $(ratio "${M[repl-async,seq]}" "${M[drbd-A-crc,seq]}")"
echo "RATIO mbps-1m-seqwrite-sync repl/drbd-crc32c = $(ratio "${M[repl-sync,seq]}" "${M[drbd-C-crc,seq]}")"
echo "RATIO iops-4k-randwrite-qd32-async repl/drbd-crc32c = $(ratio "${M[repl-async,qd32]}" "${M[drbd-A-crc,qd32]}")"
echo "RATIO iops-4k-randwrite-qd32-sync repl/drbd-crc32c = $(ratio "${M[repl-sync,qd32]}" "${M[drbd-C-crc,qd32]}")"
# Latency ratios: clat of 4k QD1 random writes; lat- is the median (p50), p99- the 99th percentile.
echo "RATIO lat-4k-qd1-async repl/local = $(ratio "${M[repl-async,p50]}" "${M[local,p50]}")"
echo "RATIO p99-4k-qd1-async repl/local = $(ratio "${M[repl-async,p99]}" "${M[local,p99]}")"
echo "RATIO lat-4k-qd1-async drbd/local = $(ratio "${M[drbd-A,p50]}" "${M[local,p50]}")"
echo "RATIO p99-4k-qd1-async drbd/local = $(ratio "${M[drbd-A,p99]}" "${M[local,p99]}")"
echo "RATIO mbps-1m-seqwrite-async repl/local = $(ratio "${M[repl-async,seq]}" "${M[local,seq]}")"
echo "RATIO iops-4k-randwrite-qd32-async repl/local = $(ratio "${M[repl-async,qd32]}" "${M[local,qd32]}")"
