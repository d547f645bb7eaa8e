# Load-test harness targets (issue 4). The top-level Makefile includes this file.
#
#   make plots          redraw every PNG under results/ from the CSVs already there
#   make results        run the sweeps, the load-distribution run and the failover run, then
#                       the plots (about 7 minutes plus the release build on 2 cores)
#   make harness-smoke  a 3-second run against a fresh 3-slave cluster, into target/
#
# Every run replaces the files of the same run from before (--overwrite), never mixes with
# them. The sweeps run at full load (--think-ms 0) so they measure the cluster rather than the
# think time; the failover run keeps the original 10 ms think time.

CARGO            ?= cargo
HARNESS          ?= target/release/dsm-harness
RESULTS          ?= results
RESULTS_WARMUP   ?= 3
RESULTS_DURATION ?= 20
RESULTS_SEED     ?= 1
FAILOVER_DURATION ?= 30
FAILOVER_KILL_AT  ?= 10

HARNESS_COMMON = --warmup $(RESULTS_WARMUP) --seed $(RESULTS_SEED) --overwrite
HARNESS_FULL   = $(HARNESS_COMMON) --duration $(RESULTS_DURATION) --think-ms 0

.PHONY: harness-build plots results harness-smoke

harness-build:
	$(CARGO) build --release --bins

plots: harness-build
	$(HARNESS) plot --out $(RESULTS)

results: harness-build
	$(HARNESS) $(HARNESS_FULL) --sweep-slaves 1,3,5,7,9 --out $(RESULTS)
	$(HARNESS) $(HARNESS_FULL) --sweep-clients 1,2,5,10,20,50 --out $(RESULTS)
	$(HARNESS) $(HARNESS_FULL) --slaves 5 --out $(RESULTS)/load_distribution
	$(HARNESS) $(HARNESS_COMMON) --duration $(FAILOVER_DURATION) \
		--kill-primary-at $(FAILOVER_KILL_AT) --out $(RESULTS)/failover
	$(HARNESS) plot --out $(RESULTS)

harness-smoke: harness-build
	$(HARNESS) --warmup 1 --duration 3 --overwrite --out target/harness-smoke
