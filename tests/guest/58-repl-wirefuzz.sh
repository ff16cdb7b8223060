#!/usr/bin/env bash
# dm-repl: structure-aware fuzzing of the wire protocol, both receive paths (issue 14;
# tests/guest/wirefuzz.py says what is sent and what is checked, docs/testing.md too).
#   - secondary: a stand-in primary (node A) against six secondaries (node B): without auth, with
#     auth (HMAC proofs and per-direction session keys computed in Python), each once with
#     freeze_on_marker; one connection per case: the handshake (fuzzed in some), valid frames,
#     then one fuzzed frame with a valid CRC (and MAC), refused with the predicted kernel-log
#     reason and never acknowledged, or accepted; every 100 cases and at the end each target's
#     status and whole data device must equal the model's (no refused frame's data on the disk);
#   - primary: a stand-in secondary (node B, one port per primary) for 40 primaries (node A;
#     half with auth, half sync): fuzzed HELLOs and AUTHs, and sessions in which the primary's
#     resync, a write from above or a marker is acknowledged in part before one fuzzed frame
#     (ACKs of frames never sent, ACK_MARKER_IGNORED on a non-marker, PONGs, frames a secondary
#     never sends, ...); writes from above must all succeed; at the end each primary's counters
#     (connects, acked, markers) must equal the model's.
# Both run at once. WBREPL_WIREFUZZ_CASES cases per receive path (default 500; make test-long:
# 20 000), WBREPL_WIREFUZZ_SEED repeats a run (the seed is printed).
. "$(dirname "$0")/lib.sh"
here=$(cd "$(dirname "$0")" && pwd)
N=${WBREPL_WIREFUZZ_CASES:-500}
SEED=${WBREPL_WIREFUZZ_SEED:-$(date +%s)}
NSEC=6
NPRI=${WBREPL_WIREFUZZ_PRIMARIES:-40}
SECRET="wirefuzz shared secret"
echo "# wirefuzz seed $SEED, $N cases per receive path"

check "wirefuzz: nodes up" nodes_up
keyctl add user wbrepl-wirefuzz-key "$SECRET" @us >/dev/null

# --- the secondaries (node B) ---------------------------------------------------------------
conf=$IMG_DIR/wf-secondaries.json
mksec() {
  local i targets=() dev s port opts key freeze
  for i in $(seq 0 $((NSEC - 1))); do
    dev=$(loopdev "wf-s$i" 8) || return 1
    s=$(sectors "$dev"); port=$((7990 + i))
    key=null; freeze=false; opts=()
    [ "$i" -ge $((NSEC / 2)) ] && { opts+=(auth wbrepl-wirefuzz-key); key="\"$SECRET\""; }
    [ $((i % (NSEC / 2))) = $((NSEC / 2 - 1)) ] && { opts+=(freeze_on_marker); freeze=true; }
    node_exec B dmsetup create "wf-s$i" --table "0 $s repl secondary $dev $NODE_B_IP:$port ${#opts[@]} ${opts[*]}" || return 1
    targets+=("{\"name\": \"wf-s$i\", \"host\": \"$NODE_B_IP\", \"port\": $port, \"sectors\": $s, \"device\": \"$dev\", \"key\": $key, \"freeze\": $freeze}")
  done
  (IFS=,; echo "{\"targets\": [${targets[*]}]}") >"$conf"
}
check "wirefuzz: $NSEC secondaries (3 with auth, 2 with freeze_on_marker)" mksec

# --- the primaries (node A), each connecting to its own port of the stand-in secondary ---------
pconf=$IMG_DIR/wf-primaries.json
mkpconf() {
  local i targets=() key sync
  for i in $(seq 0 $((NPRI - 1))); do
    key=null; sync=false
    [ $((i % 2)) = 1 ] && key="\"$SECRET\""
    [ $((i % 4)) -ge 2 ] && sync=true
    targets+=("{\"name\": \"wf-p$i\", \"host\": \"$NODE_B_IP\", \"port\": $((8100 + i)), \"sectors\": 256, \"device\": \"/dev/mapper/wf-p$i\", \"key\": $key, \"sync\": $sync}")
  done
  (IFS=,; echo "{\"targets\": [${targets[*]}]}") >"$pconf"
}
mkpconf
rm -f "$IMG_DIR/wf-ready"
node_exec B python3 "$here/wirefuzz.py" primary "$pconf" --cases "$N" --seed "$SEED" --ready "$IMG_DIR/wf-ready" \
  >"$IMG_DIR/wf-primary.out" 2>&1 &
PFUZZ=$!
mkpri() {
  local i dev opts
  for i in $(seq 50); do [ -e "$IMG_DIR/wf-ready" ] && break; sleep 0.2; done
  [ -e "$IMG_DIR/wf-ready" ] || { cat "$IMG_DIR/wf-primary.out"; return 1; }
  for i in $(seq 0 $((NPRI - 1))); do
    rm -f "$IMG_DIR/wf-p$i"; truncate -s 128K "$IMG_DIR/wf-p$i"
    dev=$(losetup -f --show "$IMG_DIR/wf-p$i") || return 1
    opts=(protocol async)
    [ $((i % 4)) -ge 2 ] && opts=(protocol sync)
    [ $((i % 2)) = 1 ] && opts+=(auth wbrepl-wirefuzz-key)
    node_exec A dmsetup create "wf-p$i" --table "0 256 repl primary $dev $NODE_B_IP:$((8100 + i)) ${#opts[@]} ${opts[*]}" || return 1
  done
}
# Created while the secondaries are fuzzed (dmsetup create takes seconds under TCG); each
# primary's cases begin as it connects.
(mkpri >"$IMG_DIR/wf-mkpri.out" 2>&1; echo $? >"$IMG_DIR/wf-mkpri.rc") &
MKPRI=$!

# --- both fuzzers at once ---------------------------------------------------------------------
t0=$(date +%s)
node_exec A python3 "$here/wirefuzz.py" secondary "$conf" --cases "$N" --seed "$SEED" >"$IMG_DIR/wf-secondary.out" 2>&1
src=$?
t1=$(date +%s)
wait $MKPRI
check_eq "wirefuzz: $NPRI primaries (half with auth, half sync) connecting to the stand-in secondary" 0 \
  "$(cat "$IMG_DIR/wf-mkpri.rc")$(grep -v '^$' "$IMG_DIR/wf-mkpri.out" | head -n 3)"
wait $PFUZZ
prc=$?
t2=$(date +%s)
show() { grep -v '^FAIL' "$1" | sed 's/^/#   /'; grep '^FAIL' "$1" | head -n 10 | cut -c1-600; }
echo "# secondary receive path ($((t1 - t0)) s):"; show "$IMG_DIR/wf-secondary.out"
echo "# primary receive path ($((t2 - t0)) s):"; show "$IMG_DIR/wf-primary.out"
check_eq "wirefuzz: secondaries: $N cases (seed $SEED), each as the model predicts" 0 "$src"
check_match "wirefuzz: ...all $N run" "wirefuzz secondary: seed $SEED: $N cases" "$(cat "$IMG_DIR/wf-secondary.out")"
check_eq "wirefuzz: primaries: $N cases (seed $SEED), each as the model predicts" 0 "$prc"
check_match "wirefuzz: ...all $N run" "wirefuzz primary: seed $SEED: $N cases" "$(cat "$IMG_DIR/wf-primary.out")"
check_fails "wirefuzz: the secondaries' log lines were not rate-limited away" bash -c "dmesg | grep -q 'similar messages suppressed'"

# --- afterwards: a fuzzed secondary still serves a real primary ---------------------------------
for i in $(seq 0 $((NPRI - 1))); do dmsetup remove "wf-p$i" 2>/dev/null; done
real_pair() {
  local s
  PD=$(loopdev wf-real 8) && s=$(sectors "$PD") || return 1
  node_exec A dmsetup create wf-real --table "0 $s repl primary $PD $NODE_B_IP:7993 2 auth wbrepl-wirefuzz-key" &&
    dd if=/dev/urandom of=/dev/mapper/wf-real bs=64k count=16 oflag=direct status=none &&
    dmsetup message wf-real 0 resync
}
check "wirefuzz: a real primary (auth) to a fuzzed secondary, full resync" real_pair
check "wirefuzz: ...in sync" synced wf-real 120
check "wirefuzz: ...identical" same_data "$PD" "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['targets'][3]['device'])" "$conf")"
check "wirefuzz: remove" dm_remove wf-real wf-s0 wf-s1 wf-s2 wf-s3 wf-s4 wf-s5
nodes_down
finish
