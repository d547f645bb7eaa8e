//! Taking over in a new epoch: see [`takeover`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;

use crate::master::history::ScanBounds;
use crate::master::index::Value;
use crate::master::{Role, Shared};
use crate::peer::{Command, Outcome, Stamp};
use crate::quorum::majority;
use crate::wal::Record;
use crate::Error;

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
/// see [`History::scan_bounds`](crate::master::history::History::scan_bounds)), starts the epoch in
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
        if let Err(why) = crate::master::ops::relog(shared, &joined, need, epoch, key, value) {
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
    *shared.following.lock() = None;
    let links = shared.members.lock().live_links();
    for link in &links {
        crate::master::slaves::start_resync(shared, link);
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
pub(super) type Found = (String, Stamp, Option<Vec<u8>>);

/// Of the entries the slaves returned, the newest of each key, where it is newer than what the
/// log has.
pub(super) fn newest_unknown(shared: &Shared, items: Vec<Found>) -> Vec<(String, Value)> {
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
pub(super) fn give_up(shared: &Shared) {
    shared.state.give_up();
    for link in shared.members.lock().live_links() {
        link.kill("takeover given up");
    }
}

/// Asks `links` for the entries a log within `bounds` may lack. Returns them, or `None` if
/// fewer than `need` answered.
pub(super) fn scan(
    shared: &Shared,
    links: &[Arc<crate::master::link::Link>],
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
