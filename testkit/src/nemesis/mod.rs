//! The nemesis: a real cluster, concurrent clients, and a seeded schedule of process faults;
//! then a verdict on everything the clients saw.
//!
//! [`run`] starts a primary (`dsm-master`), a backup (`dsm-backup`, following the primary's log)
//! and slaves in a directory of their own, and waits until the primary serves with every slave.
//! Then, for [`Config::duration`]:
//!
//! - [`Config::clients`] client threads each loop over reads and writes of a few keys at a time
//!   (the keys rotate every [`Config::ops_per_key`] operations per key, so each key's history
//!   stays small enough to check quickly), writing unique values `c<client>-<n>`. Every client
//!   fails over between both masters; each request has a deadline ([`REQUEST_DEADLINE`]). All
//!   operations go into one [`History`].
//!   Both masters run with [`Config::read_from`] (`--read-from`), so either read path, the
//!   master's committed copy or a slave in sync, can be put under the same faults.
//! - the calling thread is the nemesis: it follows a [`Schedule`] drawn from the seed — wait,
//!   hit one node with a fault (SIGKILL, or SIGSTOP), wait, heal it (restart, or SIGCONT) — so
//!   at most one fault is active at a time and the cluster gets a chance to recover between
//!   faults. The "serving" master is whichever master says it is primary at that moment.
//!
//! At the end every node is healed, the driver waits until a master serves with every slave,
//! reads every key once more (these final reads are part of the history), and judges the
//! history with [`History::judge`]: per-key linearizability and lost acknowledged writes. A run
//! also fails when a node printed a line that only a bug prints ([`BUG_MARKERS`]: a write left
//! unanswered past its limit, a panic): a stall that the clients survive by timing out and
//! reconnecting leaves the history linearizable, and shows only there.
//!
//! The same seed gives the same fault schedule and the same client choices; the interleaving of
//! threads and processes is up to the machine, so a seed replays the *plan*, not the run.

pub mod history;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use history::{Answer, Counts, History, Verdict};

use crate::cluster::{stat, wait_for, Cluster, ClusterBuilder, Follow, Listen, Node, Ready};
use dsm::client::Client;
use dsm::master::ReadFrom;
use dsm::{Error, Result};

/// How long one client request may wait for its answer. Longer than a master's write deadline
/// (4 ACK timeouts of 500 ms), so a slow quorum shows as `ERR TIMEOUT`; a paused master shows
/// as a client timeout after this long, and the client then fails over.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(3);

/// How long a client waits after a failed request before the next one, so a client with no
/// reachable server does not spin.
pub const CLIENT_BACKOFF: Duration = Duration::from_millis(20);

/// How long the cluster may take to serve again with every slave after being healed (a
/// restarted primary takes over and fails back; slaves re-register). Past it the run fails.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(90);

/// How long the final read of one key may keep being retried before the run fails.
pub const FINAL_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The client id of the final reads, apart from the workload's clients.
pub const FINAL_CLIENT: u64 = 1_000;

/// What only a bug makes a node print, whatever the faults: a combined write that its
/// connection gave up waiting for (the limit is far past every deadline, so only a stall
/// reaches it), and a panic.
pub const BUG_MARKERS: [&str; 2] = ["was not answered within", "panicked"];

/// Which node a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// The master that serves at that moment (the primary, or the backup after a takeover).
    Serving,
    /// The other master.
    Standby,
    /// A slave (which one is drawn from the seed).
    Slave,
}

/// What a fault does to its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// SIGKILL; healed by starting the process again with the same arguments.
    Kill,
    /// SIGSTOP, like a hung machine with its sockets open; healed by SIGCONT.
    Pause,
    /// `COMPACT`: the master compacts its log in the background (masters only); nothing to
    /// heal, but kills and pauses that follow land during it.
    Compact,
}

/// A kind of fault: an action on a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FaultKind {
    /// What is done.
    pub action: Action,
    /// To whom.
    pub target: Target,
}

impl FaultKind {
    /// All eight kinds: kill and pause of each target, and `COMPACT` on either master.
    pub fn all() -> Vec<FaultKind> {
        let mut kinds = Vec::new();
        for action in [Action::Kill, Action::Pause] {
            for target in [Target::Serving, Target::Standby, Target::Slave] {
                kinds.push(FaultKind { action, target });
            }
        }
        for target in [Target::Serving, Target::Standby] {
            kinds.push(FaultKind { action: Action::Compact, target });
        }
        kinds
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            Action::Kill => "kill",
            Action::Pause => "pause",
            Action::Compact => "compact",
        };
        let target = match self.target {
            Target::Serving => "serving-master",
            Target::Standby => "standby-master",
            Target::Slave => "slave",
        };
        write!(f, "{action}-{target}")
    }
}

/// One step of a fault schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// How long to wait (with everything healthy) before the fault.
    pub wait: Duration,
    /// The fault.
    pub kind: FaultKind,
    /// Which slave, for a slave fault (an index below the number of slaves).
    pub slave: usize,
    /// How long the fault lasts before it is healed.
    pub length: Duration,
}

/// A seeded, endless fault schedule: a plain state machine, so tests can look at it without
/// starting anything.
pub struct Schedule {
    rng: StdRng,
    kinds: Vec<FaultKind>,
    slaves: usize,
    gap: (Duration, Duration),
    length: (Duration, Duration),
}

impl Schedule {
    /// A schedule drawn from `seed` over `kinds` (all kinds if empty).
    pub fn new(seed: u64, config: &Config) -> Schedule {
        let kinds = if config.faults.is_empty() { FaultKind::all() } else { config.faults.clone() };
        Schedule {
            rng: StdRng::seed_from_u64(seed),
            kinds,
            slaves: config.slaves.max(1),
            gap: config.fault_gap,
            length: config.fault_length,
        }
    }

    fn between(&mut self, (lo, hi): (Duration, Duration)) -> Duration {
        if hi <= lo {
            return lo;
        }
        Duration::from_millis(self.rng.gen_range(lo.as_millis() as u64..=hi.as_millis() as u64))
    }
}

impl Iterator for Schedule {
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        let wait = self.between(self.gap);
        let kind = self.kinds[self.rng.gen_range(0..self.kinds.len())];
        let slave = self.rng.gen_range(0..self.slaves);
        let length = self.between(self.length);
        Some(Step { wait, kind, slave, length })
    }
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seeds the fault schedule and the clients' choices.
    pub seed: u64,
    /// How long the workload and the faults go on.
    pub duration: Duration,
    /// How many slaves.
    pub slaves: usize,
    /// How many client threads.
    pub clients: usize,
    /// How many keys are in use at a time.
    pub keys_at_once: usize,
    /// About how many operations each key gets before the next set of keys is used.
    pub ops_per_key: u64,
    /// The kinds of fault to draw from (all if empty).
    pub faults: Vec<FaultKind>,
    /// The healthy time between faults: drawn uniformly from this range.
    pub fault_gap: (Duration, Duration),
    /// How long a fault lasts: drawn uniformly from this range.
    pub fault_length: (Duration, Duration),
    /// The backup streams the primary's log over TCP instead of reading its file.
    pub tcp_follow: bool,
    /// Who answers reads on both masters (`--read-from`): the master's committed copy, or a
    /// slave in sync.
    pub read_from: ReadFrom,
    /// Where the dsm binaries are.
    pub bin_dir: PathBuf,
    /// Where the nodes' logs go (a `run-<seed>` directory is made in it); a temporary
    /// directory, removed after a clean run, if `None`.
    pub out: Option<PathBuf>,
    /// Copy the nodes' output to stderr.
    pub echo: bool,
    /// Keys of 100 bytes loaded before the workload and the faults start, so that kills and
    /// pauses land during resyncs and compactions of a store of some size. A sample of them
    /// is read back at the end.
    pub preload: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 1,
            duration: Duration::from_secs(60),
            slaves: 3,
            clients: 5,
            keys_at_once: 3,
            ops_per_key: 200,
            faults: Vec::new(),
            fault_gap: (Duration::from_secs(2), Duration::from_secs(5)),
            fault_length: (Duration::from_secs(1), Duration::from_secs(3)),
            tcp_follow: false,
            read_from: ReadFrom::Master,
            bin_dir: crate::cluster::bin_dir(),
            out: None,
            echo: false,
            preload: 0,
        }
    }
}

/// What a run saw.
#[derive(Debug)]
pub struct Report {
    /// The run's seed.
    pub seed: u64,
    /// Who answered reads (both masters' `--read-from`).
    pub read_from: ReadFrom,
    /// The operations.
    pub counts: Counts,
    /// Faults applied, by kind.
    pub faults: BTreeMap<FaultKind, u64>,
    /// The verdict on the history.
    pub verdict: Verdict,
    /// What the nemesis did and when (milliseconds on the history's clock).
    pub timeline: Vec<String>,
    /// Where the nodes' logs are (kept when the verdict is bad or `out` was given).
    pub dir: PathBuf,
}

impl Report {
    /// True when the history is linearizable and no acknowledged write was lost.
    pub fn is_ok(&self) -> bool {
        self.verdict.is_ok()
    }

    /// How many faults were applied in all.
    pub fn fault_total(&self) -> u64 {
        self.faults.values().sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        let faults: Vec<String> = self.faults.iter().map(|(k, n)| format!("{k}={n}")).collect();
        write!(
            f,
            "seed {} (reads from {}): {} operations ({} writes acknowledged, {} reads answered, {} unknown, {} failed) \
             on {} keys; {} faults ({}); {} violations, {} lost writes, {} bug lines in node output",
            self.seed,
            self.read_from,
            c.issued,
            c.acked_writes,
            c.answered_reads,
            c.unknown_writes,
            c.failed,
            self.verdict.keys,
            self.fault_total(),
            faults.join(" "),
            self.verdict.violations.len(),
            self.verdict.lost_writes.len(),
            self.verdict.node_bugs.len(),
        )?;
        if !self.is_ok() {
            write!(f, "\n{}", self.verdict)?;
            writeln!(f, "nemesis timeline (ms; the checker's times are ns on the same clock):")?;
            for line in &self.timeline {
                writeln!(f, "  {line}")?;
            }
            write!(f, "node logs: {}", self.dir.display())?;
        }
        Ok(())
    }
}

/// The processes of a run.
struct Nodes {
    cluster: Cluster,
    primary_addr: String,
    backup_addr: String,
}

/// How a run's cluster is started: a primary on a port outside the ephemeral range (so it can
/// come back on it after a kill), a backup, the slaves, and `--read-from` on both masters.
fn cluster_builder(config: &Config, dir: &Path) -> ClusterBuilder {
    let read_from = ["--read-from", config.read_from.name()];
    Cluster::builder()
        .primary_listen(Listen::FreePort)
        .backup(if config.tcp_follow { Follow::Tcp } else { Follow::Wal })
        .primary_args(read_from)
        .backup_args(read_from)
        .slaves(config.slaves)
        .bin_dir(&config.bin_dir)
        .dir(dir)
        .echo(config.echo)
        .ready(Ready::Started)
}

impl Nodes {
    fn start(config: &Config, dir: &Path) -> Result<Nodes> {
        let cluster = cluster_builder(config, dir).start()?;
        let primary_addr = cluster.primary_addr().to_string();
        let backup_addr = cluster.backup_addr().expect("started with a backup").to_string();
        Ok(Nodes { cluster, primary_addr, backup_addr })
    }

    fn backup(&mut self) -> &mut Node {
        self.cluster.backup.as_mut().expect("started with a backup")
    }

    /// Whether the backup is the one serving now (else the primary is taken to be).
    fn backup_serves(&self) -> bool {
        stat(&self.backup_addr, "role").as_deref() == Some("primary")
    }

    fn pick(&mut self, target: Target, slave: usize) -> &mut Node {
        let backup_serves = self.backup_serves();
        match (target, backup_serves) {
            (Target::Serving, false) | (Target::Standby, true) => &mut self.cluster.primary,
            (Target::Serving, true) | (Target::Standby, false) => self.backup(),
            (Target::Slave, _) => {
                let i = slave % self.cluster.slaves.len();
                &mut self.cluster.slaves[i]
            }
        }
    }

    /// Waits until one master serves with every slave caught up.
    fn wait_serving(&self, slaves: usize) -> Result<()> {
        let want = slaves.to_string();
        let serving = |addr: &str| {
            stat(addr, "role").as_deref() == Some("primary") && stat(addr, "slaves").as_deref() == Some(&want)
        };
        wait_for(&format!("a master serving with {slaves} slaves"), RECOVERY_TIMEOUT, || {
            serving(&self.primary_addr) || serving(&self.backup_addr)
        })
    }

    /// Resumes every node and starts again every one that is not running.
    fn heal_all(&mut self) -> Result<()> {
        for node in self.cluster.nodes_mut() {
            let _ = node.resume();
            if !node.is_running() {
                node.restart()?;
            }
        }
        Ok(())
    }
}

/// Runs one seeded nemesis run and judges it. An `Err` means the harness could not do its
/// job (a node would not start, the cluster never recovered), not that the history is bad.
pub fn run(config: &Config) -> Result<Report> {
    let (dir, keep) = match &config.out {
        Some(out) => (out.join(format!("run-{}", config.seed)), true),
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let name = format!("dsm-chaos-{}-{}-{nanos}", std::process::id(), config.seed);
            (std::env::temp_dir().join(name), false)
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let report = run_in(config, &dir)?;
    if !keep && report.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(report)
}

fn run_in(config: &Config, dir: &Path) -> Result<Report> {
    let mut nodes = Nodes::start(config, dir)?;
    nodes.wait_serving(config.slaves)?;
    preload(&nodes.primary_addr, config.preload)?;
    let history = Arc::new(History::new());
    let workload = Workload::start(
        &history,
        &nodes.primary_addr,
        &nodes.backup_addr,
        config.clients,
        config.keys_at_once,
        config.ops_per_key,
        config.seed,
    )?;
    let mut faults = BTreeMap::new();
    let mut timeline = Vec::new();
    let nemesis = nemesis(config, &mut nodes, &history, &mut faults, &mut timeline);
    let counts = workload.stop();
    nemesis?;

    let ms = |h: &History| h.now() / 1_000_000;
    nodes.heal_all()?;
    timeline.push(format!("{:>7} healed everything; waiting for recovery", ms(&history)));
    nodes.wait_serving(config.slaves)?;
    timeline.push(format!("{:>7} recovered; final reads", ms(&history)));
    final_reads(&history, &nodes.primary_addr, &nodes.backup_addr)?;
    let mut verdict = history.judge(FINAL_CLIENT);
    verdict.lost_writes.extend(check_preloaded(&nodes.primary_addr, &nodes.backup_addr, config.preload)?);
    verdict.node_bugs = bug_lines(nodes.cluster.nodes().map(|n| (n.name.clone(), n.output())));
    Ok(Report {
        seed: config.seed,
        read_from: config.read_from,
        counts,
        faults,
        verdict,
        timeline,
        dir: dir.to_path_buf(),
    })
}

/// The lines of the nodes' outputs holding one of [`BUG_MARKERS`], as `NAME.out: line`, node
/// by node. `outputs` is each node's name and everything it printed ([`Node::output`]).
pub fn bug_lines(outputs: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let mut found = Vec::new();
    for (name, text) in outputs {
        for line in text.lines().filter(|l| BUG_MARKERS.iter().any(|m| l.contains(m))) {
            found.push(format!("{name}.out: {line}"));
        }
    }
    found
}

/// Reads every key of `history` once more through a client of both masters, retrying each
/// until it gets a definite answer, as client [`FINAL_CLIENT`]. Call it after healing, before
/// [`History::judge`].
pub fn final_reads(history: &History, primary: &str, backup: &str) -> Result<()> {
    let mut reader = Client::new(primary, Some(backup));
    reader.set_timeout(REQUEST_DEADLINE);
    for key in history.keys() {
        wait_for(&format!("a final read of {key}"), FINAL_READ_TIMEOUT, || {
            if history.read(FINAL_CLIENT, &mut reader, &key) == Answer::Done {
                return true;
            }
            reader.disconnect_and_prefer_other();
            false
        })?;
    }
    Ok(())
}

/// Applies the schedule until the run's duration is over; returns with the last fault healed.
fn nemesis(
    config: &Config,
    nodes: &mut Nodes,
    history: &History,
    faults: &mut BTreeMap<FaultKind, u64>,
    timeline: &mut Vec<String>,
) -> Result<()> {
    let end = Instant::now() + config.duration;
    let ms = || history.now() / 1_000_000;
    for step in Schedule::new(config.seed, config) {
        if Instant::now() + step.wait >= end {
            break;
        }
        thread::sleep(step.wait);
        let node = nodes.pick(step.kind.target, step.slave);
        let name = node.name.clone();
        timeline.push(format!("{:>7} {} ({name})", ms(), step.kind));
        match step.kind.action {
            Action::Kill => node.kill(),
            Action::Pause => node.pause()?,
            Action::Compact => compact(&node.addr().to_string()),
        }
        *faults.entry(step.kind).or_insert(0) += 1;
        thread::sleep(step.length);
        // Pick the same node again by name: roles may have changed meanwhile.
        let node = nodes.by_name(&name);
        match step.kind.action {
            Action::Kill => node.restart()?,
            Action::Pause => node.resume()?,
            Action::Compact => {}
        }
        timeline.push(format!("{:>7} healed {name}", ms()));
    }
    Ok(())
}

/// The value of preloaded key `i`.
fn preload_value(i: usize) -> String {
    format!("{i:0>100}")
}

/// Writes keys `preload:0..n` over one connection, pipelined in runs of 1,000.
fn preload(addr: &str, n: usize) -> Result<()> {
    use std::io::{BufRead, Write};
    if n == 0 {
        return Ok(());
    }
    let stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(RECOVERY_TIMEOUT))?;
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    for start in (0..n).step_by(1000) {
        let end = (start + 1000).min(n);
        let mut batch = Vec::new();
        for i in start..end {
            batch.extend_from_slice(format!("WRITE preload:{i} {}\r\n", preload_value(i)).as_bytes());
        }
        (&stream).write_all(&batch)?;
        for i in start..end {
            line.clear();
            reader.read_line(&mut line)?;
            if !line.starts_with("OK ") {
                return Err(Error::Protocol(format!("preloading key {i}: {}", line.trim_end())));
            }
        }
    }
    Ok(())
}

/// Reads back a sample of the preloaded keys (every one if there are few); returns a line for
/// each one whose value is not what was written.
fn check_preloaded(primary: &str, backup: &str, n: usize) -> Result<Vec<String>> {
    let mut client = Client::new(primary, Some(backup));
    client.set_timeout(REQUEST_DEADLINE);
    let mut lost = Vec::new();
    for i in (0..n).step_by((n / 1000).max(1)) {
        let key = format!("preload:{i}");
        let mut got = None;
        wait_for(&format!("a read of {key}"), FINAL_READ_TIMEOUT, || {
            match client.read(&key) {
                Ok(dsm::protocol::Reply::Value { value, .. }) => got = Some(Some(value)),
                Ok(dsm::protocol::Reply::NotFound) => got = Some(None),
                _ => return false,
            }
            true
        })?;
        if got.clone().flatten().as_deref() != Some(preload_value(i).as_bytes()) {
            lost.push(format!("preloaded key {key} was acknowledged but reads {got:?}"));
        }
    }
    Ok(lost)
}

/// Sends `COMPACT` to the master at `addr`; a master that does not answer (paused, killed by an
/// earlier step) is simply not compacted.
fn compact(addr: &str) {
    let mut c = Client::new(addr, None);
    c.set_timeout(Duration::from_secs(2));
    let _ = c.request(&dsm::protocol::Request::Compact);
}

impl Nodes {
    fn by_name(&mut self, name: &str) -> &mut Node {
        if self.cluster.node(name).is_none() {
            return &mut self.cluster.primary;
        }
        self.cluster.node_mut(name).expect("just found")
    }
}

/// Client threads running the workload into a history, until stopped.
pub struct Workload {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Workload {
    /// Starts `clients` threads (ids 1..=clients), each with a client of both masters, on
    /// `keys_at_once` keys at a time that rotate every `ops_per_key` operations per key.
    pub fn start(
        history: &Arc<History>,
        primary: &str,
        backup: &str,
        clients: usize,
        keys_at_once: usize,
        ops_per_key: u64,
        seed: u64,
    ) -> Result<Workload> {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let op_counter = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for id in 1..=clients as u64 {
            let mut client = Client::new(primary, Some(backup));
            client.set_timeout(REQUEST_DEADLINE);
            let worker = Worker {
                id,
                rng: StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(id)),
                client,
                history: Arc::clone(history),
                stop: Arc::clone(&stop),
                tally: Arc::clone(&tally),
                op_counter: Arc::clone(&op_counter),
                keys_at_once: keys_at_once.max(1) as u64,
                ops_per_key: ops_per_key.max(1),
            };
            threads.push(thread::Builder::new().name(format!("client-{id}")).spawn(move || worker.run())?);
        }
        Ok(Workload { stop, tally, threads })
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        self.tally.counts()
    }

    /// Stops the clients (each finishes its request in flight) and returns the counts.
    pub fn stop(mut self) -> Counts {
        self.halt();
        self.tally.counts()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Shared counters of the clients.
#[derive(Default)]
struct Tally {
    issued: AtomicU64,
    acked_writes: AtomicU64,
    answered_reads: AtomicU64,
    unknown_writes: AtomicU64,
    failed: AtomicU64,
}

impl Tally {
    fn counts(&self) -> Counts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            issued: get(&self.issued),
            acked_writes: get(&self.acked_writes),
            answered_reads: get(&self.answered_reads),
            unknown_writes: get(&self.unknown_writes),
            failed: get(&self.failed),
        }
    }
}

/// One client thread of the workload.
struct Worker {
    id: u64,
    rng: StdRng,
    client: Client,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    op_counter: Arc<AtomicU64>,
    keys_at_once: u64,
    ops_per_key: u64,
}

impl Worker {
    fn run(mut self) {
        let mut n = 0u64;
        while !self.stop.load(Ordering::SeqCst) {
            let count = self.op_counter.fetch_add(1, Ordering::Relaxed);
            let generation = count / (self.keys_at_once * self.ops_per_key);
            let key = format!("k{generation}-{}", self.rng.gen_range(0..self.keys_at_once));
            self.tally.issued.fetch_add(1, Ordering::Relaxed);
            let answer = if self.rng.gen_bool(0.5) {
                n += 1;
                let value = format!("c{}-{n}", self.id);
                let answer = self.history.write(self.id, &mut self.client, &key, &value);
                match answer {
                    Answer::Done => &self.tally.acked_writes,
                    Answer::Unknown => &self.tally.unknown_writes,
                    Answer::Failed => &self.tally.failed,
                }
                .fetch_add(1, Ordering::Relaxed);
                answer
            } else {
                let answer = self.history.read(self.id, &mut self.client, &key);
                match answer {
                    Answer::Done => &self.tally.answered_reads,
                    _ => &self.tally.failed,
                }
                .fetch_add(1, Ordering::Relaxed);
                answer
            };
            if answer != Answer::Done {
                // The server may be cut off or deposed while still answering `ERR`: try the
                // other master next, as a careful client would.
                self.client.disconnect_and_prefer_other();
                thread::sleep(CLIENT_BACKOFF);
            }
        }
    }
}

/// Turns a fault kind's name (as printed) back into the kind.
pub fn parse_fault_kind(name: &str) -> Result<FaultKind> {
    FaultKind::all().into_iter().find(|k| k.to_string() == name).ok_or_else(|| {
        let names: Vec<String> = FaultKind::all().iter().map(|k| k.to_string()).collect();
        Error::Config(format!("unknown fault kind '{name}'; known: {}", names.join(", ")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule_and_covers_every_kind() {
        let config = Config::default();
        let a: Vec<Step> = Schedule::new(7, &config).take(100).collect();
        let b: Vec<Step> = Schedule::new(7, &config).take(100).collect();
        assert_eq!(a, b);
        for kind in FaultKind::all() {
            assert!(a.iter().any(|s| s.kind == kind), "{kind} never drawn");
        }
        for s in &a {
            assert!(s.wait >= config.fault_gap.0 && s.wait <= config.fault_gap.1);
            assert!(s.length >= config.fault_length.0 && s.length <= config.fault_length.1);
            assert!(s.slave < config.slaves);
        }
        let c: Vec<Step> = Schedule::new(8, &config).take(100).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn both_masters_get_the_read_mode() {
        let dir = Path::new("/d");
        for read_from in [ReadFrom::Master, ReadFrom::Slaves] {
            let config = Config { read_from, bin_dir: PathBuf::from("/bin"), ..Config::default() };
            let b = cluster_builder(&config, dir);
            let want = ["--read-from".to_string(), read_from.name().to_string()];
            let (program, primary) = b.primary_command(dir, "P", "B");
            assert_eq!(program, Path::new("/bin/dsm-master"));
            assert!(primary.ends_with(&want), "{primary:?}");
            let backup = b.backup_args_for(dir, "B", "P");
            assert!(backup.ends_with(&want), "{backup:?}");
        }
    }

    #[test]
    fn fault_kinds_parse_back() {
        for kind in FaultKind::all() {
            assert_eq!(parse_fault_kind(&kind.to_string()).unwrap(), kind);
        }
        assert!(parse_fault_kind("nuke-everything").is_err());
    }

    #[test]
    fn lines_only_a_bug_prints_in_the_nodes_output_fail_the_run() {
        let outputs = [
            (
                "primary",
                "listening on 127.0.0.1:1\n[ERROR] a combined write was not answered within 5000 ms\n",
            ),
            ("s1", "registered\nthread 'link' panicked at src/slave.rs:1:1:\n"),
            ("s2", "[WARN] no answer to a read within 500 ms\n"),
        ];
        let found = bug_lines(outputs.map(|(n, t)| (n.to_string(), t.to_string())));
        assert_eq!(
            found,
            [
                "primary.out: [ERROR] a combined write was not answered within 5000 ms",
                "s1.out: thread 'link' panicked at src/slave.rs:1:1:",
            ]
        );
        let verdict = Verdict { node_bugs: found, ..Verdict::default() };
        assert!(!verdict.is_ok());
        assert!(verdict.to_string().contains("node output: s1.out: thread 'link' panicked"));
        assert!(Verdict::default().is_ok());
        let many = Verdict { node_bugs: vec!["primary.out: x".to_string(); 78], ..Verdict::default() };
        let shown = many.to_string();
        assert_eq!(shown.matches("node output: primary.out: x").count(), 10, "{shown}");
        assert!(shown.contains("… and 68 more such lines"), "{shown}");
    }
}
