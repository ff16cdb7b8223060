#!/usr/bin/env bash
# dm-wbcache: regression tests for the defects of issue 13's review, each of which failed on the
# code before its fix (docs/testing.md names them):
#   - flush rule: a write to the origin alone that completes after one flush from above is made
#     durable by the next one (dm-log-writes shows it followed by a FLUSH);
#   - a checkpoint cannot start once a suspend has begun (presuspend);
#   - `checkpoint writethrough` is refused on an ordered cache;
#   - a block holds at most 16 versions (ordered mode, a flush after every write), a crafted
#     image naming one block everywhere is refused, a million-block cache formats and loads;
#   - epochs (marker ids) are 64-bit: past 2^32 they keep increasing, across reloads too, and a
#     version-1 superblock (32-bit epochs) loads with 2^32 added to its epoch;
#   - whole-block writes of one block in flight together share one version (before: one
#     version each, which a crash could confuse);
#   - a hold checkpoint writes back exactly the blocks it drained, none of the writes it held
#     (before: a writeback round could see the checkpoint running but its limit lifted);
#   - a checkpoint is refused while a `flush` message writes everything back, and the `flush`
#     message counts itself in the same lock hold as it checks for a checkpoint (before: the
#     checkpoint ran, and the flush wrote back the writes it held as soon as it ended).
. "$(dirname "$0")/lib.sh"
here=$(cd "$(dirname "$0")" && pwd)

LOGREPLAY=$WBREPL_ROOT/tests/logreplay.py

# --- flush rule: origin writes are tracked by completion ------------------------------------------
# writethrough cache -> dm-delay (writes 3 s, flushes 0 ms) -> dm-log-writes -> loop.
# W (a write of an uncached block: to the origin alone) is in flight; flush F1 is issued and
# completes; W completes; flush F2 is issued. F2 must flush the origin: dm-log-writes then logs W
# followed by a FLUSH before the mark made after F2. (Before the fix F1 cleared the "origin
# dirty" flag W had set at submission, F2 found it clear and did not flush the origin: W was
# logged only at teardown, after the mark, never covered by a flush.)
O=$(loopdev fr-origin 32); L=$(loopdev fr-log 64); C=$(loopdev fr-cache 16)
S=$(sectors "$O")
check "flush rule: dm-log-writes over the origin" dmsetup create fr-log --table "0 $S log-writes $O $L"
# (3 s: F1 must be done before W is, also on a loaded host.)
check "flush rule: dm-delay (writes 3 s, reads and flushes 0 ms)" dmsetup create fr-dly \
  --table "0 $S delay /dev/mapper/fr-log 0 0 /dev/mapper/fr-log 0 3000 /dev/mapper/fr-log 0 0"
check "flush rule: a writethrough cache over it" dmsetup create fr-wb \
  --table "0 $((S - 8)) wbcache /dev/mapper/fr-dly $C 4096 2 mode writethrough"
flush_rule() {
  python3 - "$1" <<'EOF'
import mmap, os, sys, threading, time
dev = sys.argv[1]
fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)
buf.write(b"W" * 4096)
t0 = time.monotonic()
w = threading.Thread(target=os.pwrite, args=(fd, buf, 100 * 4096))
w.start()
time.sleep(0.2)
os.fsync(fd)                       # F1, while W is in flight
f1 = time.monotonic() - t0
w.join()                           # W completes (about 3 s)
wdone = time.monotonic() - t0
os.fsync(fd)                       # F2: must cover W
print(f"F1 done at {f1:.3f} s, W at {wdone:.3f} s")
if not f1 < 2.5 < wdone:
    sys.exit("W was not in flight across F1: the test did not test")
EOF
}
check "flush rule: W in flight, F1, W completes, F2" flush_rule /dev/mapper/fr-wb
check "flush rule: mark the log after F2" dmsetup message fr-log 0 mark after-f2
check "flush rule: remove the stack" bash -c "dmsetup remove --retry fr-wb && dmsetup remove --retry fr-dly && dmsetup remove --retry fr-log"
# W: 4 KiB at byte 409600 = sector 800. Prints "ok" when a FLUSH follows W's entry before the mark.
flush_after_w() {
  python3 "$LOGREPLAY" list "$1" | python3 -c '
import sys
w = flush = mark = None
for line in sys.stdin:
    f = line.split()
    if not f or f[0] == "#":
        continue
    i, flags, sector = int(f[0]), f[1], int(f[2])
    if "MARK" in flags and f[-1] == "after-f2":
        mark = i
    elif "MARK" not in flags and sector == 800 and int(f[3]) == 8 and w is None:
        w = i
    elif "FLUSH" in flags and w is not None and flush is None:
        flush = i
print(f"W entry {w}, first FLUSH after it {flush}, mark after F2 {mark}")
ok = None not in (w, flush, mark) and w < flush < mark
print("ok" if ok else "W is not covered by a flush issued after it completed")
sys.exit(0 if ok else 1)'
}
check "flush rule: the log shows W, then a FLUSH, then the mark made after F2" flush_after_w "$L"
# The oracle rejects a log without that flush: the same sequence straight on dm-log-writes, with
# F2 left out (the mark then comes before W's flush: W is logged at teardown).
L2=$(loopdev fr-log2 64)
check "flush rule (oracle): dm-log-writes alone" dmsetup create fr-log2 --table "0 $S log-writes $O $L2"
check "flush rule (oracle): W, no flush after it" dd if=/dev/zero of=/dev/mapper/fr-log2 bs=4k count=1 seek=100 oflag=direct status=none
check "flush rule (oracle): mark" dmsetup message fr-log2 0 mark after-f2
check "flush rule (oracle): remove" dmsetup remove fr-log2
check_fails "flush rule (oracle): a log without the flush is rejected" flush_after_w "$L2"
cleanup_dm

# --- checkpoints and suspends ---------------------------------------------------------------------
# A suspend runs presuspend, then (lock_fs) writes back the device's dirty page cache, then waits
# for running messages, then postsuspend. Writes to the cache device take 3 s here, so the suspend
# spends about 3 s writing back: a checkpoint sent then must be refused at once (before the fix it
# started, and the suspend waited for it).
O=$(loopdev sp-origin 64); C=$(loopdev sp-cache 16)
S=$(sectors "$O"); CS=$(sectors "$C")
check "suspend: a cache device behind dm-delay" dmsetup create sp-cdly --table "0 $CS delay $C 0 0 $C 0 0"
check "suspend: the cache" dmsetup create sp-wb --table "0 $((S - 8)) wbcache $O /dev/mapper/sp-cdly 4096 0"
# Held open here: the last close of a block device writes its dirty pages back at once.
exec 7</dev/mapper/sp-wb
check "suspend: dirty page cache of the device (buffered writes)" dd if=/dev/urandom of=/dev/mapper/sp-wb bs=64k count=16 status=none
check "suspend: cache device writes now take 3 s" bash -c \
  "dmsetup reload sp-cdly --table '0 $CS delay $C 0 0 $C 0 $(scaled 3000)' && dmsetup suspend sp-cdly && dmsetup resume sp-cdly"
dmesg_mark
t0=$(date +%s%N)
dmsetup suspend sp-wb &
SUSP=$!
sleep 0.7
cp_rc=0; timeout "$(scaled 60)" dmsetup message sp-wb 0 checkpoint hold during-suspend >/dev/null 2>&1 || cp_rc=$?
cp_ms=$((($(date +%s%N) - t0) / 1000000))
susp_rc=0; wait $SUSP || susp_rc=$?
susp_ms=$((($(date +%s%N) - t0) / 1000000))
exec 7<&-
check_eq "suspend: the suspend succeeded (in $susp_ms ms)" 0 "$susp_rc"
check "suspend: it spent over $(scaled 2) s writing back (the window under test was open)" test "$susp_ms" -gt "$(scaled 2000)"
check_fails "suspend: the checkpoint sent during it was refused (exit $cp_rc)" test "$cp_rc" = 0
check "suspend: ... at once ($cp_ms ms), not after the suspend's writeback ($susp_ms ms)" test "$cp_ms" -lt $((susp_ms - 1000))
check_match "suspend: ... and the log says why" 'checkpoint refused: the device is being suspended' "$(dmesg_since)"
check_match "suspend: no checkpoint ran" ' last_cp - ' "$(dmsetup status sp-wb)"
check "suspend: cache device writes fast again" bash -c \
  "dmsetup reload sp-cdly --table '0 $CS delay $C 0 0 $C 0 0' && dmsetup suspend sp-cdly && dmsetup resume sp-cdly"
check "suspend: resume" dmsetup resume sp-wb
out=$(dmsetup message sp-wb 0 checkpoint hold after-resume 2>&1)
check_match "suspend: after resume a checkpoint runs again" '^id [0-9]+ mode hold label after-resume ' "$out"
cleanup_dm

# --- checkpoint writethrough on an ordered cache --------------------------------------------------
O=$(loopdev ow-origin 64); C=$(loopdev ow-cache 16)
S=$(sectors "$O")
check "ordered: a cache in ordered mode" dmsetup create ow-wb --table "0 $((S - 8)) wbcache $O $C 4096 2 mode ordered"
check "ordered: dirty blocks in two epochs" bash -c \
  "dd if=/dev/urandom of=/dev/mapper/ow-wb bs=4k count=64 oflag=direct conv=fsync status=none &&
   dd if=/dev/urandom of=/dev/mapper/ow-wb bs=4k count=64 seek=64 oflag=direct conv=fsync status=none"
dmesg_mark
check_fails "ordered: checkpoint writethrough is refused" dmsetup message ow-wb 0 checkpoint writethrough
check_match "ordered: ... and the log says why" 'checkpoint refused: the cache is in ordered mode: writing through would break its epoch order' "$(dmesg_since)"
check_match "ordered: nothing changed (no checkpoint ran, still ordered)" '^0 [0-9]+ wbcache ok ordered .* last_cp - ' "$(dmsetup status ow-wb)"
out=$(dmsetup message ow-wb 0 checkpoint ordered 2>&1)
check_match "ordered: checkpoint ordered works" '^id [0-9]+ mode ordered ' "$out"
out=$(dmsetup message ow-wb 0 checkpoint hold 2>&1)
check_match "ordered: checkpoint hold works" '^id [0-9]+ mode hold ' "$out"
cleanup_dm

# --- item 2: a block's versions are bounded; load and format go in bounded steps -------------------
# In ordered mode every flush closes the epoch and a rewritten block keeps one version per epoch:
# `pwrite 4K@0; fdatasync` in a loop made one chain of half the cache, walked in end_io with
# interrupts off. Now a block holds at most 16 versions: a write beyond waits for writeback.
O=$(loopdev vc-origin 64); C=$(loopdev vc-cache 16)
S=$(sectors "$O")
N=${WBREPL_VERSION_LOOP:-3000}
check "versions: an ordered cache" dmsetup create vc-wb --table "0 $((S - 8)) wbcache $O $C 4096 2 mode ordered"
rewrite_loop() {
  python3 - "$1" <<'EOF2'
import mmap, os, sys, time
n = int(sys.argv[1])
fd = os.open("/dev/mapper/vc-wb", os.O_RDWR | os.O_DIRECT)
m = mmap.mmap(-1, 4096)
t0 = time.monotonic()
for i in range(n):
    m[0:8] = i.to_bytes(8, "little")
    os.pwrite(fd, m, 0)
    os.fdatasync(fd)
print("%d rewrites + fdatasync in %.1f s" % (n, time.monotonic() - t0))
os.preadv(fd, [m], 0)
sys.exit(0 if int.from_bytes(m[0:8], "little") == n - 1 else "block 0 does not hold the last write")
EOF2
}
check "versions: $N rewrites of block 0, each followed by fdatasync (a new epoch each)" rewrite_loop "$N"
dirty=$(field vc-wb dirty)
check "versions: block 0 holds at most 16 versions (dirty $dirty; before: about half the cache)" test "$dirty" -le 16
check_match "versions: the epochs went by ($(field vc-wb epoch))" '^[0-9]{4,}$' "$(field vc-wb epoch)"
dmesg_mark
t0=$(date +%s%N)
check "versions: reload (the new table loads the metadata)" bash -c \
  "dmsetup reload vc-wb --table '0 $((S - 8)) wbcache $O $C 4096 2 mode ordered' && dmsetup suspend vc-wb && dmsetup resume vc-wb"
check "versions: ...in under $(scaled 10) s ($((($(date +%s%N) - t0) / 1000000)) ms)" test $((($(date +%s%N) - t0) / 1000000)) -lt "$(scaled 10000)"
# Writeback may go on until the suspend (the block is above half the bound): the load finds at
# most what the status showed, at least one, and the status then says what it loaded.
loaded=$(dmesg_since | sed -n 's/.*loaded commit [0-9]*: \([0-9]*\) dirty blocks.*/\1/p' | tail -1)
check "versions: ...with the dirty versions (loaded ${loaded:-none}, $dirty before the suspend)" \
  test "${loaded:-0}" -ge 1 -a "${loaded:-0}" -le "$dirty"
check_eq "versions: ...as the status says" "${loaded:-none}" "$(field vc-wb dirty)"
check "versions: the data is there" bash -c "python3 -c \"
import os, mmap
fd = os.open('/dev/mapper/vc-wb', os.O_RDONLY | os.O_DIRECT); m = mmap.mmap(-1, 4096); os.preadv(fd, [m], 0)
raise SystemExit(0 if int.from_bytes(m[0:8], 'little') == $N - 1 else 1)\""
check_eq "versions: flush" flushed "$(dmsetup message vc-wb 0 flush)"
cleanup_dm

# --- concurrent whole-block writes of one block (review of stop 19) -------------------------------
# 32 writes of block 0 in flight together (fio, libaio, QD32, the cache device's writes delayed
# 100 ms so they overlap): they go into one cache block in place. Before, each write over the
# first still in flight got a second version of the same epoch (up to 16, then the rest waited
# on the slow path); released at completion, they showed as `releasing`. Those versions could
# carry the same commit sequence number and epoch, and after a crash the older's tombstone
# discarded the newer (host tests concurrent_full_writes_of_a_block_survive_a_crash_as_the_later_one
# and a_version_superseded_within_its_epoch_keeps_the_older_epochs).
O=$(loopdev cw-origin 16); C=$(loopdev cw-cache 16)
S=$(sectors "$O"); CS=$(sectors "$C")
CW_DELAY=$(scaled 100)
check "concurrent: the cache device behind dm-delay (writes $CW_DELAY ms)" dmsetup create cw-cdly --table "0 $CS delay $C 0 0 $C 0 $CW_DELAY"
CWT="0 $((S - 8)) wbcache $O /dev/mapper/cw-cdly 4096 4 high_watermark 90 low_watermark 80"
check "concurrent: a writeback cache over it" dmsetup create cw-wb --table "$CWT"
# (fio's sequential writes wait for an overlapping one in flight; random ones with no random map
# do not.)
cw_fio() {
  local t0=$(date +%s%N)
  fio --name=cw --filename=/dev/mapper/cw-wb --rw=randwrite --norandommap --bs=4k --size=4k --io_size=1M \
    --iodepth=32 --ioengine=libaio --direct=1 --output-format=terse >/dev/null || return 1
  local ms=$((($(date +%s%N) - t0) / 1000000))
  echo "256 writes in $ms ms"
  # One after another they would take 256 delays (25.6 s).
  [ "$ms" -lt "$(scaled 15000)" ] || { echo "they did not overlap"; return 1; }
}
check "concurrent: 256 writes of block 0, 32 in flight at a time" cw_fio
st=$(dmsetup status cw-wb)
check_eq "concurrent: one version of block 0 ($st)" 1 "$(field cw-wb dirty)"
check_eq "concurrent: none waited on the slow path (before: a version per write over one in flight, up to 16, then waits)" \
  0 "$(field cw-wb slow_writes)"
check_eq "concurrent: none released" 0 "$(field cw-wb releasing)"
check_eq "concurrent: all 256 mapped on the fast path (write hits + misses)" 256 $(( $(field cw-wb write_hits) + $(field cw-wb write_misses) ))
# Partial writes over it meanwhile wait for the whole-block writes in flight (the slow path).
check "concurrent: whole-block and 512-byte writes of block 0 together" fio --output-format=terse \
  --name=full --filename=/dev/mapper/cw-wb --rw=randwrite --norandommap --bs=4k --size=4k --io_size=256k --iodepth=16 \
  --ioengine=libaio --direct=1 \
  --name=part --filename=/dev/mapper/cw-wb --rw=randwrite --norandommap --bs=512 --size=4k --io_size=64k --iodepth=8 \
  --ioengine=libaio --direct=1
check_eq "concurrent: still one version of block 0" 1 "$(field cw-wb dirty)"
check "concurrent: a known block written after them all" bash -c "python3 -c \"
import os, mmap
fd = os.open('/dev/mapper/cw-wb', os.O_RDWR | os.O_DIRECT); m = mmap.mmap(-1, 4096); m.write(b'L' * 4096)
os.pwrite(fd, m, 0); os.fsync(fd)\""
check "concurrent: reload (the new table loads the metadata)" bash -c \
  "dmsetup reload cw-wb --table '$CWT' && dmsetup suspend cw-wb && dmsetup resume cw-wb"
check_eq "concurrent: ... one dirty block" 1 "$(field cw-wb dirty)"
check "concurrent: it reads the last write" bash -c "python3 -c \"
import os, mmap
fd = os.open('/dev/mapper/cw-wb', os.O_RDONLY | os.O_DIRECT); m = mmap.mmap(-1, 4096); os.preadv(fd, [m], 0)
raise SystemExit(0 if m[:] == b'L' * 4096 else 1)\""
check_eq "concurrent: flush" flushed "$(dmsetup message cw-wb 0 flush)"
check "concurrent: the origin holds it" bash -c "cmp <(dd if=$O iflag=direct bs=4k count=1 status=none) <(printf 'L%.0s' \$(seq 4096))"
cleanup_dm

# A crafted cache device, well checksummed, whose every entry is a dirty version of block 7: the
# load refuses it (more than 32 versions of a block) instead of building one chain of the whole
# cache with interrupts off (before: loaded, in O(n^2)).
O=$(loopdev fc-origin 64); C=$(loopdev fc-cache 16)
S=$(sectors "$O")
check "crafted: format a cache device" bash -c "dmsetup create fc-wb --table '0 $((S - 8)) wbcache $O $C 4096 0' && dmsetup remove fc-wb"
craft() {
  python3 - "$1" <<'EOF2'
import os, struct, sys
sys.path.insert(0, os.environ["WBREPL_ROOT"] + "/tests/guest")
from replfuzz import crc32c
dev = sys.argv[1]
with open(dev, "r+b", buffering=0) as f:
    sb = bytearray(f.read(512))
    nr = struct.unpack_from("<Q", sb, 24)[0]
    struct.pack_into("<Q", sb, 56, 1)                       # seq 1: the entries' commit
    struct.pack_into("<I", sb, 508, crc32c(bytes(sb[:508])))
    f.seek(4096)                                            # copy 1 (seq & 1)
    f.write(bytes(sb))
    table = bytearray()
    for i in range(nr):
        e = struct.pack("<QQI", 7, 1, 1 + i) + bytes([1]) + bytes(7)
        table += e + struct.pack("<I", crc32c(struct.pack("<Q", i) + e))
    f.seek(8192)
    f.write(bytes(table))
    os.fsync(f.fileno())
print("%d entries, all block 7" % nr)
EOF2
}
check "crafted: every entry a dirty version of block 7" craft "$C"
dmesg_mark
t0=$(date +%s%N)
check_fails "crafted: the cache is refused" dmsetup create fc-wb --table "0 $((S - 8)) wbcache $O $C 4096 0"
check "crafted: ...at once ($((($(date +%s%N) - t0) / 1000000)) ms)" test $((($(date +%s%N) - t0) / 1000000)) -lt "$(scaled 10000)"
check_match "crafted: ...saying why" 'cannot use the cache device: metadata entry 3[0-9]: Cache metadata has more than 32 versions of one block' "$(dmesg_since)"
dmsetup remove fc-wb 2>/dev/null
cleanup_dm

# A cache of over a million blocks (512-byte blocks on a 600 MiB device) formats and loads: both
# run in bounded holds of the index lock (the soft-lockup detector is on in the guest kernel).
O=$(loopdev mb-origin 64); C=$(loopdev mb-cache 600)
S=$(sectors "$O")
dmesg_mark
check "million: format" dmsetup create mb-wb --table "0 $((S - 8)) wbcache $O $C 512 0"
blocks=$(field mb-wb blocks)
check "million: ...over a million blocks ($blocks)" test "$blocks" -gt 1000000
check "million: some dirty blocks" dd if=/dev/urandom of=/dev/mapper/mb-wb bs=64k count=32 oflag=direct conv=fsync status=none
check "million: remove and load" bash -c "dmsetup remove mb-wb && dmsetup create mb-wb --table '0 $((S - 8)) wbcache $O $C 512 0'"
check_match "million: the dirty blocks are back" 'loaded commit [0-9]+: 4096 dirty blocks' "$(dmesg_since)"
check "million: remove" dmsetup remove mb-wb
# --- 64-bit epochs -------------------------------------------------------------------------------
# Marker ids are the epochs checkpoints close. They were 32-bit and wrapped to 1 after 2^32
# closes (at 10k flushes a second in ordered mode: days), and dm-repl's acknowledged marker id (a
# maximum) then covered every new id at once. Here a cache's superblock is rewritten to say
# epoch 2^32 - 2: its checkpoint ids must go on past 2^32 (before: 4294967295, then 1, 2).
O=$(loopdev ep-origin 64); C=$(loopdev ep-cache 16)
S=$(sectors "$O")
EPT="0 $((S - 8)) wbcache $O $C 4096 0"
# set_sb DEV SEQ EPOCH [VERSION]: superblock copy SEQ & 1 made from copy 0 with commit sequence
# SEQ, epoch EPOCH (u64 at byte 64) and format version VERSION (u32 at byte 8, default copy 0's),
# CRC-32C of bytes 0..508 at 508.
set_sb() {
  python3 - "$here" "$@" <<'EOF'
import mmap, os, struct, sys
sys.path.insert(0, sys.argv[1])
from replfuzz import crc32c
dev, seq, epoch = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
m = mmap.mmap(-1, 4096)
os.preadv(fd, [m], 4096)
seq1 = struct.unpack_from("<Q", m, 56)[0] if m[:8] == b"WBRCACHE" else 0
os.preadv(fd, [m], 0)
sb = bytearray(m[:512])
if sb[:8] != b"WBRCACHE":
    sys.exit("copy 0 is not a wbcache superblock")
if max(struct.unpack_from("<Q", sb, 56)[0], seq1) >= seq:
    sys.exit(f"the cache is past commit {seq - 1} already: copy {seq & 1} would not be the newest")
if len(sys.argv) > 5:
    sb[8:12] = struct.pack("<I", int(sys.argv[5]))
sb[56:64] = struct.pack("<Q", seq)
sb[64:72] = struct.pack("<Q", epoch)
sb[508:512] = struct.pack("<I", crc32c(bytes(sb[:508])))
m.seek(0)
m.write(bytes(sb) + bytes(4096 - 512))
os.pwritev(fd, [m], 4096 * (seq & 1))
os.close(fd)
print(f"copy {seq & 1}: version {struct.unpack_from('<I', sb, 8)[0]} seq {seq} epoch {epoch}")
EOF
}
# sb_version DEV COPY: the format version in superblock copy COPY (read past the page cache).
sb_version() { dd if="$1" bs=4096 skip="$2" count=1 iflag=direct status=none | od -An -tu4 -j8 -N4 | tr -d ' '; }
# cp_id DEV LABEL: writes 64 KiB, takes a hold checkpoint, prints its id.
cp_id() {
  dd if=/dev/urandom of="/dev/mapper/$1" bs=4k count=16 seek=$((RANDOM % 1000)) oflag=direct status=none &&
    dmsetup message "$1" 0 checkpoint hold "$2" | sed -n 's/^id \([0-9][0-9]*\) mode hold .*/\1/p'
}
check "epochs: format a cache" dmsetup create ep-wb --table "$EPT"
check_eq "epochs: it writes format version 2" 2 "$(sb_version "$C" 0)"
check "epochs: remove it" dm_remove ep-wb
check "epochs: superblock copy 1 says commit 1, epoch 2^32 - 2" set_sb "$C" 1 $(((1 << 32) - 2))
check "epochs: load it" dmsetup create ep-wb --table "$EPT"
check_match "epochs: the current epoch is 2^32 - 1" ' epoch 4294967295 ' "$(dmsetup status ep-wb)"
id1=$(cp_id ep-wb ep1); id2=$(cp_id ep-wb ep2); id3=$(cp_id ep-wb ep3)
check_match "epochs: three checkpoints answered ids ($id1 $id2 $id3)" '^[0-9]+ [0-9]+ [0-9]+$' "$id1 $id2 $id3"
check "epochs: ... strictly increasing ($id1 < $id2 < $id3)" test "${id1:-0}" -lt "${id2:-0}" -a "${id2:-0}" -lt "${id3:-0}"
check "epochs: ... the last above 2^32 ($id3)" test "${id3:-0}" -gt $((1 << 32))
ep=$(field ep-wb epoch)
check "epochs: the status epoch is above 2^32 ($ep)" test "${ep:-0}" -gt $((1 << 32))
check "epochs: reload the table (the metadata is loaded again)" bash -c "dmsetup reload ep-wb --table '$EPT' && dmsetup resume ep-wb"
id4=$(cp_id ep-wb ep4)
check "epochs: after the reload the next id is larger still ($id3 < $id4)" test "${id3:-0}" -lt "${id4:-0}"
check "epochs: remove" dm_remove ep-wb
# A superblock of format version 1 (32-bit epochs, possibly wrapped) loads with 2^32 added to its
# epoch: every id from then on is above every one the 32-bit counter handed out.
check "epochs: a new cache" dd if=/dev/zero of="$C" bs=4096 count=2 oflag=direct status=none
check "epochs: ... formatted" dmsetup create ep-wb --table "$EPT"
check "epochs: ... removed" dm_remove ep-wb
check "epochs: superblock copy 1 as version 1: commit 1, epoch 7" set_sb "$C" 1 7 1
check "epochs: load it" dmsetup create ep-wb --table "$EPT"
check_match "epochs: the epoch is 2^32 + 8" ' epoch 4294967304 ' "$(dmsetup status ep-wb)"
id5=$(cp_id ep-wb v1)
check_eq "epochs: the first checkpoint's id is 2^32 + 8" 4294967304 "$id5"
check_eq "epochs: its commit (copy 0) wrote format version 2" 2 "$(sb_version "$C" 0)"
# --- held: a hold checkpoint writes back its epochs and nothing newer ------------------------------
# A cache that writes back only when asked (high_watermark 100) takes hold checkpoints while fio
# writes: each one must write back exactly the blocks it drained (`blocks` of its answer), also
# once it has returned. The writes it held (the next epoch) stay in the cache until the next
# checkpoint: below DRBD (92-checkpoint-drbd) anything written back after the marker and before
# the snapshot lands in the image. (Before the fix the checkpoint lifted its writeback limit and,
# a moment later in another step, stopped forcing writeback: a writeback round that looked in
# between wrote back the whole next epoch. It happened once in CI, image of marker 1 in 92; the
# window is widened in the mutation run described in docs/testing.md.)
O=$(loopdev hd-origin 64); C=$(loopdev hd-cache 64)
HDT="0 $(($(sectors "$O") - 8)) wbcache $O $C 4096 4 high_watermark 100 low_watermark 99"
check "held: a cache writing back only at checkpoints" dmsetup create hd-wb --table "$HDT"
fio --name=held --filename=/dev/mapper/hd-wb --rw=randwrite --bs=4k --size=8m --direct=1 \
  --ioengine=libaio --iodepth=4 --numjobs=2 --rate_iops=100 --time_based --runtime=600 --output=/dev/null &
FPID=$!
held_run() {
  local i w0 w1 out b bad=0 total=0
  sleep 1
  for i in $(seq "$1"); do
    w0=$(field hd-wb writebacks)
    out=$(dmsetup message hd-wb 0 checkpoint hold "h$i") || { echo "checkpoint $i failed"; return 1; }
    b=$(sed -n 's/.* blocks \([0-9]*\) .*/\1/p' <<<"$out")
    sleep 0.05
    w1=$(field hd-wb writebacks)
    total=$((total + b))
    if [ "$((w1 - w0))" != "$b" ]; then
      bad=$((bad + 1)); echo "checkpoint $i: drained $b blocks, but $((w1 - w0)) were written back"
    fi
  done
  echo "$1 checkpoints drained $total blocks; $bad wrote back more"
  kill -0 "$FPID" || { echo "fio is not running"; return 1; }
  [ "$bad" = 0 ]
}
check "held: 20 hold checkpoints under writes each write back exactly what they drained" held_run 20
diag 6 <"$T_OUT"
kill "$FPID"; wait "$FPID" 2>/dev/null
check "held: the writes were held in the cache (dirty blocks left)" test "$(field hd-wb dirty)" -gt 0
check "held: remove" dm_remove hd-wb
cleanup_dm

# --- flush and checkpoint: one at a time -----------------------------------------------------------
# A `flush` message writes back everything until nothing is dirty. A checkpoint that ran meanwhile
# held its new writes only until it ended: the flush then wrote them back at once, after the
# marker, where below DRBD the image is taken (92-checkpoint-drbd). The checkpoint must be refused
# while a flush runs, as a flush is while a checkpoint runs (90-checkpoint.sh). The origin's
# writes take 2 s here, so the flush is still running when the checkpoint is asked for.
O=$(loopdev fc-origin 64); C=$(loopdev fc-cache 16)
S=$(sectors "$O")
check "flush+cp: an origin behind dm-delay" dmsetup create fc-odly --table "0 $S delay $O 0 0 $O 0 0"
check "flush+cp: a cache writing back only when asked" dmsetup create fc-wb --table \
  "0 $((S - 8)) wbcache /dev/mapper/fc-odly $C 4096 4 high_watermark 100 low_watermark 99"
check "flush+cp: 4 MiB dirty" dd if=/dev/urandom of=/dev/mapper/fc-wb bs=64k count=64 oflag=direct status=none
check "flush+cp: origin writes now take $(scaled 2) s" bash -c \
  "dmsetup reload fc-odly --table '0 $S delay $O 0 0 $O 0 $(scaled 2000)' && dmsetup suspend fc-odly && dmsetup resume fc-odly"
dmesg_mark
t0=$(date +%s%N)
dmsetup message fc-wb 0 flush >"$IMG_DIR/fc-flush.out" 2>&1 &
FL=$!
sleep 0.5
fl_running=no; kill -0 $FL 2>/dev/null && fl_running=yes
cp_rc=0; cp_out=$(timeout "$(scaled 60)" dmsetup message fc-wb 0 checkpoint hold during-flush 2>&1) || cp_rc=$?
cp_ms=$((($(date +%s%N) - t0) / 1000000))
fl_rc=0; wait $FL || fl_rc=$?
fl_ms=$((($(date +%s%N) - t0) / 1000000))
check_eq "flush+cp: the flush succeeded (in $fl_ms ms)" 0 "$fl_rc"
check_eq "flush+cp: ...and was still running when the checkpoint was asked for" yes "$fl_running"
check_fails "flush+cp: the checkpoint during the flush was refused (exit $cp_rc: $cp_out)" test "$cp_rc" = 0
check "flush+cp: ...at once ($cp_ms ms), not after the flush ($fl_ms ms)" test "$cp_ms" -lt $((fl_ms - 1000))
check_match "flush+cp: ...and the log says why" 'checkpoint refused: a flush \(writeback of everything\) is in progress' "$(dmesg_since)"
check_match "flush+cp: no checkpoint ran" ' last_cp - ' "$(dmsetup status fc-wb)"
check_eq "flush+cp: nothing dirty after the flush" 0 "$(field fc-wb dirty)"
check "flush+cp: origin writes fast again" bash -c \
  "dmsetup reload fc-odly --table '0 $S delay $O 0 0 $O 0 0' && dmsetup suspend fc-odly && dmsetup resume fc-odly"
out=$(dmsetup message fc-wb 0 checkpoint hold after-flush 2>&1)
check_match "flush+cp: after the flush a checkpoint runs" '^id [0-9]+ mode hold label after-flush ' "$out"
check "flush+cp: remove" bash -c "dmsetup remove --retry fc-wb && dmsetup remove --retry fc-odly"
cleanup_dm

finish
