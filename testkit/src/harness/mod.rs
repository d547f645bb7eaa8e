//! The load-test harness: starts a cluster (or uses an existing one), drives it with client
//! threads for a warm-up and a measured window, injects faults, and writes one row per
//! measured second plus a summary.
//!
//! A run goes like this:
//!
//! 1. Check the configuration and the output directory: files of an earlier run in `--out`
//!    are refused unless `--overwrite` (which deletes them before the run starts), so one set
//!    of files always comes from one run.
//! 2. Start the primary, the backup (when `dsm-backup` is built and not `--no-backup`) and
//!    the slaves in a temporary directory, both masters with `--read-from` (the read mode is
//!    recorded in `summary.json` as `read_from`), and wait until the primary reports every slave
//!    registered (`STAT slaves`). Or, with `--master`, use that cluster.
//! 3. Start `--clients` threads. Each owns `--conns-per-client` connections
//!    ([`dsm::client::Client`], with failover to the backup) used round-robin, and sends one
//!    request at a time: closed loop (the next request after the reply and `--think-ms`) or,
//!    with `--rate`, open loop (requests on a fixed schedule, latency counted from the
//!    scheduled time, so a stall shows as latency instead of as fewer requests). Every request
//!    has a deadline (`--request-timeout-ms`). Each thread fills per-second buckets
//!    ([`metrics::Recorder`]).
//! 4. The run loop (this thread) wakes at every second boundary: it reads the master's
//!    `STATS` ([`monitor`]), merges the buckets, prints the progress line, and fires the
//!    faults (`--kill-primary-at`, `--kill-slave-at`) at their times.
//! 5. At the end it stops the clients (waiting at most one deadline for them), stops the
//!    cluster, and writes `metrics.csv`, `metrics.json`, `summary.json`, `slaves.csv` and
//!    `events.csv`.
//!
//! Deadlines: a request's reply must arrive within `--request-timeout-ms` (the connection's
//! read timeout, which also ends a request blocked on a silent server); a reply that arrives
//! later anyway is counted as a `deadline` error. Connecting has its own bound
//! ([`CONNECT_TIMEOUT`] per server). At the end the run waits at most one deadline plus two
//! connection attempts plus [`JOIN_GRACE`] for its client threads, so a stuck peer can never
//! hang the harness.
//!
//! An error, Ctrl-C or a panic drops the [`Cluster`], which kills every process it started.
//! Sweeps ([`sweep`]) repeat runs with one parameter changed and write a summary CSV.

pub mod config;
pub mod deadline;
pub mod metrics;
pub mod monitor;
pub mod signal;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::{Cluster, ClusterBuilder, Follow};
use dsm::client::{is_timeout, Client, CONNECT_TIMEOUT};
use dsm::protocol::{ErrorReply, Reply};
use dsm::{Error, Result};

pub use config::RunConfig;
use deadline::InFlight;
use metrics::{
    json_array, json_object, json_string, push_percentiles, row_fields, write_csv, Bucket, Cell, ErrorKind,
    Fields, Op, Outcome, Recorder, RowContext, Timeline,
};
use monitor::{SlaveLoad, Snapshot, Snapshots};

/// How long a client thread waits after failing to connect before its next request, so an
/// outage costs little CPU (the backup needs it to take over) and the error count of a second
/// of outage is bounded (about 20 per client).
pub const CONNECT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// The longest a sleeping thread (client or run loop) goes without checking whether the run
/// is over, so stopping never waits for a long think time.
pub const STOP_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// How long the once-per-second `STATS` request may take. Short: a missed reading only leaves
/// one row's `slave_count` empty, while a slow one delays the progress line.
pub const STATS_POLL_TIMEOUT: Duration = Duration::from_millis(500);

/// How long after the end of a second its progress line is printed: client threads send a
/// second's counts when their next request completes, which with the default think time is
/// well within this.
pub const PROGRESS_LAG: Duration = Duration::from_millis(300);

/// Extra time, beyond one request deadline and two connection attempts, that the client
/// threads get to finish after the end of the run before their last buckets are given up.
pub const JOIN_GRACE: Duration = Duration::from_secs(1);

/// Connections the master must accept beyond the clients' and the slaves' (the harness's
/// `STATS` reader, a backup, an operator's `dsm-client`). Above the master's default limit the
/// harness raises `--max-connections` so it never measures its own refused connections.
pub const CONNECTION_HEADROOM: usize = 16;

/// Bytes of each value that are made new for every write; the rest of the value is random
/// once per client, which keeps big values cheap to make.
const FRESH_VALUE_BYTES: usize = 16;

/// The files one run writes into its output directory.
pub const RUN_FILES: [&str; 5] = ["metrics.csv", "metrics.json", "summary.json", "slaves.csv", "events.csv"];

/// The directory under `--out` where `--keep-logs` copies the servers' output.
pub const LOGS_DIR: &str = "logs";

/// Copies every server's output (`NAME.out`) from the cluster's directory to `to`.
fn copy_logs(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "out") {
            if let Some(name) = path.file_name() {
                fs::copy(&path, to.join(name))?;
            }
        }
    }
    Ok(())
}

/// A fault injected during a run.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultEvent {
    /// Seconds after the end of the warm-up.
    pub at_s: f64,
    /// What was done, e.g. `killed primary 127.0.0.1:40001`.
    pub what: String,
}

/// What a finished run produced (also written to its files).
#[derive(Debug, Clone)]
pub struct RunReport {
    /// One row per measured second (the columns of `metrics.csv`).
    pub rows: Vec<Fields>,
    /// The summary (the fields of `summary.json` and of a sweep's CSV row).
    pub summary: Fields,
    /// Everything measured, in one bucket.
    pub total: Bucket,
    /// Requests and keys per slave, when the master reports them.
    pub slaves: Vec<SlaveLoad>,
    /// Faults injected.
    pub events: Vec<FaultEvent>,
    /// Where the files are.
    pub out: PathBuf,
}

impl RunReport {
    /// A summary field by name.
    pub fn get(&self, name: &str) -> Option<&Cell> {
        self.summary.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }
}

/// A temporary directory for a cluster's logs and write-ahead logs: removed when dropped,
/// unless kept (after a failure, so its logs can be read).
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    fn create() -> Result<WorkDir> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("dsm-harness-{}-{nanos:09}", std::process::id()));
        fs::create_dir_all(&path)?;
        Ok(WorkDir { path, keep: false })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Checks that `out` holds no files of an earlier run (or, with `overwrite`, deletes them),
/// creating the directory if needed.
fn prepare_out(out: &Path, files: &[&str], overwrite: bool) -> Result<()> {
    fs::create_dir_all(out)
        .map_err(|e| Error::Config(format!("cannot create output directory {}: {e}", out.display())))?;
    let existing: Vec<&str> = files.iter().copied().filter(|f| out.join(f).exists()).collect();
    if existing.is_empty() {
        return Ok(());
    }
    if !overwrite {
        return Err(Error::Config(format!(
            "{} already holds results of an earlier run ({}); pass --overwrite to replace \
             them, or choose another --out",
            out.display(),
            existing.join(", ")
        )));
    }
    for f in existing {
        fs::remove_file(out.join(f))?;
    }
    Ok(())
}

/// Writes a file whole: to a temporary name first, then renamed, so a reader never sees half
/// of it.
fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))))
}

/// The cluster under test: started by the harness (with its directory), or given by address.
struct Target {
    /// Declared before `workdir`, so its processes are killed before their directory goes.
    cluster: Option<Cluster>,
    workdir: Option<WorkDir>,
    master: String,
    backup: Option<String>,
}

impl Target {
    /// `--master` (and `--backup`) as given, or a fresh cluster in a temporary directory. The
    /// directory of a cluster that fails to start is kept for its logs.
    fn start(cfg: &RunConfig) -> Result<Target> {
        if let Some(m) = &cfg.master {
            return Ok(Target {
                cluster: None,
                workdir: None,
                master: m.clone(),
                backup: cfg.backup.clone(),
            });
        }
        let mut dir = WorkDir::create()?;
        let backup = !cfg.no_backup && Cluster::has_backup_binary();
        if !cfg.no_backup && !backup {
            log::warn!(
                "{} is not built: running without a backup master",
                crate::cluster::bin_dir().join("dsm-backup").display()
            );
        }
        let c = cluster_builder(cfg, &dir.path, backup).start().inspect_err(|_| dir.keep = true)?;
        let (master, backup) = (c.primary_addr().to_string(), c.backup_addr().map(str::to_string));
        if !cfg.quiet {
            eprintln!(
                "dsm-harness: started primary {master}{}, {} slaves, reads from {} (logs in {})",
                backup.as_ref().map_or(" (no backup)".to_string(), |b| format!(", backup {b}")),
                cfg.slaves,
                cfg.read_from.unwrap_or_default(),
                dir.path.display()
            );
        }
        Ok(Target { cluster: Some(c), workdir: Some(dir), master, backup })
    }
}

/// How the harness's cluster is started in `dir`: `cfg.slaves` slaves, a backup following the
/// primary's log if `backup`, and the same server flags on both masters (`--read-from`, any
/// `--fsync`, and `--max-connections` when the clients need more than the default).
fn cluster_builder(cfg: &RunConfig, dir: &Path, backup: bool) -> ClusterBuilder {
    let mut args = vec!["--read-from".to_string(), cfg.read_from.unwrap_or_default().name().to_string()];
    let needed = cfg.clients * cfg.conns_per_client + cfg.slaves + CONNECTION_HEADROOM;
    if needed > dsm::master::DEFAULT_MAX_CONNECTIONS {
        args.extend(["--max-connections".to_string(), needed.to_string()]);
    }
    if let Some(f) = &cfg.fsync {
        args.extend(["--fsync".to_string(), f.clone()]);
    }
    let builder = Cluster::builder().slaves(cfg.slaves).primary_args(&args).echo(cfg.echo).dir(dir);
    if backup {
        builder.backup(Follow::Wal).backup_args(&args)
    } else {
        builder
    }
}

/// Everything a client thread needs.
struct LoadPlan {
    master: String,
    backup: Option<String>,
    conns: usize,
    keys: u64,
    write_pct: u8,
    value_size: usize,
    think: Duration,
    /// Open loop: the interval between two requests of one client.
    interval: Option<Duration>,
    timeout: Duration,
    start: Instant,
    end: Instant,
    stop: Arc<AtomicBool>,
    seed: u64,
    /// Each client thread's request in flight, for the run loop's deadline scan.
    in_flight: Vec<InFlight>,
}

impl LoadPlan {
    /// Microseconds from the start of the load to `t`.
    fn micros(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.start).as_micros()).unwrap_or(u64::MAX)
    }

    /// Records a deadline error for every request in flight past its deadline (see
    /// [`deadline`]), in the current second.
    fn expire_late_requests(&self, timeline: &mut Timeline) {
        let now = Instant::now();
        let (now_us, deadline_us) = (self.micros(now), latency_us(self.start, self.start + self.timeout));
        let mut bucket: Option<Bucket> = None;
        for slot in &self.in_flight {
            if let Some(op) = slot.expire(now_us, deadline_us) {
                bucket.get_or_insert_with(|| Bucket::new((now - self.start).as_secs())).record(
                    op,
                    Outcome::Error(ErrorKind::Deadline),
                    deadline_us,
                );
            }
        }
        if let Some(b) = bucket {
            timeline.add(b);
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || signal::interrupted()
    }

    /// Sleeps until `t`, waking early when the run stops; false if it stopped.
    fn sleep_until(&self, t: Instant) -> bool {
        loop {
            if self.stopping() {
                return false;
            }
            let now = Instant::now();
            if now >= t {
                return true;
            }
            thread::sleep((t - now).min(STOP_CHECK_INTERVAL));
        }
    }
}

/// The outcome of a request given its reply. Only `OK` to a write and `VALUE` or `NOT_FOUND`
/// to a read are successes.
pub fn classify(op: Op, reply: &Result<Reply>) -> Outcome {
    use ErrorKind as K;
    let kind = match (op, reply) {
        (Op::Write, Ok(Reply::Ok(_))) => return Outcome::Success,
        (Op::Read, Ok(Reply::Value { .. } | Reply::NotFound)) => return Outcome::Success,
        (_, Ok(Reply::Err(e))) => match e {
            ErrorReply::NotPrimary(_) => K::NotPrimary,
            ErrorReply::Unavailable(_) => K::Unavailable,
            ErrorReply::Timeout(_) => K::ServerTimeout,
            ErrorReply::Invalid(_) => K::ServerError,
        },
        (_, Ok(_)) => K::Unexpected,
        (_, Err(Error::Unavailable(_))) => K::Connect,
        (_, Err(Error::Timeout(_))) => K::Deadline,
        (_, Err(Error::Io(e))) if is_timeout(e) => K::Deadline,
        (_, Err(Error::Protocol(_))) => K::Unexpected,
        (_, Err(_)) => K::Io,
    };
    Outcome::Error(kind)
}

const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn client_thread(id: usize, clients: usize, plan: Arc<LoadPlan>, tx: Sender<Bucket>) {
    let mut rng = StdRng::seed_from_u64(plan.seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut pool: Vec<Client> = (0..plan.conns)
        .map(|_| {
            let mut c = Client::new(&plan.master, plan.backup.as_deref());
            c.set_timeout(plan.timeout);
            c
        })
        .collect();
    let mut value: Vec<u8> =
        (0..plan.value_size).map(|_| ALPHANUMERIC[rng.gen_range(0..ALPHANUMERIC.len())]).collect();
    let mut recorder = Recorder::new(tx);
    let mut schedule = plan.interval.map(|i| Schedule::new(plan.start, i, id, clients));
    let mut next_conn = 0;
    loop {
        if plan.stopping() || Instant::now() >= plan.end {
            break;
        }
        // Open loop: wait for the request's scheduled time; if it has passed (the client is
        // behind), send at once: the wait so far is part of its latency.
        let due = schedule.as_mut().map(Schedule::take);
        if let Some(t) = due {
            if t >= plan.end || !plan.sleep_until(t) {
                break;
            }
        }
        let op = if rng.gen_range(0..100u8) < plan.write_pct { Op::Write } else { Op::Read };
        let key = format!("key{}", rng.gen_range(0..plan.keys));
        let n_conns = pool.len();
        let client = &mut pool[next_conn];
        next_conn = (next_conn + 1) % n_conns;
        let sent = Instant::now();
        let slot = &plan.in_flight[id];
        slot.begin(plan.micros(sent), op);
        let reply = match op {
            Op::Write => {
                for b in value.iter_mut().take(FRESH_VALUE_BYTES) {
                    *b = ALPHANUMERIC[rng.gen_range(0..ALPHANUMERIC.len())];
                }
                client.write(&key, &value)
            }
            Op::Read => client.read(&key),
        };
        let done = Instant::now();
        if !slot.finish() {
            // The run loop counted it as a deadline error when its deadline passed.
            continue;
        }
        let mut outcome = classify(op, &reply);
        if outcome == Outcome::Success && done - sent > plan.timeout {
            outcome = Outcome::Error(ErrorKind::Deadline);
        }
        // Open loop: from the scheduled time, so time spent behind schedule is latency.
        let latency_us = latency_us(due.unwrap_or(sent), done);
        let second = (done - plan.start).as_secs();
        recorder.record(second, op, outcome, latency_us);
        let pause = match outcome {
            Outcome::Error(ErrorKind::Connect) => plan.think.max(CONNECT_ERROR_BACKOFF),
            _ if plan.interval.is_some() => Duration::ZERO,
            _ => plan.think,
        };
        if !pause.is_zero() && !plan.sleep_until(Instant::now() + pause) {
            break;
        }
    }
}

/// The open-loop schedule of one client: its requests are due every `interval`, the clients
/// offset from each other by a fraction of it so their requests interleave. The schedule never
/// waits for replies, so a stall shows as latency rather than as fewer requests.
#[derive(Debug, Clone)]
pub struct Schedule {
    next: Instant,
    interval: Duration,
}

impl Schedule {
    /// The schedule of client `id` of `clients`, starting at `start`.
    pub fn new(start: Instant, interval: Duration, id: usize, clients: usize) -> Schedule {
        let offset = interval.mul_f64(id as f64 / clients.max(1) as f64);
        Schedule { next: start + offset, interval }
    }

    /// The time the next request is due; the schedule moves on by one interval.
    pub fn take(&mut self) -> Instant {
        let due = self.next;
        self.next += self.interval;
        due
    }
}

/// Microseconds from `from` (the send time, or in open loop the scheduled time) to `done`.
pub fn latency_us(from: Instant, done: Instant) -> u64 {
    u64::try_from(done.saturating_duration_since(from).as_micros()).unwrap_or(u64::MAX)
}

/// Reads the master's `STATS`; `None` when it cannot be asked.
/// The serving master's counters: a master that is not primary (the standby, or the backup
/// after a failback) is left for the other one, so `slave_count` follows whoever serves.
fn poll(client: &mut Client) -> Option<Snapshot> {
    let mut rows = client.stats().ok()?;
    let serving = |rows: &[(String, String)]| rows.iter().any(|(k, v)| k == "role" && v == "primary");
    if !serving(&rows) {
        client.disconnect_and_prefer_other();
        if let Ok(other) = client.stats() {
            if serving(&other) {
                rows = other;
            }
        }
    }
    Some(Snapshot::from_rows(&rows))
}

/// The machine's one-minute load average before and after a run: the harness, the cluster
/// and anything else on the machine share its cores, and a loaded machine measures less.
#[derive(Debug, Clone, Copy)]
struct MachineLoad {
    before: Option<f64>,
    after: Option<f64>,
}

/// The one-minute load average from `/proc/loadavg`, where there is one.
fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn fmt_us(v: Option<u64>) -> String {
    match v {
        None => "-".to_string(),
        Some(us) if us >= 10_000 => format!("{:.0}ms", us as f64 / 1000.0),
        Some(us) if us >= 1000 => format!("{:.1}ms", us as f64 / 1000.0),
        Some(us) => format!("{us}µs"),
    }
}

fn progress_line(cfg: &RunConfig, second: u64, b: Option<&Bucket>, slaves: Option<u64>) -> String {
    let (phase, n, of) = if second < cfg.warmup_s {
        ("warm-up", second + 1, cfg.warmup_s)
    } else {
        ("run", second + 1 - cfg.warmup_s, cfg.duration_s)
    };
    let empty = Bucket::new(second);
    let b = b.unwrap_or(&empty);
    format!(
        "[{phase} {n:>3}/{of} s] {:>7} ok/s {:>6} err/s  p99 read {:>7} write {:>7}  slaves {}",
        b.success(),
        b.errors(),
        fmt_us(b.reads.percentile_us(0.99)),
        fmt_us(b.writes.percentile_us(0.99)),
        slaves.map_or("?".to_string(), |n| n.to_string()),
    )
}

/// Runs the load once and writes its files into `cfg.out`.
pub fn run(cfg: &RunConfig) -> Result<RunReport> {
    cfg.validate()?;
    prepare_out(&cfg.out, &RUN_FILES, cfg.overwrite)?;
    let logs = cfg.out.join(LOGS_DIR);
    if logs.exists() {
        if !cfg.overwrite {
            return Err(Error::Config(format!(
                "{} holds server logs of an earlier run; pass --overwrite to replace them",
                logs.display()
            )));
        }
        fs::remove_dir_all(&logs)?;
    }
    let seed = cfg
        .seed
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));

    let mut target = Target::start(cfg)?;
    let (master, backup) = (target.master.clone(), target.backup.clone());

    let mut stats_client = Client::new(&master, backup.as_deref());
    stats_client.set_timeout(STATS_POLL_TIMEOUT);
    let total_s = cfg.warmup_s + cfg.duration_s;
    let start = Instant::now();
    let start_unix = unix_now();
    let load_before = load_average();
    let end = start + Duration::from_secs(total_s);
    let stop = Arc::new(AtomicBool::new(false));
    let plan = Arc::new(LoadPlan {
        master: master.clone(),
        backup: backup.clone(),
        conns: cfg.conns_per_client,
        keys: cfg.keys,
        write_pct: cfg.write_pct,
        value_size: cfg.value_size,
        think: cfg.think,
        interval: cfg.rate.map(|r| Duration::from_secs_f64(cfg.clients as f64 / r)),
        timeout: cfg.request_timeout,
        start,
        end,
        stop: stop.clone(),
        seed,
        in_flight: (0..cfg.clients).map(|_| InFlight::new()).collect(),
    });
    let (tx, rx) = unbounded();
    for i in 0..cfg.clients {
        let (plan, tx) = (plan.clone(), tx.clone());
        let clients = cfg.clients;
        thread::Builder::new()
            .name(format!("client-{i}"))
            .spawn(move || client_thread(i, clients, plan, tx))?;
    }
    drop(tx);

    let mut timeline = Timeline::new(cfg.warmup_s, cfg.duration_s);
    let mut snapshots = Snapshots::default();
    snapshots.set(0, poll(&mut stats_client));
    let mut faults: Vec<(f64, &str)> = Vec::new();
    if let Some(at) = cfg.kill_primary_at {
        faults.push((at, "primary"));
    }
    if let Some(at) = cfg.kill_slave_at {
        faults.push((at, "slave"));
    }
    if let Some(at) = cfg.restart_primary_at {
        faults.push((at, "restart-primary"));
    }
    let mut roles = RoleWatch::default();
    faults.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut events = Vec::new();
    let drain = |timeline: &mut Timeline, rx: &Receiver<Bucket>| {
        while let Ok(b) = rx.try_recv() {
            timeline.add(b);
        }
    };

    // The progress line of a second is printed a little after it ends, once the client threads
    // have moved on to the next second and sent its buckets.
    let mut pending_progress: Option<(u64, Option<u64>)> = None;
    let print_progress = |timeline: &Timeline, (second, slaves): (u64, Option<u64>)| {
        if !cfg.quiet {
            eprintln!("{}", progress_line(cfg, second, timeline.get(second), slaves));
        }
    };
    for k in 1..=total_s {
        let tick = start + Duration::from_secs(k);
        loop {
            drain(&mut timeline, &rx);
            plan.expire_late_requests(&mut timeline);
            if signal::interrupted() {
                stop.store(true, Ordering::SeqCst);
                return Err(Error::Unavailable(
                    "interrupted: the load and the cluster were stopped; no results written".into(),
                ));
            }
            let now = Instant::now();
            if let Some(p) = pending_progress {
                if now >= start + Duration::from_secs(p.0 + 1) + PROGRESS_LAG {
                    print_progress(&timeline, p);
                    pending_progress = None;
                }
            }
            if let Some(&(at, what)) = faults.first() {
                let due = start + Duration::from_secs_f64(cfg.warmup_s as f64 + at);
                if now >= due {
                    faults.remove(0);
                    let at_s = (now - start).as_secs_f64() - cfg.warmup_s as f64;
                    let what = inject(target.cluster.as_mut(), what)?;
                    if !cfg.quiet {
                        eprintln!("dsm-harness: {what} at {at_s:.2} s");
                    }
                    events.push(FaultEvent { at_s, what });
                    continue;
                }
            }
            if let Some(c) = target.cluster.as_ref().filter(|_| cfg.kill_primary_at.is_some()) {
                let at_s = (now - start).as_secs_f64() - cfg.warmup_s as f64;
                events.extend(roles.poll(c, at_s));
            }
            if now >= tick {
                break;
            }
            thread::sleep((tick - now).min(STOP_CHECK_INTERVAL));
        }
        let snap = poll(&mut stats_client);
        let slaves_now = snap.as_ref().and_then(|s| s.slaves);
        snapshots.set(k as usize, snap);
        if let Some(p) = pending_progress.take() {
            print_progress(&timeline, p);
        }
        pending_progress = Some((k - 1, slaves_now));
    }

    // Stop the clients; a thread blocked in a request gets its deadline plus two connection
    // attempts, then its last requests are given up (they completed after the end anyway).
    stop.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + cfg.request_timeout + CONNECT_TIMEOUT * 2 + JOIN_GRACE;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(b) => timeline.add(b),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                log::warn!("some client threads did not stop in time; their last requests are not counted");
                break;
            }
        }
    }
    target.cluster = None; // kills its processes
    if cfg.keep_logs {
        if let Some(dir) = &target.workdir {
            copy_logs(&dir.path, &cfg.out.join(LOGS_DIR))?;
        }
    }
    if let Some(p) = pending_progress {
        print_progress(&timeline, p);
    }

    let machine = MachineLoad { before: load_before, after: load_average() };
    let report = build_report(cfg, seed, start_unix, machine, &timeline, &snapshots, events);
    write_run_files(&report)?;
    Ok(report)
}

/// Carries out a fault on the cluster the harness started.
fn inject(cluster: Option<&mut Cluster>, what: &str) -> Result<String> {
    let c = cluster.ok_or_else(|| Error::Config("faults need a cluster the harness starts".into()))?;
    Ok(match what {
        "primary" => {
            c.primary.kill();
            format!("killed primary {}", c.primary_addr())
        }
        "restart-primary" => {
            c.primary.restart()?;
            format!("restarted primary {}", c.primary_addr())
        }
        _ => {
            let s = c.slaves.first_mut().ok_or_else(|| Error::Config("no slave to kill".into()))?;
            s.kill();
            format!("killed slave {}", s.name)
        }
    })
}

/// How often the run asks both masters for their role once a fault changed the primary, so
/// the takeover and the failback are marked within about this much of when they happened.
const ROLE_POLL: Duration = Duration::from_millis(100);

/// Watches the roles of the two masters of a cluster the harness started, and turns their
/// changes into events: the backup taking over, the primary taking back.
#[derive(Default)]
struct RoleWatch {
    last_poll: Option<Instant>,
    /// Which master served at the last poll: `Some(true)` the primary, `Some(false)` the backup.
    serving_primary: Option<bool>,
}

impl RoleWatch {
    fn poll(&mut self, c: &Cluster, at_s: f64) -> Option<FaultEvent> {
        let backup = c.backup_addr()?;
        if self.last_poll.is_some_and(|t| t.elapsed() < ROLE_POLL) {
            return None;
        }
        self.last_poll = Some(Instant::now());
        let serves = |addr: &str| crate::cluster::stat(addr, "role").as_deref() == Some("primary");
        let now = if serves(c.primary_addr()) {
            true
        } else if serves(backup) {
            false
        } else {
            return None;
        };
        let before = self.serving_primary.replace(now);
        match (before, now) {
            (Some(true), false) => Some(FaultEvent { at_s, what: format!("backup {backup} took over") }),
            (Some(false), true) => {
                Some(FaultEvent { at_s, what: format!("primary {} took back", c.primary_addr()) })
            }
            _ => None,
        }
    }
}

fn build_report(
    cfg: &RunConfig,
    seed: u64,
    start_unix: f64,
    machine: MachineLoad,
    timeline: &Timeline,
    snapshots: &Snapshots,
    events: Vec<FaultEvent>,
) -> RunReport {
    let (w, d) = (cfg.warmup_s, cfg.duration_s);
    let ids = snapshots.slave_ids(w, w + d);
    let rows: Vec<Fields> = timeline
        .measured()
        .iter()
        .map(|b| {
            let ctx = RowContext {
                timestamp: start_unix + b.second as f64,
                elapsed_s: b.second - w,
                client_count: cfg.clients as u64,
                slave_count: snapshots.slave_count(b.second),
                slave_requests: snapshots.requests_in(b.second, &ids),
            };
            row_fields(b, &ctx)
        })
        .collect();
    let total = timeline.measured_total();
    let slaves = snapshots.totals(w, w + d);
    let registered = snapshots.0.get(w as usize).cloned().flatten().and_then(|s| s.slaves);
    let mut s: Fields = vec![
        ("started_at".into(), Cell::Float(start_unix)),
        ("cpus".into(), std::thread::available_parallelism().ok().map(|n| n.get() as u64).into()),
        ("loadavg_1m_before".into(), machine.before.into()),
        ("loadavg_1m_after".into(), machine.after.into()),
        ("client_count".into(), Cell::Int(cfg.clients as u64)),
        (
            "slave_count".into(),
            match cfg.master {
                None => Cell::Int(cfg.slaves as u64),
                Some(_) => registered.into(),
            },
        ),
        ("registered_slaves".into(), registered.into()),
        ("conns_per_client".into(), Cell::Int(cfg.conns_per_client as u64)),
        ("keys".into(), Cell::Int(cfg.keys)),
        ("write_pct".into(), Cell::Int(u64::from(cfg.write_pct))),
        ("value_size".into(), Cell::Int(cfg.value_size as u64)),
        ("mode".into(), Cell::Text(if cfg.rate.is_some() { "open" } else { "closed" }.into())),
        ("read_from".into(), cfg.read_mode().map_or(Cell::Missing, |r| Cell::Text(r.name().into()))),
        ("think_ms".into(), Cell::Int(u64::try_from(cfg.think.as_millis()).unwrap_or(u64::MAX))),
        ("rate".into(), cfg.rate.into()),
        ("seed".into(), Cell::Int(seed)),
        ("warmup_s".into(), Cell::Int(w)),
        ("duration_s".into(), Cell::Int(d)),
        (
            "request_timeout_ms".into(),
            Cell::Int(u64::try_from(cfg.request_timeout.as_millis()).unwrap_or(u64::MAX)),
        ),
        ("total_requests".into(), Cell::Int(total.total())),
        ("success_count".into(), Cell::Int(total.success())),
        ("error_count".into(), Cell::Int(total.errors())),
        ("read_count".into(), Cell::Int(total.reads.count)),
        ("write_count".into(), Cell::Int(total.writes.count)),
        ("throughput_rps".into(), Cell::Float(total.success() as f64 / d as f64)),
        ("error_rps".into(), Cell::Float(total.errors() as f64 / d as f64)),
        ("read_latency_us".into(), total.reads.mean_us().into()),
        ("write_latency_us".into(), total.writes.mean_us().into()),
    ];
    push_percentiles(&mut s, &total);
    s.push(("read_error_count".into(), Cell::Int(total.reads.error_count())));
    s.push(("write_error_count".into(), Cell::Int(total.writes.error_count())));
    for (kind, n) in ErrorKind::ALL.iter().zip(total.errors_by_kind()) {
        s.push((format!("errors.{}", kind.name()), Cell::Int(n)));
    }
    RunReport { rows, summary: s, total, slaves, events, out: cfg.out.clone() }
}

fn write_run_files(r: &RunReport) -> Result<()> {
    let out = &r.out;
    let base: Vec<&str> = metrics::BASE_COLUMNS.to_vec();
    write_file(&out.join("metrics.csv"), &write_csv(&r.rows, &base)?)?;
    write_file(&out.join("metrics.json"), json_array(&r.rows).as_bytes())?;
    write_file(&out.join("summary.json"), summary_json(r).as_bytes())?;
    let total: u64 = r.slaves.iter().map(|s| s.requests).sum();
    let slave_rows: Vec<Fields> = r
        .slaves
        .iter()
        .map(|s| {
            vec![
                ("slave_id".into(), Cell::Text(s.id.0.clone())),
                ("requests".into(), Cell::Int(s.requests)),
                ("keys".into(), s.keys.into()),
                (
                    "requests_pct".into(),
                    if total > 0 {
                        Cell::Float(100.0 * s.requests as f64 / total as f64)
                    } else {
                        Cell::Missing
                    },
                ),
            ]
        })
        .collect();
    write_file(
        &out.join("slaves.csv"),
        &write_csv(&slave_rows, &["slave_id", "requests", "keys", "requests_pct"])?,
    )?;
    let event_rows: Vec<Fields> = r
        .events
        .iter()
        .map(|e| vec![("at_s".into(), Cell::Float(e.at_s)), ("event".into(), Cell::Text(e.what.clone()))])
        .collect();
    write_file(&out.join("events.csv"), &write_csv(&event_rows, &["at_s", "event"])?)?;
    Ok(())
}

fn summary_json(r: &RunReport) -> String {
    let mut s = String::from("{\n");
    for (name, cell) in &r.summary {
        let _ = writeln!(s, "  {}: {},", json_string(name), cell.to_json());
    }
    let slaves: Vec<String> = r
        .slaves
        .iter()
        .map(|l| {
            json_object(&vec![
                ("id".into(), Cell::Text(l.id.0.clone())),
                ("requests".into(), Cell::Int(l.requests)),
                ("keys".into(), l.keys.into()),
            ])
        })
        .collect();
    let events: Vec<String> = r
        .events
        .iter()
        .map(|e| {
            json_object(&vec![
                ("at_s".into(), Cell::Float(e.at_s)),
                ("event".into(), Cell::Text(e.what.clone())),
            ])
        })
        .collect();
    let _ = writeln!(s, "  \"slaves\": [{}],", slaves.join(", "));
    let _ = writeln!(s, "  \"events\": [{}]", events.join(", "));
    s.push_str("}\n");
    s
}

/// A human-readable summary of a run, for stdout.
pub fn summary_text(r: &RunReport) -> String {
    let t = &r.total;
    let num = |n: &str| match r.get(n) {
        Some(Cell::Int(v)) => v.to_string(),
        Some(Cell::Float(v)) => format!("{v:.1}"),
        _ => "?".to_string(),
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "dsm-harness: {} s measured after {} s of warm-up; {} clients x {} connections, {} \
         slaves ({} loop, {})",
        num("duration_s"),
        num("warmup_s"),
        num("client_count"),
        num("conns_per_client"),
        num("registered_slaves"),
        match r.get("mode") {
            Some(Cell::Text(m)) => m.as_str(),
            _ => "?",
        },
        match r.get("read_from") {
            Some(Cell::Text(m)) => format!("reads from {m}"),
            _ => "read mode of the given cluster not known".to_string(),
        }
    );
    let errors: Vec<String> = ErrorKind::ALL
        .iter()
        .zip(t.errors_by_kind())
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{} {n}", k.name()))
        .collect();
    let _ = writeln!(
        s,
        "  requests {}: {} ok, {} errors{}; {} reads, {} writes",
        t.total(),
        t.success(),
        t.errors(),
        if errors.is_empty() { String::new() } else { format!(" ({})", errors.join(", ")) },
        t.reads.count,
        t.writes.count
    );
    let _ = writeln!(s, "  throughput {} ok/s", num("throughput_rps"));
    for (name, st) in [("read ", &t.reads), ("write", &t.writes)] {
        let _ = writeln!(
            s,
            "  {name} latency: mean {}  p50 {}  p95 {}  p99 {}  p99.9 {}",
            fmt_us(st.mean_us().map(|m| m.round() as u64)),
            fmt_us(st.percentile_us(0.5)),
            fmt_us(st.percentile_us(0.95)),
            fmt_us(st.percentile_us(0.99)),
            fmt_us(st.percentile_us(0.999)),
        );
    }
    if r.slaves.is_empty() {
        let _ = writeln!(s, "  per-slave counts: not reported by the master");
    } else {
        let total: u64 = r.slaves.iter().map(|l| l.requests).sum();
        let parts: Vec<String> = r
            .slaves
            .iter()
            .map(|l| {
                format!(
                    "{} {} ({:.0}%)",
                    l.id,
                    l.requests,
                    if total > 0 { 100.0 * l.requests as f64 / total as f64 } else { 0.0 }
                )
            })
            .collect();
        let _ = writeln!(s, "  slave requests: {}", parts.join(", "));
    }
    for e in &r.events {
        let _ = writeln!(s, "  {:.2} s: {}", e.at_s, e.what);
    }
    let _ = writeln!(
        s,
        "  machine: {} cpus, load average {} before, {} after",
        num("cpus"),
        num("loadavg_1m_before"),
        num("loadavg_1m_after")
    );
    let _ = writeln!(s, "  files in {}", r.out.display());
    s
}

/// What a sweep varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepAxis {
    /// `--sweep-slaves`: the number of slaves.
    Slaves,
    /// `--sweep-clients`: the number of client threads.
    Clients,
}

impl SweepAxis {
    /// The name of the sweep's CSV (without `.csv`) and of the directory of its runs.
    pub fn name(self) -> &'static str {
        match self {
            SweepAxis::Slaves => "by_slave_count",
            SweepAxis::Clients => "by_client_count",
        }
    }

    fn point_dir(self, n: usize) -> String {
        match self {
            SweepAxis::Slaves => format!("slaves-{n}"),
            SweepAxis::Clients => format!("clients-{n}"),
        }
    }
}

/// Runs `base` once per point with the axis set to it, each into
/// `OUT/<axis>/<slaves|clients>-N/`, and writes one summary row per point to `OUT/<axis>.csv`
/// (rewritten after every point, so an interrupted sweep keeps what it measured).
pub fn sweep(base: &RunConfig, axis: SweepAxis, points: &[usize]) -> Result<Vec<RunReport>> {
    let csv_name = format!("{}.csv", axis.name());
    prepare_out(&base.out, &[csv_name.as_str()], base.overwrite)?;
    let mut reports = Vec::new();
    let mut rows = Vec::new();
    for &n in points {
        let mut cfg = base.clone();
        match axis {
            SweepAxis::Slaves => cfg.slaves = n,
            SweepAxis::Clients => cfg.clients = n,
        }
        cfg.out = base.out.join(axis.name()).join(axis.point_dir(n));
        if !base.quiet {
            eprintln!(
                "dsm-harness: sweep {}: {} clients, {} slaves -> {}",
                axis.name(),
                cfg.clients,
                cfg.slaves,
                cfg.out.display()
            );
        }
        let r = run(&cfg)?;
        if !base.quiet {
            print!("{}", summary_text(&r));
        }
        rows.push(r.summary.clone());
        write_file(&base.out.join(&csv_name), &write_csv(&rows, &[])?)?;
        reports.push(r);
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_expected_replies_are_successes() {
        let ok = Outcome::Success;
        let e = Outcome::Error;
        let io = || Err(Error::Io(std::io::Error::other("reset")));
        let cases: Vec<(Op, Result<Reply>, Outcome)> = vec![
            (Op::Write, Ok(Reply::Ok(3)), ok),
            (Op::Read, Ok(Reply::NotFound), ok),
            (Op::Read, Ok(Reply::Value { version: 1, value: b"v".to_vec() }), ok),
            (Op::Read, Ok(Reply::Ok(3)), e(ErrorKind::Unexpected)),
            (Op::Write, Ok(Reply::NotFound), e(ErrorKind::Unexpected)),
            (Op::Read, Ok(Reply::Pong), e(ErrorKind::Unexpected)),
            (Op::Write, Ok(Reply::Err(ErrorReply::Timeout("q".into()))), e(ErrorKind::ServerTimeout)),
            (Op::Read, Ok(Reply::Err(ErrorReply::Unavailable("q".into()))), e(ErrorKind::Unavailable)),
            (Op::Read, Ok(Reply::Err(ErrorReply::NotPrimary("a".into()))), e(ErrorKind::NotPrimary)),
            (Op::Read, Ok(Reply::Err(ErrorReply::Invalid("x".into()))), e(ErrorKind::ServerError)),
            (Op::Read, Err(Error::Unavailable("no server".into())), e(ErrorKind::Connect)),
            (Op::Read, Err(Error::Timeout("t".into())), e(ErrorKind::Deadline)),
            (Op::Write, io(), e(ErrorKind::Io)),
            (Op::Read, Err(Error::Io(std::io::ErrorKind::WouldBlock.into())), e(ErrorKind::Deadline)),
            (Op::Read, Err(Error::Protocol("bad".into())), e(ErrorKind::Unexpected)),
        ];
        for (op, reply, want) in cases {
            assert_eq!(classify(op, &reply), want, "{op:?} {reply:?}");
        }
    }

    #[test]
    fn an_old_run_is_never_mixed_with_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        prepare_out(dir.path(), &RUN_FILES, false).unwrap();
        fs::write(dir.path().join("metrics.csv"), "old").unwrap();
        let msg = prepare_out(dir.path(), &RUN_FILES, false).unwrap_err().to_string();
        assert!(msg.contains("--overwrite") && msg.contains("metrics.csv"), "{msg}");
        prepare_out(dir.path(), &RUN_FILES, true).unwrap();
        assert!(!dir.path().join("metrics.csv").exists(), "old file removed before the run");
    }

    #[test]
    fn open_loop_latency_counts_from_the_schedule() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut a = Schedule::new(start, ms(10), 0, 2);
        let mut b = Schedule::new(start, ms(10), 1, 2);
        assert_eq!(a.take(), start);
        assert_eq!(b.take(), start + ms(5), "clients interleave");
        assert_eq!(a.take(), start + ms(10));
        assert_eq!(a.take(), start + ms(20));
        // Request 3 of client a was due at 30 ms; a stall made it go out at 80 ms and its reply
        // came at 81 ms: its latency is 51 ms, not the 1 ms the server took.
        let due = a.take();
        assert_eq!(due, start + ms(30));
        assert_eq!(latency_us(due, start + ms(81)), 51_000);
        // The next ones are due on the same schedule, however late the client is.
        assert_eq!(a.take(), start + ms(40));
        assert_eq!(latency_us(start + ms(5), start), 0, "never negative");
    }

    #[test]
    fn both_masters_get_the_read_mode_and_the_server_flags() {
        let dir = Path::new("/d");
        let flags = |cfg: &RunConfig| {
            let b = cluster_builder(cfg, dir, true);
            (b.primary_command(dir, "P", "B").1, b.backup_args_for(dir, "B", "P"))
        };
        let (primary, backup) = flags(&RunConfig::default());
        let want = ["--read-from", "master"].map(String::from);
        assert!(primary.ends_with(&want), "the default, passed explicitly: {primary:?}");
        assert!(backup.ends_with(&want), "{backup:?}");
        let cfg = RunConfig {
            read_from: Some(dsm::master::ReadFrom::Slaves),
            fsync: Some("never".into()),
            ..RunConfig::default()
        };
        let want = ["--read-from", "slaves", "--fsync", "never"].map(String::from);
        let (primary, backup) = flags(&cfg);
        assert!(primary.ends_with(&want), "{primary:?}");
        assert!(backup.ends_with(&want), "{backup:?}");
    }

    #[test]
    fn progress_line_names_the_phase() {
        let cfg = RunConfig { warmup_s: 2, duration_s: 3, ..RunConfig::default() };
        let mut b = Bucket::new(0);
        b.record(Op::Read, Outcome::Success, 250);
        let warm = progress_line(&cfg, 0, Some(&b), Some(3));
        assert!(warm.starts_with("[warm-up   1/2 s]"), "{warm}");
        assert!(warm.contains("slaves 3"), "{warm}");
        let run = progress_line(&cfg, 4, None, None);
        assert!(run.starts_with("[run   3/3 s]"), "{run}");
        assert!(run.contains("slaves ?"), "{run}");
    }
}
