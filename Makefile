# dsm — build, run a local cluster, test, lint, benchmark.
# Only the Rust toolchain is needed.

CARGO   ?= cargo
PRIMARY ?= 127.0.0.1:12345
BACKUP  ?= 127.0.0.1:12346
SLAVES  ?= 3
RUN_DIR ?= run
BIN     := $(CURDIR)/target/release

.PHONY: all build run client test lint fmt doc bench clean

all: build

build:
	$(CARGO) build --release --bins

# A primary master, its backup and $(SLAVES) slaves on the default ports; every line of output
# is prefixed by its role. Ctrl-C stops them all. State (the logs) lives in $(RUN_DIR)/.
run: build
	@mkdir -p $(RUN_DIR)
	@cd $(RUN_DIR) && trap 'trap - INT TERM EXIT; kill 0 2>/dev/null' INT TERM EXIT; \
	( $(BIN)/dsm-master --listen $(PRIMARY) --backup $(BACKUP) --wal kv_store.log 2>&1 | sed -u 's/^/[master] /' ) & \
	( $(BIN)/dsm-backup --listen $(BACKUP) --primary $(PRIMARY) --follow kv_store.log --wal backup_kv_store.log 2>&1 | sed -u 's/^/[backup] /' ) & \
	for i in $$(seq 1 $(SLAVES)); do \
	  ( $(BIN)/dsm-slave --id slave-$$i --master $(PRIMARY) --backup $(BACKUP) 2>&1 | sed -u "s/^/[slave-$$i] /" ) & \
	done; \
	echo "[make] cluster starting; talk to it with 'make client' or a TCP line client on $(PRIMARY); Ctrl-C stops it"; \
	wait

# An interactive client of the cluster started by `make run`.
client: build
	$(BIN)/dsm-client --master $(PRIMARY) --backup $(BACKUP)

test:
	$(CARGO) test

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps

fmt:
	$(CARGO) fmt

doc:
	$(CARGO) doc --no-deps

# Benchmarks (release builds; they print medians of several runs). Not timed tests.
bench:
	$(CARGO) build --release --bins
	$(CARGO) bench

clean:
	$(CARGO) clean
	rm -rf $(RUN_DIR)

-include mk/*.mk
