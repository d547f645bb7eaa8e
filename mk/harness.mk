# Load-test harness targets (issue 4). The top-level Makefile includes this file.
#
#   make plots          redraw every PNG under results/ from the CSVs already there
#   make results        run the sweeps, the load-distribution run and the failover run, then
#                       the plots: 19 runs, about 8 minutes on 2 cores plus the release build.
#                       The client sweep runs twice, reading from the master (the default,
#                       into results/) and with --read-from slaves (into
#                       results/read_from_slaves/, so neither overwrites the other).
#                       The plots: throughput and read and write latency by slave count and
#                       by client count (plots_by_slave_count/, plots_by_client_count/, and
#                       read_from_slaves/plots_by_client_count/), the two read modes on one
#                       chart by client count (plots_read_from/), the load distribution and
#                       the failover timeline.
#                       results/machine.txt records the machine, the date, the load average
#                       and the commit.
#   make harness-smoke  a 3-second run against a fresh 3-slave cluster, into target/
#
# Every run replaces the files of the same run from before (--overwrite), never mixes with
# them, and keeps its servers' output in its logs/ directory (--keep-logs). The sweeps run at full load (--think-ms 0) so they measure the cluster rather than the
# think time; the failover run keeps the original 10 ms think time.

CARGO            ?= cargo
HARNESS          ?= target/release/dsm-harness
RESULTS          ?= results
RESULTS_WARMUP   ?= 3
RESULTS_DURATION ?= 20
RESULTS_SEED     ?= 1
FAILOVER_DURATION ?= 30
FAILOVER_KILL_AT  ?= 10
FAILOVER_RESTART_AT ?= 20

HARNESS_COMMON = --warmup $(RESULTS_WARMUP) --seed $(RESULTS_SEED) --overwrite --keep-logs
HARNESS_FULL   = $(HARNESS_COMMON) --duration $(RESULTS_DURATION) --think-ms 0

.PHONY: harness-build plots results harness-smoke

harness-build:
	$(CARGO) build --release --bins

plots: harness-build
	$(HARNESS) plot --out $(RESULTS)

results: harness-build
	@mkdir -p $(RESULTS)
	@{ echo "date: $$(date -u '+%Y-%m-%d %H:%M:%S UTC')"; \
	   echo "commit: $$(git rev-parse --short HEAD 2>/dev/null)"; \
	   echo "cpus: $$(nproc)"; \
	   echo "cpu: $$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p')"; \
	   echo "memory: $$(free -h 2>/dev/null | awk '/^Mem:/ {print $$2}')"; \
	   echo "load average at start: $$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"; \
	 } > $(RESULTS)/machine.txt
	$(HARNESS) $(HARNESS_FULL) --sweep-slaves 1,3,5,7,9 --out $(RESULTS)
	$(HARNESS) $(HARNESS_FULL) --sweep-clients 1,2,5,10,20,50 --out $(RESULTS)
	$(HARNESS) $(HARNESS_FULL) --sweep-clients 1,2,5,10,20,50 --read-from slaves --out $(RESULTS)/read_from_slaves
	$(HARNESS) $(HARNESS_FULL) --slaves 5 --out $(RESULTS)/load_distribution
	$(HARNESS) $(HARNESS_COMMON) --duration $(FAILOVER_DURATION) \
		--kill-primary-at $(FAILOVER_KILL_AT) --restart-primary-at $(FAILOVER_RESTART_AT) --out $(RESULTS)/failover
	$(HARNESS) plot --out $(RESULTS)
	@echo "load average at end: $$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)" >> $(RESULTS)/machine.txt
	@echo "finished: $$(date -u '+%Y-%m-%d %H:%M:%S UTC')" >> $(RESULTS)/machine.txt

harness-smoke: harness-build
	$(HARNESS) --warmup 1 --duration 3 --overwrite --out target/harness-smoke
