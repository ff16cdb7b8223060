#!/usr/bin/env bash
# Builds (or finds in the cache) the guest kernel: Debian linux-source-6.12 + tinyconfig +
# qemu/kernel.config, with Rust. The tree is kept in ${WBREPL_CACHE:-~/.cache/wbrepl}/kernel-<key>/
# where <key> hashes the fragment's options, the toolchain versions and RECIPE (bump it when the
# build steps below change), so a warm run rebuilds nothing. Prints the tree path (KDIR) as its
# last line.
#   qemu/build-kernel.sh            build if needed, print KDIR
#   qemu/build-kernel.sh --kdir     only print the KDIR for the current key (may not exist yet)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
say() { printf '[kernel] %s\n' "$*" >&2; }

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
key=$( { echo "recipe $RECIPE"; grep -Ev '^[[:space:]]*(#|$)' "$here/kernel.config"; versions; } | sha256sum | cut -c1-16)
dir=$CACHE/kernel-$key
kdir=$dir/linux
if [ "${1:-}" = "--kdir" ]; then echo "$kdir"; exit 0; fi

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
say "configuring: tinyconfig + qemu/kernel.config"
"${KMAKE[@]}" -s tinyconfig >&2
"$kdir/scripts/kconfig/merge_config.sh" -m -O "$kdir" "$kdir/.config" "$here/kernel.config" >/dev/null
"${KMAKE[@]}" -s olddefconfig >&2
# Every option the fragment asks for must have survived olddefconfig (unmet dependencies drop
# options silently).
bad=0
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue;; esac
  opt=${line%%=*}; val=${line#*=}
  if [ "$val" = n ]; then
    grep -q "^$opt=" "$kdir/.config" && { say "config: $opt should be off"; bad=1; }
  else
    grep -qx "$opt=$val" "$kdir/.config" || { say "config: $line did not take effect"; bad=1; }
  fi
done < "$here/kernel.config"
[ $bad = 0 ] || { say "fix qemu/kernel.config"; exit 1; }
say "building bzImage + modules with $JOBS jobs (about 10 minutes on 2 cores)"
"${KMAKE[@]}" -s -j"$JOBS" bzImage modules >&2
touch "$dir/.built"
say "built in $(( $(date +%s) - start )) s: $kdir"
# keep only the newest few trees
ls -dt "$CACHE"/kernel-* 2>/dev/null | tail -n +4 | xargs -r rm -rf
echo "$kdir"
