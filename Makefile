# wbrepl: top-level entry points. The kernel modules themselves are built by kbuild (see Kbuild).
#
#   make setup      install the toolchain and guest tools (Debian packages, bindgen, virtme-ng)
#   make kernel     build (or find in ~/.cache/wbrepl) the Rust-enabled guest kernel
#   make modules    build dm-wbcache.ko, dm-repl.ko, dmcore_kunit.ko   (KDIR=... for your own tree)
#   make test       host tests + kernel + modules + every guest test   (what CI runs)
#                   (make guest-test TESTS="30-fio.sh" runs chosen guest test files)
#   make test-long  the same with long property-test and power-loss campaigns
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

.PHONY: all setup kernel modules modules-clean cli host-test guest-test test ci-env test-long bench-wbcache bench-repl bench-checkpoint demo clean

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

host-test: setup
	cd $(ROOT) && cargo test --workspace --locked
	python3 $(ROOT)/tests/ktap.py --self-test
	python3 $(ROOT)/tests/logreplay_selftest.py
	python3 $(ROOT)/tests/guest/powerloss.py self-test
	python3 $(ROOT)/tests/guest/cpload.py self-test
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
	cd $(ROOT) && cargo clean
