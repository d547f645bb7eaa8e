//! Write-ahead log benchmark: replay speed and append throughput.
//!
//! ```text
//! cargo bench --bench wal
//! DSM_BENCH_DIR=/mnt/disk cargo bench --bench wal    # put the files on a particular disk
//! ```
//!
//! Replay: a log of [`REPLAY_RECORDS`] short records is replayed [`RUNS`] times, once counting
//! records only (the log's own cost) and once applying them to a `HashMap` (roughly what a
//! master's recovery costs). Appends: threads appending short `SET`s to a fresh log, with each
//! fsync policy. Every figure is the median of [`RUNS`] runs. `fsync always` measures the disk
//! under the temporary directory, so it means little on tmpfs.

mod common;

use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use common::median;
use dsm::wal::{Fsync, Record, Wal};

/// Records in the replayed log.
const REPLAY_RECORDS: u64 = 1_000_000;

/// Runs per figure; the median is printed.
const RUNS: usize = 5;

/// Appends per run with `fsync never` and `everysec`, split between the threads.
const APPENDS: usize = 200_000;

/// Appends per run with `fsync always`, which waits for the disk on every batch.
const APPENDS_ALWAYS: usize = 2_000;

/// The thread counts measured for appends.
const THREADS: [usize; 2] = [1, 8];

/// The record number `n` of a generated log: mostly short writes over 100,000 keys, every tenth
/// a delete.
fn record(n: u64) -> Record {
    let key = format!("key:{}", n % 100_000);
    if n % 10 == 9 {
        Record::Del { key }
    } else {
        Record::Set { key, value: format!("value-{n}").into_bytes() }
    }
}

fn human(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2}M", rate / 1e6)
    } else {
        format!("{:.1}k", rate / 1e3)
    }
}

fn open(path: &Path, fsync: Fsync) -> Wal {
    Wal::open(path, fsync, |_, _| Ok(())).expect("open the log")
}

fn bench_replay(dir: &Path) {
    let path = dir.join("replay.wal");
    let wal = open(&path, Fsync::Never);
    wal.rewrite(&mut (1..=REPLAY_RECORDS).map(|n| (n, record(n)))).expect("write the log");
    let bytes = wal.bytes();
    drop(wal);
    println!("replay: {REPLAY_RECORDS} records, {:.1} MB, {RUNS} runs", bytes as f64 / 1e6);

    let mut rates = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let mut count = 0u64;
        let wal = Wal::open(&path, Fsync::Never, |seq, record| {
            black_box((seq, record));
            count += 1;
            Ok(())
        })
        .expect("replay");
        let elapsed = started.elapsed().as_secs_f64();
        assert_eq!(count, REPLAY_RECORDS);
        drop(wal);
        rates.push(count as f64 / elapsed);
    }
    println!("  replay, records only        median {:>8} records/s", human(median(rates)));

    let mut rates = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let mut map: HashMap<String, Vec<u8>> = HashMap::new();
        let wal = Wal::open(&path, Fsync::Never, |_, record| {
            match record {
                Record::Set { key, value } => {
                    map.insert(key, value);
                }
                Record::Del { key } => {
                    map.remove(&key);
                }
                _ => {}
            }
            Ok(())
        })
        .expect("replay");
        let elapsed = started.elapsed().as_secs_f64();
        drop(wal);
        black_box(map.len());
        rates.push(REPLAY_RECORDS as f64 / elapsed);
    }
    println!("  replay into a HashMap       median {:>8} records/s", human(median(rates)));
}

/// One append run: `threads` threads share `total` appends on a fresh log. Returns ops/s and
/// write(2) calls per append.
fn append_run(path: &PathBuf, fsync: Fsync, threads: usize, total: usize) -> (f64, f64) {
    let _ = std::fs::remove_file(path);
    let wal = Arc::new(open(path, fsync));
    let per_thread = total / threads;
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let wal = Arc::clone(&wal);
            thread::spawn(move || {
                for i in 0..per_thread {
                    let record = Record::Set {
                        key: format!("key:{t}:{}", i % 1000),
                        value: b"a short value".to_vec(),
                    };
                    wal.append(&record).expect("append");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("appender");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = wal.stats();
    let appends = (per_thread * threads) as f64;
    (appends / elapsed, stats.writes as f64 / appends)
}

fn bench_appends(dir: &Path) {
    println!("append: short SETs, {RUNS} runs each");
    let path = dir.join("append.wal");
    for fsync in [Fsync::Never, Fsync::Everysec, Fsync::Always] {
        let total = if fsync == Fsync::Always { APPENDS_ALWAYS } else { APPENDS };
        for threads in THREADS {
            let runs: Vec<(f64, f64)> = (0..RUNS).map(|_| append_run(&path, fsync, threads, total)).collect();
            let rate = median(runs.iter().map(|r| r.0).collect());
            let writes = median(runs.iter().map(|r| r.1).collect());
            println!(
                "  fsync {:<8} {threads} thread(s) {total:>7} appends   median {:>8} ops/s   \
                 {writes:.3} write(2) per append",
                fsync.to_string(),
                human(rate)
            );
        }
    }
}

fn main() {
    if !common::requested() {
        return;
    }
    let base = std::env::var_os("DSM_BENCH_DIR").map(PathBuf::from);
    let dir = match &base {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("create a temporary directory");
    println!("files in {}", dir.path().display());
    bench_replay(dir.path());
    bench_appends(dir.path());
}
