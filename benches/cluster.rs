//! Closed-loop benchmark of a real cluster on loopback: one master, three slaves, N client
//! threads each with one blocking connection. Writes, reads, a 30% write mix and `PING`s (the
//! bare round trip to the master, for reference), at 1 and 10 connections; prints ops/s,
//! p50/p99 latency and the CPU time per operation of the master, the slaves and the benchmark
//! clients (less sensitive to a busy machine than ops/s), the median of several runs.
//!
//! `cargo bench --bench cluster` (or `make bench`). `DSM_BENCH_SECS` and `DSM_BENCH_RUNS`
//! change the length and number of runs. `DSM_BENCH_ONLY=writes:10,reads:1` runs only the
//! listed workloads. `DSM_BENCH_BIN_DIRS=old:new` benchmarks the binaries of each directory in
//! turn, run by run (old, new, old, new, ...), so a before/after comparison on a noisy machine
//! sees the same conditions on both sides. `DSM_BENCH_PERF=1` also counts system calls and
//! context switches per operation with `perf stat` (master/slaves/clients).

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::median;
use dsm::client::Client;
use dsm::protocol::{Reply, Request};
use dsm_testkit::cluster::Cluster;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};

const KEYS: usize = 1000;
const VALUE: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A master and three slaves, quiet, with the binaries of `bins` (else those of this build).
fn start(fsync: &str, bins: Option<&str>) -> Cluster {
    let bin_dir = match bins {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_BIN_EXE_dsm-master")).parent().unwrap().to_path_buf(),
    };
    Cluster::builder()
        .bin_dir(bin_dir)
        .primary_args(["--fsync", fsync, "--log-level", "warn"])
        .slaves(3)
        .slave_args(["--log-level", "warn"])
        .start()
        .unwrap()
}

struct RunResult {
    ops_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
    /// CPU time per operation, in microseconds: master, slaves together, benchmark clients.
    cpu_us: [f64; 3],
    /// System calls and context switches per operation (master, slaves, clients), when
    /// `DSM_BENCH_PERF` is set.
    counts: Option<[[f64; 3]; 2]>,
}

/// `perf stat` attached to the master, the slaves and this process for one run, counting
/// system calls and context switches: steadier than timings on a busy machine. Counting is
/// switched on and off through perf's control FIFOs, so the window is known exactly.
struct PerfStat {
    groups: Vec<PerfGroup>,
}

struct PerfGroup {
    child: std::process::Child,
    out: PathBuf,
    ctl: std::fs::File,
    ack: std::io::BufReader<std::fs::File>,
}

impl PerfStat {
    /// Attaches (with counting off) if `DSM_BENCH_PERF` is set. Only threads that exist now
    /// are counted, so the clients must be connected.
    fn attach(cluster: &Cluster) -> Option<PerfStat> {
        std::env::var_os("DSM_BENCH_PERF")?;
        let slaves: Vec<String> =
            cluster.slaves.iter().filter_map(|s| s.pid()).map(|p| p.to_string()).collect();
        let pids = [cluster.primary.pid()?.to_string(), slaves.join(","), std::process::id().to_string()];
        let groups = pids
            .iter()
            .enumerate()
            .map(|(i, pids)| {
                let path = |what: &str| cluster.dir().join(format!("perf-{i}.{what}"));
                for fifo in ["ctl", "ack"] {
                    let _ = std::fs::remove_file(path(fifo));
                    let c = std::ffi::CString::new(path(fifo).into_os_string().into_encoded_bytes()).unwrap();
                    // SAFETY: mkfifo reads a NUL-terminated path we own.
                    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo failed");
                }
                let control = format!("fifo:{},{}", path("ctl").display(), path("ack").display());
                let events = "raw_syscalls:sys_enter,context-switches";
                let child = std::process::Command::new("perf")
                    .args([
                        "stat",
                        "-x,",
                        "--delay=-1",
                        "--control",
                        &control,
                        "-e",
                        events,
                        "-p",
                        pids,
                        "-o",
                    ])
                    .arg(path("csv"))
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("DSM_BENCH_PERF needs perf");
                let ctl = std::fs::OpenOptions::new().write(true).open(path("ctl")).unwrap();
                let ack = std::io::BufReader::new(std::fs::File::open(path("ack")).unwrap());
                PerfGroup { child, out: path("csv"), ctl, ack }
            })
            .collect();
        Some(PerfStat { groups })
    }

    /// Sends `enable` or `disable` to every perf and waits for their acknowledgements.
    fn control(&mut self, command: &str) {
        use std::io::{BufRead, Write};
        for g in &mut self.groups {
            g.ctl.write_all(format!("{command}\n").as_bytes()).unwrap();
        }
        for g in &mut self.groups {
            let mut line = String::new();
            g.ack.read_line(&mut line).unwrap();
        }
    }

    /// Stops perf; returns [syscalls, context switches] per group.
    fn finish(self) -> [[f64; 3]; 2] {
        let mut counts = [[0.0; 3]; 2];
        for (i, mut g) in self.groups.into_iter().enumerate() {
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe { libc::kill(g.child.id() as libc::pid_t, libc::SIGINT) };
            let _ = g.child.wait();
            let text = std::fs::read_to_string(&g.out).unwrap_or_default();
            for line in text.lines() {
                let fields: Vec<&str> = line.split(',').collect();
                let value = fields.first().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                match fields.get(2) {
                    Some(&"raw_syscalls:sys_enter") => counts[0][i] = value,
                    Some(&"context-switches") => counts[1][i] = value,
                    _ => {}
                }
            }
        }
        counts
    }
}

/// CPU time (user + system) a process has used so far, in microseconds, threads that have
/// exited included; 0 if it cannot be read.
fn process_cpu_us(pid: Option<u32>) -> f64 {
    let Some(stat) = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok()) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start at field 3; utime and
    // stime are fields 14 and 15, in clock ticks.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks * 1e6 / hz
}

fn cpu_sample(cluster: &Cluster) -> [f64; 3] {
    [
        process_cpu_us(cluster.primary.pid()),
        cluster.slaves.iter().map(|s| process_cpu_us(s.pid())).sum(),
        // This benchmark process: all its client threads.
        common::own_cpu_time().as_micros() as f64,
    ]
}

/// `write_pct`: the share of writes among reads; `None`: `PING`s only, the round trip to the
/// master with no slave involved, the floor under every other workload's latency.
fn run(cluster: &Cluster, conns: usize, write_pct: Option<u32>, secs: f64) -> RunResult {
    let addr = cluster.primary.addr().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    // Operations done so far, per client thread.
    let done: Arc<Vec<AtomicU64>> = Arc::new((0..conns).map(|_| AtomicU64::new(0)).collect());
    let connected = Arc::new(Barrier::new(conns + 1));
    let handles: Vec<_> = (0..conns)
        .map(|t| {
            let (addr, stop, done, connected) =
                (addr.clone(), Arc::clone(&stop), Arc::clone(&done), Arc::clone(&connected));
            thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
                let mut hist = Histogram::<u64>::new(3).unwrap();
                let mut c = Client::new(&addr, None);
                // Connected, with the master's connection thread running, before the clock starts.
                let _ = c.request(&Request::Ping);
                connected.wait();
                let (mut ops, mut errors) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("key{}", rng.gen_range(0..KEYS));
                    let started = Instant::now();
                    let reply = match write_pct {
                        None => c.request(&Request::Ping),
                        Some(pct) if rng.gen_range(0..100) < pct => c.write(&key, VALUE),
                        Some(_) => c.read(&key),
                    };
                    match reply {
                        Ok(Reply::Ok(_) | Reply::Value { .. } | Reply::NotFound | Reply::Pong) => {
                            hist.record(started.elapsed().as_micros() as u64).unwrap();
                            ops += 1;
                            done[t].store(ops, Ordering::Relaxed);
                        }
                        other => {
                            if errors == 0 {
                                eprintln!("first error of client {t}: {other:?}");
                            }
                            errors += 1;
                        }
                    }
                }
                (ops, errors, hist)
            })
        })
        .collect();
    let done_now = || done.iter().map(|d| d.load(Ordering::Relaxed)).sum::<u64>();
    connected.wait();
    let mut perf = PerfStat::attach(cluster);
    let cpu_before = cpu_sample(cluster);
    let started = Instant::now();
    thread::sleep(Duration::from_secs_f64(secs));
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu_sample(cluster);
    let ops = done_now();
    // perf counts over a window of its own, inside the run, with the operations done in it.
    let counts = perf.as_mut().map(|p| {
        p.control("enable");
        let before = done_now();
        thread::sleep(Duration::from_secs_f64(secs / 2.0));
        p.control("disable");
        (done_now() - before).max(1) as f64
    });
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let mut errors = 0;
    for h in handles {
        let (_, e, hh) = h.join().unwrap();
        errors += e;
        hist.add(hh).unwrap();
    }
    let counts = perf.zip(counts).map(|(p, n)| p.finish().map(|g| g.map(|v| v / n)));
    if errors > 0 {
        let log = cluster.primary.output();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        eprintln!("{errors} errors; the master's last log lines:\n{}", tail.join("\n"));
    }
    let per_op = |i: usize| (cpu_after[i] - cpu_before[i]) / ops.max(1) as f64;
    RunResult {
        ops_per_sec: ops as f64 / elapsed,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        errors,
        cpu_us: [per_op(0), per_op(1), per_op(2)],
        counts,
    }
}

fn main() {
    let secs: f64 = std::env::var("DSM_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let runs: usize = std::env::var("DSM_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let fsync = std::env::var("DSM_BENCH_FSYNC").unwrap_or_else(|_| "everysec".into());
    let only: Option<Vec<String>> =
        std::env::var("DSM_BENCH_ONLY").ok().map(|s| s.split(',').map(str::to_string).collect());
    let bin_dirs: Vec<Option<String>> = match std::env::var("DSM_BENCH_BIN_DIRS") {
        Ok(s) => s.split(':').map(|d| Some(d.to_string())).collect(),
        Err(_) => vec![None],
    };
    if !common::requested() {
        return;
    }
    let clusters: Vec<(String, Cluster)> = bin_dirs
        .iter()
        .map(|d| {
            let cluster = start(&fsync, d.as_deref());
            // Fill the key space so reads find values.
            run(&cluster, 4, Some(100), 1.0);
            (d.clone().unwrap_or_default(), cluster)
        })
        .collect();
    println!("dsm cluster benchmark: 3 slaves, fsync {fsync}, {runs} runs of {secs} s each, medians");
    println!(
        "{:<12} {:>6} {:>9} {:>7} {:>7} {:>6} {:>17}  binaries",
        "workload", "conns", "ops/s", "p50 us", "p99 us", "errors", "cpu us/op m/s/c"
    );
    for (name, write_pct) in
        [("writes", Some(100)), ("reads", Some(0)), ("mix-30%w", Some(30)), ("pings", None)]
    {
        for conns in [1, 10] {
            if only.as_ref().is_some_and(|o| !o.iter().any(|w| *w == format!("{name}:{conns}") || w == name))
            {
                continue;
            }
            let mut results: Vec<Vec<RunResult>> = clusters.iter().map(|_| Vec::new()).collect();
            for _ in 0..runs {
                for (i, (_, cluster)) in clusters.iter().enumerate() {
                    results[i].push(run(cluster, conns, write_pct, secs));
                }
            }
            for ((dir, _), results) in clusters.iter().zip(results) {
                let ops = median(results.iter().map(|r| r.ops_per_sec).collect());
                let p50 = median(results.iter().map(|r| r.p50_us as f64).collect());
                let p99 = median(results.iter().map(|r| r.p99_us as f64).collect());
                let errors: u64 = results.iter().map(|r| r.errors).sum();
                let cpu = |i: usize| median(results.iter().map(|r| r.cpu_us[i]).collect());
                let cpu = format!("{:.1}/{:.1}/{:.1}", cpu(0), cpu(1), cpu(2));
                let counts = if results.iter().all(|r| r.counts.is_some()) {
                    let count = |k: usize, i: usize| {
                        median(results.iter().filter_map(|r| r.counts).map(|c| c[k][i]).collect())
                    };
                    format!(
                        "  syscalls/op {:.2}/{:.2}/{:.2}, switches/op {:.2}/{:.2}/{:.2}",
                        count(0, 0),
                        count(0, 1),
                        count(0, 2),
                        count(1, 0),
                        count(1, 1),
                        count(1, 2)
                    )
                } else {
                    String::new()
                };
                println!(
                    "{name:<12} {conns:>6} {ops:>9.0} {p50:>7.0} {p99:>7.0} {errors:>6} {cpu:>17}  {dir}{counts}"
                );
            }
        }
    }
}
