#!/usr/bin/env bash
# Installs everything wbrepl needs on a Debian 12 (bookworm) host. Idempotent: every step checks
# first and says what it does. Run by `make setup` (and by `make test`/`make demo` when a tool is
# missing). Needs root (or sudo) for apt.
set -euo pipefail

say() { printf '[setup] %s\n' "$*"; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# Pinned versions: the pair verified together (see docs/building.md).
RUSTC_WEB_VERSION="${RUSTC_WEB_VERSION:-1.85.0+dfsg3-1~deb12u3}"
LINUX_SOURCE_VERSION="${LINUX_SOURCE_VERSION:-6.12.117-1~deb12u1}"
BINDGEN_VERSION="0.69.5"
VIRTME_NG_VERSION="1.42"

PKGS=(
  # kernel build
  clang lld llvm libclang-dev bc bison flex libelf-dev libssl-dev cpio xz-utils kmod make
  # guest runtime (the guest runs on the host's root fs)
  qemu-system-x86 udev dmsetup fio e2fsprogs thin-provisioning-tools drbd-utils iproute2
  keyutils procps util-linux iputils-ping python3
  # userspace tool (devicemapper-sys)
  libdevmapper-dev pkg-config
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

pin_or_newest() { # <package> <version>: prints pkg=version if that version exists, else pkg
  local pkg=$1 ver=$2
  if apt-cache madison "$pkg" 2>/dev/null | awk '{print $3}' | grep -qx "$ver"; then
    echo "$pkg=$ver"
  else
    say "WARNING: $pkg $ver is no longer in the archive; falling back to the newest $pkg" >&2
    echo "$pkg"
  fi
}

need_rust=0
[ -x /usr/bin/rustc ] && /usr/bin/rustc --version 2>/dev/null | grep -q "${RUSTC_WEB_VERSION%%+*}" || need_rust=1
need_src=0
[ -f /usr/src/linux-source-6.12.tar.xz ] || need_src=1

if [ ${#missing[@]} -gt 0 ] || [ $need_rust = 1 ] || [ $need_src = 1 ]; then
  say "apt-get update"
  $SUDO apt-get update -qq
  extra=()
  if [ $need_rust = 1 ]; then
    for p in rustc-web libstd-rust-web-dev rust-web-src; do extra+=("$(pin_or_newest $p "$RUSTC_WEB_VERSION")"); done
  fi
  [ $need_src = 1 ] && extra+=("$(pin_or_newest linux-source-6.12 "$LINUX_SOURCE_VERSION")")
  say "apt-get install ${missing[*]} ${extra[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    --allow-downgrades "${missing[@]}" "${extra[@]}"
else
  say "Debian packages: present"
fi

if ! "$HOME/.cargo/bin/bindgen" --version 2>/dev/null | grep -q "$BINDGEN_VERSION"; then
  say "cargo install bindgen-cli $BINDGEN_VERSION"
  cargo install --locked bindgen-cli --version "$BINDGEN_VERSION"
else
  say "bindgen $BINDGEN_VERSION: present"
fi

if ! command -v vng >/dev/null 2>&1; then
  say "pip install virtme-ng==$VIRTME_NG_VERSION"
  python3 -m pip install -q "virtme-ng==$VIRTME_NG_VERSION"
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
else
  say "virtme-ng: present ($(vng --version 2>/dev/null | head -1))"
fi
say "done"
