//! Changing hands: following another master's log, taking over in a new epoch, and handing
//! back.
//!
//! A master that is not serving (a backup, or a primary catching up after a failure) keeps its
//! log and index a copy of another master's log: it copies records one by one with their seqs
//! ([`Shared::apply_record`]) and starts over when told the log is another history
//! ([`Shared::reset_state`]). Records come from a file it polls ([`crate::wal::Follower`]) or
//! over TCP from the other master ([`serve_stream`] / [`follow_stream`]):
//!
//! ```text
//! -> STREAM [<epoch> <epoch-seq> <last-seq>]
//!                               what the follower holds: its log's last epoch, the seq of that
//!                               epoch's EPOCH record, and its last record
//! <- RESET                      drop your copy: the whole log follows (unless the follower's
//!                               log is a prefix of the sender's: then only what is above
//!                               <last-seq> follows, without RESET)
//! <- <log line>                 one record, exactly as in the log file
//! <- AT <seq> <epoch> <role>    heartbeat: what the sender has logged so far
//! ```
//!
//! A hand-off (`HANDOFF` as a connection's first line) makes a primary stop serving: it
//! switches to standby, waits for the writes in flight, and answers `HANDOFF <seq> <epoch>`,
//! the last seq it logged. Everything it ever acknowledged is at or below that seq.
//!
//! [`takeover`] makes a master primary in a new epoch. It accepts slaves into the epoch (each
//! waits out the lease it gave the old master), and once a majority has joined — so the old
//! master can neither complete a write nor serve a read — it asks them for the entries its log
//! may lack (`SCAN`, bounded by the writes that were in flight), appends its `EPOCH` record,
//! logs and replicates the recovered writes again, and starts serving. Any write the old master
//! acknowledged was on a majority, and two majorities share a slave, so the scan sees it.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;

use super::history::ScanBounds;
use super::index::Value;
use super::{Role, Shared};
use crate::framing::{LineError, LineReader};
use crate::peer::{Command, Outcome, Stamp};
use crate::protocol::truncate_for_display;
use crate::quorum::majority;
use crate::wal::{self, Follower, Record};
use crate::wire::{fields, number, split_word};
use crate::{Error, Result};

/// How often a log stream's sender polls its log file for new records.
pub const STREAM_POLL: Duration = Duration::from_millis(5);

/// How often a log stream's sender sends an `AT` heartbeat.
pub const STREAM_HEARTBEAT: Duration = Duration::from_millis(100);

/// A stream silent for this long is considered dead by its receiver.
pub const STREAM_SILENCE: Duration = Duration::from_secs(2);

/// How long a hand-off waits for the writes in flight to finish (each ends within a write
/// deadline, so this is a safety net).
pub const HANDOFF_DRAIN: Duration = Duration::from_secs(10);

/// How long a scan of one slave may take during a takeover.
pub const SCAN_TIMEOUT: Duration = Duration::from_secs(10);

/// The first epoch above `known` that belongs to a master of this `parity` (1 for the primary,
/// 0 for the backup), so the two can never pick the same epoch.
pub fn next_epoch(known: u64, parity: u64) -> u64 {
    let next = known + 1;
    if next % 2 == parity % 2 {
        next
    } else {
        next + 1
    }
}

impl Shared {
    /// Applies one record copied from the other master's log: to this master's own log (with
    /// the same seq, so the two logs agree) and to its state. Both under the state's locks, so
    /// a compaction's snapshot never sees the record in the log but not in the state.
    pub fn apply_record(&self, seq: u64, record: Record) -> Result<()> {
        let mut members = self.members.lock();
        let mut index = self.index.lock();
        let mut history = self.history.lock();
        self.wal.append_at(seq, &record)?;
        let epoch = match &record {
            Record::Epoch { epoch } => Some(*epoch),
            _ => None,
        };
        super::apply_record(&mut index, &mut members, &mut history, seq, record)?;
        drop((history, index, members));
        if let Some(epoch) = epoch {
            self.state.follow_epoch(epoch);
        }
        self.state.mark_copy();
        Ok(())
    }

    /// Forgets the copied state and empties this master's log: a fresh copy follows.
    pub fn reset_state(&self) -> Result<()> {
        let mut members = self.members.lock();
        for link in members.live_links() {
            link.kill("state reset");
        }
        let mut index = self.index.lock();
        let mut history = self.history.lock();
        self.wal.reset()?;
        *members = super::members::Members::new();
        *index = super::index::Index::new();
        *history = super::history::History::new();
        drop((history, index, members));
        self.state.reset_copy();
        Ok(())
    }
}

/// What a follower says it holds when it asks for a stream: see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Its log's last epoch.
    pub epoch: u64,
    /// The seq of that epoch's `EPOCH` record.
    pub epoch_seq: u64,
    /// The seq of its last record.
    pub last: u64,
}

impl Held {
    /// Parses what follows `STREAM`: nothing (a follower that holds nothing) or three numbers.
    pub fn parse(rest: &[u8]) -> std::result::Result<Option<Held>, String> {
        match fields(rest).as_slice() {
            [] => Ok(None),
            [e, s, l] => Ok(Some(Held { epoch: number(e)?, epoch_seq: number(s)?, last: number(l)? })),
            _ => Err("expected: STREAM [<epoch> <epoch-seq> <last-seq>]".into()),
        }
    }

    /// What `shared`'s log holds, if it has started an epoch.
    fn of(shared: &Shared) -> Option<Held> {
        let history = shared.history.lock();
        let last = history.epochs().last()?;
        Some(Held { epoch: last.epoch, epoch_seq: last.seq, last: shared.wal.last_record() })
    }
}

/// Whether a follower holding `held` holds a prefix of the log whose history is `history` and
/// whose last record is `log_last`: the same `EPOCH` record, and nothing beyond where that
/// epoch ends here (beyond it, the follower's records are not this log's).
pub fn is_prefix(history: &super::history::History, log_last: u64, held: Held) -> bool {
    let epochs = history.epochs();
    let Some(i) = epochs.iter().position(|e| e.epoch == held.epoch && e.seq == held.epoch_seq) else {
        return false;
    };
    let end = epochs.get(i + 1).map_or(log_last, |next| next.before);
    held.last <= end
}

/// Sends this master's log to a follower, then as it grows (`STREAM`): from its start, or
/// from above what the follower holds when that is a prefix of this log.
pub fn serve_stream(shared: &Arc<Shared>, stream: TcpStream, held: Option<Held>) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let from =
        held.filter(|h| is_prefix(&shared.history.lock(), shared.wal.last_record(), *h)).map(|h| h.last);
    let mut follower = match from {
        Some(seq) => {
            log::info!("streaming the log to {peer} from above seq {seq}, which it holds");
            Follower::after(shared.wal.path(), seq)
        }
        None => {
            log::info!(
                "streaming the log to {peer}, all of it (it holds {held:?}, not a prefix of this log)"
            );
            if (&stream).write_all(b"RESET\n").is_err() {
                return;
            }
            Follower::new(shared.wal.path())
        }
    };
    let mut out = Vec::with_capacity(64 * 1024);
    let mut last_heartbeat = Instant::now() - STREAM_HEARTBEAT;
    loop {
        // Only a log that is this master's state is worth copying: a master that is itself
        // following the other one has a log that may be stale.
        if !shared.state.is_authoritative() {
            let _ =
                (&stream).write_all(b"ERR this master is following the other; its log is not its state\n");
            log::info!("stopped streaming the log to {peer}: this master is not authoritative");
            return;
        }
        let polled = {
            let out = std::cell::RefCell::new(&mut out);
            let mut reset = || {
                out.borrow_mut().extend_from_slice(b"RESET\n");
                Ok(())
            };
            follower.poll(&mut reset, &mut |seq, record| {
                wal::encode(seq, &record, &mut out.borrow_mut());
                Ok(())
            })
        };
        if let Err(e) = polled {
            log::error!("cannot stream the log to {peer}: {e}");
            return;
        }
        if last_heartbeat.elapsed() >= STREAM_HEARTBEAT {
            let at = format!("AT {} {} {}\n", follower.last_seq(), shared.epoch(), shared.role().name());
            out.extend_from_slice(at.as_bytes());
            last_heartbeat = Instant::now();
        }
        if !out.is_empty() {
            if let Err(e) = (&stream).write_all(&out) {
                log::info!("log stream to {peer} ended: {e}");
                return;
            }
            out.clear();
        }
        thread::sleep(STREAM_POLL);
    }
}

/// Stops serving and tells the caller the last seq this master logged (`HANDOFF`).
pub fn serve_handoff(shared: &Arc<Shared>, stream: TcpStream) {
    let was = shared.state.hand_off();
    let deadline = Instant::now() + HANDOFF_DRAIN;
    while shared.inflight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    for link in shared.members.lock().live_links() {
        link.kill("handing off to the other master");
    }
    let last = shared.wal.last_seq();
    log::warn!("handed off (was {}): last logged seq {last}, epoch {}", was.name(), shared.epoch());
    let _ = (&stream).write_all(format!("HANDOFF {last} {}\n", shared.epoch()).as_bytes());
}

/// What a stream's `AT` heartbeat says.
#[derive(Debug, Clone, Copy, Default)]
pub struct At {
    /// The sender's last logged seq.
    pub seq: u64,
    /// The sender's epoch.
    pub epoch: u64,
}

impl At {
    /// Parses what follows `AT `: `<seq> <epoch> <role>`. `None` unless both numbers are there
    /// and valid: a damaged line must not read as seq 0 of epoch 0.
    pub fn parse(rest: &[u8]) -> Option<At> {
        let (seq, rest) = split_word(rest);
        let (epoch, _role) = split_word(rest?);
        Some(At { seq: number(seq).ok()?, epoch: number(epoch).ok()? })
    }
}

/// Applies the log streamed by the master at `addr` to `shared` until `keep_going` returns
/// false (it is called after every `AT` heartbeat with what it said) or the stream fails.
pub fn follow_stream(shared: &Shared, addr: &str, mut keep_going: impl FnMut(At) -> bool) -> Result<()> {
    let first = match Held::of(shared) {
        Some(h) => format!("STREAM {} {} {}\n", h.epoch, h.epoch_seq, h.last),
        None => "STREAM\n".to_string(),
    };
    let (stream, mut reader) = open_master_link(
        addr,
        first.as_bytes(),
        crate::auth::PeerRole::Stream,
        shared.config.secret.as_ref(),
    )?;
    stream.set_read_timeout(Some(STREAM_SILENCE))?;
    loop {
        let line = match reader.read_line() {
            Ok(Some(line)) => line,
            Ok(None) => return Err(Error::Unavailable(format!("{addr} closed the log stream"))),
            Err(LineError::TooLong) => return Err(Error::Protocol("log stream line too long".into())),
            Err(LineError::Io(e)) => return Err(Error::Io(e)),
        };
        if line == b"RESET" {
            shared.reset_state()?;
        } else if let Some(rest) = line.strip_prefix(b"AT ") {
            let at = At::parse(rest).ok_or_else(|| {
                Error::Protocol(format!("log stream: malformed AT line '{}'", truncate_for_display(line)))
            })?;
            if !keep_going(at) {
                return Ok(());
            }
        } else if line.starts_with(b"ERR ") {
            return Err(Error::Unavailable(String::from_utf8_lossy(line).into_owned()));
        } else {
            let (seq, record) = wal::decode(line).map_err(|e| Error::Protocol(format!("log stream: {e}")))?;
            shared.apply_record(seq, record)?;
        }
    }
}

/// Connects to the master at `addr`, sends `first_line` (`STREAM ...` or `HANDOFF`) and, with a
/// cluster secret, proves to be a master in `role` (allowing [`crate::auth::AUTH_TIMEOUT`] for
/// the handshake).
fn open_master_link(
    addr: &str,
    first_line: &[u8],
    role: crate::auth::PeerRole,
    secret: Option<&crate::auth::Secret>,
) -> Result<(TcpStream, LineReader<TcpStream>)> {
    let stream = crate::client::connect(addr)?;
    (&stream).write_all(first_line)?;
    let mut reader = LineReader::with_limit(stream.try_clone()?, crate::limits::MAX_PEER_LINE);
    if let Some(secret) = secret {
        stream.set_read_timeout(Some(crate::auth::AUTH_TIMEOUT))?;
        crate::auth::peer_handshake(secret, role, crate::auth::MASTER_ID, &stream, &mut reader)?;
    }
    Ok((stream, reader))
}

/// Asks the master at `addr` to hand off, proving the cluster secret first if there is one;
/// returns the last seq it logged and its epoch.
pub fn request_handoff(addr: &str, secret: Option<&crate::auth::Secret>) -> Result<At> {
    let (stream, mut reader) = open_master_link(addr, b"HANDOFF\n", crate::auth::PeerRole::Handoff, secret)?;
    stream.set_read_timeout(Some(HANDOFF_DRAIN + STREAM_SILENCE))?;
    let line = match reader.read_line() {
        Ok(Some(line)) => line,
        _ => return Err(Error::Unavailable(format!("{addr} did not answer the hand-off"))),
    };
    // `HANDOFF <last-seq> <epoch>`: the same two numbers as an `AT` line, without a role.
    let at = match fields(line).as_slice() {
        [b"HANDOFF", seq, epoch] => number(seq).ok().zip(number(epoch).ok()),
        _ => None,
    };
    at.map(|(seq, epoch)| At { seq, epoch })
        .ok_or_else(|| Error::Protocol(format!("unexpected hand-off answer: {}", truncate_for_display(line))))
}

/// Copies the whole state of the master at `addr`, then makes it hand off, and returns once
/// every write it logged is applied here. Returns its epoch.
pub fn sync_from(shared: &Shared, addr: &str) -> Result<u64> {
    log::info!("catching up from {addr} over TCP");
    let mut handoff: Option<At> = None;
    let mut failure = None;
    let mut remote_epoch = 0;
    follow_stream(shared, addr, |at| {
        remote_epoch = remote_epoch.max(at.epoch);
        let applied = shared.wal.last_seq();
        match handoff {
            None if applied >= at.seq => match request_handoff(addr, shared.config.secret.as_ref()) {
                Ok(h) => {
                    log::info!("{addr} handed off at seq {} (epoch {})", h.seq, h.epoch);
                    remote_epoch = remote_epoch.max(h.epoch);
                    handoff = Some(h);
                    applied < h.seq
                }
                Err(e) => {
                    failure = Some(e);
                    false
                }
            },
            Some(h) => applied < h.seq,
            None => true,
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(remote_epoch)
}

/// Why a takeover did not complete.
#[derive(Debug)]
pub enum TakeoverError {
    /// A slave had joined an epoch at least as new as ours under another master.
    Stale(u64),
    /// The caller's abort condition held (the other master serves after all), a hand-off made
    /// this master a standby, or the writes recovered could not be replicated.
    Aborted,
    /// The log could not be appended to.
    Log(Error),
}

/// Becomes primary in `epoch`: accepts slaves into it, waits for a majority, asks them for the
/// writes this master's log may lack (those that were in flight when the last master stopped,
/// see [`History::scan_bounds`](super::history::History::scan_bounds)), starts the epoch in
/// the log, logs and replicates the writes it recovered, and starts serving. Nothing that did
/// not change is rescanned, restamped, rewritten or re-sent: the time this takes does not
/// depend on the size of the data. The slaves are resynced in the background afterwards, each
/// with what it lacks.
///
/// `abort` is asked while waiting for the majority; when it says so, the takeover is given up
/// (before anything was recovered or written).
pub fn takeover(
    shared: &Arc<Shared>,
    epoch: u64,
    abort: &mut dyn FnMut() -> bool,
) -> std::result::Result<(), TakeoverError> {
    let started = Instant::now();
    // Fixed before any slave is accepted: a member registering logs a record of its own.
    let log_end = shared.wal.last_record();
    let bounds = shared.history.lock().scan_bounds(log_end);
    {
        let members = shared.members.lock();
        for link in members.live_links() {
            link.kill("starting a new epoch");
        }
        shared.welcomed.lock().clear();
        shared.state.begin_takeover(epoch);
    }
    log::warn!("taking over: epoch {epoch}, waiting for a majority of the members to join");
    let (items, joined, need) = loop {
        if let Some(newer) = shared.state.superseded() {
            give_up(shared);
            return Err(TakeoverError::Stale(newer));
        }
        if shared.role() != Role::Candidate || abort() {
            give_up(shared);
            return Err(TakeoverError::Aborted);
        }
        let (count, joined) = {
            let members = shared.members.lock();
            let now = shared.now_us();
            let joined: Vec<_> = members
                .live_links()
                .into_iter()
                .filter(|l| l.lease_until_us.load(Ordering::Acquire) > now)
                .collect();
            (members.count(), joined)
        };
        match majority(count) {
            None => break (Vec::new(), joined, 0),
            Some(need) if joined.len() >= need => {
                if let Some(items) = scan(shared, &joined, need, bounds, epoch) {
                    break (items, joined, need);
                }
            }
            Some(_) => {}
        }
        thread::sleep(Duration::from_millis(10));
    };
    let asked = items.len();
    // The epoch starts above every seq seen anywhere, so its writes are newer than any copy of
    // an older epoch's, whatever its seq.
    shared.wal.advance_seq(items.iter().map(|(_, stamp, _)| stamp.seq).max().unwrap_or(0));
    {
        let mut history = shared.history.lock();
        let seq = match shared.wal.append(&Record::Epoch { epoch }) {
            Ok(seq) => seq,
            Err(e) => {
                give_up(shared);
                return Err(TakeoverError::Log(e));
            }
        };
        history.begin(epoch, seq, bounds.seq);
    }
    let recovered = newest_unknown(shared, items);
    let count = recovered.len();
    for (key, value) in recovered {
        // Acknowledged by the old master, perhaps: it must be on a majority again before a read
        // can be answered, so it is written anew in this epoch, through the write path.
        if let Err(why) = super::ops::relog(shared, &joined, need, epoch, key, value) {
            log::warn!("cannot replicate a recovered write: {why}; giving the takeover up");
            give_up(shared);
            return Err(TakeoverError::Aborted);
        }
    }
    if !shared.state.complete_takeover(epoch) {
        // Stepped down, or learnt of a newer epoch, while recovering: never serve.
        give_up(shared);
        return Err(match shared.state.superseded() {
            Some(newer) => TakeoverError::Stale(newer),
            None => TakeoverError::Aborted,
        });
    }
    let links = shared.members.lock().live_links();
    for link in &links {
        super::slaves::start_resync(shared, link);
    }
    log::warn!(
        "now primary in epoch {epoch} after {:?}: {} keys, {count} writes recovered from slaves ({asked} entries \
         asked for above seq {} of epoch {}), {} slaves connected",
        started.elapsed(),
        shared.index.lock().len(),
        bounds.seq,
        bounds.epoch,
        links.len()
    );
    Ok(())
}

/// An entry a slave returned to a `SCAN`: key, stamp, value (`None`: a tombstone).
type Found = (String, Stamp, Option<Vec<u8>>);

/// Of the entries the slaves returned, the newest of each key, where it is newer than what the
/// log has.
fn newest_unknown(shared: &Shared, items: Vec<Found>) -> Vec<(String, Value)> {
    let mut newest: std::collections::HashMap<String, (Stamp, Option<Vec<u8>>)> = Default::default();
    for (key, stamp, value) in items {
        match newest.get(&key) {
            Some((s, _)) if *s >= stamp => {}
            _ => {
                newest.insert(key, (stamp, value));
            }
        }
    }
    let index = shared.index.lock();
    let mut recovered: Vec<(Stamp, String, Value)> = newest
        .into_iter()
        .filter(|(key, (stamp, _))| index.is_newer(key, *stamp))
        .map(|(key, (stamp, value))| (stamp, key, value.map(Into::into)))
        .collect();
    // In the order the old masters wrote them, so the new seqs keep that order.
    recovered.sort_unstable_by_key(|e| e.0);
    recovered.into_iter().map(|(_, key, value)| (key, value)).collect()
}

/// Leaves the candidate role: the slaves that joined are let go (they look for a master again).
fn give_up(shared: &Shared) {
    shared.state.give_up();
    for link in shared.members.lock().live_links() {
        link.kill("takeover given up");
    }
}

/// Asks `links` for the entries a log within `bounds` may lack. Returns them, or `None` if
/// fewer than `need` answered.
fn scan(
    shared: &Shared,
    links: &[Arc<super::link::Link>],
    need: usize,
    bounds: ScanBounds,
    epoch: u64,
) -> Option<Vec<Found>> {
    let (tx, rx) = unbounded();
    let mut asked = Vec::new();
    let command = Command::Scan { epoch: bounds.epoch, seq: bounds.seq, older_seq: bounds.older_seq };
    for link in links {
        let rid = shared.rid();
        if link.send(rid, epoch, &command, Some(&tx)) {
            asked.push((Arc::clone(link), rid));
        }
    }
    let deadline = Instant::now() + SCAN_TIMEOUT;
    let mut finished = 0;
    let mut items = Vec::new();
    while finished < asked.len() {
        let Ok(ack) = rx.recv_deadline(deadline) else { break };
        match ack.outcome {
            Outcome::Item { stamp, key, value } => items.push((key, stamp, value)),
            Outcome::End(_) => finished += 1,
            Outcome::Fenced(newer) => {
                shared.state.note_superseded(newer);
                finished += 1;
            }
            other => {
                log::warn!("scan of slot {} failed: {other:?}", ack.slot);
                finished += 1;
            }
        }
    }
    for (link, rid) in &asked {
        link.forget(*rid);
    }
    (finished >= need).then_some(items)
}

/// What a master says of itself in `STATS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    /// `primary`, `candidate` or `standby`.
    pub role: String,
    /// Its epoch.
    pub epoch: u64,
    /// Its state is its own log's (see [`RoleState::is_authoritative`](super::RoleState::is_authoritative)).
    pub authoritative: bool,
    /// Its live, caught-up slaves.
    pub slaves: usize,
    /// Its members.
    pub members: usize,
}

impl PeerState {
    /// True when it is primary with a majority of its members connected: it can serve.
    pub fn serving(&self) -> bool {
        self.role == "primary" && crate::quorum::is_majority(self.slaves, self.members)
    }
}

/// Asks the master at `addr` for its role and epoch (`STATS`, after `AUTH` when the cluster has
/// a client password); `None` if it does not answer.
pub fn probe(addr: &str, timeout: Duration, password: Option<&crate::auth::Password>) -> Option<PeerState> {
    let mut c = crate::client::Client::new(addr, None);
    c.set_timeout(timeout);
    if let Some(password) = password {
        c.set_password(password.as_bytes());
    }
    let rows = c.stats().ok()?;
    let get = |name: &str| rows.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    Some(PeerState {
        role: get("role")?,
        epoch: get("epoch")?.parse().ok()?,
        authoritative: get("authoritative").as_deref() == Some("1"),
        slaves: get("slaves").and_then(|v| v.parse().ok()).unwrap_or(0),
        members: get("members").and_then(|v| v.parse().ok()).unwrap_or(0),
    })
}

/// How often a primary asks its backup whether it has taken over (a primary that was paused
/// or cut off learns it was superseded even if no slave talks to it any more).
pub const PEER_WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// Returns when this master is no longer primary: it stepped down, or its peer serves in a
/// newer epoch (then it steps down here).
fn watch_peer(shared: &Shared) {
    while shared.role() == Role::Primary {
        thread::sleep(PEER_WATCH_INTERVAL);
        let Some(peer) = shared.config.peer.as_deref() else { continue };
        if let Some(p) = probe(peer, PEER_WATCH_INTERVAL, shared.config.requirepass.as_ref()) {
            if p.role == "primary" && p.epoch > shared.epoch() {
                shared.step_down(p.epoch);
            }
        }
    }
}

/// How long a primary waits between attempts to reach its backup while it cannot serve.
pub const RETRY_PAUSE: Duration = Duration::from_millis(300);

/// The primary's controller: at start (and after being superseded) it asks the backup whether
/// it has served in an epoch this log does not know; if so it catches up from it over TCP and
/// takes the writes back, otherwise it takes over from its own log (plus what a majority of
/// slaves holds). Superseded while the backup is unreachable, it waits: its log may lack writes
/// only the backup's log has.
pub fn run_primary(shared: Arc<Shared>) {
    loop {
        let superseded = shared.state.superseded();
        let mut known = shared.epoch().max(superseded.unwrap_or(0));
        let stale = superseded.is_some();
        if let Some(peer) = shared.config.peer.clone() {
            match probe(&peer, Duration::from_secs(1), shared.config.requirepass.as_ref()) {
                Some(p) if p.authoritative && (p.epoch > shared.epoch() || p.role == "primary") => {
                    match sync_from(&shared, &peer) {
                        Ok(epoch) => known = known.max(epoch),
                        Err(e) => {
                            log::warn!("catching up from {peer} failed: {e}; retrying");
                            thread::sleep(RETRY_PAUSE);
                            continue;
                        }
                    }
                }
                Some(p) => known = known.max(p.epoch),
                None if stale => {
                    log::warn!("superseded, and the backup {peer} is unreachable: not serving until it is");
                    thread::sleep(RETRY_PAUSE);
                    continue;
                }
                None => log::info!("backup {peer} unreachable; starting from this master's log"),
            }
        }
        // Give up if the backup turns out to be serving (a cut between the two masters that
        // healed, or a primary restarted while it was cut off): its slaves will not come back
        // to a candidate, and the way back is the failback at the top of this loop.
        let mut last_check = Instant::now();
        let mut abort = || {
            let Some(peer) = shared.config.peer.as_deref() else { return false };
            if last_check.elapsed() < PEER_WATCH_INTERVAL {
                return false;
            }
            last_check = Instant::now();
            let serving = probe(peer, PEER_WATCH_INTERVAL, shared.config.requirepass.as_ref())
                .filter(PeerState::serving);
            if let Some(p) = &serving {
                log::warn!(
                    "the backup {peer} serves in epoch {} with a majority: giving the takeover up",
                    p.epoch
                );
            }
            serving.is_some()
        };
        match takeover(&shared, next_epoch(known, 1), &mut abort) {
            Ok(()) => {
                watch_peer(&shared);
                log::warn!("no longer primary; looking for the newer master");
            }
            Err(TakeoverError::Stale(newer)) => {
                log::warn!("a slave has joined epoch {newer} elsewhere: this master's log is stale");
            }
            Err(TakeoverError::Aborted) => log::warn!("takeover given up"),
            Err(TakeoverError::Log(e)) => {
                log::error!("cannot rewrite the log: {e}; retrying");
                thread::sleep(RETRY_PAUSE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::history::History;

    #[test]
    fn an_at_line_parses_only_when_whole() {
        let at = At::parse(b"17 3 primary").unwrap();
        assert_eq!((at.seq, at.epoch), (17, 3));
        for bad in [&b""[..], b"17", b"x 3 primary", b"17 y primary", b"-1 3 primary", b"\xff 3"] {
            assert!(At::parse(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_follower_is_streamed_only_what_is_above_a_prefix_it_holds() {
        // The sender: epoch 1 from seq 1, epoch 2 taken over at 15 (its log had 10 of epoch 1).
        let mut h = History::new();
        h.note(1, Some(1));
        h.begin(2, 15, 10);
        let held = |epoch, epoch_seq, last| Held { epoch, epoch_seq, last };
        assert!(is_prefix(&h, 30, held(2, 15, 20)), "its own epoch");
        assert!(is_prefix(&h, 30, held(1, 1, 10)), "the old primary, caught up to the takeover");
        assert!(!is_prefix(&h, 30, held(1, 1, 12)), "it logged past what the takeover kept");
        assert!(!is_prefix(&h, 30, held(1, 2, 5)), "another epoch 1, begun elsewhere");
        assert!(!is_prefix(&h, 30, held(3, 40, 41)), "an epoch this log never saw");
        assert_eq!(Held::parse(b"").unwrap(), None);
        assert_eq!(Held::parse(b"2 15 20").unwrap(), Some(held(2, 15, 20)));
        assert!(Held::parse(b"2 15").is_err() && Held::parse(b"2 x 3").is_err());
    }
}
