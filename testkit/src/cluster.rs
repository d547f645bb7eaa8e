//! Running dsm processes: start the real binaries, wait until they are ready, signal them, and
//! stop them all when dropped.
//!
//! The harness and the integration tests both use this module, so what they measure and test is
//! exactly what a user runs. A [`Node`] is one child process. It is ready when it has printed
//! `listening on ADDR` on stdout (servers bind `127.0.0.1:0` in tests, so the real port is
//! learned from that line, never guessed). Its output is copied to a log file in the cluster's
//! directory (and, optionally, to our stderr with its role as prefix). Dropping a `Node` kills
//! the process, so a failed test leaves nothing behind.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver};

use dsm::client::Client;
use dsm::{Error, Result};

/// How long a process may take to print `listening on`. Generous: tests run in parallel on two
/// contended cores.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a condition is polled while waiting for it.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Where the dsm binaries are: the directory of the running executable, or its parent (tests
/// and benchmarks run from `target/<profile>/deps`). `DSM_BIN_DIR` overrides.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DSM_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.join("dsm-master").exists() {
        dir
    } else {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    }
}

/// A free TCP port on loopback, for a server whose address others must know before it starts
/// (the backup's, and the primary's when the backup is started with it).
///
/// The port is taken from below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`). A port the kernel hands out for `bind(:0)` comes
/// from that range, and so does the local port of every outgoing connection: between this call
/// and the server's `bind`, any test's client connection could take it, and the server would
/// fail with "address in use". Ports below the range are never given to outgoing connections.
/// Each process starts at a random point and walks forward, so parallel callers rarely meet;
/// a port is returned only after a successful trial `bind`.
pub fn free_port() -> Result<SocketAddr> {
    // The walk's position: random for each process, then one step per port tried.
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU32> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| std::sync::atomic::AtomicU32::new(rand::random::<u16>().into()));
    let (low, high) = PRIVATE_PORTS;
    let floor = ephemeral_floor().clamp(low + 1, high);
    let span = floor - low;
    for _ in 0..span {
        let port = low + next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % span;
        let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
        if TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Where [`free_port`] looks: from `PRIVATE_PORTS.0` up to the start of the ephemeral range,
/// never above `PRIVATE_PORTS.1`.
const PRIVATE_PORTS: (u32, u32) = (20_000, 32_768);

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_floor() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(32_768)
}

/// One running dsm process.
pub struct Node {
    /// A short name: `master`, `backup`, `slave-1`, ...
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    echo: bool,
    child: Option<Child>,
    addr: Option<SocketAddr>,
}

impl Node {
    /// Starts `program` with `args` in `dir`. If `wait_listening`, waits for its
    /// `listening on ADDR` line.
    pub fn start(
        name: &str,
        program: &Path,
        args: Vec<String>,
        dir: &Path,
        echo: bool,
        wait_listening: bool,
    ) -> Result<Node> {
        let mut node = Node {
            name: name.to_string(),
            program: program.to_path_buf(),
            args,
            dir: dir.to_path_buf(),
            echo,
            child: None,
            addr: None,
        };
        node.spawn(wait_listening)?;
        Ok(node)
    }

    fn spawn(&mut self, wait_listening: bool) -> Result<()> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Config(format!("cannot start {}: {e}", self.program.display())))?;
        let log_path = self.dir.join(format!("{}.out", self.name));
        let log = File::options().create(true).append(true).open(&log_path)?;
        let (tx, rx) = bounded(1);
        // Each copier holds a sender; when both have seen end of file, `copied` disconnects.
        let (copied_tx, copied) = bounded::<()>(0);
        if let Some(stdout) = child.stdout.take() {
            let (log, name, echo, done) = (log.try_clone()?, self.name.clone(), self.echo, copied_tx.clone());
            thread::spawn(move || {
                copy_output(stdout, log, &name, echo, Some(tx));
                drop(done);
            });
        }
        if let Some(stderr) = child.stderr.take() {
            let (name, echo, done) = (self.name.clone(), self.echo, copied_tx);
            thread::spawn(move || {
                copy_output(stderr, log, &name, echo, None);
                drop(done);
            });
        }
        self.child = Some(child);
        if wait_listening {
            self.addr = Some(self.wait_listening(&rx, &copied)?);
        }
        Ok(())
    }

    fn wait_listening(&mut self, rx: &Receiver<SocketAddr>, copied: &Receiver<()>) -> Result<SocketAddr> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(addr) = rx.recv_timeout(POLL_INTERVAL) {
                return Ok(addr);
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                // Let the copiers finish, so the error can quote why the process stopped.
                let _ = copied.recv_timeout(Duration::from_secs(2));
                let path = self.dir.join(format!("{}.out", self.name));
                return Err(Error::Unavailable(format!(
                    "{} exited with {status} before listening; see {}; its last output:\n{}",
                    self.name,
                    path.display(),
                    tail(&path, 10)
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!("{} did not start listening", self.name)));
            }
        }
    }

    /// The address the process printed in `listening on ADDR`.
    pub fn addr(&self) -> SocketAddr {
        self.addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process freezes with its sockets open, like a hung machine.
    pub fn pause(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// SIGCONT after [`Node::pause`].
    pub fn resume(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// SIGTERM: ask the process to stop.
    pub fn terminate(&self) -> Result<()> {
        self.signal(libc::SIGTERM)
    }

    fn signal(&self, sig: libc::c_int) -> Result<()> {
        let pid = self.pid().ok_or_else(|| Error::Unavailable(format!("{} is not running", self.name)))?;
        // SAFETY: kill(2) with a pid we spawned and have not reaped; no memory is shared.
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::Io(std::io::Error::last_os_error()))
        }
    }

    /// Kills the process (if running) and starts it again with the same arguments, so a server
    /// comes back on the same address.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        // A server first started on port 0 comes back on the port it got.
        if let Some(addr) = self.addr {
            if let Some(i) = self.args.iter().position(|a| a == "--listen") {
                if let Some(listen) = self.args.get_mut(i + 1) {
                    *listen = addr.to_string();
                }
            }
        }
        let wait = self.addr.is_some();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            // The old socket may linger briefly; retry until the port is ours again.
            match self.spawn(wait) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    log::debug!("restart of {} failed, retrying: {e}", self.name);
                    self.kill();
                    thread::sleep(POLL_INTERVAL * 5);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The command-line arguments the process was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too; resuming first is harmless and keeps a test that
        // paused a node from leaving a frozen process behind if the kill fails.
        let _ = self.resume();
        self.kill();
    }
}

fn copy_output(
    from: impl std::io::Read,
    mut log: File,
    name: &str,
    echo: bool,
    mut ready: Option<crossbeam_channel::Sender<SocketAddr>>,
) {
    let reader = BufReader::new(from);
    for line in reader.split(b'\n') {
        let Ok(line) = line else { break };
        let text = String::from_utf8_lossy(&line);
        if let Some(tx) = &ready {
            if let Some(addr) = text.strip_prefix("listening on ").and_then(|a| a.trim().parse().ok()) {
                let _ = tx.send(addr);
                ready = None;
            }
        }
        let _ = writeln!(log, "{text}");
        if echo {
            eprintln!("[{name}] {text}");
        }
    }
}

/// The last `lines` lines of the file at `path` (empty if it cannot be read).
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits until `condition` holds, polling; `what` names it in the timeout error.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() > deadline {
            return Err(Error::Timeout(format!("waited {timeout:?} for {what}")));
        }
        thread::sleep(POLL_INTERVAL);
    }
    Ok(())
}

/// One `STATS` value from the server at `addr`, or `None` if it cannot be asked.
pub fn stat(addr: &str, name: &str) -> Option<String> {
    let mut c = Client::new(addr, None);
    c.set_timeout(Duration::from_secs(2));
    c.stats().ok()?.into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// How long the slaves of a freshly started cluster may take to register with the master.
/// Generous for the same reason as [`READY_TIMEOUT`].
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one `STATS` request made while waiting for readiness may take.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// What [`Cluster::start`] starts.
#[derive(Debug, Clone, Default)]
pub struct ClusterConfig {
    /// How many slaves (`dsm-slave --id s1` .. `sN`).
    pub slaves: usize,
    /// Start a backup master (`dsm-backup`) too. Ignored, with a warning in the log, when the
    /// binary is not built; see [`Cluster::has_backup_binary`].
    pub backup: bool,
    /// Extra arguments for `dsm-master` (e.g. `--fsync never`).
    pub master_args: Vec<String>,
    /// Extra arguments for `dsm-backup`.
    pub backup_args: Vec<String>,
    /// Copy every process's output to our stderr, prefixed with its name.
    pub echo: bool,
}

/// A whole dsm cluster of real processes: the primary, an optional backup and N slaves, all on
/// loopback, with their logs and write-ahead logs in one directory. Dropping it kills every
/// process (slaves first, then the backup, then the primary).
pub struct Cluster {
    /// The directory holding the write-ahead logs and each process's `NAME.out`.
    pub dir: PathBuf,
    /// The primary master.
    pub master: Node,
    /// The backup master, if one was started.
    pub backup: Option<Node>,
    /// The slaves, `s1` first.
    pub slaves: Vec<Node>,
    master_addr: String,
    backup_addr: Option<String>,
}

impl Cluster {
    /// True when `dsm-backup` is built next to the other binaries.
    pub fn has_backup_binary() -> bool {
        bin_dir().join("dsm-backup").exists()
    }

    /// The slave id [`Cluster::start`] gives to slave number `i` (from 0): `s1`, `s2`, ...
    pub fn slave_id(i: usize) -> String {
        format!("s{}", i + 1)
    }

    /// Starts the primary (`--listen 127.0.0.1:0`), the backup if asked for and built, and the
    /// slaves, in `dir` (which must exist), then waits until every slave has registered.
    pub fn start(config: &ClusterConfig, dir: &Path) -> Result<Cluster> {
        let bin = bin_dir();
        let backup_addr = if config.backup && Cluster::has_backup_binary() {
            Some(free_port()?.to_string())
        } else {
            if config.backup {
                log::warn!(
                    "{} is not built: running without a backup master",
                    bin.join("dsm-backup").display()
                );
            }
            None
        };
        let master_wal = dir.join("master.wal");
        let mut args = vec![
            "--listen".to_string(),
            "127.0.0.1:0".to_string(),
            "--wal".to_string(),
            master_wal.display().to_string(),
        ];
        if let Some(b) = &backup_addr {
            args.extend(["--backup".to_string(), b.clone()]);
        }
        args.extend(config.master_args.iter().cloned());
        let master = Node::start("master", &bin.join("dsm-master"), args, dir, config.echo, true)?;
        let master_addr = master.addr().to_string();
        let backup = match &backup_addr {
            Some(b) => Some(Node::start(
                "backup",
                &bin.join("dsm-backup"),
                vec![
                    "--listen".into(),
                    b.clone(),
                    "--primary".into(),
                    master_addr.clone(),
                    "--follow".into(),
                    master_wal.display().to_string(),
                    "--wal".into(),
                    dir.join("backup.wal").display().to_string(),
                ]
                .into_iter()
                .chain(config.backup_args.iter().cloned())
                .collect(),
                dir,
                config.echo,
                true,
            )?),
            None => None,
        };
        let mut cluster =
            Cluster { dir: dir.to_path_buf(), master, backup, slaves: Vec::new(), master_addr, backup_addr };
        for i in 0..config.slaves {
            let id = Cluster::slave_id(i);
            let mut args =
                vec!["--id".to_string(), id.clone(), "--master".to_string(), cluster.master_addr.clone()];
            if let Some(b) = &cluster.backup_addr {
                args.extend(["--backup".to_string(), b.clone()]);
            }
            let node = Node::start(
                &format!("slave-{}", i + 1),
                &bin.join("dsm-slave"),
                args,
                dir,
                config.echo,
                false,
            )?;
            cluster.slaves.push(node);
        }
        cluster.wait_slaves(config.slaves, REGISTER_TIMEOUT)?;
        Ok(cluster)
    }

    /// The primary's address.
    pub fn master_addr(&self) -> &str {
        &self.master_addr
    }

    /// The backup's address, if a backup was started.
    pub fn backup_addr(&self) -> Option<&str> {
        self.backup_addr.as_deref()
    }

    /// The number of live registered slaves the primary reports (`STAT slaves`), or `None`
    /// when it cannot be asked.
    pub fn registered_slaves(&self) -> Option<usize> {
        registered_slaves(&self.master_addr)
    }

    /// Waits until the primary reports `n` live registered slaves.
    pub fn wait_slaves(&self, n: usize, timeout: Duration) -> Result<()> {
        wait_for(&format!("{n} slaves to register"), timeout, || self.registered_slaves() == Some(n)).map_err(
            |e| {
                Error::Timeout(format!(
                    "{e} (the master reports {:?}); logs are in {}",
                    self.registered_slaves(),
                    self.dir.display()
                ))
            },
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &mut self.slaves {
            s.kill();
        }
        if let Some(b) = &mut self.backup {
            b.kill();
        }
        self.master.kill();
    }
}

/// `STAT slaves` of the master at `addr`, or `None` when it cannot be asked or does not say.
pub fn registered_slaves(addr: &str) -> Option<usize> {
    let mut c = Client::new(addr, None);
    c.set_timeout(STATS_TIMEOUT);
    c.stats().ok()?.into_iter().find(|(n, _)| n == "slaves").and_then(|(_, v)| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_bindable_distinct_and_outside_the_ephemeral_range() {
        let floor = ephemeral_floor();
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap().port()).collect();
        for &port in &ports {
            if floor > PRIVATE_PORTS.0 + 1 {
                assert!((PRIVATE_PORTS.0..floor).contains(&u32::from(port)), "port {port}, floor {floor}");
            }
            TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| panic!("port {port}: {e}"));
        }
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "one process walks forward, never repeats soon");
    }
}
