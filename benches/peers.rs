//! dsm beside the store its users would otherwise pick, in one run, with the same client: a
//! Redis primary with two replicas (appendonly, fsync every second, like dsm's log), a write
//! acknowledged after `WAIT 1` (on a majority of the three copies), against a dsm master with 3
//! slaves (3 copies of each write: the master's and a majority of the slaves'). Workloads:
//!
//! - majority-acknowledged writes, 10 connections (Redis: `SET` + `WAIT 1 0` per write),
//! - the same on 1 connection,
//! - reads, 10 connections (Redis `GET`),
//! - pipelined writes on 1 connection, 100 per send (Redis: 100 `SET` + one `WAIT 1 0`).
//!
//! Each is a closed loop for `DSM_PEERS_SECONDS` (default 5) seconds, median of
//! `DSM_PEERS_RUNS` (default 3) runs, Redis and dsm alternating. The client is the same code for
//! both: one blocking connection per thread, requests encoded for the protocol, replies read
//! and checked. `make bench-peers` installs `redis-server` if it is missing.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::median;
use dsm_testkit::cluster::{free_port, wait_for, Cluster};

/// Keys the workloads use (reads find them all).
const KEYS: usize = 10_000;

/// The value of every write.
const VALUE: [u8; 100] = [b'v'; 100];

/// Writes per send in the pipelined workload.
const PIPELINE: usize = 100;

#[derive(Clone, Copy, PartialEq)]
enum Peer {
    Redis,
    Dsm,
}

/// One blocking client connection speaking either protocol.
struct Conn {
    peer: Peer,
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    out: Vec<u8>,
    line: Vec<u8>,
}

impl Conn {
    fn connect(peer: Peer, addr: &str) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Conn { peer, stream, reader, out: Vec::with_capacity(64 << 10), line: Vec::new() }
    }

    fn push_resp(&mut self, args: &[&[u8]]) {
        self.out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            self.out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
    }

    /// Queues a write of `key` (and, for Redis, nothing else: see `wait`).
    fn write(&mut self, key: &str) {
        match self.peer {
            Peer::Redis => self.push_resp(&[b"SET", key.as_bytes(), &VALUE]),
            Peer::Dsm => {
                self.out.extend_from_slice(b"WRITE ");
                self.out.extend_from_slice(key.as_bytes());
                self.out.push(b' ');
                self.out.extend_from_slice(&VALUE);
                self.out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Queues what makes the writes before it majority-acknowledged: Redis's `WAIT 1 0`.
    fn wait(&mut self) -> usize {
        match self.peer {
            Peer::Redis => {
                self.push_resp(&[b"WAIT", b"1", b"0"]);
                1
            }
            Peer::Dsm => 0,
        }
    }

    fn read(&mut self, key: &str) {
        match self.peer {
            Peer::Redis => self.push_resp(&[b"GET", key.as_bytes()]),
            Peer::Dsm => self.out.extend_from_slice(format!("READ {key}\r\n").as_bytes()),
        }
    }

    /// Sends what is queued and reads `n` replies; false if any was an error (or, for `WAIT`,
    /// reached no replica).
    fn flush(&mut self, n: usize) -> bool {
        self.stream.write_all(&self.out).expect("send");
        self.out.clear();
        let mut ok = true;
        for _ in 0..n {
            ok &= self.reply();
        }
        ok
    }

    fn reply(&mut self) -> bool {
        self.line.clear();
        self.reader.read_until(b'\n', &mut self.line).expect("reply");
        let line = &self.line;
        match (self.peer, line.first()) {
            (Peer::Dsm, _) => line.starts_with(b"OK ") || line.starts_with(b"VALUE "),
            (Peer::Redis, Some(b'+')) => true,
            (Peer::Redis, Some(b':')) => line.get(1) != Some(&b'0'),
            (Peer::Redis, Some(b'$')) => {
                let len: i64 = std::str::from_utf8(&line[1..]).unwrap().trim().parse().unwrap();
                if len >= 0 {
                    let mut skip = vec![0u8; len as usize + 2];
                    self.reader.read_exact(&mut skip).expect("bulk reply");
                }
                len >= 0
            }
            _ => false,
        }
    }
}

#[derive(Clone, Copy)]
enum Workload {
    Writes(usize),
    Reads(usize),
    Pipelined,
}

impl Workload {
    fn name(self) -> String {
        match self {
            Workload::Writes(c) => format!("majority-acknowledged writes, {c} connection(s)"),
            Workload::Reads(c) => format!("reads, {c} connections"),
            Workload::Pipelined => format!("pipelined writes, 1 connection, {PIPELINE} per send (keys/s)"),
        }
    }
}

/// Runs `workload` against `addr` for `secs`; returns operations per second (errors excluded;
/// the run fails on any error).
fn measure(peer: Peer, addr: &str, workload: Workload, secs: f64) -> f64 {
    let connections = match workload {
        Workload::Writes(c) | Workload::Reads(c) => c,
        Workload::Pipelined => 1,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|t| {
            let (stop, addr) = (Arc::clone(&stop), addr.to_string());
            thread::spawn(move || {
                let mut c = Conn::connect(peer, &addr);
                let mut done = 0u64;
                let mut i = t * 7919;
                while !stop.load(Ordering::Relaxed) {
                    let ok = match workload {
                        Workload::Writes(_) => {
                            c.write(&format!("key:{}", i % KEYS));
                            let n = 1 + c.wait();
                            c.flush(n)
                        }
                        Workload::Reads(_) => {
                            c.read(&format!("key:{}", i % KEYS));
                            c.flush(1)
                        }
                        Workload::Pipelined => {
                            for k in 0..PIPELINE {
                                c.write(&format!("key:{}", (i + k) % KEYS));
                            }
                            let n = PIPELINE + c.wait();
                            c.flush(n)
                        }
                    };
                    assert!(ok, "an error reply from {}", if peer == Peer::Redis { "Redis" } else { "dsm" });
                    let ops = if matches!(workload, Workload::Pipelined) { PIPELINE } else { 1 };
                    done += ops as u64;
                    i += ops;
                }
                done
            })
        })
        .collect();
    thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let total: u64 = threads.into_iter().map(|t| t.join().expect("client")).sum();
    total as f64 / started.elapsed().as_secs_f64()
}

/// A Redis server process, killed on drop.
struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis(dir: &std::path::Path, port: u16, primary: Option<u16>) -> RedisServer {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "yes", "--appendfsync", "everysec", "--protected-mode", "no"])
        .arg("--dir")
        .arg(dir)
        .args(["--appendfilename", &format!("aof-{port}"), "--appenddirname", &format!("aof-{port}")]);
    if let Some(p) = primary {
        cmd.args(["--replicaof", "127.0.0.1", &p.to_string()]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (make bench-peers installs it)");
    RedisServer(child)
}

/// `INFO replication` of the Redis server on `port`, or `None` while it does not answer.
fn redis_info(port: u16) -> Option<String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    (&stream).write_all(b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n").ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let len: usize = line.strip_prefix('$')?.trim().parse().ok()?;
    let mut body = vec![0u8; len + 2];
    reader.read_exact(&mut body).ok()?;
    Some(String::from_utf8_lossy(&body).into_owned())
}

fn main() {
    if !common::requested() {
        return;
    }
    let secs: f64 = std::env::var("DSM_PEERS_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let runs: usize = std::env::var("DSM_PEERS_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap().port();
    let _redis_primary = redis(dir.path(), port, None);
    let _replicas: Vec<RedisServer> =
        (0..2).map(|_| redis(dir.path(), free_port().unwrap().port(), Some(port))).collect();
    wait_for("Redis with two replicas", Duration::from_secs(30), || {
        redis_info(port).is_some_and(|info| info.contains("connected_slaves:2"))
    })
    .expect("redis");
    let redis_addr = format!("127.0.0.1:{port}");

    let cluster =
        Cluster::builder().slaves(3).primary_args(["--log-level", "warn"]).start().expect("dsm cluster");
    let dsm_addr = cluster.primary_addr().to_string();

    // Every key exists on both, so reads find values.
    for (peer, addr) in [(Peer::Redis, &redis_addr), (Peer::Dsm, &dsm_addr)] {
        let mut c = Conn::connect(peer, addr);
        for chunk in (0..KEYS).collect::<Vec<_>>().chunks(PIPELINE) {
            for k in chunk {
                c.write(&format!("key:{k}"));
            }
            let n = chunk.len() + c.wait();
            assert!(c.flush(n));
        }
    }

    println!("dsm (master + 3 slaves) against Redis (primary + 2 replicas, SET + WAIT 1), {runs} runs of {secs} s, one client:");
    println!("| workload | Redis ops/s | dsm ops/s | dsm / Redis |");
    println!("|---|---|---|---|");
    let own_client = std::env::var("DSM_PEERS_ONLY_REDIS_BENCHMARK").is_err();
    for workload in [Workload::Writes(10), Workload::Writes(1), Workload::Reads(10), Workload::Pipelined] {
        if !own_client {
            break;
        }
        let (mut r, mut d) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            r.push(measure(Peer::Redis, &redis_addr, workload, secs));
            d.push(measure(Peer::Dsm, &dsm_addr, workload, secs));
        }
        let (rm, dm) = (median(r.clone()), median(d.clone()));
        println!("| {} | {rm:.0} | {dm:.0} | {:.2}x |", workload.name(), dm / rm);
        eprintln!("  runs: Redis {r:.0?}, dsm {d:.0?}");
    }

    // The standard tool, against both: Redis's SET is acknowledged before its replicas have it
    // (no WAIT here), dsm's only after a majority of its slaves has it.
    println!();
    println!("redis-benchmark -t set,get -n {BENCHMARK_REQUESTS} -c 10 [-P 16], medians of {runs} runs (requests/s; Redis SET without WAIT):");
    println!("| test | Redis | dsm | dsm / Redis |");
    println!("|---|---|---|---|");
    for pipeline in ["1", "16"] {
        let (mut r, mut d) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            r.push(redis_benchmark(&redis_addr, pipeline));
            d.push(redis_benchmark(&dsm_addr, pipeline));
        }
        for (i, test) in ["SET", "GET"].into_iter().enumerate() {
            let rs: Vec<f64> = r.iter().map(|x: &[f64; 2]| x[i]).collect();
            let ds: Vec<f64> = d.iter().map(|x: &[f64; 2]| x[i]).collect();
            let (rm, dm) = (median(rs.clone()), median(ds.clone()));
            println!("| {test} -P {pipeline} | {rm:.0} | {dm:.0} | {:.2}x |", dm / rm);
            eprintln!("  runs: Redis {rs:.0?}, dsm {ds:.0?}");
        }
    }
    drop(cluster);
}

/// Requests per run of `redis-benchmark`, as the issue that asked for it says.
const BENCHMARK_REQUESTS: u32 = 100_000;

/// Runs `redis-benchmark -t set,get -n 100000 -c 10 -P <pipeline>` against `addr`: SET and GET
/// requests per second. Panics if it fails or reports an error.
fn redis_benchmark(addr: &str, pipeline: &str) -> [f64; 2] {
    let port = addr.rsplit(':').next().unwrap();
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            port,
            "-t",
            "set,get",
            "-n",
            &BENCHMARK_REQUESTS.to_string(),
            "-c",
            "10",
            "-P",
            pipeline,
        ])
        .arg("--csv")
        .output()
        .expect("redis-benchmark (make bench-peers installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !text.contains("ERR"), "redis-benchmark against {addr}: {text}");
    // `"SET","123456.79",...` per test.
    let rps = |test: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(&format!("\"{test}\"")))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|v| v.trim_matches('"').parse().ok())
            .unwrap_or_else(|| panic!("no {test} figure from redis-benchmark: {text}"))
    };
    [rps("SET"), rps("GET")]
}
