//! Closed-loop benchmark of a real cluster on loopback: one master, three slaves, N client
//! threads each with one blocking connection. Writes, reads, and a 30% write mix, at 1 and 10
//! connections; prints ops/s, p50/p99 latency and the CPU time per operation of the master, the
//! slaves and the benchmark clients (less sensitive to a busy machine than ops/s), the median of
//! several runs.
//!
//! `cargo bench --bench cluster` (or `make bench`). `DSM_BENCH_SECS` and `DSM_BENCH_RUNS`
//! change the length and number of runs. `DSM_BENCH_ONLY=writes:10,reads:1` runs only the
//! listed workloads. `DSM_BENCH_BIN_DIRS=old:new` benchmarks the binaries of each directory in
//! turn, run by run (old, new, old, new, ...), so a before/after comparison on a noisy machine
//! sees the same conditions on both sides.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use dsm::client::Client;
use dsm::cluster::{stat, wait_for, Node};
use dsm::protocol::Reply;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};

const KEYS: usize = 1000;
const VALUE: &[u8] = b"0123456789abcdef0123456789abcdef";

struct Cluster {
    master: Node,
    slaves: Vec<Node>,
    _dir: tempfile::TempDir,
}

fn start(fsync: &str, bins: Option<&str>) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let bin = |n: &str| match (n, bins) {
        ("m", Some(d)) => PathBuf::from(d).join("dsm-master"),
        (_, Some(d)) => PathBuf::from(d).join("dsm-slave"),
        ("m", None) => PathBuf::from(env!("CARGO_BIN_EXE_dsm-master")),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_dsm-slave")),
    };
    let wal = dir.path().join("kv.log").display().to_string();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--wal",
        &wal,
        "--backup",
        "none",
        "--fsync",
        fsync,
        "--log-level",
        "warn",
    ];
    let master = Node::start(
        "master",
        &bin("m"),
        args.iter().map(|s| s.to_string()).collect(),
        dir.path(),
        false,
        true,
    )
    .unwrap();
    let addr = master.addr().to_string();
    let slaves = (1..=3)
        .map(|i| {
            let args =
                ["--id", &format!("s{i}"), "--master", &addr, "--backup", "none", "--log-level", "warn"];
            Node::start(
                &format!("s{i}"),
                &bin("s"),
                args.iter().map(|s| s.to_string()).collect(),
                dir.path(),
                false,
                false,
            )
            .unwrap()
        })
        .collect();
    wait_for("3 slaves", Duration::from_secs(30), || stat(&addr, "slaves").as_deref() == Some("3")).unwrap();
    Cluster { master, slaves, _dir: dir }
}

struct RunResult {
    ops_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
    /// CPU time per operation, in microseconds: master, slaves together, benchmark clients.
    cpu_us: [f64; 3],
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

/// CPU time this benchmark process (all its client threads) has used, in microseconds.
fn own_cpu_us() -> f64 {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

fn cpu_sample(cluster: &Cluster) -> [f64; 3] {
    [
        process_cpu_us(cluster.master.pid()),
        cluster.slaves.iter().map(|s| process_cpu_us(s.pid())).sum(),
        own_cpu_us(),
    ]
}

fn run(cluster: &Cluster, conns: usize, write_pct: u32, secs: f64) -> RunResult {
    let addr = cluster.master.addr().to_string();
    let addr = addr.as_str();
    let cpu_before = cpu_sample(cluster);
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..conns)
        .map(|t| {
            let (addr, stop) = (addr.to_string(), Arc::clone(&stop));
            thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
                let mut hist = Histogram::<u64>::new(3).unwrap();
                let mut c = Client::new(&addr, None);
                let (mut ops, mut errors) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("key{}", rng.gen_range(0..KEYS));
                    let started = Instant::now();
                    let reply =
                        if rng.gen_range(0..100) < write_pct { c.write(&key, VALUE) } else { c.read(&key) };
                    match reply {
                        Ok(Reply::Ok(_) | Reply::Value { .. } | Reply::NotFound) => {
                            hist.record(started.elapsed().as_micros() as u64).unwrap();
                            ops += 1;
                        }
                        _ => errors += 1,
                    }
                }
                (ops, errors, hist)
            })
        })
        .collect();
    let started = Instant::now();
    thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let (mut ops, mut errors) = (0, 0);
    for h in handles {
        let (o, e, hh) = h.join().unwrap();
        ops += o;
        errors += e;
        hist.add(hh).unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu_sample(cluster);
    let per_op = |i: usize| (cpu_after[i] - cpu_before[i]) / ops.max(1) as f64;
    RunResult {
        cpu_us: [per_op(0), per_op(1), per_op(2)],
        ops_per_sec: ops as f64 / elapsed,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        errors,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
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
    // `cargo bench` passes --bench; under `cargo test --all-targets` this is a no-op.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let clusters: Vec<(String, Cluster)> = bin_dirs
        .iter()
        .map(|d| {
            let cluster = start(&fsync, d.as_deref());
            // Fill the key space so reads find values.
            run(&cluster, 4, 100, 1.0);
            (d.clone().unwrap_or_default(), cluster)
        })
        .collect();
    println!("dsm cluster benchmark: 3 slaves, fsync {fsync}, {runs} runs of {secs} s each, medians");
    println!(
        "{:<12} {:>6} {:>9} {:>7} {:>7} {:>6} {:>17}  binaries",
        "workload", "conns", "ops/s", "p50 us", "p99 us", "errors", "cpu us/op m/s/c"
    );
    for (name, write_pct) in [("writes", 100), ("reads", 0), ("mix-30%w", 30)] {
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
                println!(
                    "{name:<12} {conns:>6} {ops:>9.0} {p50:>7.0} {p99:>7.0} {errors:>6} {cpu:>17}  {dir}"
                );
            }
        }
    }
}
