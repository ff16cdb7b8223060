#!/usr/bin/env bash
# dm-repl: regression tests for the defects of issue 13's review that protocol 2 fixes, each of
# which failed on the code before (docs/testing.md names them):
#   - item 11: the handshake proofs and keys cover both HELLO frames whole: a man in the middle
#     who strips HELLO_INCONSISTENT makes the handshake fail (before, the primary connected and
#     never resynced the interrupted resync);
#   - item 12: a marker that a resyncing secondary does not record is acknowledged as such
#     (ACK_MARKER_IGNORED): the primary does not count it (`marker_ignored`), and
#     `wbrepl checkpoint --wait` fails and says why (before, it reported success);
#   - item 9: the primary asks for stable pages (stable_writes);
#   - item 6: after a resync interrupted before the secondary saw it begin, a reconnection
#     sends no write before a resync frame, even with writes queued when it is installed;
#   - item 13: peers holding handshakes open do not keep a real primary from connecting.
. "$(dirname "$0")/lib.sh"
here=$(cd "$(dirname "$0")" && pwd)
PEER=$here/replpeer.py
W=$WBREPL_ROOT/target/release/wbrepl
MB=32
PORT=7900

check "review: nodes up" nodes_up
keyctl add user wbrepl-review-key "correct horse battery staple" @us >/dev/null

# inconsistent_meta DEV SECTORS: a secondary's meta_dev recording an interrupted resync
# (SecSuper: magic, version 1, flags 0 = inconsistent, sectors, CRC-32C of bytes 0..24).
inconsistent_meta() {
  python3 - "$here" "$1" "$2" <<'EOF'
import os, struct, sys
sys.path.insert(0, sys.argv[1])
from replfuzz import crc32c
b = b"WBRPSMT1" + struct.pack("<IIQ", 1, 0, int(sys.argv[3]))
blk = b + struct.pack("<I", crc32c(b)) + bytes(4096 - 28)
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_DIRECT)
import mmap
m = mmap.mmap(-1, 4096)
m.write(blk)
os.pwrite(fd, m, 0)
os.close(fd)
EOF
}

# --- item 11: a man in the middle strips HELLO_INCONSISTENT ---------------------------------------
PD=$(loopdev mm-p "$MB"); SD=$(loopdev mm-s "$MB"); SM=$(loopdev mm-m 1); S=$(sectors "$PD")
PORT=$((PORT + 1)); MITM_PORT=$((PORT + 50))
check "mitm: a secondary's meta_dev saying a resync was interrupted" inconsistent_meta "$SM" "$S"
check "mitm: secondary (auth)" node_exec B dmsetup create mm-s --table "0 $S repl secondary $SD $NODE_B_IP:$PORT 4 meta_dev $SM auth wbrepl-review-key"
check_match "mitm: it is inconsistent (it will say so in its HELLO)" ' data inconsistent ' "$(dmsetup status mm-s)"
node_exec B python3 "$PEER" mitm "$NODE_B_IP" "$MITM_PORT" "$NODE_B_IP" "$PORT" 14 >"$IMG_DIR/mitm.out" 2>&1 &
MITM=$!
sleep 0.5
dmesg_mark
check "mitm: primary (auth) through the man in the middle" node_exec A dmsetup create mm-p --table "0 $S repl primary $PD $NODE_B_IP:$MITM_PORT 2 auth wbrepl-review-key"
check_fails "mitm: the primary never connects" wait_status mm-p ' primary connected ' 10
wait $MITM
check_match "mitm: the attack was made (the secondary's HELLO was changed)" 'mitm: [1-9][0-9]* connections, [1-9][0-9]* HELLOs changed' "$(cat "$IMG_DIR/mitm.out")"
check_match "mitm: ...and refused by the proofs (the secondary's log)" 'refused connection from [0-9.:]+: authentication failed' "$(dmesg_since)"
check "mitm: primary removed" dm_remove mm-p
dmesg_mark
check "mitm: the same primary, straight to the secondary" node_exec A dmsetup create mm-p --table "0 $S repl primary $PD $NODE_B_IP:$PORT 2 auth wbrepl-review-key"
check "mitm: ...connects and resyncs the interrupted resync" synced mm-p 120
check_match "mitm: ...because the secondary reported it" 'reports an interrupted resync' "$(dmesg_since)"
check_match "mitm: the secondary is consistent again" ' data consistent ' "$(dmsetup status mm-s)"
check "mitm: identical" same_data "$PD" "$SD"
# Item 9: a write's data is read twice by the primary (the frame sent, the local write), so it
# asks for stable pages: the page cache does not change a page while its write is in flight.
dmn=$(basename "$(readlink -f /dev/mapper/mm-p)")
check_eq "stable pages: the primary's queue has stable_writes" 1 "$(cat "/sys/block/$dmn/queue/stable_writes")"
check "mitm: remove" dm_remove mm-p mm-s

# A protocol-1 peer is refused with a clear log line.
PORT=$((PORT + 1))
check "version: a secondary" node_exec B dmsetup create v1-s --table "0 $S repl secondary $SD $NODE_B_IP:$PORT 0"
dmesg_mark
check "version: a protocol-1 HELLO" node_exec A python3 -c "
import socket, struct, sys
sys.path.insert(0, '$here')
from replfuzz import frame, hello, HELLO
import replfuzz
replfuzz.VERSION = 1
s = socket.create_connection(('$NODE_B_IP', $PORT), timeout=5)
s.sendall(frame(HELLO, 0, 0, hello($S)))
s.settimeout(5)
sys.exit(0 if s.recv(100) == b'' else 1)"
check_match "version: ...refused, saying why" 'refused connection from [0-9.:]+: unsupported protocol version \(this node speaks protocol 2' "$(dmesg_since)"
check "version: remove" dm_remove v1-s

# --- item 12: a marker the resyncing secondary does not record --------------------------------------
# The secondary's side: a stand-in primary sends a resync write (the secondary is then
# inconsistent), then a marker; its acknowledgement must say "ignored".
PORT=$((PORT + 1))
check "ignored: secondary" node_exec B dmsetup create ig-s --table "0 $S repl secondary $SD $NODE_B_IP:$PORT 0"
dmesg_mark
check "ignored: the marker's ACK carries ACK_MARKER_IGNORED" node_exec A python3 "$PEER" fake-primary "$NODE_B_IP" "$PORT" "$S"
st=$(dmsetup status ig-s)
check_match "ignored: the secondary counts it, records no marker, stays inconsistent" ' data inconsistent .* markers 0 marker - .* markers_ignored 1$' "$st"
check_match "ignored: ...and logs it" 'marker 77 ignored: a resync is under way' "$(dmesg_since)"
check "ignored: remove" dm_remove ig-s
# The primary's side, and the CLI: a stand-in secondary acknowledges every frame, but the marker
# as ignored. `wbrepl checkpoint --wait` must fail and say why; marker_acked stays unset.
PORT=$((PORT + 1))
node_exec B python3 "$PEER" fake-secondary "$NODE_B_IP" "$PORT" "$S" 30 >"$IMG_DIR/fake-sec.out" 2>&1 &
FAKE=$!
sleep 0.5
check "ignored: primary" node_exec A dmsetup create ig-p --table "0 $S repl primary $PD $NODE_B_IP:$PORT 0"
check "ignored: connected to the stand-in secondary" connected ig-p
check "ignored: writes are acknowledged as usual" dd if=/dev/urandom of=/dev/mapper/ig-p bs=64k count=4 oflag=direct status=none
dmesg_mark
out=$("$W" checkpoint ig-p --label ignored-1 --wait --timeout 20s 2>&1); rc=$?
check_eq "ignored: wbrepl checkpoint --wait fails" 1 "$rc"
check_match "ignored: ...saying the secondary did not record the marker" 'marker [0-9]+ was written, but the secondary did not record it: its device was not a consistent image' "$out"
st=$(dmsetup status ig-p)
check_match "ignored: the primary shows it as ignored, not acknowledged" ' marker_acked - markers_refused 0 marker_ignored [0-9]+$' "$st"
check_match "ignored: ...and logs it" 'did not record marker [0-9]+: its device is not a consistent image' "$(dmesg_since)"
check "ignored: writes still replicate" dd if=/dev/urandom of=/dev/mapper/ig-p bs=64k count=4 seek=8 oflag=direct status=none
check "ignored: remove the primary" dm_remove ig-p
wait $FAKE
check_match "ignored: the stand-in got the writes and one marker" 'frames by type .*\(6, 1\)' "$(cat "$IMG_DIR/fake-sec.out")"

# --- item 6: a resync interrupted before the secondary saw it begin ---------------------------------
# The link (tests/guest/replpeer.py cut) is cut under the primary, writes make regions dirty,
# then the reconnection is cut right as the first RESYNC_WRITE goes out (the secondary never
# applies it, so it stays a consistent image and says so). On the next connection, new writes
# must not reach the secondary before a resync frame: it would apply them on a device that
# calls itself consistent but lacks earlier acknowledged writes. (Before the fix the primary
# kept its stale "resyncing" flag and sent writes first.)
# The bug needs writes queued at the primary when the next connection is installed; an idle
# sender resyncs first anyway. So the sender is kept busy across the reconnection: the primary's
# data device is a dm-linear device, suspended once the cut link has stalled the sender (the
# proxy reads nothing after the first RESYNC_WRITE until told to drain); once drained, the
# sender's next resync step waits for its local writes, which wait for the resume, while fio's
# writes queue up behind it. The proxy closes that connection when the primary has gone quiet,
# the primary reconnects, and only then is the data device resumed: the sender comes back to a
# new connection with writes queued.
PD=$(loopdev st-p "$MB"); SD=$(loopdev st-s "$MB"); S=$(sectors "$PD")
PORT=$((PORT + 1)); CUT_PORT=$((PORT + 50))
CUT_DIR=$IMG_DIR/cut; rm -rf "$CUT_DIR"; mkdir -p "$CUT_DIR"
check "stale: the primary's data device, dm-linear (to suspend it)" dmsetup create st-pd --table "0 $S linear $PD 0"
check "stale: secondary" node_exec B dmsetup create st-s --table "0 $S repl secondary $SD $NODE_B_IP:$PORT 0"
node_exec B python3 "$PEER" cut "$NODE_B_IP" "$CUT_PORT" "$NODE_B_IP" "$PORT" 150 "$CUT_DIR" >"$IMG_DIR/cut.out" 2>&1 &
CUT=$!
sleep 0.5
# A window larger than the device: the sender blocks on the link or on its data device, never on
# the window.
check "stale: primary, through the link to cut" node_exec A dmsetup create st-p --table "0 $S repl primary /dev/mapper/st-pd $NODE_B_IP:$CUT_PORT 2 max_inflight_kb 262144"
check "stale: connected" connected st-p
check "stale: replicate 2 MiB" dd if=/dev/urandom of=/dev/mapper/st-p bs=1M count=2 oflag=direct status=none
check "stale: in sync" synced st-p
touch "$CUT_DIR/cut"
check "stale: the link is cut" wait_status st-p ' primary connecting ' 20
check "stale: 2 MiB written meanwhile" dd if=/dev/urandom of=/dev/mapper/st-p bs=1M count=2 seek=8 oflag=direct status=none
# Every region dirty: the resync outlasts what the TCP buffers take in before the sender blocks.
check "stale: a full resync asked for" dmsetup message st-p 0 resync
check_match "stale: dirty regions" '^[1-9][0-9]*$' "$(field st-p dirty_kb)"
# A steady stream of writes (always some queued at the primary) across the next two
# connections, until 3 s into the third one (at most 90 s).
fio --name=stream --filename=/dev/mapper/st-p --rw=randwrite --bs=4k --iodepth=32 --ioengine=libaio \
  --direct=1 --offset=16M --size=8M --time_based --runtime=90 --output=/dev/null &
WR=$!
touch "$CUT_DIR/go"
wait_file() { local i; for i in $(seq $(($2 * 10))); do [ -e "$1" ] && return 0; sleep 0.1; done; return 1; }
check "stale: the reconnection stalls at its first resync frame" wait_file "$CUT_DIR/stalled" 30
sleep 1
check "stale: the primary's data device suspended (its writes wait)" dmsetup suspend st-pd
touch "$CUT_DIR/drain"
check "stale: the primary went quiet and the proxy closed the connection" wait_file "$CUT_DIR/closed" 20
check "stale: the primary reconnects (its sender still waits for its data device)" wait_file "$CUT_DIR/recording" 30
check "stale: ...connected" connected st-p 10
check "stale: the data device resumed" dmsetup resume st-pd
sleep 3
kill -INT $WR 2>/dev/null; wait $WR
check "stale: in sync at last" synced st-p 90
check_match "stale: the secondary is consistent" ' data consistent ' "$(dmsetup status st-s)"
check "stale: identical" same_data "$PD" "$SD"
check "stale: remove" dm_remove st-p st-s st-pd
touch "$CUT_DIR/done"; wait $CUT
out=$(cat "$IMG_DIR/cut.out")
check_match "stale: the sender was blocked (the link stalled, drained, then quiet)" 'cut: stalled at the first RESYNC_WRITE; [0-9]+ bytes drained, then quiet' "$out"
check_match "stale: the reconnection was recorded ($out)" 'cut: reconnection: [0-9]+ WRITE frames before the first RESYNC_WRITE \(index [0-9]+ of [1-9][0-9]* frames\)' "$out"
check_match "stale: writes flowed on the reconnection" 'index [0-9]+ of ([2-9][0-9]|[1-9][0-9]{2,}) frames' "$out"
check_match "stale: ...and none reached the secondary before a resync frame" 'cut: reconnection: 0 WRITE frames before' "$out"

# --- item 13: peers holding handshakes open do not keep a real primary out -------------------------
# Three peers connect and send nothing, again and again (each holds a handshake until the
# secondary's 5 s deadline). Before, the secondary ran one handshake at a time: a real primary
# waited behind them past its own handshake deadline, again and again. Now several run at once.
PD=$(loopdev hs-p "$MB"); SD=$(loopdev hs-s "$MB"); S=$(sectors "$PD")
PORT=$((PORT + 1))
check "handshakes: secondary" node_exec B dmsetup create hs-s --table "0 $S repl secondary $SD $NODE_B_IP:$PORT 0"
node_exec A python3 - "$NODE_B_IP" "$PORT" 25 >"$IMG_DIR/holders.out" 2>&1 <<'EOF' &
import socket, sys, threading, time
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + secs
held = []
def hold():
    while time.monotonic() < end:
        try:
            s = socket.create_connection((host, port), timeout=2)
            held.append(1)
            s.settimeout(60)  # kept open, queued or not, until the secondary drops it
            s.recv(1)  # nothing sent: the secondary gives up at its handshake deadline
            s.close()
        except OSError:
            time.sleep(0.05)
ts = [threading.Thread(target=hold) for _ in range(3)]
for t in ts:
    t.start()
for t in ts:
    t.join()
print("holders: %d connections held open" % len(held))
EOF
HOLD=$!
sleep 2
check "handshakes: a real primary, while 3 peers hold handshakes open" node_exec A dmsetup create hs-p --table "0 $S repl primary $PD $NODE_B_IP:$PORT 0"
check "handshakes: ...connects within 10 s" connected hs-p 10
check "handshakes: ...and replicates" dd if=/dev/urandom of=/dev/mapper/hs-p bs=64k count=16 oflag=direct status=none
check "handshakes: in sync" synced hs-p 30
wait $HOLD
check_match "handshakes: the peers held connections open all along" 'holders: ([5-9]|[1-9][0-9]+) connections held open' "$(cat "$IMG_DIR/holders.out")"
check "handshakes: identical" same_data "$PD" "$SD"
check "handshakes: remove" dm_remove hs-p hs-s

# --- a long freeze: the primary goes ahead, its writes do not stall --------------------------------
# A secondary frozen at a marker reads nothing more from its socket. Once the TCP buffers fill,
# the primary must treat that like a full window (go ahead after 10 s: writes local, regions
# dirty, the link kept), not block its sender (and every write behind it) until the send times
# out and the link drops, again and again until the thaw (found 2026-12-07: a 1 MiB write had
# not finished after 25 s, 8 reconnections in 95 s; docs/repl.md "Markers").
# The second case sets net.ipv4.tcp_notsent_lowat on the primary's node (a common tuning): a send
# then also waits while the unsent bytes exceed it, whatever the free space, unless the socket
# turns it off (before that, the primary blocked again under this setting).
freeze_case() {
  local d=fz$1 t=$2 lowat=$3 c0 start el
  PD=$(loopdev "$d-p" 64); SD=$(loopdev "$d-s" 64); S=$(sectors "$PD"); PORT=$((PORT + 1))
  check "freeze$t: node A's tcp_notsent_lowat $lowat" node_exec A sysctl -qw net.ipv4.tcp_notsent_lowat="$lowat"
  check "freeze$t: secondary, freeze_on_marker, freeze_timeout 120 s" node_exec B dmsetup create "$d-s" --table \
    "0 $S repl secondary $SD $NODE_B_IP:$PORT 3 freeze_on_marker freeze_timeout 120000"
  check "freeze$t: primary (async)" node_exec A dmsetup create "$d-p" --table "0 $S repl primary $PD $NODE_B_IP:$PORT 2 protocol async"
  check "freeze$t: connected" connected "$d-p"
  check "freeze$t: a marker" python3 "$here/replmarker.py" "/dev/mapper/$d-p" $((S - 8)) 7 freeze
  check "freeze$t: the secondary froze" wait_status "$d-s" ' frozen 7 ' 30
  c0=$(field "$d-p" connects)
  dmesg_mark
  start=$(date +%s)
  check "freeze$t: 16 MiB written after the marker finish within 30 s" timeout 30 dd if=/dev/urandom of="/dev/mapper/$d-p" bs=1M count=16 seek=1 oflag=direct status=none
  el=$(($(date +%s) - start))
  check_match "freeze$t: ...the primary went ahead (congested), in ${el} s" ' congested [1-9]' "$(dmsetup status "$d-p")"
  check_match "freeze$t: ...because its send buffer was full (not the window)" "$NODE_B_IP:$PORT has not acknowledged for 10 s with the send buffer full: going ahead" "$(dmesg_since)"
  sleep 15
  check_match "freeze$t: ...and kept the link (no reconnection) 15 s later" " primary (connected|ahead) .* connects ${c0:-x} " "$(dmsetup status "$d-p")"
  check "freeze$t: thaw" dmsetup message "$d-s" 0 thaw 7
  check "freeze$t: in sync after the thaw" synced "$d-p" 120
  check "freeze$t: identical" same_data "$PD" "$SD"
  check "freeze$t: remove" dm_remove "$d-p" "$d-s"
}
freeze_case "" "" 4294967295
freeze_case l " (notsent_lowat)" 16384
node_exec A sysctl -qw net.ipv4.tcp_notsent_lowat=4294967295

# --- a slow disk and a hung disk at the secondary -----------------------------------------------
# The three cases below run side by side, each on its own pair (they mostly wait: 15 s per
# write, the 30 + 12 s bound), and are checked one after the other.
# pair_over LABEL P PROTOCOL WHAT TABLE: on a new PORT, loop devices P-p and P-s, the secondary's
# disk P-d with dm TABLE over it ("{SD}" stands for P-s; WHAT names it in the check), a secondary
# on P-d and a primary in PROTOCOL over P-p, connected. P_PD[P], P_SD[P], P_PORT[P]: its loop
# devices and port.
declare -A P_PD P_SD P_PORT
pair_over() {
  local l=$1 p=$2 proto=$3 what=$4 table=$5 pd sd s
  PORT=$((PORT + 1))
  pd=$(loopdev "$p-p" 16); sd=$(loopdev "$p-s" 16); s=$(sectors "$pd")
  P_PD[$p]=$pd; P_SD[$p]=$sd; P_PORT[$p]=$PORT
  check "$l: the secondary's disk ($what)" dmsetup create "$p-d" --table "0 $s ${table//\{SD\}/$sd}"
  check "$l: secondary" node_exec B dmsetup create "$p-s" --table "0 $s repl secondary /dev/mapper/$p-d $NODE_B_IP:$PORT 0"
  check "$l: primary ($proto)" node_exec A dmsetup create "$p-p" --table "0 $s repl primary $pd $NODE_B_IP:$PORT 2 protocol $proto"
  check "$l: connected" connected "$p-p"
}
# A slow disk: 15 s per write. The secondary answered nothing while its applier waited for the
# disk (only a frozen one sent keepalives), so the primary took the link for dead after 12 s,
# reconnected and resynced, every 12 s, the new session stuck behind the old one (found on the
# debug kernel, where 90-checkpoint's secondary stalled after a thin snapshot; stop 24).
pair_over "slow disk" sd async "dm-delay: 15 s per write" "delay {SD} 0 0 {SD} 0 15000"
# A hung disk: the keepalive must not hide a disk that completes nothing. With it alone, a sync
# primary whose secondary's disk hangs waited for that disk forever (its link never went
# silent). A secondary whose writes in flight have not advanced for 30 s stops its keepalives,
# so the primary gives the link up 12 s later (as DRBD's ko-count bounds a peer's stuck write:
# 7 x 6 s by default) and its writes complete, their regions dirty, resynced once the disk is
# back. The disk is a dm-linear, suspended (its I/O queues); the I/O to the primary runs in the
# background (waiting for a bio it sleeps uninterruptibly: `timeout` could not end it). Twice:
# hw, a write (it waits in the secondary's ring of writes in flight); hf, a flush alone (the
# primary sends a flush barrier, which the secondary's applier flushes in line, not in the ring:
# its own synchronous I/O counts as well).
pair_over "hung disk, a 64 KiB write" hw sync "dm-linear, suspended below" "linear {SD} 0"
pair_over "hung disk, a flush alone" hf sync "dm-linear, suspended below" "linear {SD} 0"
# hung_io P CMD...: runs CMD and notes when it ended in $IMG_DIR/P.end (so that the time is
# right however late it is looked at); returns CMD's status.
hung_io() { local p=$1 rc; shift; "$@"; rc=$?; date +%s >"$IMG_DIR/$p.end"; return $rc; }
declare -A H_PID
check "hung disk: both disks hang (suspended: their I/O queues)" eval 'dmsetup suspend hw-d && dmsetup suspend hf-d'
dmesg_mark
rm -f "$IMG_DIR/hw.end" "$IMG_DIR/hf.end"
hung_start=$(date +%s)
hung_io hw dd if=/dev/urandom of=/dev/mapper/hw-p bs=64k count=1 oflag=direct status=none &
H_PID[hw]=$!
hung_io hf python3 -c 'import os; os.fsync(os.open("/dev/mapper/hf-p", os.O_WRONLY))' &
H_PID[hf]=$!

# One write: in async mode each write completed before the next is issued starts an epoch, and
# the secondary applies epochs one after the other (16 writes would take 16 times 15 s).
check "slow disk: 1 MiB written (one write)" dd if=/dev/urandom of=/dev/mapper/sd-p bs=1M count=1 oflag=direct status=none
sleep 20
check_match "slow disk: 20 s later the link is kept (connects 1)" ' primary connected .* connects 1 ' "$(dmsetup status sd-p)"
check_fails "slow disk: ...and the primary never lost it" grep -q "connection to $NODE_B_IP:${P_PORT[sd]} lost" <<<"$(dmesg_since)"
check_fails "slow disk: ...and the secondary never stopped its keepalives" grep -q "repl $NODE_B_IP:${P_PORT[sd]}: .* has waited" <<<"$(dmesg_since)"
check "slow disk: in sync once the writes land" synced sd-p 60
check "slow disk: identical" same_data "${P_PD[sd]}" "${P_SD[sd]}"
check "slow disk: remove" dm_remove sd-p sd-s sd-d

# Each hung I/O must end once its primary gives the link up (30 + 12 s), both sides logging why;
# then the disk comes back, the I/O succeeded, and the pair is in sync and identical.
until [ -e "$IMG_DIR/hw.end" ] && [ -e "$IMG_DIR/hf.end" ] || [ $(($(date +%s) - hung_start)) -ge "$(scaled 70)" ]; do
  sleep 1
done
for p in hw hf; do
  what="a 64 KiB write"; [ $p = hf ] && what="a flush alone"
  end=$(cat "$IMG_DIR/$p.end" 2>/dev/null)
  el=$((${end:-$(date +%s)} - hung_start))
  check "hung disk, $what: completes once the primary gives the link up (${el} s)" test -n "$end" -a "$el" -le "$(scaled 70)"
  check "hung disk, $what: ...after the stall limit and the dead-link limit (30 + 12 s)" test "$el" -ge 38
  check "hung disk, $what: the secondary said why its keepalives stopped" \
    grep -q "repl $NODE_B_IP:${P_PORT[$p]}: a write or flush to the data or metadata device has waited 30 s" <<<"$(dmesg_since)"
  check "hung disk, $what: the primary lost the link" grep -q "connection to $NODE_B_IP:${P_PORT[$p]} lost" <<<"$(dmesg_since)"
done
for p in hw hf; do
  what="a 64 KiB write"; [ $p = hf ] && what="a flush alone"
  check "hung disk, $what: the disk comes back" dmsetup resume $p-d
  wait "${H_PID[$p]}"
  check_eq "hung disk, $what: it succeeded" 0 $?
  check "hung disk, $what: in sync after a resync" synced $p-p 90
  check "hung disk, $what: identical" same_data "${P_PD[$p]}" "${P_SD[$p]}"
  check "hung disk, $what: remove" dm_remove $p-p $p-s $p-d
done

nodes_down
finish
