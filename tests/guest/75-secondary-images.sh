#!/usr/bin/env bash
# The secondary's point-in-time images, end to end with the wbrepl CLI: node B has a dm-thin
# pool, a thin volume and a repl secondary over it (freeze_on_marker), made by `wbrepl stack
# create`; node A a repl primary (`wbrepl stack create`, later a wbcache stack from a TOML
# file). `wbrepl secondary run` turns every marker into a thin snapshot; each image must hold
# exactly the primary's data at its marker (checksums taken just before the marker, with the
# next round's writes following at once, while the secondary is frozen). Then: a loop restarted
# with --once picks up a secondary already frozen, retention (--keep, prune, delete), read-only
# exposure, restore with progress and --verify, refusals with their exit codes, --json, and
# `wbrepl checkpoint` on a wbcache when the kernel has checkpoints (skipped otherwise).
. "$(dirname "$0")/lib.sh"

W=$WBREPL_ROOT/target/release/wbrepl
if [ ! -x "$W" ]; then
  not_ok "images: $W exists (run 'make cli' on the host)"
  finish
  exit 1
fi

T=$(mktemp -d)
ST=$T/state          # --state-dir
EV=$T/events         # secondary run --json output
MB=16
PORT=7870

# expect_exit NAME CODE REGEX CMD...: CMD exits with CODE and its stderr matches REGEX.
expect_exit() {
  local name=$1 code=$2 re=$3; shift 3
  "$@" >"$T/out" 2>"$T/err"
  local rc=$?
  if [ "$rc" = "$code" ] && [[ $(cat "$T/err") =~ $re ]]; then
    ok "$name"
  else
    not_ok "$name"
    printf '#   exit %s (expected %s), stderr: %s\n' "$rc" "$code" "$(head -c 600 "$T/err")"
  fi
}
# jvals FILE EXPR...: Python expressions over the JSON document in FILE (as d), one result per
# line (strings bare, the rest as JSON); "invalid JSON" if FILE does not parse. One python3 per
# document: it starts slowly under TCG.
jvals() {
  python3 - "$@" <<'PY'
import json, re, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    print("invalid JSON: %s" % e); sys.exit(0)
for x in sys.argv[2:]:
    try:
        v = eval(x)
    except Exception as e:
        v = "error: %r" % e
    print(v if isinstance(v, str) else json.dumps(v))
PY
}
# The data area of a device (without the 4 KiB marker region at its end), read with O_DIRECT.
data() { dd if="$1" bs=4k count=$(( (S - 8) / 8 )) iflag=direct status=none; }
# keep_copy NAME DEV: DEV's data area, saved as the reference NAME; same_as NAME DEV: compare.
keep_copy() { data "$2" >"$T/at-$1"; }
same_as() { cmp -s "$T/at-$1" <(data "$2") || { echo "$2 differs from the data at $1"; return 1; }; }
field() { dmsetup status "$1" | sed -n "s/.* $2 \([^ ]*\).*/\1/p"; }
wait_for() { # wait_for SECONDS CMD...: until CMD succeeds
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $end ] && { "$@"; return 1; }
    sleep 0.3
  done
}
# complete_markers: the marker ids of the complete images, oldest first (from the text list,
# without checking the pool: cheap enough to poll).
complete_markers() {
  "$W" images list sec0 --state-dir "$ST" --no-check |
    awk '$1 ~ /^[0-9]+$/ && !/\(incomplete\)/ { printf "%s%s", sep, $1; sep = " " }'
}
has_markers() { [ "$(complete_markers)" = "$1" ]; }
thawed() { [ "$(field sec0 frozen)" = - ]; }
frozen_at() { [ "$(field sec0 frozen)" = "$1" ]; }
synced() { [[ $(dmsetup status "$1") =~ ' primary connected '.*' inflight 0 inflight_bytes 0 ' ]]; }
# verify_image IMAGE REF: IMAGE, exposed, is a read-only block device holding the data REF.
verify_image() {
  local p
  p=$("$W" images expose sec0 "$1" --state-dir "$ST") || return 1
  [ -b "$p" ] || { echo "$p is not a block device"; return 1; }
  [ "$(blockdev --getro "$p")" = 1 ] || { echo "$p is not read-only"; return 1; }
  same_as "$2" "$p" || return 1
  "$W" images unexpose sec0 "$1" --state-dir "$ST" >/dev/null
}
# gone_from_pool ID...: the pool has none of these thin ids (deleting one fails).
gone_from_pool() {
  local id
  for id in "$@"; do
    if dmsetup message pool0 0 "delete $id" 2>/dev/null; then echo "thin id $id was still in the pool"; return 1; fi
  done
}

# section NAME: a diagnostic line with the seconds since the last one (the run must stay short).
SECTION_T=$SECONDS
section() { echo "# $1 (previous section: $((SECONDS - SECTION_T)) s)"; SECTION_T=$SECONDS; }

check "images: nodes up" nodes_up

# --- node B: pool, thin volume, secondary --------------------------------------------------------
PM=$(loopdev pool-meta 8); PDATA=$(loopdev pool-data 64); PD=$(loopdev prim $MB)
S=$(sectors "$PD")
check "images: thin pool on node B" dmsetup create pool0 --table "0 $(sectors "$PDATA") thin-pool $PM $PDATA 128 0 1 skip_block_zeroing"
check "images: thin volume (id 1)" bash -c "dmsetup message pool0 0 'create_thin 1' && dmsetup create thin0 --table '0 $S thin /dev/mapper/pool0 1'"
node_exec B "$W" stack create sec0 --data /dev/mapper/thin0 --listen "$NODE_B_IP:$PORT" \
  --freeze-on-marker --freeze-timeout-ms 120000 --json >"$T/out" 2>"$T/err"
check_eq "images: stack create (secondary) exits 0" "0" "$?"
check_eq "images: ...and says what it made (JSON)" "sec0 repl" "$(jvals "$T/out" 'd["top"] + " " + d["created"][0]["target"]')"
check_match "images: the secondary's table" "repl secondary $(devnum /dev/mapper/thin0) $NODE_B_IP:$PORT 3 freeze_on_marker freeze_timeout 120000" "$(dmsetup table sec0)"

section "node A"
# --- node A: a plain primary ---------------------------------------------------------------------
out=$(node_exec A "$W" stack create pa --data "$PD" --peer "$NODE_B_IP:$PORT" 2>&1)
check_eq "images: stack create (primary) exits 0" "0" "$?"
check_match "images: ...prints the device" "^created pa \\([0-9]+:[0-9]+\\): 0 $S repl primary " "$out"
check "images: primary connects" wait_for 30 synced pa

section "loop and markers"
# --- the loop, and five markers with writes between them ----------------------------------------
"$W" --json secondary run sec0 --state-dir "$ST" >"$EV" 2>"$T/run.err" &
RUN=$!
check "images: secondary run starts" wait_for 20 grep -q '"event":"started"' "$EV"
expect_exit "images: a second loop on the same secondary is refused" 1 'another wbrepl secondary run is running for sec0' \
  "$W" secondary run sec0 --state-dir "$ST" --once
round() { # round N: 1 MiB of new data and 64 KiB over a shared region, a copy, a marker
  local i=$1
  dd if=/dev/urandom of=/dev/mapper/pa bs=1M count=1 seek=$((i * 2)) oflag=direct status=none &&
    dd if=/dev/urandom of=/dev/mapper/pa bs=64k count=1 seek=2 oflag=direct status=none &&
    keep_copy "m$i" /dev/mapper/pa || return 1
  if [ "$i" -le 2 ]; then
    dmsetup message pa 0 marker "r$i" >/dev/null
  else
    # A stack without a cache: wbrepl checkpoint sends a plain marker.
    "$W" checkpoint pa --label "r$i" >"$T/cp$i" 2>"$T/cp$i.err"
  fi
}
# The next round's writes follow each marker at once: the frozen secondary must keep them out
# of the image.
for i in 1 2 3 4 5; do check "images: round $i: write, copy, marker" round $i; done
check_eq "images: checkpoint on a repl-only stack prints the marker id" "3" "$(cat "$T/cp3")"
check_match "images: ...and a summary on stderr" '^wbrepl: marker 3 on pa \(label r3\)' "$(cat "$T/cp3.err")"
check "images: five images appear" wait_for 90 has_markers "1 2 3 4 5"
check "images: the secondary is thawed and catches up" wait_for 30 thawed
check "images: ...in sync again" wait_for 30 synced pa
"$W" images list sec0 --state-dir "$ST" --json >"$T/list"
mapfile -t V < <(jvals "$T/list" \
  'all(re.fullmatch(r"%d-(r%d-)?\d{8}T\d{6}Z" % (i["marker_id"], i["marker_id"]), i["name"]) is not None for i in d["images"])' \
  'all(i["in_pool"] is True and not i["exposed"] for i in d["images"]) and d["problems"] == []' \
  'len({i["thin_id"] for i in d["images"]} - {1})' \
  '" ".join(i["label"] or "-" for i in d["images"])' \
  '" ".join(str(i["thin_id"]) for i in d["images"] if i["marker_id"] <= 3)')
check_eq "images: list --json: image names carry the marker id and the time" "true" "${V[0]}"
check_eq "images: list --json: every image is in the pool, none exposed, no problems" "true" "${V[1]}"
check_eq "images: list --json: five distinct thin ids, none the origin's" "5" "${V[2]}"
if dmsetup status sec0 | grep -q ' marker_label '; then
  check_eq "images: labels from the markers" "r1 r2 r3 r4 r5" "${V[3]}"
else
  skip "images: labels from the markers" "the kernel's secondary status has no marker_label yet"
fi
OLD_TIDS=${V[4]}
check_eq "images: the loop reported five images and five thaws" "5 5" \
  "$(grep -c '"event":"image"' "$EV") $(grep -c '"event":"thawed"' "$EV")"

section "verify images"
# Each image, exposed read-only, holds the primary's data at its marker.
for i in 1 2 3 4 5; do check "images: image $i equals the primary at marker $i" verify_image $i m$i; done
check_fails "images: (the primary has moved on since marker 1)" same_as m1 /dev/mapper/pa
P=$("$W" images expose sec0 2 --state-dir "$ST")
check_eq "images: expose prints the device path" "/dev/mapper/sec0-img-2" "$P"
check_fails "images: an exposed image refuses writes" dd if=/dev/zero of="$P" bs=4k count=1 oflag=direct status=none
check_eq "images: exposing it again names the same device" "$P" "$("$W" images expose sec0 2 --state-dir "$ST")"
check_match "images: list shows the exposure" '^  2 .* sec0-img-2 ' "$("$W" images list sec0 --state-dir "$ST" --no-check | grep '^  2 ')"
expect_exit "images: an exposed image is not deleted" 1 'exposed as /dev/mapper/sec0-img-2.*unexpose' \
  "$W" images delete sec0 2 --state-dir "$ST"
check "images: unexpose" "$W" images unexpose sec0 2 --state-dir "$ST"
check_fails "images: ...the device is gone" dmsetup info sec0-img-2

section "once and keep"
# --- stop; a marker while nothing watches; --once picks it up and applies --keep -------------------
kill -TERM $RUN; wait $RUN
check_eq "images: SIGTERM stops the loop cleanly (exit 0)" "0" "$?"
check_match "images: ...saying so" '"event":"stopped"' "$(tail -n 1 "$EV")"
check "images: every event line is JSON" python3 -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1])]' "$EV"
dd if=/dev/urandom of=/dev/mapper/pa bs=1M count=2 seek=12 oflag=direct status=none
keep_copy m6 /dev/mapper/pa
check_eq "images: marker 6 while no loop runs" "6" "$(dmsetup message pa 0 marker r6)"
check "images: the secondary stays frozen at 6" wait_for 30 frozen_at 6
out=$("$W" secondary run sec0 --state-dir "$ST" --once --keep 3 2>&1)
check_eq "images: secondary run --once --keep 3 exits 0" "0" "$?"
check_match "images: ...took marker 6's image" ' image 6-(r6-)?[0-9T]+Z: marker 6' "$out"
check_match "images: ...thawed" ' thawed at marker 6' "$out"
check_match "images: ...and deleted the three oldest" 'deleted image 1-.*deleted image 2-.*deleted image 3-.*not among the 3 newest' "$(tr '\n' ' ' <<<"$out")"
check "images: marker 6's image is thawed past" wait_for 30 thawed
check_eq "images: images 4 5 6 are left" "4 5 6" "$(complete_markers)"
check "images: image 6 equals the primary at marker 6" verify_image 6 m6
check "images: the pool no longer has the deleted images' thin ids ($OLD_TIDS)" gone_from_pool $OLD_TIDS
check_eq "images: --once with nothing pending does nothing" "" \
  "$("$W" secondary run sec0 --state-dir "$ST" --once | grep -E ' (image|deleted|thawed) ')"

section "prune and delete"
# --- prune and delete -----------------------------------------------------------------------------
"$W" images prune sec0 --state-dir "$ST" --max-age 1h >"$T/out"
check_eq "images: prune --max-age 1h deletes nothing (all younger)" "nothing to delete" "$(cat "$T/out")"
"$W" images prune sec0 --state-dir "$ST" --keep 1 --dry-run --json >"$T/out"
check_eq "images: prune --keep 1 --dry-run --json names 4 and 5" "[4, 5]" "$(jvals "$T/out" '[x["marker_id"] for x in d["deleted"]]')"
check_eq "images: ...and deletes nothing" "4 5 6" "$(complete_markers)"
out=$("$W" images delete sec0 4 --state-dir "$ST")
check_match "images: delete 4" '^deleted image 4-.* \(thin id [0-9]+\): deleted on request' "$out"
check_eq "images: images 5 6 are left" "5 6" "$(complete_markers)"

section "restore"
# --- restore -----------------------------------------------------------------------------------------
R=$(loopdev restore $MB); SMALL=$(loopdev small 8)
"$W" images restore sec0 5 "$R" --state-dir "$ST" --verify --json >"$T/out" 2>"$T/err"
check_eq "images: restore 5 --verify exits 0" "0" "$?"
check_eq "images: ...reports bytes and verification (JSON)" "$((S * 512)) true" "$(jvals "$T/out" 'd["bytes"]' 'd["verified"]' | tr '\n' ' ' | sed 's/ $//')"
check "images: the restored device equals the primary at marker 5" same_as m5 "$R"
script -qec "$W images restore sec0 6 $R --state-dir $ST" "$T/tty" >/dev/null 2>&1
check_eq "images: restore on a terminal exits 0" "0" "$?"
check_match "images: ...and draws a progress bar there" 'restore 6-.*MiB' "$(tr -d '\r' <"$T/tty")"
check "images: the restored device equals the primary at marker 6" same_as m6 "$R"
expect_exit "images: restore to a smaller device is refused" 1 'is smaller \([0-9]+ bytes\) than image 5-' \
  "$W" images restore sec0 5 "$SMALL" --state-dir "$ST"
expect_exit "images: restore to a device in use is refused" 1 "$PD: in use .*--force" \
  "$W" images restore sec0 5 "$PD" --state-dir "$ST"
expect_exit "images: restore to a file that is no block device is refused" 1 'not a block device' \
  "$W" images restore sec0 5 /etc/hostname --state-dir "$ST"

section "refusals"
# --- refusals (those that need no device-mapper are host tests: userspace-tool/tests/cli.rs) -------
expect_exit "images: an unknown image" 1 'no image "999"' "$W" images expose sec0 999 --state-dir "$ST"
expect_exit "images: an unknown secondary" 1 'no images recorded for nosuch' "$W" images list nosuch --state-dir "$ST"
expect_exit "images: --mode on a stack without a cache is a usage error" 2 'no wbcache layer: --mode does not apply' "$W" checkpoint pa --mode hold
expect_exit "images: checkpoint on an unknown device" 1 'nosuch: no wbcache or repl device' "$W" checkpoint nosuch
expect_exit "images: checkpoint on a secondary" 1 'checkpoints are taken on the primary' "$W" checkpoint sec0
expect_exit "images: secondary run on a primary" 1 'pa: is a repl primary, not a secondary' "$W" secondary run pa --state-dir "$ST" --once
L9=$(loopdev sec9 $MB)
node_exec B "$W" stack create sec9 --data "$L9" --listen "$NODE_B_IP:$((PORT + 9))" >/dev/null
expect_exit "images: secondary run without freeze_on_marker" 1 'sec9: has no freeze_on_marker' "$W" secondary run sec9 --state-dir "$ST" --once
check "images: stack remove sec9" "$W" stack remove sec9
expect_exit "images: stack create with a name in use" 1 'cannot create pa .*exists already' "$W" stack create pa --data "$L9" --peer "$NODE_B_IP:$PORT"
expect_exit "images: stack create with a bad address (kernel grammar)" 2 'an address is an IPv4' "$W" stack create x --data "$L9" --peer 10.0.0.300:5
printf 'name = "x"\n[repl]\ndata = "%s"\npeer = "1.2.3.4:5"\nprotocl = "sync"\n' "$L9" >"$T/typo.toml"
expect_exit "images: stack create --config with a typo is a usage error" 2 'unknown field `protocl`' \
  "$W" stack create --config "$T/typo.toml"
check_fails "images: ...nothing was left behind" dmsetup info x
expect_exit "images: stack remove of an unknown device" 1 'nosuch: no wbcache or repl device' "$W" stack remove nosuch
# A snapshot deleted behind wbrepl's back: list reports it, delete drops the record.
TID6=$("$W" images list sec0 --state-dir "$ST" --no-check | awk '$1 == 6 { print $4 }')
dmsetup message pool0 0 "delete $TID6"
"$W" images list sec0 --state-dir "$ST" --json >"$T/list"
mapfile -t V < <(jvals "$T/list" '" ".join(d["problems"])' '[i["in_pool"] for i in d["images"] if i["marker_id"] == 6]')
check_match "images: list reports an image the pool lost" "image 6-.*: the pool pool0 has no thin id $TID6" "${V[0]}"
check_eq "images: ...with in_pool false" "[false]" "${V[1]}"
check_match "images: delete drops the record" 'deleted image 6-.*the pool no longer had it' "$("$W" images delete sec0 6 --state-dir "$ST")"
check_eq "images: image 5 is left" "5" "$(complete_markers)"

section "cache stack"
# --- a wbcache stack from a TOML file, and wbrepl checkpoint on it -------------------------------
check "images: stack remove pa" "$W" stack remove pa
check_fails "images: ...pa is gone" dmsetup info pa
CD=$(loopdev cache 16)
# A small send window (64 KiB) makes a drain over the link measurable (for the progress checks).
printf 'name = "pc"\n[repl]\ndata = "%s"\npeer = "%s"\nmax_inflight_kb = 64\n[wbcache]\ncache = "%s"\nmode = "writeback"\n' \
  "$PD" "$NODE_B_IP:$PORT" "$CD" >"$T/stack.toml"
node_exec A "$W" stack create --config "$T/stack.toml" >"$T/out" 2>"$T/err"
check_eq "images: stack create --config (wbcache over repl) exits 0" "0" "$?"
"$W" status --json pc >"$T/out"
check_eq "images: status --json links pc over pc-repl" "pc pc-repl" "$(jvals "$T/out" 'd["stacks"][0]["wbcache"]["name"] + " " + d["stacks"][0]["repl"]["name"]')"
"$W" --json secondary run sec0 --state-dir "$ST" --keep 2 >"$EV" 2>"$T/run.err" &
RUN=$!
check "images: secondary run again" wait_for 20 grep -q '"event":"started"' "$EV"
check "images: pc-repl connects" wait_for 30 synced pc-repl
dd if=/dev/urandom of=/dev/mapper/pc bs=1M count=2 seek=6 oflag=direct status=none
keep_copy cp /dev/mapper/pc
if dmsetup status pc | grep -q ' checkpoint '; then
  "$W" checkpoint pc --label cp1 --wait --timeout 60s --json >"$T/out" 2>"$T/err"
  check_eq "images: checkpoint --wait on the cache exits 0" "0" "$?"
  mapfile -t V < <(jvals "$T/out" 'd["id"]' 'd["mode"] + " " + str(d["label"]) + " " + str(d["acked_on"])')
  check_eq "images: ...--json: mode hold (the default for a writeback cache), label cp1, acknowledged on pc-repl" "hold cp1 pc-repl" "${V[1]}"
  check "images: the image of checkpoint ${V[0]} appears" wait_for 60 has_markers "5 ${V[0]}"
  check "images: it equals the cache stack's data at the checkpoint" verify_image latest cp
  # A slower drain: 6 MiB in the cache, 64 KiB in flight, 40 ms from A to B (about 4 s). The
  # status shows the blocks left while it runs, and on a terminal the checkpoint draws its bar.
  node_link A "delay 40ms"
  dd if=/dev/urandom of=/dev/mapper/pc bs=1M count=6 seek=8 oflag=direct status=none
  script -qec "$W checkpoint pc --label slow" "$T/cptty" >/dev/null 2>&1 &
  CP=$!
  draining() { "$W" status pc | grep -qE '^  cache: .*; checkpoint hold [0-9]+: [0-9]+ blocks left'; }
  check "images: status shows the drain in progress" wait_for 20 draining
  wait $CP
  check_eq "images: the slow checkpoint on a terminal exits 0" "0" "$?"
  check_match "images: ...and draws its progress bar there" 'checkpoint pc \(hold\).*blocks' "$(tr -d '\r' <"$T/cptty")"
  node_link A ""
  expect_exit "images: checkpoint --abort with none running" 1 'no checkpoint is running' "$W" checkpoint pc --abort
  expect_exit "images: checkpoint mode ordered on a writeback cache is refused" 1 'refused' "$W" checkpoint pc --mode ordered
else
  skip "images: checkpoint on a wbcache" "the kernel's wbcache has no checkpoint message yet"
  expect_exit "images: without kernel support, checkpoint fails clearly" 1 'checkpoint on pc: refused: .*a kernel without checkpoints' "$W" checkpoint pc
  # The same point in time by hand: write the cache back, then a marker.
  dmsetup message pc 0 flush >/dev/null
  check_eq "images: a new primary starts marker ids again at 1" "1" "$(dmsetup message pc-repl 0 marker by-hand)"
  check "images: its image appears (a reused id, another time)" wait_for 60 has_markers "5 1"
  check "images: it equals the cache stack's data at the marker" verify_image latest cp
fi
kill -TERM $RUN; wait $RUN
check_eq "images: the loop stops" "0" "$?"
section "remove"
out=$("$W" stack remove pc --flush)
check_eq "images: stack remove --flush takes both layers down" "removed pc removed pc-repl" "$(echo $out)"
check "images: stack remove sec0" "$W" stack remove sec0

section "end"
rm -rf "$T"
nodes_down
cleanup_dm
finish
