//! dsm at the size real users run: a primary, a backup following its log file and 3 slaves,
//! loaded with `DSM_SCALE_KEYS` keys (default 1,000,000) of 100-byte values. Each run measures
//!
//! - the bulk load rate (16 connections, 100 writes pipelined per send),
//! - the log's size after two full overwrites of every key, against after the first load,
//! - a `COMPACT`: how long it takes, and write latency (p50/p99, one closed-loop writer) during
//!   it against before it,
//! - kill -9 of the primary -> first write acknowledged and first read served by the backup,
//! - restart of the old primary -> first write and first read it serves (failback),
//! - restart of a lone primary (the backup stopped first, the log holding about two records
//!   per key) -> first write and first read,
//! - the full resync rate of a slave that lost its memory (restarted),
//! - resident memory per key of the master and of a slave,
//!
//! and the medians of `DSM_SCALE_RUNS` runs (default 3) are printed at the end.
//!
//! `cargo bench --bench scale` or `make bench-scale`. Release binaries; nothing else should run.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::median;
use dsm::client::Client;
use dsm::protocol::Reply;
use dsm_testkit::cluster::{stat, wait_for, Cluster, Follow};

/// How long any one step may take before the benchmark gives up.
const WAIT: Duration = Duration::from_secs(600);

/// Connections of the bulk load, and writes per send on each.
const LOAD_CONNECTIONS: usize = 16;
const PIPELINE: usize = 100;

/// The value every key gets: 100 bytes, one digit changed per pass so overwrites are real.
fn value(pass: u8) -> Vec<u8> {
    let mut v = vec![b'v'; 100];
    v[0] = b'0' + pass;
    v
}

/// Writes keys `0..keys` on `LOAD_CONNECTIONS` pipelined connections; returns keys per second.
fn load(addr: &str, keys: usize, pass: u8) -> f64 {
    let started = Instant::now();
    let per = keys.div_ceil(LOAD_CONNECTIONS);
    let threads: Vec<_> = (0..LOAD_CONNECTIONS)
        .map(|t| {
            let addr = addr.to_string();
            thread::spawn(move || {
                let stream = TcpStream::connect(&addr).expect("connect");
                stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (from, to) = (t * per, ((t + 1) * per).min(keys));
                let mut line = String::new();
                let mut batch = Vec::with_capacity(PIPELINE * 128);
                let mut i = from;
                while i < to {
                    batch.clear();
                    let n = PIPELINE.min(to - i);
                    for k in i..i + n {
                        batch.extend_from_slice(format!("WRITE key:{k} ").as_bytes());
                        batch.extend_from_slice(&value(pass));
                        batch.extend_from_slice(b"\r\n");
                    }
                    (&stream).write_all(&batch).expect("send");
                    for _ in 0..n {
                        line.clear();
                        reader.read_line(&mut line).expect("reply");
                        assert!(line.starts_with("OK "), "bulk load: {line}");
                    }
                    i += n;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("loader");
    }
    keys as f64 / started.elapsed().as_secs_f64()
}

fn stat_u64(addr: &str, name: &str) -> u64 {
    stat(addr, name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Waits until a write to `addr` is acknowledged; returns when.
fn first_write(addr: &str) -> Instant {
    let mut c = Client::new(addr, None);
    c.set_timeout(Duration::from_secs(2));
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Ok(Reply::Ok(_)) = c.write("probe", b"x") {
            return Instant::now();
        }
        thread::sleep(Duration::from_millis(2));
    }
    panic!("no write acknowledged by {addr}");
}

/// Waits until a read of a loaded key on `addr` returns its value; returns when.
fn first_read(addr: &str, keys: usize) -> Instant {
    let mut c = Client::new(addr, None);
    c.set_timeout(Duration::from_secs(2));
    let key = format!("key:{}", keys / 2);
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Ok(Reply::Value { .. }) = c.read(&key) {
            return Instant::now();
        }
        thread::sleep(Duration::from_millis(2));
    }
    panic!("no read served by {addr}");
}

/// Waits, at the same time, for the first write and the first read served by `addr`; returns
/// when each came.
fn first_service(addr: &str, keys: usize) -> (Instant, Instant) {
    thread::scope(|s| {
        let w = s.spawn(|| first_write(addr));
        let r = s.spawn(|| first_read(addr, keys));
        (w.join().unwrap(), r.join().unwrap())
    })
}

/// The number of lines (records) of a log file.
fn log_lines(path: &std::path::Path) -> u64 {
    let mut file = std::fs::File::open(path).expect("the log");
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0;
    loop {
        let got = file.read(&mut buf).expect("read the log");
        if got == 0 {
            return n;
        }
        n += buf[..got].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// Resident memory of a process, in bytes.
fn rss(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A closed-loop writer on its own connection, recording each write's latency.
struct Prober {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(Instant, Duration)>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Prober {
    fn start(addr: &str) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out, addr) = (Arc::clone(&stop), Arc::clone(&samples), addr.to_string());
        let thread = thread::spawn(move || {
            let mut c = Client::new(&addr, None);
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                if let Ok(Reply::Ok(_)) = c.write(&format!("probe:{}", i % 1000), b"0123456789") {
                    out.lock().unwrap().push((t, t.elapsed()));
                }
                i += 1;
            }
        });
        Prober { stop, samples, thread: Some(thread) }
    }

    /// p50 and p99 in microseconds of the writes that started within `from..to`.
    fn percentiles(&self, from: Instant, to: Instant) -> (f64, f64, usize) {
        let mut v: Vec<f64> = self
            .samples
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, d)| d.as_secs_f64() * 1e6)
            .collect();
        if v.is_empty() {
            return (0.0, 0.0, 0);
        }
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[(v.len() * 99 / 100).min(v.len() - 1)], v.len())
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One run's figures, by name, in print order.
type Figures = Vec<(&'static str, f64)>;

fn run(keys: usize, run: usize) -> Figures {
    let quiet = ["--log-level", "warn"];
    let mut c = Cluster::builder()
        .slaves(3)
        .backup(Follow::Wal)
        .primary_args(quiet)
        .backup_args(quiet)
        .start()
        .expect("cluster");
    let (p, b) = (c.primary_addr().to_string(), c.backup_addr().expect("a backup").to_string());
    let mut f: Figures = Vec::new();

    let rate = load(&p, keys, 0);
    f.push(("bulk load, keys/s", rate));
    let after_load = stat_u64(&p, "wal_bytes");
    load(&p, keys, 1);
    load(&p, keys, 2);
    // A compaction the overwrites triggered may still be running.
    wait_for("compactions to finish", WAIT, || stat(&p, "compacting").as_deref() == Some("0")).unwrap();
    let after_overwrites = stat_u64(&p, "wal_bytes");
    f.push(("log after 2 overwrites / after the load", after_overwrites as f64 / after_load as f64));
    f.push(("automatic compactions during the overwrites", stat_u64(&p, "compactions") as f64));

    // COMPACT under a steady writer.
    let prober = Prober::start(&p);
    thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    let done = stat_u64(&p, "compactions");
    let mut raw = Client::new(&p, None);
    assert!(matches!(raw.request(&dsm::protocol::Request::Compact), Ok(Reply::Done)));
    wait_for("the compaction", WAIT, || stat_u64(&p, "compactions") > done).unwrap();
    let finished = Instant::now();
    thread::sleep(Duration::from_millis(500));
    let (steady50, steady99, _) = prober.percentiles(asked - Duration::from_secs(2), asked);
    let (during50, during99, n) = prober.percentiles(asked, finished);
    drop(prober);
    f.push(("COMPACT, s", finished.duration_since(asked).as_secs_f64()));
    f.push(("write p50 before COMPACT, us", steady50));
    f.push(("write p99 before COMPACT, us", steady99));
    f.push(("write p50 during COMPACT, us", during50));
    f.push(("write p99 during COMPACT, us", during99));
    f.push(("writes measured during COMPACT", n as f64));
    f.push(("log after COMPACT / after the load", stat_u64(&p, "wal_bytes") as f64 / after_load as f64));

    f.push(("master resident bytes per key", rss(c.primary.pid()) as f64 / keys as f64));
    f.push(("slave resident bytes per key", rss(c.slaves[0].pid()) as f64 / keys as f64));

    // Failover.
    thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    c.primary.kill();
    let (w, r) = first_service(&b, keys);
    f.push(("kill -9 primary -> first write on the backup, s", w.duration_since(killed).as_secs_f64()));
    f.push(("kill -9 primary -> first read on the backup, s", r.duration_since(killed).as_secs_f64()));

    // Failback.
    let restarted = Instant::now();
    c.primary.restart().unwrap();
    let (w, r) = first_service(&p, keys);
    f.push(("failback: restart -> first write on the primary, s", w.duration_since(restarted).as_secs_f64()));
    f.push(("failback: restart -> first read on the primary, s", r.duration_since(restarted).as_secs_f64()));
    wait_for("the backup to follow again", WAIT, || stat(&b, "role").as_deref() == Some("standby")).unwrap();

    // Full resync of a slave that lost its memory.
    let restarted = Instant::now();
    c.slaves[0].restart().unwrap();
    wait_for("s1 resynced", WAIT, || {
        stat(&p, "slave.s1.state").as_deref() == Some("up") && stat_u64(&p, "slave.s1.resync_keys") > 0
    })
    .unwrap();
    let took = restarted.elapsed().as_secs_f64();
    f.push(("full resync of an emptied slave, keys/s", stat_u64(&p, "slave.s1.resync_keys") as f64 / took));

    // A lone primary's restart from its log.
    if let Some(backup) = c.backup.as_mut() {
        backup.kill();
    }
    // One more overwrite of every key, so the log holds about two records per key (what it
    // holds just before an automatic compaction at the default 100 %).
    load(&p, keys, 3);
    wait_for("compactions to finish", WAIT, || stat(&p, "compacting").as_deref() == Some("0")).unwrap();
    let records = stat_u64(&p, "seq");
    let log_bytes = stat_u64(&p, "wal_bytes");
    f.push(("log records at the lone restart / keys", log_lines(c.primary_wal()) as f64 / keys as f64));
    let restarted = Instant::now();
    c.primary.restart().unwrap();
    let (w, r) = first_service(&p, keys);
    f.push(("lone primary restart -> first write, s", w.duration_since(restarted).as_secs_f64()));
    f.push(("lone primary restart -> first read, s", r.duration_since(restarted).as_secs_f64()));
    println!("run {run}: (log of {log_bytes} bytes, seq {records} at the restart)");
    for (name, v) in &f {
        println!("run {run}: {name}: {v:.2}");
    }
    f
}

fn main() {
    if !common::requested() {
        return;
    }
    let keys: usize = std::env::var("DSM_SCALE_KEYS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let runs: usize = std::env::var("DSM_SCALE_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    println!("scale benchmark: {keys} keys of 100 bytes, {runs} runs");
    let all: Vec<Figures> = (0..runs).map(|i| run(keys, i)).collect();
    println!("medians of {runs} runs, {keys} keys:");
    for (i, (name, _)) in all[0].iter().enumerate() {
        let values: Vec<f64> = all.iter().map(|f| f[i].1).collect();
        println!("  {name}: {:.2}   (runs: {values:.2?})", median(values.clone()));
    }
}
