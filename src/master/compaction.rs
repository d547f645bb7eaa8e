//! Online compaction of the master's log: when it has grown enough since the last compaction,
//! or when an operator sends `COMPACT`, the log is replaced by the state it describes plus what
//! was appended meanwhile ([`crate::wal::Wal::compact`]), while reads and writes go on.
//!
//! The snapshot is built from memory: every key's newest write (tombstones included, so a
//! slave resynced from a position before a delete still learns of it), every member's `MEMBER`
//! record and every `EPOCH` record, each with the seq it has in the log. The new log is a
//! subsequence of the old one, so it replays to the same state, stamps included, and a
//! follower positioned anywhere in the old log can go on in the new one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::Shared;
use crate::wal::{Compaction, Record};

/// Default for `--compact-percent`: compact when the log has grown by this much (in percent)
/// over the size of the last compaction's snapshot (or over its size at start), and holds at
/// least this many superseded records (in percent of the keys) a compaction would drop.
pub const DEFAULT_COMPACT_PERCENT: u64 = 100;

/// Default for `--compact-min-bytes`: never compact a log smaller than this on its own (a
/// `COMPACT` command does).
pub const DEFAULT_COMPACT_MIN_BYTES: u64 = 64 << 20;

/// How often the compaction thread looks at the log's size.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long automatic compaction waits after a failure (a full disk, say) before it tries
/// again; a `COMPACT` command tries at once.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// How long a snapshot waits for the writes logged before it to reach the index; they do
/// within a write's deadline, so this only guards against a bug.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// When to compact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Growth over the size after the last compaction, in percent.
    pub percent: u64,
    /// The smallest log compacted automatically.
    pub min_bytes: u64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy { percent: DEFAULT_COMPACT_PERCENT, min_bytes: DEFAULT_COMPACT_MIN_BYTES }
    }
}

impl Policy {
    /// Whether a log of `bytes` that had `base` bytes after its last compaction, and holds
    /// `superseded` records of the `keys` keys' older writes, is due. A log that only grew
    /// with new keys (a bulk load) is not: compacting it would rewrite it to the same size.
    pub fn due(&self, bytes: u64, base: u64, superseded: u64, keys: u64) -> bool {
        bytes >= self.min_bytes
            && bytes.saturating_mul(100) >= base.saturating_mul(100 + self.percent)
            && superseded.saturating_mul(100) >= keys.saturating_mul(self.percent)
    }
}

/// What `STATS` says of compaction, and the thread's wake-up.
pub struct Compactor {
    state: Mutex<Status>,
    wake: Condvar,
}

/// The compaction thread's state.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// The size of the last compaction's snapshot, without what was appended while it was
    /// written (at start: the log's size).
    pub base_bytes: u64,
    /// The index's count of superseded writes when that snapshot was taken (at start: 0, the
    /// replayed log's own overwrites count).
    pub base_superseded: u64,
    /// A `COMPACT` command is waiting to be carried out.
    pub requested: bool,
    /// A compaction is running.
    pub running: bool,
    /// Compactions done since start.
    pub done: u64,
    /// The last one, and how long it took.
    pub last: Option<(Compaction, Duration)>,
    /// Why the last attempt failed, and when.
    pub failed: Option<(String, Instant)>,
}

impl Compactor {
    /// A compactor for a log of `bytes` at start.
    pub fn new(bytes: u64) -> Compactor {
        Compactor {
            state: Mutex::new(Status { base_bytes: bytes, ..Status::default() }),
            wake: Condvar::new(),
        }
    }

    /// Asks for a compaction now (`COMPACT`).
    pub fn request(&self) {
        self.state.lock().requested = true;
        self.wake.notify_all();
    }

    /// A copy of the status.
    pub fn status(&self) -> Status {
        self.state.lock().clone()
    }
}

/// The compaction thread: checks the log's size every [`CHECK_INTERVAL`] and compacts when the
/// policy says so or when asked.
pub fn run(shared: &Arc<Shared>) {
    loop {
        let due = {
            let mut st = shared.compaction.state.lock();
            if !st.requested {
                shared.compaction.wake.wait_for(&mut st, CHECK_INTERVAL);
            }
            let retry_ok = st.failed.as_ref().is_none_or(|(_, at)| at.elapsed() >= RETRY_AFTER_FAILURE);
            let (superseded, keys) = {
                let index = shared.index.lock();
                (index.superseded(), index.len() as u64)
            };
            let garbage = superseded.saturating_sub(st.base_superseded);
            let due = st.requested
                || (retry_ok
                    && shared.config.compaction.due(shared.wal.bytes(), st.base_bytes, garbage, keys));
            if due {
                st.requested = false;
                st.running = true;
            }
            due
        };
        if due {
            compact(shared);
        }
    }
}

/// Compacts the log once, recording the outcome in the status.
pub fn compact(shared: &Shared) {
    let started = Instant::now();
    // Counted before the snapshot: what is superseded while it is taken may stay in its tail.
    let superseded = shared.index.lock().superseded();
    let result = shared.wal.compact(|upto| snapshot(shared, upto));
    let mut st = shared.compaction.state.lock();
    st.running = false;
    match result {
        Ok(done) => {
            log::info!(
                "compacted the log in {:?}: {} -> {} bytes ({} records as of seq {}, {} bytes appended meanwhile)",
                started.elapsed(),
                done.bytes_before,
                done.bytes_after,
                done.records,
                done.upto,
                done.tail_bytes
            );
            // The growth is counted from the snapshot (the state's own size), not from what was
            // appended while it was written: otherwise the log could reach twice the state plus
            // a compaction's worth of appends before the next one.
            st.base_bytes = done.bytes_after - done.tail_bytes;
            st.base_superseded = superseded;
            st.done += 1;
            st.last = Some((done, started.elapsed()));
            st.failed = None;
        }
        Err(e) => {
            log::error!("cannot compact the log: {e}; it goes on growing, and appends go on");
            st.failed = Some((e.to_string(), Instant::now()));
        }
    }
}

/// The state as of `upto` as log records with their seqs, in seq order.
fn snapshot(shared: &Shared, upto: u64) -> impl Iterator<Item = (u64, Record)> {
    // Every write logged at or below `upto` must be in the index first.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while shared.wal.settled_through() < upto && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut others: Vec<(u64, Record)> = {
        let members = shared.members.lock();
        let history = shared.history.lock();
        let members = members.all().into_iter().map(|(_, m)| (m.seq, Record::Member { id: m.id }));
        let epochs = history.epochs().iter().map(|e| (e.seq, Record::Epoch { epoch: e.epoch }));
        members.chain(epochs).filter(|(seq, _)| *seq <= upto).collect()
    };
    others.sort_unstable_by_key(|e| e.0);
    let keys = shared.index.lock().newest_upto(upto);
    merge(others, keys)
}

/// Merges two seq-ordered lists into one.
fn merge(
    others: Vec<(u64, Record)>,
    keys: Vec<(u64, String, super::index::Value)>,
) -> impl Iterator<Item = (u64, Record)> {
    let mut others = others.into_iter().peekable();
    let mut keys = keys.into_iter().peekable();
    std::iter::from_fn(move || {
        let take_other = match (others.peek(), keys.peek()) {
            (Some(o), Some(k)) => o.0 < k.0,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        if take_other {
            return others.next();
        }
        let (seq, key, value) = keys.next()?;
        Some(match value {
            Some(v) => (seq, Record::Set { key, value: v.to_vec() }),
            None => (seq, Record::Del { key }),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_is_due_after_the_growth_asked_for() {
        let p = Policy { percent: 100, min_bytes: 1000 };
        assert!(!p.due(999, 0, 10, 10), "below the minimum");
        assert!(p.due(1000, 0, 10, 10));
        assert!(!p.due(3999, 2000, 10, 10) && p.due(4000, 2000, 10, 10), "doubled");
        let p = Policy { percent: 50, min_bytes: 0 };
        assert!(!p.due(149, 100, 10, 10) && p.due(150, 100, 10, 10));
    }

    #[test]
    fn a_log_of_new_keys_only_is_not_compacted() {
        let p = Policy { percent: 100, min_bytes: 1000 };
        // A bulk load: the log grew tenfold, but every record is a key's only write.
        assert!(!p.due(100_000, 10_000, 0, 1000));
        // Once as many records are superseded as there are keys, the log is twice the state.
        assert!(!p.due(100_000, 10_000, 999, 1000) && p.due(100_000, 10_000, 1000, 1000));
    }

    #[test]
    fn records_are_merged_in_seq_order() {
        let others = vec![(1, Record::Member { id: "s1".into() }), (4, Record::Epoch { epoch: 3 })];
        let keys = vec![(2, "a".to_string(), Some(Arc::from(&b"x"[..]))), (5, "b".to_string(), None)];
        let seqs: Vec<u64> = merge(others, keys).map(|e| e.0).collect();
        assert_eq!(seqs, vec![1, 2, 4, 5]);
    }
}
