//! Shared helpers for the integration tests: a cluster of real processes on ephemeral ports in
//! a temporary directory, killed when dropped, and a raw line connection like `nc`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dsm::client::Client;
use dsm_testkit::cluster::{stat, wait_for, Node};
use tempfile::TempDir;

/// How long a test waits for a cluster to become ready: generous, because tests run in
/// parallel on two contended cores.
pub const READY: Duration = Duration::from_secs(60);

pub fn bin(name: &str) -> PathBuf {
    match name {
        "dsm-master" => PathBuf::from(env!("CARGO_BIN_EXE_dsm-master")),
        "dsm-slave" => PathBuf::from(env!("CARGO_BIN_EXE_dsm-slave")),
        "dsm-client" => PathBuf::from(env!("CARGO_BIN_EXE_dsm-client")),
        "dsm-backup" => PathBuf::from(env!("CARGO_BIN_EXE_dsm-backup")),
        other => panic!("unknown binary {other}"),
    }
}

/// A primary master and slaves, all real processes.
pub struct TestCluster {
    pub master: Node,
    pub slaves: Vec<Node>,
    /// Declared last so the processes die before their directory is removed.
    pub dir: TempDir,
}

impl TestCluster {
    /// Starts a master and `n` slaves (ids `s1`..), and waits until all slaves are caught up.
    pub fn start(n: usize) -> TestCluster {
        Self::start_with(n, &[])
    }

    /// Like [`TestCluster::start`], with extra master flags.
    pub fn start_with(n: usize, master_flags: &[&str]) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let master = start_master(dir.path(), master_flags, "127.0.0.1:0");
        let mut cluster = TestCluster { master, slaves: Vec::new(), dir };
        for i in 1..=n {
            cluster.add_slave(&format!("s{i}"));
        }
        cluster.wait_slaves(n);
        cluster
    }

    pub fn addr(&self) -> String {
        self.master.addr().to_string()
    }

    /// Starts one more slave with this id.
    pub fn add_slave(&mut self, id: &str) {
        let args =
            vec!["--id".into(), id.into(), "--master".into(), self.addr(), "--backup".into(), "none".into()];
        let node =
            Node::start(id, &bin("dsm-slave"), args, self.dir.path(), false, false).expect("start slave");
        self.slaves.push(node);
    }

    /// Waits until the master reports `n` live, caught-up slaves.
    pub fn wait_slaves(&self, n: usize) {
        let addr = self.addr();
        wait_for(&format!("{n} slaves up"), READY, || stat(&addr, "slaves") == Some(n.to_string()))
            .unwrap_or_else(|e| panic!("{e}; master said slaves={:?}", stat(&addr, "slaves")));
    }

    /// A client of the master only (no backup).
    pub fn client(&self) -> Client {
        let mut c = Client::new(&self.addr(), None);
        c.set_timeout(Duration::from_secs(30));
        c
    }

    pub fn raw(&self) -> Raw {
        Raw::connect(&self.addr())
    }

    pub fn wal_path(&self) -> PathBuf {
        self.dir.path().join("kv.log")
    }
}

pub fn start_master(dir: &Path, extra: &[&str], listen: &str) -> Node {
    let mut args: Vec<String> = vec![
        "--listen".into(),
        listen.into(),
        "--wal".into(),
        dir.join("kv.log").display().to_string(),
        "--backup".into(),
        "none".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Node::start("master", &bin("dsm-master"), args, dir, false, true).expect("start master")
}

/// One `STATS` value, like [`stat`], authenticating first when `password` is given.
pub fn stat_with_password(addr: &str, name: &str, password: Option<&str>) -> Option<String> {
    let mut c = Client::new(addr, None);
    c.set_timeout(Duration::from_secs(2));
    if let Some(p) = password {
        c.set_password(p.as_bytes());
    }
    c.stats().ok()?.into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// A raw TCP line connection, like `nc`.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub fn connect(addr: &str) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Raw { stream, buf: Vec::new() }
    }

    /// Wraps an accepted or already connected stream.
    pub fn from_stream(stream: TcpStream) -> Raw {
        Raw { stream, buf: Vec::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Reads one `\r\n`-terminated reply line (without the terminator).
    pub fn line(&mut self) -> String {
        String::from_utf8_lossy(&self.line_bytes()).into_owned()
    }

    /// [`Raw::line`], byte for byte.
    pub fn line_bytes(&mut self) -> Vec<u8> {
        let mut scanned = 0;
        loop {
            if let Some(pos) = self.buf[scanned..].windows(2).position(|w| w == b"\r\n") {
                let pos = scanned + pos;
                return self.buf.drain(..pos + 2).take(pos).collect();
            }
            scanned = self.buf.len().saturating_sub(1);
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).expect("read reply");
            assert!(n > 0, "connection closed; buffered: {:?}", String::from_utf8_lossy(&self.buf));
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads one `\n`-terminated line (a `\r` before it dropped): the peer protocols end their
    /// lines with `\n` alone.
    pub fn line_lf(&mut self) -> String {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..pos + 1).take(pos).collect();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return String::from_utf8_lossy(&line).into_owned();
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).expect("read line");
            assert!(n > 0, "connection closed; buffered: {:?}", String::from_utf8_lossy(&self.buf));
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends one request line and returns the reply line.
    pub fn ask(&mut self, request: &str) -> String {
        self.send(format!("{request}\r\n").as_bytes());
        self.line()
    }

    /// [`Raw::ask`], byte for byte.
    pub fn ask_bytes(&mut self, request: &str) -> Vec<u8> {
        self.send(format!("{request}\r\n").as_bytes());
        self.line_bytes()
    }

    /// True when the server closed the connection (after any buffered replies).
    pub fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        matches!(self.stream.read(&mut chunk), Ok(0) | Err(_))
    }
}

/// True for the replies a healthy cluster may give for a moment when the machine is so busy
/// that a slave misses its heartbeats or ACK deadline: `ERR UNAVAILABLE` (nothing happened) and
/// `ERR TIMEOUT` (the outcome is unknown; writing the same value again is harmless here).
fn transient(reply: &dsm::Result<dsm::protocol::Reply>) -> bool {
    use dsm::protocol::{ErrorReply, Reply};
    matches!(reply, Ok(Reply::Err(ErrorReply::Unavailable(_) | ErrorReply::Timeout(_))))
}

/// `WRITE` through a client until it is acknowledged, riding out transient errors (see
/// [`transient`]); panics on any other reply. Returns the acknowledged version.
pub fn must_write(c: &mut Client, key: &str, value: &str) -> u64 {
    let deadline = std::time::Instant::now() + READY;
    loop {
        let reply = c.write(key, value.as_bytes());
        match reply {
            Ok(dsm::protocol::Reply::Ok(v)) => return v,
            ref r if transient(r) && std::time::Instant::now() < deadline => {
                std::thread::sleep(dsm_testkit::cluster::POLL_INTERVAL)
            }
            other => panic!("write {key}={value}: {other:?}"),
        }
    }
}

/// `READ` through a client: the value, or `None` for `NOT_FOUND`, riding out transient errors;
/// panics on any other reply.
pub fn must_read(c: &mut Client, key: &str) -> Option<String> {
    let deadline = std::time::Instant::now() + READY;
    loop {
        let reply = c.read(key);
        match reply {
            Ok(dsm::protocol::Reply::Value { value, .. }) => return Some(String::from_utf8(value).unwrap()),
            Ok(dsm::protocol::Reply::NotFound) => return None,
            ref r if transient(r) && std::time::Instant::now() < deadline => {
                std::thread::sleep(dsm_testkit::cluster::POLL_INTERVAL)
            }
            other => panic!("read {key}: {other:?}"),
        }
    }
}

/// A primary, a backup and slaves, on ports fixed at start so each can name the other.
pub struct FailoverCluster {
    pub primary: Node,
    pub backup: Node,
    pub slaves: Vec<Node>,
    pub primary_addr: String,
    pub backup_addr: String,
    /// The client password (`--requirepass`), sent by [`FailoverCluster::wait_role`] and
    /// [`FailoverCluster::client`].
    pub password: Option<String>,
    /// Declared last so the processes die before their directory is removed.
    pub dir: TempDir,
}

impl FailoverCluster {
    /// Starts a primary, a backup and `n` slaves (ids `s1`..), and waits until the primary has
    /// all slaves caught up. `tcp_follow`: the backup streams the log over TCP instead of
    /// reading the file.
    pub fn start(n: usize, tcp_follow: bool) -> FailoverCluster {
        Self::start_with(n, tcp_follow, &[], &[], None)
    }

    /// Like [`FailoverCluster::start`], with extra flags for the primary and the backup
    /// (`server_flags`) and for the slaves (`slave_flags`). `password` is the client password the
    /// servers require, if `server_flags` set one; files the flags name must outlive the cluster.
    pub fn start_with(
        n: usize,
        tcp_follow: bool,
        server_flags: &[&str],
        slave_flags: &[&str],
        password: Option<&str>,
    ) -> FailoverCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let primary_addr = dsm_testkit::cluster::free_port().unwrap().to_string();
        let backup_addr = dsm_testkit::cluster::free_port().unwrap().to_string();
        let wal = dir.path().join("kv.log").display().to_string();
        let mut primary_args: Vec<String> = vec![
            "--listen".into(),
            primary_addr.clone(),
            "--wal".into(),
            wal.clone(),
            "--backup".into(),
            backup_addr.clone(),
        ];
        primary_args.extend(server_flags.iter().map(|s| s.to_string()));
        let primary = Node::start("primary", &bin("dsm-master"), primary_args, dir.path(), false, true)
            .expect("start primary");
        let mut backup_args = vec![
            "--listen".into(),
            backup_addr.clone(),
            "--primary".into(),
            primary_addr.clone(),
            "--wal".into(),
            dir.path().join("backup.log").display().to_string(),
        ];
        if tcp_follow {
            backup_args.push("--follow-primary".into());
        } else {
            backup_args.extend(["--follow".to_string(), wal]);
        }
        backup_args.extend(server_flags.iter().map(|s| s.to_string()));
        let backup = Node::start("backup", &bin("dsm-backup"), backup_args, dir.path(), false, true)
            .expect("start backup");
        let password = password.map(str::to_string);
        let mut c =
            FailoverCluster { primary, backup, slaves: Vec::new(), primary_addr, backup_addr, password, dir };
        for i in 1..=n {
            let mut args: Vec<String> = vec![
                "--id".into(),
                format!("s{i}"),
                "--master".into(),
                c.primary_addr.clone(),
                "--backup".into(),
                c.backup_addr.clone(),
            ];
            args.extend(slave_flags.iter().map(|s| s.to_string()));
            let node = Node::start(&format!("s{i}"), &bin("dsm-slave"), args, c.dir.path(), false, false)
                .expect("start slave");
            c.slaves.push(node);
        }
        c.wait_role(&c.primary_addr.clone(), "primary", n);
        c
    }

    /// Waits until the master at `addr` has `role` and `slaves` caught-up slaves.
    pub fn wait_role(&self, addr: &str, role: &str, slaves: usize) {
        let stat = |name| stat_with_password(addr, name, self.password.as_deref());
        wait_for(&format!("{addr} to be {role} with {slaves} slaves"), READY, || {
            stat("role").as_deref() == Some(role) && stat("slaves") == Some(slaves.to_string())
        })
        .unwrap_or_else(|e| {
            panic!("{e}: role={:?} slaves={:?}\n{}", stat("role"), stat("slaves"), self.output_tails(40))
        });
    }

    /// The last `n` lines of every node's output, for a failure message.
    pub fn output_tails(&self, n: usize) -> String {
        let mut out = String::new();
        for name in ["primary", "backup", "s1", "s2", "s3"] {
            let text =
                std::fs::read_to_string(self.dir.path().join(format!("{name}.out"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {name}.out\n{}\n", lines[lines.len().saturating_sub(n)..].join("\n")));
        }
        out
    }

    /// A client of both masters, primary first, with the password if there is one.
    pub fn client(&self) -> Client {
        let mut c = Client::new(&self.primary_addr, Some(&self.backup_addr));
        c.set_timeout(Duration::from_secs(30));
        if let Some(p) = &self.password {
            c.set_password(p.as_bytes());
        }
        c
    }
}
