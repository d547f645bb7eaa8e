//! Running dsm processes: the one place that starts `dsm-master`, `dsm-backup` and
//! `dsm-slave`, waits until they are ready, signals them, and stops them all when dropped.
//!
//! The harness, the nemesis, the integration tests and the benchmarks all start their clusters
//! with a [`ClusterBuilder`] (from [`Cluster::builder`]), so what they measure and test is
//! exactly what a user runs, with command lines built in one place. A [`Node`] is one child
//! process. It is ready when it has printed `listening on ADDR` on stdout (servers bind
//! `127.0.0.1:0` or a [`free_port`], and the real address is learned from that line). Its
//! output is copied to `NAME.out` in the cluster's directory (and, optionally, to our stderr
//! with its name as prefix). Dropping a `Node` kills the process, so a failed test leaves
//! nothing behind.

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
use tempfile::TempDir;

use crate::proxy::Proxy;

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
    /// A short name: `primary`, `backup`, `s1`, ...
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    echo: bool,
    /// Environment for the next start only (see [`ClusterBuilder::primary_env`]).
    first_env: Vec<(String, String)>,
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
        Node::launch(name, program, args, dir, echo, wait_listening, Vec::new())
    }

    /// [`Node::start`], with `first_env` set for this first start only (restarts go without).
    fn launch(
        name: &str,
        program: &Path,
        args: Vec<String>,
        dir: &Path,
        echo: bool,
        wait_listening: bool,
        first_env: Vec<(String, String)>,
    ) -> Result<Node> {
        let mut node = Node {
            name: name.to_string(),
            program: program.to_path_buf(),
            args,
            dir: dir.to_path_buf(),
            echo,
            first_env,
            child: None,
            addr: None,
        };
        node.spawn(wait_listening)?;
        Ok(node)
    }

    fn spawn(&mut self, wait_listening: bool) -> Result<()> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .envs(std::mem::take(&mut self.first_env))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Config(format!("cannot start {}: {e}", self.program.display())))?;
        let log = File::options().create(true).append(true).open(self.output_path())?;
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
                let path = self.output_path();
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

    /// The file its stdout and stderr are copied to: `NAME.out` in its directory.
    pub fn output_path(&self) -> PathBuf {
        self.dir.join(format!("{}.out", self.name))
    }

    /// Everything it has printed so far, restarts included (empty if the file cannot be read;
    /// bytes that are not UTF-8 as U+FFFD, so that the rest can still be searched).
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.output_path()).unwrap_or_default()).into_owned()
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

/// How the backup reads the primary's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Follow {
    /// `--follow <the primary's WAL>`: reads the file, as on a shared disk.
    Wal,
    /// `--follow-primary`: streams the log from the primary over TCP.
    Tcp,
    /// `--follow <path>`: reads another file (for a backup started alone).
    File(PathBuf),
}

/// Where the primary listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `127.0.0.1:0`: the kernel picks the port, learned from `listening on`. A restart binds
    /// the same port again.
    Ephemeral,
    /// A port from [`free_port`], outside the ephemeral range, so no outgoing connection takes
    /// it while the primary is down between a kill and a restart.
    FreePort,
    /// This address.
    At(String),
}

/// A link that [`ClusterBuilder::proxy`] puts a fault [`Proxy`] on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Each slave's `--master`.
    SlaveToPrimary,
    /// The backup's `--primary` (its probes, and the log stream with [`Follow::Tcp`]).
    BackupToPrimary,
    /// The primary's `--backup` (its probes of the backup, and failback).
    PrimaryToBackup,
}

/// The proxies of a cluster's links, one field per [`Link`]; empty where there is none.
#[derive(Default)]
pub struct Links {
    /// In front of the primary for each started slave, `s1` first.
    pub slave_to_primary: Vec<Proxy>,
    /// In front of the primary for the backup.
    pub backup_to_primary: Option<Proxy>,
    /// In front of the backup for the primary.
    pub primary_to_backup: Option<Proxy>,
}

/// What [`ClusterBuilder::start`] waits for before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// Every process started (servers printed `listening on`); nothing asked.
    Started,
    /// The primary reports every slave registered (`STAT slaves`).
    Slaves,
    /// The primary also says it is the primary (`STAT role`).
    Serving,
}

/// Where a cluster's files go.
enum ClusterDir {
    Owned(TempDir),
    Given(PathBuf),
}

impl ClusterDir {
    fn path(&self) -> &Path {
        match self {
            ClusterDir::Owned(t) => t.path(),
            ClusterDir::Given(p) => p,
        }
    }
}

/// How a cluster is started: the one place that turns roles and options into `dsm-master`,
/// `dsm-backup` and `dsm-slave` command lines. Made by [`Cluster::builder`].
///
/// The primary gets `--listen L --wal DIR/primary.log --backup B` (`none` without a backup),
/// the backup `--listen B --primary P --wal DIR/backup.log` and `--follow ...` or
/// `--follow-primary`, slave `sI` gets `--id sI --master P --backup B`; each role's extra
/// arguments come last.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    slaves: usize,
    backup: Option<Follow>,
    listen: Listen,
    primary_args: Vec<String>,
    backup_args: Vec<String>,
    slave_args: Vec<String>,
    proxies: Vec<Link>,
    primary_env: Vec<(String, String)>,
    primary_wrapper: Vec<String>,
    bin_dir: PathBuf,
    dir: Option<PathBuf>,
    echo: bool,
    ready: Ready,
    ready_timeout: Duration,
    password: Option<String>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            slaves: 0,
            backup: None,
            listen: Listen::Ephemeral,
            primary_args: Vec::new(),
            backup_args: Vec::new(),
            slave_args: Vec::new(),
            proxies: Vec::new(),
            primary_env: Vec::new(),
            primary_wrapper: Vec::new(),
            bin_dir: bin_dir(),
            dir: None,
            echo: false,
            ready: Ready::Slaves,
            ready_timeout: REGISTER_TIMEOUT,
            password: None,
        }
    }
}

fn strings<I>(args: I) -> impl Iterator<Item = String>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    args.into_iter().map(|a| a.as_ref().to_string())
}

impl ClusterBuilder {
    /// How many slaves (ids `s1` .. `sN`, each process named like its id). Default 0.
    pub fn slaves(mut self, n: usize) -> Self {
        self.slaves = n;
        self
    }

    /// Start a backup (`dsm-backup`) that follows the primary's log this way. Default: none.
    pub fn backup(mut self, follow: Follow) -> Self {
        self.backup = Some(follow);
        self
    }

    /// Where the primary listens. Default [`Listen::Ephemeral`].
    pub fn primary_listen(mut self, listen: Listen) -> Self {
        self.listen = listen;
        self
    }

    /// Extra arguments for the primary (e.g. `--fsync never`), after the builder's own.
    pub fn primary_args<I: IntoIterator<Item: AsRef<str>>>(mut self, args: I) -> Self {
        self.primary_args.extend(strings(args));
        self
    }

    /// Extra arguments for the backup.
    pub fn backup_args<I: IntoIterator<Item: AsRef<str>>>(mut self, args: I) -> Self {
        self.backup_args.extend(strings(args));
        self
    }

    /// Extra arguments for every slave the builder starts.
    pub fn slave_args<I: IntoIterator<Item: AsRef<str>>>(mut self, args: I) -> Self {
        self.slave_args.extend(strings(args));
        self
    }

    /// Put a fault proxy on `link` (see [`Cluster::links`]).
    pub fn proxy(mut self, link: Link) -> Self {
        if !self.proxies.contains(&link) {
            self.proxies.push(link);
        }
        self
    }

    /// Set `name=value` in the primary's environment for its first start only (e.g.
    /// `DSM_FAILPOINT`): a restarted primary runs without it.
    pub fn primary_env(mut self, name: &str, value: &str) -> Self {
        self.primary_env.push((name.to_string(), value.to_string()));
        self
    }

    /// Run the primary, at every start, through this program and its arguments, with the
    /// `dsm-master` path and its arguments after them (e.g. `ip netns exec NAME`).
    pub fn primary_wrapper<I: IntoIterator<Item: AsRef<str>>>(mut self, argv: I) -> Self {
        self.primary_wrapper = strings(argv).collect();
        self
    }

    /// Where the `dsm-*` binaries are. Default [`bin_dir`].
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = dir.into();
        self
    }

    /// Put the logs and write-ahead logs in `dir`, which must exist and is left in place.
    /// Default: a temporary directory owned by the cluster, removed after its processes died.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Copy every process's output to our stderr, prefixed with its name.
    pub fn echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// What [`ClusterBuilder::start`] waits for. Default [`Ready::Slaves`].
    pub fn ready(mut self, ready: Ready) -> Self {
        self.ready = ready;
        self
    }

    /// How long [`ClusterBuilder::start`] waits for it. Default [`REGISTER_TIMEOUT`].
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// The client password (`--requirepass`, which the extra arguments must set), sent with
    /// every `STATS` the cluster asks.
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_string());
        self
    }

    fn wal(&self, dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}.log"))
    }

    /// The primary's program and arguments.
    pub(crate) fn primary_command(&self, dir: &Path, listen: &str, backup: &str) -> (PathBuf, Vec<String>) {
        let master = self.bin_dir.join("dsm-master");
        let wal = self.wal(dir, "primary").display().to_string();
        let own = strings(["--listen", listen, "--wal", &wal, "--backup", backup]);
        let own = own.chain(self.primary_args.iter().cloned());
        match self.primary_wrapper.split_first() {
            None => (master, own.collect()),
            Some((program, wrapper_args)) => {
                let args = wrapper_args.iter().cloned().chain([master.display().to_string()]).chain(own);
                (PathBuf::from(program), args.collect())
            }
        }
    }

    pub(crate) fn backup_args_for(&self, dir: &Path, listen: &str, primary: &str) -> Vec<String> {
        let wal = self.wal(dir, "backup").display().to_string();
        let mut args: Vec<String> =
            strings(["--listen", listen, "--primary", primary, "--wal", &wal]).collect();
        match self.backup.as_ref().unwrap_or(&Follow::Wal) {
            Follow::Wal => {
                args.extend(["--follow".to_string(), self.wal(dir, "primary").display().to_string()])
            }
            Follow::Tcp => args.push("--follow-primary".to_string()),
            Follow::File(path) => args.extend(["--follow".to_string(), path.display().to_string()]),
        }
        args.extend(self.backup_args.iter().cloned());
        args
    }

    fn start_slave_in(
        &self,
        dir: &Path,
        name: &str,
        id: &str,
        master: &str,
        backup: &str,
        extra: &[String],
    ) -> Result<Node> {
        let args = strings(["--id", id, "--master", master, "--backup", backup]).chain(extra.iter().cloned());
        Node::start(name, &self.bin_dir.join("dsm-slave"), args.collect(), dir, self.echo, false)
    }

    fn given_dir(&self) -> Result<&Path> {
        self.dir
            .as_deref()
            .ok_or_else(|| Error::Config("a node started alone needs ClusterBuilder::dir".into()))
    }

    /// Starts one slave alone, in the builder's [`dir`](ClusterBuilder::dir), against the master
    /// at `master` (and no backup), with the builder's slave arguments.
    pub fn start_slave(&self, id: &str, master: &str) -> Result<Node> {
        self.start_slave_in(self.given_dir()?, id, id, master, "none", &self.slave_args)
    }

    /// Starts one backup alone, in the builder's [`dir`](ClusterBuilder::dir), probing the
    /// primary at `primary` and following as set by [`ClusterBuilder::backup`].
    pub fn start_backup(&self, primary: &str) -> Result<Node> {
        let dir = self.given_dir()?;
        let args = self.backup_args_for(dir, &free_port()?.to_string(), primary);
        Node::start("backup", &self.bin_dir.join("dsm-backup"), args, dir, self.echo, true)
    }

    /// Starts the proxies, the primary, the backup and the slaves, then waits as set by
    /// [`ClusterBuilder::ready`]. On an error every process started so far is killed.
    pub fn start(self) -> Result<Cluster> {
        let dir = match &self.dir {
            Some(d) => ClusterDir::Given(d.clone()),
            None => ClusterDir::Owned(tempfile::Builder::new().prefix("dsm-cluster-").tempdir()?),
        };
        let path = dir.path().to_path_buf();
        let proxied = |link| self.proxies.contains(&link);
        if self.backup.is_none() && (proxied(Link::BackupToPrimary) || proxied(Link::PrimaryToBackup)) {
            return Err(Error::Config("a proxy on a link of the backup needs a backup".into()));
        }
        let proxy_to = |to: &str| -> Result<Proxy> {
            let to = to.parse().map_err(|e| Error::Config(format!("bad address {to}: {e}")))?;
            Proxy::start(SocketAddr::from(([127, 0, 0, 1], 0)), to)
        };
        let mut links = Links::default();
        let backup_addr = match self.backup {
            Some(_) => Some(free_port()?.to_string()),
            None => None,
        };
        if let (true, Some(b)) = (proxied(Link::PrimaryToBackup), &backup_addr) {
            links.primary_to_backup = Some(proxy_to(b)?);
        }
        let primary_peer = match (&links.primary_to_backup, &backup_addr) {
            (Some(p), _) => p.addr().to_string(),
            (None, Some(b)) => b.clone(),
            (None, None) => "none".to_string(),
        };
        let listen = match &self.listen {
            Listen::Ephemeral => "127.0.0.1:0".to_string(),
            Listen::FreePort => free_port()?.to_string(),
            Listen::At(addr) => addr.clone(),
        };
        let (program, args) = self.primary_command(&path, &listen, &primary_peer);
        let primary =
            Node::launch("primary", &program, args, &path, self.echo, true, self.primary_env.clone())?;
        let primary_addr = primary.addr().to_string();
        let mut cluster = Cluster {
            primary,
            backup: None,
            slaves: Vec::new(),
            links,
            primary_addr,
            backup_addr,
            primary_wal: self.wal(&path, "primary"),
            backup_wal: self.backup.as_ref().map(|_| self.wal(&path, "backup")),
            password: self.password.clone(),
            bin_dir: self.bin_dir.clone(),
            echo: self.echo,
            dir,
        };
        if let Some(b) = cluster.backup_addr.clone() {
            if proxied(Link::BackupToPrimary) {
                cluster.links.backup_to_primary = Some(proxy_to(&cluster.primary_addr)?);
            }
            let probe = cluster
                .links
                .backup_to_primary
                .as_ref()
                .map_or(cluster.primary_addr.clone(), |p| p.addr().to_string());
            let args = self.backup_args_for(&path, &b, &probe);
            cluster.backup =
                Some(Node::start("backup", &self.bin_dir.join("dsm-backup"), args, &path, self.echo, true)?);
        }
        let backup = cluster.backup_addr.clone().unwrap_or_else(|| "none".to_string());
        for i in 0..self.slaves {
            let master = if proxied(Link::SlaveToPrimary) {
                let p = proxy_to(&cluster.primary_addr)?;
                let addr = p.addr().to_string();
                cluster.links.slave_to_primary.push(p);
                addr
            } else {
                cluster.primary_addr.clone()
            };
            let id = Cluster::slave_id(i);
            let node = self.start_slave_in(&path, &id, &id, &master, &backup, &self.slave_args)?;
            cluster.slaves.push(node);
        }
        match self.ready {
            Ready::Started => {}
            Ready::Slaves => cluster.wait_slaves(self.slaves, self.ready_timeout)?,
            Ready::Serving => {
                let addr = cluster.primary_addr.clone();
                cluster.wait_serving(&addr, self.slaves, self.ready_timeout)?;
            }
        }
        Ok(cluster)
    }
}

/// A whole dsm cluster of real processes, started by a [`ClusterBuilder`]: the primary, an
/// optional backup and slaves, their fault proxies, and the directory with their logs and
/// write-ahead logs. Dropping it kills every process (slaves first, then the backup, then the
/// primary), then removes the directory if it owns it.
pub struct Cluster {
    /// The primary master.
    pub primary: Node,
    /// The backup master, if one was started.
    pub backup: Option<Node>,
    /// The slaves: `s1` first, then any added with [`Cluster::add_slave`].
    pub slaves: Vec<Node>,
    /// The fault proxies on the links.
    pub links: Links,
    primary_addr: String,
    backup_addr: Option<String>,
    primary_wal: PathBuf,
    backup_wal: Option<PathBuf>,
    password: Option<String>,
    bin_dir: PathBuf,
    echo: bool,
    /// Declared last: the processes die before a directory the cluster owns is removed.
    dir: ClusterDir,
}

impl Cluster {
    /// A builder with the defaults: a primary on an ephemeral port, no backup, no slaves.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// True when `dsm-backup` is built in [`bin_dir`].
    pub fn has_backup_binary() -> bool {
        bin_dir().join("dsm-backup").exists()
    }

    /// The slave id the builder gives to slave number `i` (from 0): `s1`, `s2`, ...
    pub fn slave_id(i: usize) -> String {
        format!("s{}", i + 1)
    }

    /// The primary's real address (what it printed in `listening on`).
    pub fn primary_addr(&self) -> &str {
        &self.primary_addr
    }

    /// The backup's address, if a backup was started.
    pub fn backup_addr(&self) -> Option<&str> {
        self.backup_addr.as_deref()
    }

    /// The primary's write-ahead log.
    pub fn primary_wal(&self) -> &Path {
        &self.primary_wal
    }

    /// The backup's own write-ahead log, if a backup was started.
    pub fn backup_wal(&self) -> Option<&Path> {
        self.backup_wal.as_deref()
    }

    /// The directory holding the write-ahead logs and each process's `NAME.out`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps a directory the cluster owns after it is dropped (for a failure's logs); returns it.
    pub fn keep_dir(&mut self) -> PathBuf {
        let path = self.dir().to_path_buf();
        if let ClusterDir::Owned(t) = std::mem::replace(&mut self.dir, ClusterDir::Given(path.clone())) {
            let _ = t.keep();
        }
        path
    }

    /// Every process: the primary, the backup, then the slaves.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(&self.primary).chain(self.backup.as_ref()).chain(&self.slaves)
    }

    /// [`Cluster::nodes`], mutably.
    pub fn nodes_mut(&mut self) -> impl Iterator<Item = &mut Node> {
        std::iter::once(&mut self.primary).chain(self.backup.as_mut()).chain(&mut self.slaves)
    }

    /// The process called `name` (`primary`, `backup`, `s1`, ...).
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes().find(|n| n.name == name)
    }

    /// [`Cluster::node`], mutably.
    pub fn node_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.nodes_mut().find(|n| n.name == name)
    }

    /// Starts one more slave, called `name`, with id `id`, directly against the primary (and
    /// the backup), with `extra` as its extra arguments instead of the builder's.
    pub fn add_slave(&mut self, name: &str, id: &str, extra: &[&str]) -> Result<&mut Node> {
        let backup = self.backup_addr.clone().unwrap_or_else(|| "none".to_string());
        let builder =
            ClusterBuilder { bin_dir: self.bin_dir.clone(), echo: self.echo, ..ClusterBuilder::default() };
        let extra: Vec<String> = strings(extra).collect();
        let node = builder.start_slave_in(self.dir.path(), name, id, &self.primary_addr, &backup, &extra)?;
        self.slaves.push(node);
        Ok(self.slaves.last_mut().expect("just pushed"))
    }

    /// One `STATS` value of the server at `addr`, with the cluster's password.
    pub fn stat(&self, addr: &str, name: &str) -> Option<String> {
        stat_with_password(addr, name, self.password.as_deref())
    }

    /// The number of live registered slaves the primary reports (`STAT slaves`), or `None`
    /// when it cannot be asked.
    pub fn registered_slaves(&self) -> Option<usize> {
        self.stat(&self.primary_addr, "slaves").and_then(|v| v.trim().parse().ok())
    }

    /// Waits until the primary reports `n` live registered slaves.
    pub fn wait_slaves(&self, n: usize, timeout: Duration) -> Result<()> {
        wait_for(&format!("{n} slaves to register"), timeout, || self.registered_slaves() == Some(n))
            .map_err(|e| self.not_ready(e, &self.primary_addr))
    }

    /// True when the master at `addr` says it is the primary with `slaves` live slaves.
    pub fn serves(&self, addr: &str, slaves: usize) -> bool {
        self.stat(addr, "role").as_deref() == Some("primary")
            && self.stat(addr, "slaves") == Some(slaves.to_string())
    }

    /// Waits until the master at `addr` serves with `slaves` live slaves.
    pub fn wait_serving(&self, addr: &str, slaves: usize, timeout: Duration) -> Result<()> {
        wait_for(&format!("{addr} to serve with {slaves} slaves"), timeout, || self.serves(addr, slaves))
            .map_err(|e| self.not_ready(e, addr))
    }

    fn not_ready(&self, e: Error, addr: &str) -> Error {
        Error::Timeout(format!(
            "{e} ({addr} reports role={:?} slaves={:?}); logs are in {}\n{}",
            self.stat(addr, "role"),
            self.stat(addr, "slaves"),
            self.dir().display(),
            self.output_tails(20)
        ))
    }

    /// The last `lines` lines of every process's output, for a failure message.
    pub fn output_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in self.nodes() {
            out.push_str(&format!(
                "--- {}\n{}\n",
                node.output_path().display(),
                tail(&node.output_path(), lines)
            ));
        }
        out
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
        self.primary.kill();
    }
}

/// One `STATS` value from the server at `addr`, authenticating first when `password` is
/// given; `None` if it cannot be asked.
pub fn stat_with_password(addr: &str, name: &str, password: Option<&str>) -> Option<String> {
    let mut c = Client::new(addr, None);
    c.set_timeout(STATS_TIMEOUT);
    if let Some(p) = password {
        c.set_password(p.as_bytes());
    }
    c.stats().ok()?.into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
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
    fn the_builder_makes_each_roles_command_line() {
        let dir = Path::new("/d");
        let b = Cluster::builder()
            .bin_dir("/bin")
            .backup(Follow::Wal)
            .primary_args(["--fsync", "never"])
            .backup_args(["--heartbeat-ms", "50"]);
        let (program, args) = b.primary_command(dir, "127.0.0.1:0", "127.0.0.1:9");
        assert_eq!(program, Path::new("/bin/dsm-master"));
        let want = "--listen 127.0.0.1:0 --wal /d/primary.log --backup 127.0.0.1:9 --fsync never";
        assert_eq!(args.join(" "), want);
        let want = "--listen B --primary P --wal /d/backup.log --follow /d/primary.log --heartbeat-ms 50";
        assert_eq!(b.backup_args_for(dir, "B", "P").join(" "), want);
        let tcp = b.clone().backup(Follow::Tcp);
        assert_eq!(tcp.backup_args_for(dir, "B", "P")[6], "--follow-primary");

        let wrapped = Cluster::builder().bin_dir("/bin").primary_wrapper(["ip", "netns", "exec", "ns"]);
        let (program, args) = wrapped.primary_command(dir, "L", "none");
        assert_eq!(program, Path::new("ip"));
        assert_eq!(
            args.join(" "),
            "netns exec ns /bin/dsm-master --listen L --wal /d/primary.log --backup none"
        );
    }

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
