# shellcheck shell=bash
# Helpers for guest tests (sourced). Each check prints one TAP-style line, "ok - NAME" or
# "not ok - NAME" followed by "#"-prefixed diagnostics, or a skip, "ok - NAME # SKIP REASON";
# tests/guestcount.py counts them per file against tests/guest/expected-checks, and fails a
# skip that tests/guest/allowed-skips does not list.
: "${WBREPL_ROOT:?run me through qemu/run-guest.sh}"
set -u

# WBREPL_TIME_SCALE: how many times slower than the normal kernel the kernel under test runs
# (`make test-debug` sets 10: KASAN, lockdep). Checks that bound how long something may take
# scale their limit, and the delays they measure it against, with `scaled`; nothing else does.
TIME_SCALE=${WBREPL_TIME_SCALE:-1}
[[ $TIME_SCALE =~ ^[1-9][0-9]?$ ]] || { echo "WBREPL_TIME_SCALE must be 1..99, not '$TIME_SCALE'"; exit 1; }
# scaled N: N times TIME_SCALE.
scaled() { echo $(($1 * TIME_SCALE)); }

T_PASS=0
T_FAIL=0
T_SKIP=0
T_OUT=$(mktemp)
IMG_DIR=/tmp/wbrepl-img
mkdir -p "$IMG_DIR"

ok() { T_PASS=$((T_PASS + 1)); echo "ok - $*"; }
not_ok() { T_FAIL=$((T_FAIL + 1)); echo "not ok - $*"; }
# skip NAME REASON: a check not done (TAP's SKIP directive). Counted apart; a reason is required.
skip() {
  [ -n "${2:-}" ] || { not_ok "$1 (skipped with no reason)"; return; }
  T_SKIP=$((T_SKIP + 1)); echo "ok - $1 # SKIP $2"
}
diag() { sed 's/^/#   /' | tail -n "${1:-25}"; }

# check NAME CMD...: CMD must succeed.
check() {
  local name=$1; shift
  if "$@" >"$T_OUT" 2>&1; then ok "$name"; else not_ok "$name (exit $?)"; diag <"$T_OUT"; fi
}

# check_fails NAME CMD...: CMD must fail (non-zero exit).
check_fails() {
  local name=$1; shift
  if "$@" >"$T_OUT" 2>&1; then not_ok "$name (unexpectedly succeeded)"; diag <"$T_OUT"; else ok "$name"; fi
}

# check_eq NAME EXPECTED ACTUAL
check_eq() {
  if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1"; printf '#   expected: %s\n#   actual:   %s\n' "$2" "$3"; fi
}

# check_match NAME REGEX TEXT
check_match() {
  if [[ $3 =~ $2 ]]; then ok "$1"; else not_ok "$1"; printf '#   pattern: %s\n#   text:    %s\n' "$2" "$3"; fi
}

# loopdev NAME SIZE_MB [SECTOR_SIZE]: a loop device over a sparse file; prints its path.
loopdev() {
  local f=$IMG_DIR/$1
  rm -f "$f"
  truncate -s "${2}M" "$f"
  if [ -n "${3:-}" ]; then losetup -f --show --sector-size "$3" "$f"; else losetup -f --show "$f"; fi
}

# Kernel log since the last dmesg_mark.
# A unique line written to the kernel log marks the place (line counts shift once the ring
# buffer wraps).
DMESG_MARK=none
dmesg_mark() { DMESG_MARK="wbrepl-test-mark-$$-$RANDOM$RANDOM"; echo "$DMESG_MARK" >/dev/kmsg; }
dmesg_since() { dmesg | sed -n "/$DMESG_MARK/,\$p" | tail -n +2; }

sectors() { blockdev --getsz "$1"; }
devnum() { local d; d=$(stat -L -c '%t %T' "$1"); printf '%d:%d' "0x${d% *}" "0x${d#* }"; }

# fio with data verification; extra arguments are appended.
fio_verify() {
  local dev=$1; shift
  fio --name=verify --filename="$dev" --direct=1 --ioengine=libaio --verify=crc32c \
      --verify_fatal=1 --verify_state_save=0 --randrepeat=0 --output-format=terse "$@" >/dev/null
}

cleanup_dm() {
  dmsetup remove_all --force >/dev/null 2>&1 || true
  losetup -D 2>/dev/null || true
}

finish() {
  echo "# $(basename "$0"): $T_PASS passed, $T_FAIL failed, $T_SKIP skipped"
  rm -f "$T_OUT"
  [ "$T_FAIL" = 0 ]
}

# same_data A B: byte-identical contents, read with O_DIRECT (a block device's page cache does
# not see writes that reach it from a dm device stacked on top, so buffered reads can be stale).
same_data() {
  cmp <(dd if="$1" iflag=direct bs=1M status=none) <(dd if="$2" iflag=direct bs=1M status=none)
}

# field DEV KEY: the value after KEY in DEV's status.
field() { dmsetup status "$1" | sed -n "s/.* $2 \([^ ]*\).*/\1/p"; }

# wait_status DEV REGEX [SECONDS]: until DEV's status matches (default 30 s); prints it if not.
wait_status() {
  local i
  for i in $(seq $((${3:-30} * 5))); do
    [[ $(dmsetup status "$1") =~ $2 ]] && return 0
    sleep 0.2
  done
  dmsetup status "$1"
  return 1
}
# A dm-repl primary connected; and in sync with its secondary: connected, nothing in flight,
# nothing dirty, no resync.
connected() { wait_status "$1" ' primary connected ' "${2:-30}"; }
synced() { wait_status "$1" ' primary connected .* inflight 0 inflight_bytes 0 lag_ms 0 dirty_kb 0 resync - peer_data consistent ' "${2:-60}"; }

# --- two nodes in one guest ------------------------------------------------------------------
# Node A and node B are network namespaces joined by a veth pair (10.99.0.1 <-> 10.99.0.2).
# dm-repl opens its sockets in the namespace of the process that loads its table, so
# `node_exec B dmsetup create ...` builds a target that lives on node B's network. Link faults
# are tc qdiscs on either end (node_link A "delay 50ms", "loss 100%", ...).
NODE_A_IP=10.99.0.1
NODE_B_IP=10.99.0.2
nodes_up() {
  nodes_down
  ip netns add wbrepl-a && ip netns add wbrepl-b &&
  ip link add veth-a netns wbrepl-a type veth peer name veth-b netns wbrepl-b &&
  ip -n wbrepl-a addr add $NODE_A_IP/24 dev veth-a && ip -n wbrepl-b addr add $NODE_B_IP/24 dev veth-b &&
  ip -n wbrepl-a link set veth-a up && ip -n wbrepl-b link set veth-b up &&
  ip -n wbrepl-a link set lo up && ip -n wbrepl-b link set lo up
}
nodes_down() { ip netns del wbrepl-a 2>/dev/null; ip netns del wbrepl-b 2>/dev/null; true; }
node_exec() { local n=$1; shift; ip netns exec "wbrepl-${n,,}" "$@"; }
# node_link A|B "netem args" (empty: remove the fault)
node_link() {
  local n=${1,,}
  tc -n "wbrepl-$n" qdisc del dev "veth-$n" root 2>/dev/null
  [ -z "${2:-}" ] || tc -n "wbrepl-$n" qdisc add dev "veth-$n" root netem $2
}

node_ip() { case ${1,,} in a) echo "$NODE_A_IP";; b) echo "$NODE_B_IP";; esac; }
node_other_ip() { case ${1,,} in a) echo "$NODE_B_IP";; b) echo "$NODE_A_IP";; esac; }

# node_listen NODE PORT OUT [SECONDS]: in the background, accept one TCP connection on NODE's
# address; what the peer sends goes to OUT and the peer's address to OUT.peer (neither is
# written if nobody connects within SECONDS, default 30). Returns once the port is listening.
node_listen() {
  rm -f "$3" "$3.peer"
  node_exec "$1" python3 -c "
import socket
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('$(node_ip "$1")', $2)); s.listen(1); s.settimeout(${4:-30})
try: c,a=s.accept()
except socket.timeout: raise SystemExit(0)
c.settimeout($(scaled 30)); parts=[]
while True:
    b=c.recv(1<<16)
    if not b: break
    parts.append(b)
open('$3','wb').write(b''.join(parts)); open('$3.peer','w').write(a[0])" &
  local i
  for i in $(seq 100); do
    node_exec "$1" ss -Hltn "sport = :$2" | grep -q . && return 0
    sleep 0.1
  done
  return 1
}

# node_connect NODE PORT [FILE [SECONDS]]: connect from NODE to the other node's PORT (giving up
# after SECONDS, default 10) and send FILE (within 30 s, scaled); prints connected, timeout or
# refused, and succeeds only when connected.
node_connect() {
  node_exec "$1" python3 -c "
import socket,sys
try: c=socket.create_connection(('$(node_other_ip "$1")', $2), timeout=${4:-10})
except socket.timeout: print('timeout'); sys.exit(1)
except ConnectionRefusedError: print('refused'); sys.exit(1)
c.settimeout($(scaled 30))
if '${3:-}': c.sendall(open('${3:-}','rb').read())
c.close(); print('connected')"
}

# dm_remove DEV...: `dmsetup remove` that waits out udev. Closing a device opened for writing
# makes udev probe it (blkid), which holds it open for a moment: an immediate remove can fail
# with EBUSY. Settle udev first, and let dmsetup retry while the device is still busy.
dm_remove() {
  udevadm settle 2>/dev/null
  dmsetup remove --retry "$@"
}
