# dsm — build, run a local cluster, test, lint, benchmark.
# Building and running need only the Rust toolchain. `make test` also needs redis-cli and
# redis-benchmark (it installs redis-tools with apt-get where they are missing), and
# `make bench-peers` redis-server (it installs redis-server the same way).

CARGO   ?= cargo
PRIMARY ?= 127.0.0.1:12345
BACKUP  ?= 127.0.0.1:12346
SLAVES  ?= 3
RUN_DIR ?= run
BIN     := $(CURDIR)/target/release

.PHONY: all build run cluster client test lint fmt doc bench bench-scale bench-peers redis redis-tools clean

all: build

build:
	$(CARGO) build --release --bins

# A primary master, its backup and $(SLAVES) slaves on the default ports; every line of output
# is prefixed by its role and kept in $(RUN_DIR)/<role>.out beside the logs (kv_store.log,
# backup_kv_store.log). Ctrl-C stops them all. A server that cannot start (it exits within
# START_GRACE seconds, as on a taken port) stops them all too, and `make run` exits with an
# error; a server killed later (to watch a failover) is reported and the rest runs on. On the
# way out the recipe's shell ignores TERM, sends it to its whole process group, and sends
# KILL a moment later, so no server it started outlives it (one started while the first
# signal went out was once left running).
run: build cluster

START_GRACE ?= 3

# `make run` without the build (BIN names the directory of the binaries).
cluster:
	@mkdir -p $(RUN_DIR)
	@cd $(RUN_DIR) && trap 'trap "" INT TERM; trap - EXIT; kill 0 2>/dev/null; sleep 0.3; kill -9 0 2>/dev/null' INT TERM EXIT; \
	trap 'echo "[make] a server could not start (see $(RUN_DIR)/*.out); stopping the cluster" >&2; exit 1' USR1; \
	top=$$$$; \
	supervise() { name=$$1; shift; t0=$$(date +%s); "$$@" 2>&1; rc=$$?; \
	  if [ $$(( $$(date +%s) - t0 )) -lt $(START_GRACE) ]; then kill -USR1 $$top; \
	  else echo "[make] $$name exited (status $$rc); the rest of the cluster runs on"; fi; }; \
	supervise master $(BIN)/dsm-master --listen $(PRIMARY) --backup $(BACKUP) --wal kv_store.log | tee master.out | sed -u 's/^/[master] /' & \
	supervise backup $(BIN)/dsm-backup --listen $(BACKUP) --primary $(PRIMARY) --follow kv_store.log --wal backup_kv_store.log | tee backup.out | sed -u 's/^/[backup] /' & \
	for i in $$(seq 1 $(SLAVES)); do \
	  supervise slave-$$i $(BIN)/dsm-slave --id slave-$$i --master $(PRIMARY) --backup $(BACKUP) | tee slave-$$i.out | sed -u "s/^/[slave-$$i] /" & \
	done; \
	echo "[make] cluster starting; talk to it with 'make client' or 'nc 127.0.0.1 12345' (apt-get install netcat-openbsd); Ctrl-C stops it"; \
	wait

# An interactive client of the cluster started by `make run`.
client: build
	$(BIN)/dsm-client --master $(PRIMARY) --backup $(BACKUP)

# The tests; as root also the ones with real network namespaces (tests/netns.rs) and a full
# disk (tests/disk_full.rs), which a plain `cargo test` leaves ignored.
test: redis-tools
	$(CARGO) test
	@if [ "$$(id -u)" = 0 ]; then $(CARGO) test --test netns --test disk_full -- --ignored --nocapture; \
	else echo "SKIPPED tests/netns.rs and tests/disk_full.rs: network namespaces and a small tmpfs need root (sudo make test runs them)"; fi

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps

fmt:
	$(CARGO) fmt --all

doc:
	$(CARGO) doc --no-deps

# Benchmarks (release builds; they print medians of several runs). Not timed tests.
bench:
	$(CARGO) build --release --bins
	$(CARGO) bench --bench cluster --bench wal --bench failover --bench replay

# dsm at 1,000,000 keys (DSM_SCALE_KEYS), medians of DSM_SCALE_RUNS runs: bulk load, log size
# after overwrites, COMPACT and write latency during it, failover, failback, restart, full
# resync, memory per key. Several minutes.
bench-scale:
	$(CARGO) build --release --bins
	$(CARGO) bench --bench scale

# dsm beside Redis (a primary and two replicas, SET + WAIT 1) with the same client, in one run:
# writes at 10 and 1 connections, reads at 10, pipelined writes; medians and ratios.
bench-peers: redis
	$(CARGO) build --release --bins
	$(CARGO) bench --bench peers

# apt-get runs as root, or through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# redis-cli and redis-benchmark, which tests/resp.rs drives dsm with: Debian's redis-tools,
# installed where they are missing.
redis-tools:
	@command -v redis-cli >/dev/null && command -v redis-benchmark >/dev/null || \
	  { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools; }

# redis-server and redis-cli, which bench-peers runs dsm beside: Debian's redis-server and
# redis-tools, installed where they are missing.
redis:
	@command -v redis-server >/dev/null && command -v redis-cli >/dev/null || \
	  { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools; }

clean:
	$(CARGO) clean
	rm -rf $(RUN_DIR)

-include mk/*.mk
