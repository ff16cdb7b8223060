#!/usr/bin/env bash
# Builds (or finds in the cache) the guest kernel: Debian linux-source-6.12 + tinyconfig +
# qemu/kernel.config, with Rust. The tree is kept in ${WBREPL_CACHE:-~/.cache/wbrepl}/kernel-<key>/
# where <key> hashes the fragment's options, the toolchain versions and RECIPE (bump it when the
# build steps below change), so a warm run rebuilds nothing. Prints the tree path (KDIR) as its
# last line.
#   qemu/build-kernel.sh            build if needed, print KDIR
#   qemu/build-kernel.sh --kdir     only print the KDIR for the current key (may not exist yet)
#   qemu/build-kernel.sh --debug [--kdir]
#                                   the same for the debug kernel: qemu/kernel-debug.config merged
#                                   on top of qemu/kernel.config (KASAN, lockdep, ...), kept apart
#                                   in debug-kernel-<key>/ (its key hashes both fragments)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
say() { printf '[kernel] %s\n' "$*" >&2; }

debug=0 only_kdir=0
for a in "$@"; do
  case "$a" in
    --debug) debug=1;;
    --kdir) only_kdir=1;;
    *) say "unknown argument $a"; exit 2;;
  esac
done
# The fragments merged on top of tinyconfig, in order (a later one overrides an earlier one), and
# the cache folder's prefix. The debug trees' prefix does not start with "kernel-", so the pruning
# below (and that of older copies of this script) never counts them among the normal trees.
fragments=("$here/kernel.config")
prefix=kernel
if [ $debug = 1 ]; then
  fragments+=("$here/kernel-debug.config")
  prefix=debug-kernel
fi

RUSTC=/usr/bin/rustc
BINDGEN=$HOME/.cargo/bin/bindgen
RUST_LIB_SRC=$(ls -d /usr/src/rustc-*/library 2>/dev/null | head -n1)
TARBALL=/usr/src/linux-source-6.12.tar.xz
CACHE=${WBREPL_CACHE:-$HOME/.cache/wbrepl}
RECIPE=1
JOBS=${JOBS:-$(( $(nproc) + 1 ))}

versions() {
  "$RUSTC" --version 2>&1; "$BINDGEN" --version 2>&1; clang --version 2>&1 | head -n1
  ld.lld --version 2>&1 | head -n1
  dpkg-query -W -f='${Version}\n' linux-source-6.12 2>/dev/null || true
}
# The normal kernel's key is computed exactly as before the debug kernel existed (its cached
# tree stays valid); the debug kernel's adds its fragment.
key=$( { echo "recipe $RECIPE"; for f in "${fragments[@]}"; do
           [ "$f" = "$here/kernel.config" ] || echo "fragment $(basename "$f")"
           grep -Ev '^[[:space:]]*(#|$)' "$f"; done; versions; } | sha256sum | cut -c1-16)
dir=$CACHE/$prefix-$key
kdir=$dir/linux
if [ $only_kdir = 1 ]; then echo "$kdir"; exit 0; fi

if [ -f "$dir/.built" ]; then
  say "cached kernel $kdir (key $key)"
  echo "$kdir"; exit 0
fi

for f in "$RUSTC" "$BINDGEN" "$TARBALL"; do
  [ -e "$f" ] || { say "missing $f: run 'make setup'"; exit 1; }
done
[ -n "$RUST_LIB_SRC" ] || { say "missing rust-web-src (/usr/src/rustc-*/library): run 'make setup'"; exit 1; }

KMAKE=(make -C "$kdir" LLVM=1 RUSTC="$RUSTC" BINDGEN="$BINDGEN" RUST_LIB_SRC="$RUST_LIB_SRC")
rm -rf "$dir"; mkdir -p "$dir"
start=$(date +%s)
say "extracting $TARBALL into $dir"
tar -C "$dir" -xf "$TARBALL"
mv "$dir"/linux-source-6.12 "$kdir"
say "checking Rust toolchain (make rustavailable)"
"${KMAKE[@]}" -s rustavailable >&2
say "configuring: tinyconfig + ${fragments[*]##*/}"
"${KMAKE[@]}" -s tinyconfig >&2
"$kdir/scripts/kconfig/merge_config.sh" -m -O "$kdir" "$kdir/.config" "${fragments[@]}" >/dev/null
"${KMAKE[@]}" -s olddefconfig >&2
# Every option the fragments ask for must have survived olddefconfig (unmet dependencies drop
# options silently); where two fragments set one option, the later one's value counts.
bad=0
while IFS= read -r line; do
  opt=${line%%=*}; val=${line#*=}
  if [ "$val" = n ]; then
    grep -q "^$opt=" "$kdir/.config" && { say "config: $opt should be off"; bad=1; }
  else
    grep -qx "$opt=$val" "$kdir/.config" || { say "config: $line did not take effect"; bad=1; }
  fi
done < <(cat "${fragments[@]}" | grep -Ev '^[[:space:]]*(#|$)' |
         awk -F= '{ if (!($1 in v)) order[++n] = $1; v[$1] = $0 } END { for (i = 1; i <= n; i++) print v[order[i]] }')
[ $bad = 0 ] || { say "fix ${fragments[*]##*/}"; exit 1; }
say "building bzImage + modules with $JOBS jobs (about 10 minutes on 2 cores; the debug kernel longer)"
"${KMAKE[@]}" -s -j"$JOBS" bzImage modules >&2
touch "$dir/.built"
say "built in $(( $(date +%s) - start )) s: $kdir"
# keep only the newest few trees of this kind (three normal ones, two debug ones)
keep=4; [ $debug = 1 ] && keep=3
ls -dt "$CACHE/$prefix"-* 2>/dev/null | tail -n +$keep | xargs -r rm -rf
echo "$kdir"
