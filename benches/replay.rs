//! Log replay at master start: a 1,000,000-record log (100,000 keys) replayed by
//! `Master::bind`, the same code path `dsm-master` runs. Prints the median of 5 runs in records
//! per second of wall time and of CPU time (the process's user + system time, which a busy
//! shared machine disturbs less).
//!
//! `cargo bench --bench replay`.

mod common;

use std::io::Write;
use std::time::Instant;

use common::{median, own_cpu_time};
use dsm::master::{Config, Master};

const RECORDS: u64 = 1_000_000;

fn main() {
    if !common::requested() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.log");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(out, "1 EPOCH 1").unwrap();
    for i in 2..RECORDS + 1 {
        writeln!(out, "{i} SET key{} value-{i}-abcdefghij", i % 100_000).unwrap();
    }
    out.into_inner().unwrap().sync_all().unwrap();
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let config =
            Config { listen: "127.0.0.1:0".into(), wal: path.clone(), peer: None, ..Config::default() };
        let (w0, c0) = (Instant::now(), own_cpu_time());
        let master = Master::bind(config).unwrap();
        let (w, c) = (w0.elapsed(), own_cpu_time() - c0);
        drop(master);
        wall.push(RECORDS as f64 / w.as_secs_f64());
        cpu.push(RECORDS as f64 / c.as_secs_f64());
    }
    println!(
        "replay of {RECORDS} records at master start, median of 5: {:.0} records/s (wall), {:.0} records/s (CPU time)",
        median(wall),
        median(cpu)
    );
}
