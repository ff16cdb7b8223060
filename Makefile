# wbrepl: top-level entry points. The kernel modules themselves are built by kbuild (see Kbuild).
#
#   make setup      install the toolchain and guest tools (Debian packages, bindgen, virtme-ng)
#   make kernel     build (or find in ~/.cache/wbrepl) the Rust-enabled guest kernel
#   make modules    build dm-wbcache.ko, dm-repl.ko, dmcore_kunit.ko   (KDIR=... for your own tree)
#   make test       host tests + kernel + modules + every guest test   (what CI runs)
#                   (make guest-test TESTS="30-fio.sh" runs chosen guest test files)
#   make test-long  the same with long property-test and power-loss campaigns, then make test-debug
#   make test-debug the guest tests under the debug kernel (KASAN, lockdep, DEBUG_OBJECTS, ...:
#                   qemu/kernel-debug.config), modules built against it in .debug-modules/
#   make bench-wbcache  dm-wbcache vs dm-writecache vs the origin alone (a benchmark, not a test)
#   make bench-repl     dm-repl vs DRBD 8.4 (protocols A and C) vs the local device alone (a benchmark)
#   make bench-checkpoint  drain time against its bound, write p99 during checkpoints, marker to image
#   make demo       two nodes: ext4 on the stack, checkpoints in every mode, images checked at the secondary
#   make clean

SHELL := /bin/bash
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))

# Kernel-side toolchain: the kernel and the modules must be built by the same rustc.
KRUSTC ?= /usr/bin/rustc
KBINDGEN ?= $(HOME)/.cargo/bin/bindgen
KRUST_LIB_SRC ?= $(firstword $(wildcard /usr/src/rustc-*/library))

# KDIR: a built, Rust-enabled kernel tree. Default: ours, built on demand and cached.
ifeq ($(origin KDIR),undefined)
OWN_KERNEL := 1
KDIR = $(shell $(ROOT)/qemu/build-kernel.sh --kdir)
endif

KMAKE = $(MAKE) -C $(KDIR) M=$(ROOT) LLVM=1 RUSTC=$(KRUSTC) BINDGEN=$(KBINDGEN) RUST_LIB_SRC=$(KRUST_LIB_SRC)
export KDIR

.PHONY: all setup kernel kernel-debug modules modules-debug modules-clean cli host-test guest-test test ci-env test-long test-debug bench-wbcache bench-repl bench-checkpoint demo clean

all: modules

setup:
	@$(ROOT)/qemu/setup.sh

kernel: setup
ifdef OWN_KERNEL
	@$(ROOT)/qemu/build-kernel.sh >/dev/null
endif

# Warnings (rustc, clang, objtool) fail the build: kernel code here is warning-free.
modules: kernel
	+@set -o pipefail; $(KMAKE) modules 2>&1 | tee $(ROOT)/.modules-build.log
	@if grep -E 'warning:|Warning:' $(ROOT)/.modules-build.log; then \
	  echo "make modules: warnings above are errors"; exit 1; fi

modules-clean:
	+$(KMAKE) clean

# --- the debug kernel (qemu/kernel-debug.config on top of qemu/kernel.config: KASAN, lockdep,
# DEBUG_OBJECTS, ...), cached apart from the normal one (debug-kernel-<key>/), and our modules
# built against it. Kbuild of 6.12 writes an external module's objects next to its sources (M=;
# a separate output directory, MO=, came in 6.13), so the debug modules are built in a copy of
# the sources, .debug-modules/: the normal .ko files and the configuration-dependent generated
# bindings stay as they are, and each tree rebuilds only what changed. The copy keeps the
# sources' times (tar), so an unchanged file is not rebuilt; the generated bindings of the
# normal build are never copied (they would be taken as up to date for the other
# configuration: spinlock_t, for one, is larger with lockdep).
DEBUG_KDIR ?= $(shell $(ROOT)/qemu/build-kernel.sh --debug --kdir)
DEBUG_MODDIR := $(ROOT)/.debug-modules
DKMAKE = $(MAKE) -C $(DEBUG_KDIR) M=$(DEBUG_MODDIR) LLVM=1 RUSTC=$(KRUSTC) BINDGEN=$(KBINDGEN) RUST_LIB_SRC=$(KRUST_LIB_SRC)

kernel-debug: setup
	@$(ROOT)/qemu/build-kernel.sh --debug >/dev/null

modules-debug: kernel-debug
	@mkdir -p $(DEBUG_MODDIR)
	@cd $(ROOT) && find Kbuild rust -type f \( -name Kbuild -o -name '*.rs' -o -name '*.c' -o -name '*.h' \) \
	  ! -name bindings_generated.rs ! -name '*.mod.c' -print0 | tar --null -T - -cf - | tar -xf - -C $(DEBUG_MODDIR)
	+@set -o pipefail; $(DKMAKE) modules 2>&1 | tee $(ROOT)/.debug-modules-build.log
	@if grep -E 'warning:|Warning:' $(ROOT)/.debug-modules-build.log; then \
	  echo "make modules-debug: warnings above are errors"; exit 1; fi

host-test: setup
	cd $(ROOT) && cargo test --workspace --locked
	python3 $(ROOT)/tests/ktap.py --self-test
	python3 $(ROOT)/tests/logreplay_selftest.py
	python3 $(ROOT)/tests/guest/powerloss.py self-test
	python3 $(ROOT)/tests/guest/cpload.py self-test
	python3 $(ROOT)/tests/guest/kmemleak.py self-test
	python3 $(ROOT)/tests/guest/replwire.py
	python3 $(ROOT)/tests/guest/wirefuzz.py self-test
	python3 $(ROOT)/tests/harness_selftest.py

# The in-tree DRBD 8.4 warns once per boot under CONFIG_DEBUG_ATOMIC_SLEEP (its worker takes a
# mutex in maybe_send_barrier() after prepare_to_wait() in wait_for_work()): not our code, so
# that one warning does not fail the run (bench-repl, and guest-test for 92-checkpoint-drbd.sh); any other kernel error still does.
DRBD_KNOWN_WARNING := do not call blocking ops when !TASK_RUNNING.*maybe_send_barrier.*drbd_worker
# The CLI runs in the guest (it needs device-mapper), built on the host.
cli: setup
	cd $(ROOT) && cargo build --release --locked -p wbrepl -p wbrepl-testtools

guest-test: modules cli
	WBREPL_ALLOW_WARNING='$(DRBD_KNOWN_WARNING)' $(ROOT)/tests/run-guest-tests.sh $(TESTS)

# What CI runs (.ci/run): everything, host and guest.
test: host-test guest-test

# `.ci/run --print-env`: what make sees, after .ci/run has cleared its environment, of the
# variables that choose or size the tests (tests/harness_selftest.py checks it is nothing).
ci-env:
	@echo "make sees TESTS='$(TESTS)' PROPTEST_CASES='$(PROPTEST_CASES)' MAKEFLAGS='$(MAKEFLAGS)'"
	@echo "make exports: $$(env | grep -oE '^(TESTS|WBREPL_[A-Z0-9_]*|PROPTEST_[A-Z0-9_]*)=' | tr '\n' ' ')(end)"

# Longer campaigns: 200k cases of each property test (the wbindex crash model among them),
# 200 + 100 + 50 + 50 power-loss replay points with 3 crash states rebuilt before each and 64
# origin-alone crash states per flush, 100 000 rewrites of one block with a flush after each in
# ordered mode (86-wbcache-review.sh), and 20 000 fuzzed cache images (87-wbcache-metafuzz.sh);
# then 20 000 fuzzed frames on each of dm-repl's receive paths (58-repl-wirefuzz.sh), a guest run of
# its own (about 3 hours under TCG, estimated from make test's 500 in 4 to 5 minutes: hence its time limit).
test-long: export PROPTEST_CASES = 200000
test-long: export WBREPL_PL_POINTS_BLOCK = 200
test-long: export WBREPL_PL_POINTS_EXT4 = 50
test-long: export WBREPL_PL_POINTS_FULL = 100
test-long: export WBREPL_PL_POINTS_ORDERED = 50
test-long: export WBREPL_PL_STATES = 3
test-long: export WBREPL_PL_SUBSETS = 64
test-long: export WBREPL_GUEST_TIMEOUT = 14400
test-long: export WBREPL_VERSION_LOOP = 100000
test-long: export WBREPL_METAFUZZ_CASES = 20000
test-long: export WBREPL_WIREFUZZ_CASES = 20000
test-long:
	cd $(ROOT) && cargo test --workspace --locked --release
	$(MAKE) -C $(ROOT) guest-test TESTS="85-wbcache-powerloss.sh 86-wbcache-review.sh 87-wbcache-metafuzz.sh"
	WBREPL_GUEST_TIMEOUT=21600 $(MAKE) -C $(ROOT) guest-test TESTS="58-repl-wirefuzz.sh"
	env -u WBREPL_PL_POINTS_BLOCK -u WBREPL_PL_POINTS_EXT4 -u WBREPL_PL_POINTS_FULL -u WBREPL_PL_POINTS_ORDERED \
	  -u WBREPL_PL_STATES -u WBREPL_PL_SUBSETS -u WBREPL_VERSION_LOOP -u WBREPL_METAFUZZ_CASES \
	  -u WBREPL_WIREFUZZ_CASES -u WBREPL_GUEST_TIMEOUT $(MAKE) -C $(ROOT) test-debug

# The guest tests under the debug kernel, with the debug modules (WBREPL_MODULES: where
# qemu/guest-init.sh takes the .ko files from). DEBUG_TESTS picks files (default: all of them);
# tests/guest/debug-kmemleak.sh (the leak scan, and its planted leak) always runs last.
# Any KASAN, lockdep, ODEBUG, sleeping-in-atomic or other kernel report on the console fails the
# run (qemu/scan-console.sh), but for the in-tree DRBD's known warning. Campaign sizes are
# make test's (test-long runs this without its own long ones: under KASAN and lockdep they would
# take days); the guest's time limit is WBREPL_GUEST_TIMEOUT_DEBUG (default 12 h).
DEBUG_TESTS ?=
test-debug: modules-debug cli
	KDIR=$(DEBUG_KDIR) WBREPL_MODULES=$(DEBUG_MODDIR) WBREPL_LOGNAME=debug-guest-tests \
	  WBREPL_GUEST_TIMEOUT=$${WBREPL_GUEST_TIMEOUT_DEBUG:-43200} WBREPL_TIME_SCALE=$${WBREPL_TIME_SCALE:-10} \
	  WBREPL_ALLOW_WARNING='$(DRBD_KNOWN_WARNING)' $(ROOT)/tests/run-guest-tests.sh \
	  $(or $(DEBUG_TESTS),$(notdir $(sort $(wildcard $(ROOT)/tests/guest/[0-9]*.sh)))) debug-kmemleak.sh

bench-wbcache: modules
	$(ROOT)/qemu/run-guest.sh --logdir $(ROOT)/logs/bench-wbcache $(ROOT)/tests/bench/wbcache.sh

bench-repl: modules
	$(ROOT)/qemu/run-guest.sh --logdir $(ROOT)/logs/bench-repl --allow-warning '$(DRBD_KNOWN_WARNING)' \
	  $(ROOT)/tests/bench/repl.sh

bench-checkpoint: modules cli
	$(ROOT)/qemu/run-guest.sh --logdir $(ROOT)/logs/bench-checkpoint $(ROOT)/tests/bench/checkpoint.sh

demo: modules cli
	$(ROOT)/qemu/run-guest.sh $(ROOT)/tests/guest/demo.sh

clean:
	-+$(KMAKE) clean
	rm -rf $(DEBUG_MODDIR)
	cd $(ROOT) && cargo clean
