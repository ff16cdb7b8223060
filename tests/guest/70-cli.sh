#!/usr/bin/env bash
# The wbrepl CLI (`wbrepl status`) against real device-mapper stacks: it finds wbc0 -> repl0,
# a lone repl secondary, a wbcache over a plain disk, ignores other targets, filters by name,
# and fails cleanly. Needs the host-built binary: cargo build --release -p wbrepl.
#
# Decided behaviour for an unknown DEVICE: stdout is still a valid report (with --json
# {"stacks": [], "errors": []}), a message names the device on stderr, and the exit status is 1.
#
# Addresses are on loopback (127.0.0.1): the CLI only reads them back from the table, and a
# future networked dm-repl must not send anything off this guest.
. "$(dirname "$0")/lib.sh"

W=$WBREPL_ROOT/target/release/wbrepl
if [ ! -x "$W" ]; then
  not_ok "cli: $W exists (run 'cargo build --release -p wbrepl' on the host)"
  finish
  exit 1
fi

D=$(loopdev data 64); C=$(loopdev cache 16); D2=$(loopdev data2 64)
O3=$(loopdev origin3 64); C3=$(loopdev cache3 16); L=$(loopdev linear 64)
S=$(sectors "$D")

check "cli: create repl0 (primary)" dmsetup create repl0 --table "0 $S repl primary $D 127.0.0.1:7789 0"
check "cli: create wbc0 over repl0" \
  dmsetup create wbc0 --table "0 $S wbcache /dev/mapper/repl0 $C 4096 2 mode writeback"
check "cli: create sec0 (lone secondary)" \
  dmsetup create sec0 --table "0 $S repl secondary $D2 127.0.0.1:7790 2 protocol sync"
check "cli: create wbplain over a plain disk" \
  dmsetup create wbplain --table "0 $S wbcache $O3 $C3 512 2 mode writethrough"
check "cli: create lin0 (another target)" dmsetup create lin0 --table "0 $S linear $L 0"

J=$(mktemp); E=$(mktemp)
# jget EXPR: evaluates a Python expression over the JSON document in $J (as d); stack(NAME) is
# the one stack with a layer called NAME. Prints strings bare, everything else as JSON.
jget() {
  python3 - "$J" "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
def names(s):
    return [l["name"] for l in (s["wbcache"], s["repl"]) if l]
def stack(name):
    m = [s for s in d["stacks"] if name in names(s)]
    return m[0] if len(m) == 1 else {"error": "%d stacks with %s" % (len(m), name)}
try:
    v = eval(sys.argv[2])
except Exception as e:
    v = "python error: %r" % e
print(v if isinstance(v, str) else json.dumps(v, sort_keys=True))
EOF
}
# info NAME: the INFO part of `dmsetup status NAME` (after "<start> <len> <target> ").
info() { dmsetup status "$1" | cut -d' ' -f4-; }

"$W" status --json >"$J" 2>"$E"
check_eq "cli: status --json exits 0" 0 $?
check_eq "cli: status --json says nothing on stderr" "" "$(cat "$E")"
check "cli: the output is JSON" python3 -m json.tool "$J"
check_eq "cli: three stacks (lin0 ignored), sorted by top device" '[["sec0"], ["wbc0", "repl0"], ["wbplain"]]' \
  "$(jget '[names(s) for s in d["stacks"]]')"
check_eq "cli: no error entries" "[]" "$(jget 'd["errors"]')"

check_eq "cli: wbc0 sits on repl0" repl0 "$(jget 'stack("wbc0")["repl"]["name"]')"
check_eq "cli: wbc0 devnum" "$(devnum /dev/mapper/wbc0)" "$(jget 'stack("wbc0")["wbcache"]["devnum"]')"
check_eq "cli: wbc0 origin is repl0's devnum" "$(devnum /dev/mapper/repl0)" "$(jget 'stack("wbc0")["wbcache"]["origin"]')"
check_eq "cli: wbc0 cache" "$(devnum "$C")" "$(jget 'stack("wbc0")["wbcache"]["cache"]')"
check_eq "cli: wbc0 block size" 4096 "$(jget 'stack("wbc0")["wbcache"]["block_size"]')"
check_eq "cli: wbc0 mode" writeback "$(jget 'stack("wbc0")["wbcache"]["mode"]')"
check_eq "cli: wbc0 status is the INFO line" "$(info wbc0)" "$(jget 'stack("wbc0")["wbcache"]["status"]')"
check_eq "cli: wbc0 stack has no note" null "$(jget 'stack("wbc0")["note"]')"
check_eq "cli: repl0 devnum" "$(devnum /dev/mapper/repl0)" "$(jget 'stack("wbc0")["repl"]["devnum"]')"
check_eq "cli: repl0 role" primary "$(jget 'stack("wbc0")["repl"]["role"]')"
check_eq "cli: repl0 data" "$(devnum "$D")" "$(jget 'stack("wbc0")["repl"]["data"]')"
check_eq "cli: repl0 peer" 127.0.0.1:7789 "$(jget 'stack("wbc0")["repl"]["peer"]')"
check_eq "cli: repl0 protocol" async "$(jget 'stack("wbc0")["repl"]["protocol"]')"
check_eq "cli: repl0 status is the INFO line" "$(info repl0)" "$(jget 'stack("wbc0")["repl"]["status"]')"

check_eq "cli: sec0 is its own stack" null "$(jget 'stack("sec0")["wbcache"]')"
check_eq "cli: sec0 devnum" "$(devnum /dev/mapper/sec0)" "$(jget 'stack("sec0")["repl"]["devnum"]')"
check_eq "cli: sec0 role" secondary "$(jget 'stack("sec0")["repl"]["role"]')"
check_eq "cli: sec0 listen address" 127.0.0.1:7790 "$(jget 'stack("sec0")["repl"]["peer"]')"
check_eq "cli: sec0 protocol" sync "$(jget 'stack("sec0")["repl"]["protocol"]')"

check_eq "cli: wbplain has no repl below" null "$(jget 'stack("wbplain")["repl"]')"
check_eq "cli: wbplain note" "origin is not a repl device" "$(jget 'stack("wbplain")["note"]')"
check_eq "cli: wbplain origin" "$(devnum "$O3")" "$(jget 'stack("wbplain")["wbcache"]["origin"]')"
check_eq "cli: wbplain mode" writethrough "$(jget 'stack("wbplain")["wbcache"]["mode"]')"

# --- human output ------------------------------------------------------------------------------
out=$("$W" status 2>&1)
check_eq "cli: status exits 0" 0 $?
check_match "cli: text shows wbc0 with its devnum" "wbc0 \\($(devnum /dev/mapper/wbc0)\\) wbcache" "$out"
re=$'\n''  `- repl0 \('"$(devnum /dev/mapper/repl0)"'\) repl: primary, '
check_match "cli: text shows repl0 under wbc0" "$re" "$out"
check_match "cli: text shows sec0" 'sec0 \([0-9]+:[0-9]+\) repl: secondary' "$out"
check_match "cli: text notes wbplain's origin" 'origin is not a repl device' "$out"
if [[ $out == *lin0* ]]; then not_ok "cli: text does not mention lin0"; else ok "cli: text does not mention lin0"; fi

# --- filters -----------------------------------------------------------------------------------
"$W" status --json repl0 >"$J"
check_eq "cli: filter by the lower layer shows the whole stack" '[["wbc0", "repl0"]]' "$(jget '[names(s) for s in d["stacks"]]')"
"$W" status --json /dev/mapper/sec0 "$(devnum /dev/mapper/wbplain)" >"$J"
check_eq "cli: filter by path and devnum" '[["sec0"], ["wbplain"]]' "$(jget '[names(s) for s in d["stacks"]]')"
"$W" status --json nosuchdev >"$J" 2>"$E"
check_eq "cli: unknown device exits 1" 1 $?
check_eq "cli: unknown device gives an empty report" '{"errors": [], "stacks": []}' "$(jget 'd')"
check_eq "cli: unknown device is named on stderr" "wbrepl: nosuchdev: no wbcache or repl device by that name" "$(cat "$E")"
"$W" status lin0 >/dev/null 2>"$E"
check_eq "cli: a device of another target is not a wbrepl device" 1 $?

# --- errors ------------------------------------------------------------------------------------
"$W" status --frobnicate >/dev/null 2>&1
check_eq "cli: a bad flag is a usage error (2)" 2 $?
setpriv --reuid=65534 --regid=65534 --clear-groups "$W" status >/dev/null 2>"$E"
check_eq "cli: without root: exit 1" 1 $?
check_match "cli: without root: says why" '^wbrepl: cannot open /dev/mapper/control: Permission denied.*root' "$(tr '\n' ' ' <"$E")"

rm -f "$J" "$E"
check "cli: remove the devices" dm_remove wbc0 repl0 sec0 wbplain lin0
cleanup_dm
finish
