//! Changing hands: following another master's log, taking over in a new epoch, and handing
//! back.
//!
//! A master that is not serving (a backup, or a primary catching up after a failure) keeps its
//! index as a copy of another master's log: it applies records one by one
//! ([`Shared::apply_record`]) and starts over when told the log was replaced
//! ([`Shared::reset_state`]). Records come from a file it polls ([`crate::wal::Follower`]) or
//! over TCP from the other master ([`serve_stream`] / [`follow_stream`]):
//!
//! ```text
//! -> STREAM
//! <- RESET                      drop your copy: the whole log follows
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
//! master can neither complete a write nor serve a read — it asks them for every entry newer
//! than its own copy (`SCAN`), keeps the newest stamp of each key, rewrites its log with that
//! state, and starts serving. Any write the old master acknowledged was on a majority, and two
//! majorities share a slave, so the scan sees it.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;

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
    /// Applies one record of a followed log to the index, members and epoch.
    pub fn apply_record(&self, seq: u64, record: Record) {
        let epoch = self.epoch();
        match record {
            Record::Set { key, value } => {
                self.index.lock().replay(key, Stamp::new(epoch, seq), Some(value.into()))
            }
            Record::Del { key } => self.index.lock().replay(key, Stamp::new(epoch, seq), None),
            Record::Member { id } => {
                self.members.lock().add(&id);
            }
            Record::Remove { id } => {
                let mut members = self.members.lock();
                if let Some(slot) = members.remove(&id) {
                    self.index.lock().forget_slot(slot);
                }
            }
            Record::Epoch { epoch } => {
                self.state.follow_epoch(epoch);
                self.index.lock().restamp(epoch);
            }
        }
        self.applied_seq.store(seq, Ordering::Release);
        self.state.mark_copy();
    }

    /// Forgets the followed copy: a fresh copy follows.
    pub fn reset_state(&self) {
        let mut members = self.members.lock();
        for link in members.live_links() {
            link.kill("state reset");
        }
        *members = super::members::Members::new();
        *self.index.lock() = super::index::Index::new();
        self.state.reset_copy();
        self.applied_seq.store(0, Ordering::Release);
    }

    /// The whole state as log records with increasing seqs: every key's newest write, then the
    /// members, then `EPOCH epoch`.
    fn snapshot_records(&self, epoch: u64) -> Vec<(u64, Record)> {
        let members = self.members.lock().all();
        let snapshot = self.index.lock().snapshot(self.wal.last_seq());
        let mut seq = snapshot.last().map_or(0, |e| e.0).max(self.wal.last_seq());
        let mut records: Vec<(u64, Record)> = snapshot
            .into_iter()
            .map(|(s, key, value)| {
                let record = match value {
                    Some(v) => Record::Set { key, value: v.to_vec() },
                    None => Record::Del { key },
                };
                (s, record)
            })
            .collect();
        for (_, m) in members {
            seq += 1;
            records.push((seq, Record::Member { id: m.id }));
        }
        records.push((seq + 1, Record::Epoch { epoch }));
        records
    }
}

/// Sends this master's log to a follower, from its start, then as it grows (`STREAM`).
pub fn serve_stream(shared: &Arc<Shared>, stream: TcpStream) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    log::info!("streaming the log to {peer}");
    let mut follower = Follower::new(shared.wal.path());
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
            follower.poll(&mut || out.borrow_mut().extend_from_slice(b"RESET\n"), &mut |seq, record| {
                wal::encode(seq, &record, &mut out.borrow_mut())
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
    let (stream, mut reader) =
        open_master_link(addr, b"STREAM\n", crate::auth::PeerRole::Stream, shared.config.secret.as_ref())?;
    stream.set_read_timeout(Some(STREAM_SILENCE))?;
    loop {
        let line = match reader.read_line() {
            Ok(Some(line)) => line,
            Ok(None) => return Err(Error::Unavailable(format!("{addr} closed the log stream"))),
            Err(LineError::TooLong) => return Err(Error::Protocol("log stream line too long".into())),
            Err(LineError::Io(e)) => return Err(Error::Io(e)),
        };
        if line == b"RESET" {
            shared.reset_state();
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
            shared.apply_record(seq, record);
        }
    }
}

/// Connects to the master at `addr`, sends `first_line` (`STREAM` or `HANDOFF`) and, with a
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
        let applied = shared.applied_seq.load(Ordering::Acquire);
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
    /// The caller's abort condition held (the other master serves after all), or a hand-off
    /// made this master a standby.
    Aborted,
    /// The log could not be rewritten.
    Log(Error),
}

/// Becomes primary in `epoch`: accepts slaves into it, waits for a majority, recovers newer
/// writes from them, rewrites the log with the result, and starts serving. `abort` is asked
/// while waiting for the majority; when it says so, the takeover is given up (before anything
/// was recovered or written).
pub fn takeover(
    shared: &Arc<Shared>,
    epoch: u64,
    abort: &mut dyn FnMut() -> bool,
) -> std::result::Result<(), TakeoverError> {
    let started = Instant::now();
    {
        let members = shared.members.lock();
        for link in members.live_links() {
            link.kill("starting a new epoch");
        }
        shared.welcomed.lock().clear();
        shared.state.begin_takeover(epoch);
    }
    log::warn!("taking over: epoch {epoch}, waiting for a majority of the members to join");
    let recovered = loop {
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
            None => break 0,
            Some(need) if joined.len() >= need => {
                // Scan everything, not just what is newer than our log: the other master's seqs
                // may overlap ours, and stamps (epoch first) decide what is newer.
                if let Some(n) = scan(shared, &joined, need, 0, epoch) {
                    break n;
                }
            }
            Some(_) => {}
        }
        thread::sleep(Duration::from_millis(10));
    };
    let records = {
        shared.index.lock().restamp(epoch);
        shared.snapshot_records(epoch)
    };
    if let Err(e) = shared.wal.rewrite(&mut records.into_iter()) {
        shared.state.give_up();
        return Err(TakeoverError::Log(e));
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
        super::slaves::start_catch_up(shared, link);
    }
    log::warn!(
        "now primary in epoch {epoch} after {:?}: {} keys, {recovered} writes recovered from slaves, {} slaves connected",
        started.elapsed(),
        shared.index.lock().len(),
        links.len()
    );
    Ok(())
}

/// Leaves the candidate role: the slaves that joined are let go (they look for a master again).
fn give_up(shared: &Shared) {
    shared.state.give_up();
    for link in shared.members.lock().live_links() {
        link.kill("takeover given up");
    }
}

/// Asks `links` for every entry above `from_seq` and merges the newest of each key into the
/// index. Returns how many entries were taken, or `None` if fewer than `need` answered.
fn scan(
    shared: &Shared,
    links: &[Arc<super::link::Link>],
    need: usize,
    from_seq: u64,
    epoch: u64,
) -> Option<usize> {
    let (tx, rx) = unbounded();
    let mut asked = Vec::new();
    for link in links {
        let rid = shared.rid();
        if link.send(rid, epoch, &Command::Scan { from_seq }, Some(&tx)) {
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
    if finished < need {
        return None;
    }
    let mut index = shared.index.lock();
    let mut taken = 0;
    let mut max_seq = 0;
    for (key, stamp, value) in items {
        max_seq = max_seq.max(stamp.seq);
        if index.recover(&key, stamp, value.map(Into::into)) {
            taken += 1;
        }
    }
    drop(index);
    shared.wal.advance_seq(max_seq);
    Some(taken)
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
    use super::At;

    #[test]
    fn an_at_line_parses_only_when_whole() {
        let at = At::parse(b"17 3 primary").unwrap();
        assert_eq!((at.seq, at.epoch), (17, 3));
        for bad in [&b""[..], b"17", b"x 3 primary", b"17 y primary", b"-1 3 primary", b"\xff 3"] {
            assert!(At::parse(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
