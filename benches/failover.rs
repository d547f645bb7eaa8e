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
use dsm_testkit::cluster::{stat, wait_for, Follow, Listen, Ready};

const WAIT: Duration = Duration::from_secs(60);

struct Cluster {
    cluster: dsm_testkit::cluster::Cluster,
    p: String,
    b: String,
}

/// A primary, a backup following its log file and three slaves, quiet, ready when the primary
/// serves with every slave.
fn start() -> Cluster {
    let quiet = ["--log-level", "warn"];
    let cluster = dsm_testkit::cluster::Cluster::builder()
        .bin_dir(PathBuf::from(env!("CARGO_BIN_EXE_dsm-master")).parent().unwrap())
        .primary_listen(Listen::FreePort)
        .primary_args(quiet)
        .backup(Follow::Wal)
        .backup_args(quiet)
        .slaves(3)
        .slave_args(quiet)
        .ready(Ready::Serving)
        .ready_timeout(WAIT)
        .start()
        .unwrap();
    let (p, b) = (cluster.primary_addr().to_string(), cluster.backup_addr().unwrap().to_string());
    Cluster { cluster, p, b }
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
        c.cluster.primary.kill();
        let t = first_ack(&c.b, &format!("t{i}")).duration_since(killed);
        let restarted = Instant::now();
        c.cluster.primary.restart().unwrap();
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
