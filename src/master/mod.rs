//! The master: serves clients, replicates every write to every connected slave and
//! acknowledges it once a majority of the members has it, and answers reads from its committed
//! copy (or, with `--read-from slaves`, from a slave that holds the acknowledged version).
//!
//! Threads: one accept loop; one thread per connection (a client's or a slave's — they share
//! the port and are told apart by their first line); one heartbeat thread; one repair thread;
//! one compaction thread; one thread answering the connections refused over
//! `--max-connections` ([`refuse`]); with `--metrics-listen`, one thread serving `/metrics`
//! (`metrics_http`); and one short-lived resync thread per slave that (re)registers. State
//! lives in [`Shared`]: the write-ahead log, the [`index::Index`] of keys, the
//! [`members::Members`] with their live [`link::Link`]s, the log's [`history::History`] of
//! epochs, and counters.
//!
//! The path of a write (`WRITE k v`, on the client's thread; a run of pipelined writes goes
//! through the same steps together, see `ops::execute_writes`):
//! 1. check that a majority of the members is connected, else `ERR UNAVAILABLE` (nothing done);
//! 2. append `<seq> SET k v` to the log: `seq` is the version, `(epoch, seq)` the stamp;
//! 3. send it to every connected slave, each request with its own id;
//! 4. count ACKs; a member that does not answer within `--ack-timeout-ms` while the majority
//!    is still short is marked down;
//! 5. with a majority of ACKs, mark the write committed and answer `OK <seq>`; otherwise answer
//!    `ERR TIMEOUT` (the write is logged, so the repair thread may still complete it).
//!
//! The path of a read (`READ k`): the master must hold read leases from a majority (so no newer
//! master can exist); then it answers with the committed version from its index. A read never
//! returns anything but the newest acknowledged write.

pub mod compaction;
pub mod flags;
pub mod history;
pub mod index;
pub mod link;
pub mod members;
mod metrics_http;
mod ops;
pub mod refuse;
pub mod replica;
pub mod role;
pub mod session;
mod slaves;

use std::collections::HashSet;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::auth::PeerRole;
use crate::framing::{LineError, LineReader};
use crate::peer::{Registration, Stamp};
use crate::protocol::{ErrorReply, Reply};
use crate::wal::{Fsync, Record, Wal};
use crate::{Error, Result};

use history::History;
use index::Index;
use members::Members;
pub use role::{Role, RoleState};

/// Default for `--ack-timeout-ms`: how long a write waits for one slave's ACK before marking it
/// down and asking another member instead.
pub const DEFAULT_ACK_TIMEOUT_MS: u64 = 500;

/// Default for `--heartbeat-ms`: how often the master pings every slave.
pub const DEFAULT_HEARTBEAT_MS: u64 = 100;

/// A slave silent for this many heartbeat intervals is marked down and disconnected. Five (half
/// a second) marked healthy slaves down under load on a busy two-core machine; a slave that is
/// really gone is usually noticed sooner anyway, by its closed connection or a missing ACK.
pub const HEARTBEAT_MISSES: u32 = 10;

/// A write's whole deadline, in ACK timeouts: enough to replace slow members a few times, short
/// enough that a client gets `ERR TIMEOUT` within seconds, never a hang.
pub const WRITE_DEADLINE_ACK_TIMEOUTS: u32 = 4;

/// Default for `--max-connections`: clients and slaves together. One more gets
/// `ERR too many connections`, or `-ERR max number of clients reached` if it speaks RESP
/// (see [`refuse`]), and is closed.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// How often the repair thread looks for keys with fewer live copies than a majority.
pub const REPAIR_INTERVAL: Duration = Duration::from_millis(500);

/// Replies buffered for one client before they are written even though more pipelined
/// requests wait: bounds a connection's memory when small requests ask for big values.
pub const MAX_PENDING_REPLY_BYTES: usize = 256 * 1024;

/// The most pipelined writes of one connection executed together (one log append, one send to
/// each slave): bounds what one connection holds in memory and in flight.
pub const MAX_PIPELINED_WRITES: usize = 1024;

/// The most bytes of values in one run of pipelined writes (or of an `MSET`'s writes), which
/// must all be acknowledged within the ACK timeout: one run of seven 1 MiB values made every
/// slave miss it in a debug build. A run always takes its first write, whatever its size.
pub const MAX_PIPELINED_BYTES: usize = crate::limits::MAX_VALUE;

/// Default primary address.
pub const DEFAULT_PRIMARY_ADDR: &str = "127.0.0.1:12345";

/// Default backup address.
pub const DEFAULT_BACKUP_ADDR: &str = "127.0.0.1:12346";

/// What a master is configured with (the command-line flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: String,
    /// Path of the write-ahead log.
    pub wal: PathBuf,
    /// The other master's address (the backup's, for a primary; the primary's, for a backup):
    /// given to clients in `ERR NOTPRIMARY`, probed at start, and the source of a failback.
    pub peer: Option<String>,
    /// When the log is fsynced.
    pub fsync: Fsync,
    /// How long to wait for one slave's ACK.
    pub ack_timeout: Duration,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Connection limit.
    pub max_connections: usize,
    /// The cluster secret (`--secret-file`): slaves and the other master must prove they know
    /// it (see [`crate::auth`]). `None` accepts any peer.
    pub secret: Option<crate::auth::Secret>,
    /// The client password (`--requirepass`); `None` lets every client in.
    pub requirepass: Option<crate::auth::Password>,
    /// Who answers reads (`--read-from`).
    pub read_from: ReadFrom,
    /// When the log is compacted in the background.
    pub compaction: compaction::Policy,
    /// Where to serve `/metrics` over HTTP (`--metrics-listen`); `None` serves no metrics.
    pub metrics_listen: Option<String>,
}

/// Who answers a client's read (`--read-from`). Both give the same guarantee: never an older
/// value than the last acknowledged write, never an unacknowledged one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    /// The master, from its committed copy, while it holds read leases from a majority: one
    /// hop, no slave work.
    #[default]
    Master,
    /// A slave that holds the committed version, as the original system did, checked against
    /// the master's copy (a stale slave is repaired); the master's copy answers if none does.
    Slaves,
}

impl ReadFrom {
    /// Its flag value.
    pub fn name(self) -> &'static str {
        match self {
            ReadFrom::Master => "master",
            ReadFrom::Slaves => "slaves",
        }
    }
}

impl std::fmt::Display for ReadFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ReadFrom {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<ReadFrom, String> {
        match s {
            "master" => Ok(ReadFrom::Master),
            "slaves" => Ok(ReadFrom::Slaves),
            other => Err(format!("'{other}' is not one of: master, slaves")),
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: DEFAULT_PRIMARY_ADDR.to_string(),
            wal: PathBuf::from("kv_store.log"),
            peer: None,
            fsync: Fsync::Everysec,
            ack_timeout: Duration::from_millis(DEFAULT_ACK_TIMEOUT_MS),
            heartbeat: Duration::from_millis(DEFAULT_HEARTBEAT_MS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            secret: None,
            requirepass: None,
            read_from: ReadFrom::Master,
            compaction: compaction::Policy::default(),
            metrics_listen: None,
        }
    }
}

/// Counters for `STATS`.
#[derive(Default)]
pub struct Stats {
    /// Acknowledged writes and deletes.
    pub writes: AtomicU64,
    /// Batches of writes of different connections logged and sent together (see
    /// `ops::Combiner`): against `writes`, how much combining there was.
    pub write_batches: AtomicU64,
    /// Answered reads.
    pub reads: AtomicU64,
    /// `ERR` replies of any kind.
    pub errors: AtomicU64,
}

/// What a master that is not serving copies, and how far behind it is (for `STATS`): a
/// backup follows the primary, and a primary follows the backup while it fails back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Following {
    /// The log file polled, or the master streamed from.
    pub source: String,
    /// What is known to be left to copy.
    pub lag: Lag,
}

/// How far a follower is behind its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lag {
    /// Bytes of the followed file not applied yet (a partial last line, or a damaged one).
    Bytes(u64),
    /// Records the streaming master had logged and this one has not applied yet.
    Records(u64),
}

/// State shared by all of a master's threads.
///
/// Lock order: `members` before `index` before `history`, and `members` before `welcomed`;
/// any of them before the log's own lock (an append under `members` records a new member).
/// Nothing takes `members` while holding `index`, `history` or `welcomed`. `state` (role and
/// epoch) takes its own lock only inside a transition, which takes no other lock.
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// The write-ahead log.
    pub wal: Wal,
    /// Role, epoch, supersession and authority: changed only through its transitions.
    pub state: RoleState,
    /// Keys.
    pub index: Mutex<Index>,
    /// Members and their connections.
    pub members: Mutex<Members>,
    /// Where each epoch of the log began.
    pub history: Mutex<History>,
    /// Background compaction of the log.
    pub compaction: compaction::Compactor,
    /// Counters.
    pub stats: Stats,
    /// Request counters and latency histograms for `/metrics` (see [`crate::metrics`]).
    pub metrics: crate::metrics::Metrics,
    connections: AtomicUsize,
    next_rid: AtomicU64,
    /// The id of the next client connection (`CLIENT ID`).
    next_client_id: AtomicU64,
    started: Instant,
    /// Keys whose newest logged write is not yet on a majority (their write timed out).
    pub repair_queue: Mutex<HashSet<String>>,
    /// Keys a slave holds a newer copy of than the log (a deposed master's unacknowledged
    /// write): written again in this epoch by the repair thread.
    pub stale_keys: Mutex<HashSet<String>>,
    /// Slaves welcomed into the current epoch: a slave claiming our epoch that we never
    /// welcomed was welcomed by another master using the same number.
    pub welcomed: Mutex<HashSet<String>>,
    /// Client writes between their role check and their reply (a hand-off waits for them).
    pub inflight: AtomicUsize,
    /// Writes of different connections waiting to be logged and sent together.
    pub combiner: ops::Combiner,
    /// What this master follows while it is not serving, and how far behind it is.
    pub following: Mutex<Option<Following>>,
}

impl Shared {
    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.state.epoch()
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.state.role()
    }

    /// A fresh request id for a slave request.
    pub fn rid(&self) -> u64 {
        self.next_rid.fetch_add(1, Ordering::Relaxed)
    }

    /// Microseconds since the master started (a monotonic clock for leases and heartbeats).
    pub fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// A slave told us a newer epoch exists: another master took over. Stop serving.
    pub fn step_down(&self, newer_epoch: u64) {
        if self.state.step_down(newer_epoch).is_some() {
            log::error!(
                "a slave has accepted epoch {newer_epoch}, not ours ({}): another master took over; stepping down",
                self.epoch()
            );
            for link in self.members.lock().live_links() {
                link.kill("stepping down");
            }
        }
    }

    fn not_primary(&self) -> Reply {
        let to = self.config.peer.clone().unwrap_or_else(|| "unknown".to_string());
        Reply::Err(ErrorReply::NotPrimary(to))
    }
}

/// A bound master, ready to run.
pub struct Master {
    shared: Arc<Shared>,
    listener: TcpListener,
    /// The `/metrics` endpoint's socket, until `run` starts serving it.
    metrics_listener: Option<TcpListener>,
}

impl Master {
    /// Binds the listening socket, replays the log and starts a new epoch.
    pub fn bind(config: Config) -> Result<Master> {
        // Listen first: a second master started by mistake on a taken port must stop before
        // it opens (and may truncate the torn tail of) a log another master is writing.
        let listener = TcpListener::bind(&config.listen)
            .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", config.listen)))?;
        let metrics_listener = config.metrics_listen.as_deref().map(metrics_http::bind).transpose()?;
        let mut index = Index::new();
        let mut members = Members::new();
        let mut history = History::new();
        let mut records = 0u64;
        let started = Instant::now();
        let wal = Wal::open(&config.wal, config.fsync, |seq, record| {
            records += 1;
            apply_record(&mut index, &mut members, &mut history, seq, record)
        })?;
        let epoch = history.epoch();
        log::info!(
            "replayed {records} log records from {} in {:?}: {} keys, {} members, epoch {epoch}",
            config.wal.display(),
            started.elapsed(),
            index.len(),
            members.count()
        );
        if let Ok(addr) = listener.local_addr() {
            crate::auth::warn_if_exposed(addr, config.secret.is_some());
        }
        let shared = Arc::new(Shared {
            compaction: compaction::Compactor::new(wal.bytes()),
            config,
            wal,
            state: RoleState::new(epoch),
            index: Mutex::new(index),
            members: Mutex::new(members),
            history: Mutex::new(history),
            stats: Stats::default(),
            metrics: crate::metrics::Metrics::new(),
            connections: AtomicUsize::new(0),
            next_rid: AtomicU64::new(1),
            next_client_id: AtomicU64::new(1),
            started: Instant::now(),
            repair_queue: Mutex::new(HashSet::new()),
            stale_keys: Mutex::new(HashSet::new()),
            welcomed: Mutex::new(HashSet::new()),
            inflight: AtomicUsize::new(0),
            combiner: ops::Combiner::default(),
            following: Mutex::new(None),
        });
        Ok(Master { shared, listener, metrics_listener })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// The address the `/metrics` endpoint is bound to, if `--metrics-listen` was given.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The shared state (for a controller).
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Serves forever. `controller` decides the role: it runs on its own thread (see
    /// [`replica::run_primary`] and [`crate::backup::run`]).
    pub fn run(mut self, controller: impl FnOnce(Arc<Shared>) + Send + 'static) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        thread::Builder::new().name("controller".into()).spawn(move || controller(shared))?;
        let shared = Arc::clone(&self.shared);
        thread::Builder::new().name("heartbeat".into()).spawn(move || slaves::heartbeat_loop(&shared))?;
        let shared = Arc::clone(&self.shared);
        thread::Builder::new().name("repair".into()).spawn(move || ops::repair_loop(&shared))?;
        let shared = Arc::clone(&self.shared);
        thread::Builder::new().name("compaction".into()).spawn(move || compaction::run(&shared))?;
        if let Some(listener) = self.metrics_listener.take() {
            metrics_http::start(listener, Arc::clone(&self.shared))?;
        }
        let refuser = refuse::Refuser::start()?;
        for stream in self.listener.incoming() {
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    log::warn!("accept failed: {e}");
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let open = self.shared.connections.fetch_add(1, Ordering::AcqRel) + 1;
            if open > self.shared.config.max_connections {
                self.shared.connections.fetch_sub(1, Ordering::AcqRel);
                refuser.refuse(stream);
                continue;
            }
            let shared = Arc::clone(&self.shared);
            let spawned = thread::Builder::new().name("conn".into()).spawn(move || {
                serve_connection(&shared, stream);
                shared.connections.fetch_sub(1, Ordering::AcqRel);
            });
            if let Err(e) = spawned {
                self.shared.connections.fetch_sub(1, Ordering::AcqRel);
                log::warn!("cannot start a connection thread: {e}");
            }
        }
        Ok(())
    }
}

/// Applies one log record to a master's state: what replay does at start, and what a standby
/// does with each record it copies from the other master. The one place a record's meaning is
/// decided. A write is stamped with the epoch of the last `EPOCH` record before it.
pub fn apply_record(
    index: &mut Index,
    members: &mut Members,
    history: &mut History,
    seq: u64,
    record: Record,
) -> Result<()> {
    let stamp = Stamp::new(history.epoch(), seq);
    match record {
        Record::Set { key, value } => index.replay(key, stamp, Some(value.into())),
        Record::Del { key } => index.replay(key, stamp, None),
        Record::Member { id } => {
            members.add(&id, seq).ok_or_else(|| Error::Corrupt(format!("too many members at seq {seq}")))?;
        }
        Record::Remove { id } => {
            members.remove(&id);
        }
        Record::Epoch { epoch } => {
            history.note(seq, Some(epoch));
            return Ok(());
        }
    }
    history.note(seq, None);
    Ok(())
}

/// Serves one connection: a slave, the other master, or (any other first line) a client.
fn serve_connection(shared: &Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = LineReader::new(read_half);
    // The write half, which slave readers may share to answer a write (see `ops::execute`).
    let client = Arc::new(ops::ClientOut::new(stream));
    let line = match reader.read_line() {
        Ok(Some(line)) => line,
        Ok(None) | Err(LineError::Io(_)) => return,
        Err(LineError::TooLong) => {
            let _ = client.stream().write_all(b"ERR line too long\r\n");
            return;
        }
    };
    if line == b"STREAM" || line.starts_with(b"STREAM ") {
        let held = match replica::Held::parse(line.get(7..).unwrap_or_default()) {
            Ok(held) => held,
            Err(e) => {
                let _ = client.stream().write_all(format!("ERR {e}\n").as_bytes());
                return;
            }
        };
        if admit(shared, client.stream(), &mut reader, PeerRole::Stream, crate::auth::MASTER_ID) {
            if let Some(stream) = ops::ClientOut::into_stream(client) {
                replica::serve_stream(shared, stream, held);
            }
        }
        return;
    }
    if line == b"HANDOFF" {
        if admit(shared, client.stream(), &mut reader, PeerRole::Handoff, crate::auth::MASTER_ID) {
            if let Some(stream) = ops::ClientOut::into_stream(client) {
                replica::serve_handoff(shared, stream);
            }
        }
        return;
    }
    if line.len() > 6 && line[..6].eq_ignore_ascii_case(b"SLAVE ") {
        match Registration::parse(line) {
            Ok(hello) => {
                // A slave's replies carry escaped values, longer than a client's lines.
                reader.set_limit(crate::limits::MAX_PEER_LINE);
                if admit(shared, client.stream(), &mut reader, PeerRole::Slave, &hello.id) {
                    if let Some(stream) = ops::ClientOut::into_stream(client) {
                        slaves::serve_slave(shared, stream, reader, hello);
                    }
                }
            }
            Err(e) => {
                let _ = client.stream().write_all(format!("ERR {e}\r\n").as_bytes());
            }
        }
        return;
    }
    let first = line.to_vec();
    session::Session::new(shared, reader, client).run(&first);
}

/// With a cluster secret, runs the server's side of the peer handshake ([`crate::auth`]) and
/// says whether the peer may go on; a refusal is logged (the peer was sent `ERR auth failed`).
/// Without a secret every peer is admitted and nothing is sent.
fn admit(
    shared: &Shared,
    stream: &TcpStream,
    reader: &mut LineReader<TcpStream>,
    role: PeerRole,
    id: &str,
) -> bool {
    let Some(secret) = &shared.config.secret else {
        return true;
    };
    match crate::auth::serve_handshake(secret, role, id, stream, reader) {
        Ok(()) => true,
        Err(why) => {
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            log::warn!("refused a {} connection ({id}) from {peer}: {why}", role.name());
            false
        }
    }
}
