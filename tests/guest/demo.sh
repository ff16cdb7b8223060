#!/usr/bin/env bash
# `make demo`: point-in-time images of a volume under a write-back cache, replicated to a second
# node. Two nodes (network namespaces A and B in one guest, joined by a veth pair, see lib.sh):
#
#   node A: ext4 -> dm-wbcache (cache "SSD") -> dm-repl primary -> local disk
#   node B: dm-repl secondary (freeze_on_marker) -> dm-thin volume; `wbrepl secondary run`
#           snapshots it at every marker
#
# The stack is built with `wbrepl stack create`, a file workload runs on ext4, checkpoints are
# taken in every mode with `wbrepl checkpoint --wait`, the images are listed, one is mounted
# read-only, and every image is restored to a scratch device, its journal replayed (as after a
# power loss) and checked with `e2fsck -fn`: one line `IMAGE <id> <label> fsck=clean` each.
set -uo pipefail
: "${WBREPL_ROOT:?run me through qemu/run-guest.sh (make demo)}"
. "$WBREPL_ROOT/tests/guest/lib.sh"
W=$WBREPL_ROOT/target/release/wbrepl
say() { printf '\n== %s\n' "$*"; }
run() { printf '+ %s\n' "$*"; "$@"; }
die() { echo "demo: $*" >&2; exit 1; }
[ -x "$W" ] || die "no $W (make cli)"
D=/tmp/wbrepl-demo; STATE=$D/state; MNT=$D/mnt
mkdir -p "$D" "$STATE" "$MNT"
PER_MODE=${WBREPL_DEMO_CHECKPOINTS:-2}

say "two nodes: namespaces wbrepl-a ($NODE_A_IP) and wbrepl-b ($NODE_B_IP)"
nodes_up || die "cannot set up the two nodes"
DISK=$(loopdev demo-disk 256); SSD=$(loopdev demo-ssd 64); SCRATCH=$(loopdev demo-scratch 256)
TM=$(loopdev demo-tmeta 16); TD=$(loopdev demo-tdata 1024)
S=$(sectors "$DISK")
echo "node A: local disk $DISK, cache SSD $SSD; node B: thin pool on $TD (metadata $TM)"

say "node B: a thin volume, and the secondary over it (stops at every marker)"
run dmsetup create demo-pool --table "0 $(sectors "$TD") thin-pool $TM $TD 128 0 1 skip_block_zeroing" || die pool
run dmsetup message demo-pool 0 "create_thin 0" || die thin
run dmsetup create demo-thin --table "0 $S thin /dev/mapper/demo-pool 0" || die thin
run node_exec B "$W" stack create demo-sec --data /dev/mapper/demo-thin --listen "$NODE_B_IP:7789" \
  --freeze-on-marker --freeze-timeout-ms 60000 || die "secondary"

say "node A: dm-repl primary over the disk, dm-wbcache over it"
run node_exec A "$W" stack create demo --data "$DISK" --peer "$NODE_B_IP:7789" --cache "$SSD" --protocol async || die "primary"
for i in $(seq 50); do [[ $(dmsetup status demo-repl) == *" primary connected "* ]] && break; sleep 0.2; done
dmsetup ls --tree -o ascii
run "$W" status

say "node B: the image loop (a dm-thin snapshot at every marker, then thaw; keep 20)"
echo "+ $W secondary run demo-sec --state-dir $STATE --keep 20 &"
"$W" secondary run demo-sec --state-dir "$STATE" --keep 20 >"$D/secondary.log" 2>&1 &
LOOP=$!

say "ext4 on the cached volume, with a file workload running"
run mkfs.ext4 -q -F /dev/mapper/demo || die mkfs
run mount -o noatime /dev/mapper/demo "$MNT" || die mount
churn() {
  local i=0
  while [ ! -e "$D/stop" ]; do
    i=$((i + 1))
    mkdir -p "$MNT/dir$((i % 5))" "$MNT/dir$((i % 3))"
    cp -r "$WBREPL_ROOT/docs" "$MNT/dir$((i % 5))/docs.$i"
    dd if=/dev/urandom of="$MNT/dir$((i % 3))/blob.$i" bs=4k count=$((RANDOM % 128 + 1)) status=none
    rm -rf "$MNT/dir$(((i + 2) % 5))/docs.$((i - 4))" "$MNT/dir$(((i + 1) % 3))/blob.$((i - 6))"
    [ $((i % 8)) = 0 ] && sync
  done
}
rm -f "$D/stop"
churn &
CHURN=$!
sleep 3

say "checkpoints in every mode, each waiting until the secondary has its marker"
n=0
checkpoint() {
  n=$((n + 1))
  run "$W" checkpoint demo --mode "$1" --label "demo-$1-$n" --wait || echo "demo: checkpoint $n ($1) failed"
  sleep 2
}
for k in $(seq "$PER_MODE"); do checkpoint hold; checkpoint writethrough; done
run dmsetup message demo 0 mode ordered
for k in $(seq "$PER_MODE"); do checkpoint ordered; done
run dmsetup message demo 0 mode writeback
touch "$D/stop"; wait $CHURN
sum=$( (cd "$MNT" && find . -type f -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-16) )
run umount "$MNT"
checkpoint hold   # the file system is unmounted: this image is clean, and holds exactly $sum
run "$W" status
sleep 2

say "the images at the secondary"
run "$W" images list demo-sec --state-dir "$STATE"
"$W" images list demo-sec --state-dir "$STATE" --json >"$D/images.json" || die "images list"
mapfile -t imgs < <(python3 -c '
import json, sys
for i in json.load(open(sys.argv[1]))["images"]:
    print(i["marker_id"], i["label"] or "-", i["name"])' "$D/images.json")

say "the last image, mounted read-only"
dev=$("$W" images expose demo-sec latest --state-dir "$STATE") || die "expose"
echo "+ $W images expose demo-sec latest -> $dev"
run mount -o ro "$dev" "$MNT" || die "mount the image"
run df -h "$MNT"
ls "$MNT" | head
isum=$( (cd "$MNT" && find . -type f -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-16) )
echo "files at the primary when it was unmounted: $sum; in the image: $isum"
[ "$sum" = "$isum" ] && echo "identical" || echo "DIFFERENT"
run umount "$MNT"
run "$W" images unexpose demo-sec latest --state-dir "$STATE"

say "every image: restored to a scratch device, journal replayed, e2fsck -fn"
clean=0
for line in "${imgs[@]}"; do
  read -r id label name <<<"$line"
  if "$W" images restore demo-sec "$name" "$SCRATCH" --force --state-dir "$STATE" >/dev/null 2>"$D/restore.err"; then
    e2fsck -E journal_only -y "$SCRATCH" >/dev/null 2>&1
    if e2fsck -fn "$SCRATCH" >"$D/fsck.out" 2>&1; then
      echo "IMAGE $id $label fsck=clean"; clean=$((clean + 1))
    else
      echo "IMAGE $id $label fsck=FAILED"; sed 's/^/    /' "$D/fsck.out" | tail -n 5
    fi
  else
    echo "IMAGE $id $label restore=FAILED: $(cat "$D/restore.err")"
  fi
done

kill -TERM $LOOP 2>/dev/null; wait $LOOP
say "summary"
echo "$n checkpoints (hold, writethrough, ordered); ${#imgs[@]} images at the secondary; $clean pass e2fsck -fn;" \
     "the last one equals the primary's files: $([ "$sum" = "$isum" ] && echo yes || echo no)"
echo "the image loop's log:"; sed 's/^/    /' "$D/secondary.log" | tail -n 8
run "$W" stack remove demo --flush >/dev/null
run "$W" stack remove demo-sec >/dev/null
dmsetup remove demo-thin demo-pool 2>/dev/null
nodes_down
losetup -D
[ "$clean" = "${#imgs[@]}" ] && [ "${#imgs[@]}" -ge $((3 * PER_MODE + 1)) ] && [ "$sum" = "$isum" ]
