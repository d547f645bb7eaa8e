# The nemesis suite's long run: CHAOS_RUNS seeded runs of CHAOS_DURATION seconds each against a
# real cluster (release build), starting at seed CHAOS_SEED. Exits non-zero on any violation.
# Node logs of every run are kept in CHAOS_OUT/run-<seed>.
# CHAOS_READ_FROM is both masters' --read-from: master (the default: reads from the master's
# committed copy under read leases) or slaves (a slave in sync answers, with read repair), so
# `make chaos CHAOS_READ_FROM=slaves` puts the other read path under the same faults. Every
# run's line and the total name the mode.

CHAOS_RUNS     ?= 20
CHAOS_DURATION ?= 60
CHAOS_SEED     ?= 1
CHAOS_SLAVES   ?= 3
CHAOS_OUT      ?= $(RUN_DIR)/chaos
CHAOS_PRELOAD  ?= 100000
CHAOS_READ_FROM ?= master

.PHONY: chaos chaos-preloaded

chaos:
	$(CARGO) build --release --bins
	@mkdir -p $(CHAOS_OUT)
	$(BIN)/dsm-chaos --runs $(CHAOS_RUNS) --duration $(CHAOS_DURATION) --seed $(CHAOS_SEED) \
	  --slaves $(CHAOS_SLAVES) --out $(CHAOS_OUT) --read-from $(CHAOS_READ_FROM)

# The same with CHAOS_PRELOAD keys of 100 bytes loaded first, so that kills and pauses land
# during resyncs and compactions of a store of some size (the schedule also sends COMPACT).
chaos-preloaded:
	$(CARGO) build --release --bins
	@mkdir -p $(CHAOS_OUT)
	$(BIN)/dsm-chaos --runs $(CHAOS_RUNS) --duration $(CHAOS_DURATION) --seed $(CHAOS_SEED) \
	  --slaves $(CHAOS_SLAVES) --out $(CHAOS_OUT) --preload $(CHAOS_PRELOAD) \
	  --read-from $(CHAOS_READ_FROM)
