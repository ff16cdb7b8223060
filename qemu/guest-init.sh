#!/usr/bin/env bash
# Runs inside the guest (see qemu/run-guest.sh): prepares the guest, runs the command, saves
# dmesg. Usage: guest-init.sh ROOT LOGDIR COMMAND [ARGS...]
set -u
# Everything the scripts print goes to stdout: the host keeps stderr for the kernel console,
# which it scans for kernel errors.
exec 2>&1
export WBREPL_ROOT=$1 WBREPL_LOGDIR=$2
shift 2
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug
ip link set lo up
# Our modules, installed where modprobe (and so device-mapper's autoload) finds them. virtme-ng
# points /lib/modules/$(uname -r) at the kernel tree; replace it with a writable directory. They
# are taken from $WBREPL_MODULES (make test-debug: the modules built against the debug kernel),
# by default from the repository (make modules).
mods=/lib/modules/$(uname -r)
if [ -L "$mods" ] || [ ! -d "$mods" ]; then
  rm -f "$mods"
  mkdir -p "$mods"
fi
mkdir -p "$mods/extra"
touch "$mods/modules.order" "$mods/modules.builtin" "$mods/modules.builtin.modinfo"
moddir=${WBREPL_MODULES:-$WBREPL_ROOT}
cp "$moddir"/dm-wbcache.ko "$moddir"/dm-repl.ko "$mods/extra/" 2>/dev/null
[ -f "$moddir/dmcore_kunit.ko" ] && cp "$moddir/dmcore_kunit.ko" "$mods/extra/"
depmod -a

"$@"
rc=$?
dmesg > "$WBREPL_LOGDIR/dmesg.txt"
exit $rc
