//! Shared helpers for the integration tests: a cluster of real processes on ephemeral ports in
//! a temporary directory, killed when dropped, and a raw line connection like `nc`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::time::Duration;

use dsm::client::Client;
pub use dsm_testkit::cluster::stat_with_password;
use dsm_testkit::cluster::{wait_for, Cluster, ClusterBuilder, Follow, Listen, Node, Ready};

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

/// A builder for the tests' clusters: the binaries of this build, [`READY`] to get ready.
pub fn builder() -> ClusterBuilder {
    Cluster::builder().bin_dir(bin("dsm-master").parent().unwrap()).ready_timeout(READY)
}

/// A primary master and slaves (no backup), all real processes.
pub struct TestCluster(pub Cluster);

impl Deref for TestCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.0
    }
}

impl DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.0
    }
}

impl TestCluster {
    /// Starts a master and `n` slaves (ids `s1`..), and waits until all slaves are caught up.
    pub fn start(n: usize) -> TestCluster {
        Self::start_with(n, &[])
    }

    /// Like [`TestCluster::start`], with extra master flags.
    pub fn start_with(n: usize, master_flags: &[&str]) -> TestCluster {
        TestCluster::from_builder(builder().slaves(n).primary_args(master_flags))
    }

    /// Starts what `builder` says and waits until its slaves are caught up.
    pub fn from_builder(builder: ClusterBuilder) -> TestCluster {
        TestCluster(builder.start().unwrap_or_else(|e| panic!("start the cluster: {e}")))
    }

    pub fn addr(&self) -> String {
        self.primary_addr().to_string()
    }

    /// Waits until the master reports `n` live, caught-up slaves.
    pub fn wait_slaves(&self, n: usize) {
        self.0.wait_slaves(n, READY).unwrap_or_else(|e| panic!("{e}"));
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
    pub cluster: Cluster,
    pub primary_addr: String,
    pub backup_addr: String,
    /// The client password (`--requirepass`), sent by [`FailoverCluster::wait_role`] and
    /// [`FailoverCluster::client`].
    pub password: Option<String>,
}

impl Deref for FailoverCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl DerefMut for FailoverCluster {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.cluster
    }
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
        let mut b = builder()
            .primary_listen(Listen::FreePort)
            .backup(if tcp_follow { Follow::Tcp } else { Follow::Wal })
            .slaves(n)
            .primary_args(server_flags)
            .backup_args(server_flags)
            .slave_args(slave_flags)
            .ready(Ready::Serving);
        if let Some(p) = password {
            b = b.password(p);
        }
        let cluster = b.start().unwrap_or_else(|e| panic!("start the cluster: {e}"));
        let primary_addr = cluster.primary_addr().to_string();
        let backup_addr = cluster.backup_addr().expect("a backup").to_string();
        FailoverCluster { cluster, primary_addr, backup_addr, password: password.map(str::to_string) }
    }

    /// The backup.
    pub fn backup(&mut self) -> &mut Node {
        self.cluster.backup.as_mut().expect("a backup")
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
