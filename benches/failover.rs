//! Failover timings with real processes: the time from `kill -9` of the primary to the first
//! write acknowledged by the backup, the time from restarting the primary to the first write
//! it acknowledges again (failback), and the backup's lag while following a loaded primary.
//! Medians of several cycles.
//!
//! `cargo bench --bench failover` (or `make bench`). `DSM_FAILOVER_CYCLES` sets the cycles.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::median;
use dsm::client::Client;
use dsm::protocol::Reply;
use dsm_testkit::cluster::{free_port, stat, wait_for, Node};

const WAIT: Duration = Duration::from_secs(60);

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

struct Cluster {
    primary: Node,
    _backup: Node,
    _slaves: Vec<Node>,
    p: String,
    b: String,
    _dir: tempfile::TempDir,
}

fn start() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let (p, b) = (free_port().unwrap().to_string(), free_port().unwrap().to_string());
    let wal = dir.path().join("kv.log").display().to_string();
    let own = dir.path().join("backup.log").display().to_string();
    let bin = |n: &str| -> PathBuf {
        match n {
            "m" => env!("CARGO_BIN_EXE_dsm-master").into(),
            "b" => env!("CARGO_BIN_EXE_dsm-backup").into(),
            _ => env!("CARGO_BIN_EXE_dsm-slave").into(),
        }
    };
    let quiet = ["--log-level", "warn"];
    let mut pa = args(&["--listen", &p, "--backup", &b, "--wal", &wal]);
    pa.extend(args(&quiet));
    let primary = Node::start("primary", &bin("m"), pa, dir.path(), false, true).unwrap();
    let mut ba = args(&["--listen", &b, "--primary", &p, "--follow", &wal, "--wal", &own]);
    ba.extend(args(&quiet));
    let backup = Node::start("backup", &bin("b"), ba, dir.path(), false, true).unwrap();
    let slaves = (1..=3)
        .map(|i| {
            let mut sa = args(&["--id", &format!("s{i}"), "--master", &p, "--backup", &b]);
            sa.extend(args(&quiet));
            Node::start(&format!("s{i}"), &bin("s"), sa, dir.path(), false, false).unwrap()
        })
        .collect();
    wait_for("primary ready", WAIT, || {
        stat(&p, "role").as_deref() == Some("primary") && stat(&p, "slaves").as_deref() == Some("3")
    })
    .unwrap();
    Cluster { primary, _backup: backup, _slaves: slaves, p, b, _dir: dir }
}

/// Writes to `addr` only, until one is acknowledged; returns when.
fn first_ack(addr: &str, key: &str) -> Instant {
    let mut c = Client::new(addr, None);
    c.set_timeout(Duration::from_secs(2));
    loop {
        if let Ok(Reply::Ok(_)) = c.write(key, b"x") {
            return Instant::now();
        }
        thread::sleep(Duration::from_millis(2));
    }
}

fn main() {
    if !common::requested() {
        return;
    }
    let cycles: usize = std::env::var("DSM_FAILOVER_CYCLES").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut c = start();
    let (mut takeovers, mut failbacks) = (Vec::new(), Vec::new());
    for i in 0..cycles {
        first_ack(&c.p, "warm");
        let killed = Instant::now();
        c.primary.kill();
        let t = first_ack(&c.b, &format!("t{i}")).duration_since(killed);
        let restarted = Instant::now();
        c.primary.restart().unwrap();
        let f = first_ack(&c.p, &format!("f{i}")).duration_since(restarted);
        println!(
            "cycle {i}: takeover {:.0} ms, failback {:.0} ms",
            t.as_secs_f64() * 1e3,
            f.as_secs_f64() * 1e3
        );
        takeovers.push(t.as_secs_f64() * 1e3);
        failbacks.push(f.as_secs_f64() * 1e3);
        // Let the backup settle back into following before the next kill.
        wait_for("backup standby", WAIT, || stat(&c.b, "role").as_deref() == Some("standby")).unwrap();
    }
    println!(
        "median of {cycles}: kill -9 of the primary -> first write acknowledged by the backup: {:.0} ms",
        median(takeovers)
    );
    println!(
        "median of {cycles}: restart of the primary -> first write it acknowledges (failback): {:.0} ms",
        median(failbacks)
    );

    // Backup lag under sustained writes: 8 writers for 5 s, sampling the backup's lag.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let (p, stop) = (c.p.clone(), Arc::clone(&stop));
            thread::spawn(move || {
                let mut cl = Client::new(&p, None);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(Reply::Ok(_)) = cl.write(&format!("lag{t}-{}", n % 100), b"0123456789") {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let mut lags = Vec::new();
    let mut seq_lags = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(100));
        let lag: f64 = stat(&c.b, "lag_bytes").and_then(|s| s.parse().ok()).unwrap_or(0.0);
        let ps: f64 = stat(&c.p, "seq").and_then(|s| s.parse().ok()).unwrap_or(0.0);
        let bs: f64 = stat(&c.b, "seq").and_then(|s| s.parse().ok()).unwrap_or(0.0);
        lags.push(lag);
        seq_lags.push((ps - bs).max(0.0));
    }
    stop.store(true, Ordering::Relaxed);
    let total: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    let max_lag = seq_lags.iter().cloned().fold(0.0, f64::max);
    println!(
        "backup lag under {:.0} writes/s: median {:.0} bytes unread, median {:.0} records behind (max {max_lag:.0}), {} samples",
        total as f64 / 5.0,
        median(lags.clone()),
        median(seq_lags),
        lags.len()
    );
}
