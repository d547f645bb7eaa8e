//! Recording what clients saw, and judging it.
//!
//! A [`History`] is shared by every client thread of a run. Each operation is timed on one
//! monotonic clock (nanoseconds since the history was created) and classified by its answer:
//!
//! - `OK <version>`, `VALUE ...`, `NOT_FOUND`: a definite result, recorded with its completion.
//! - `ERR TIMEOUT`, a client-side deadline or a broken connection after the request was sent: a
//!   write of *unknown* outcome, recorded with `complete: None`; a read that got no answer says
//!   nothing and is dropped.
//! - any other `ERR` (and failing to connect at all): nothing happened; dropped.
//!
//! [`History::judge`] runs the per-key linearizability checker ([`check_keys`]) and a set check
//! for lost writes: a final read (taken after healing) that returns a value older than some
//! acknowledged write of its key, or nothing when a write was acknowledged. The final reads are
//! part of the checked history, so a lost write is also a linearizability violation; it is
//! counted apart because it is the failure users care most about.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Instant;

use parking_lot::Mutex;

use crate::checker::{check_keys, Op, OpKind, Outcome};
use dsm::client::Client;
use dsm::protocol::{ErrorReply, Reply};
use dsm::Error;

/// How one operation ended, as the driver counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A definite result (a write acknowledged, a read answered).
    Done,
    /// A write whose outcome is unknown (timeout, no answer, broken connection).
    Unknown,
    /// Nothing happened (a definite error, or no server reachable).
    Failed,
}

/// Every operation of a run, with its times.
pub struct History {
    start: Instant,
    ops: Mutex<Vec<(String, Op)>>,
}

/// Counts of what happened to the operations of a history.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Operations issued (reads and writes, whatever their answer).
    pub issued: u64,
    /// Writes acknowledged with `OK`.
    pub acked_writes: u64,
    /// Reads answered with `VALUE` or `NOT_FOUND`.
    pub answered_reads: u64,
    /// Writes of unknown outcome.
    pub unknown_writes: u64,
    /// Operations that certainly did nothing (dropped from the history), reads without an
    /// answer included.
    pub failed: u64,
}

/// How many of [`Verdict::node_bugs`] a report prints.
const NODE_BUG_LINES_SHOWN: usize = 10;

/// The verdict on a history.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Keys whose history is not linearizable (or could not be decided), with the checker's
    /// report.
    pub violations: Vec<(String, Outcome)>,
    /// Acknowledged writes that a final read shows were lost, one line each.
    pub lost_writes: Vec<String>,
    /// Lines of the nodes' output that only a bug prints (see
    /// [`super::BUG_MARKERS`]): `NAME.out: line`.
    pub node_bugs: Vec<String>,
    /// Keys checked.
    pub keys: usize,
}

impl Verdict {
    /// True when the history is linearizable, no acknowledged write was lost and no node
    /// printed a sign of a bug.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty() && self.lost_writes.is_empty() && self.node_bugs.is_empty()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, outcome) in &self.violations {
            writeln!(f, "key {key}: {outcome}")?;
        }
        for lost in &self.lost_writes {
            writeln!(f, "lost write: {lost}")?;
        }
        // A stall repeats its line every few seconds: the first few say what it is.
        for line in self.node_bugs.iter().take(NODE_BUG_LINES_SHOWN) {
            writeln!(f, "node output: {line}")?;
        }
        if self.node_bugs.len() > NODE_BUG_LINES_SHOWN {
            writeln!(
                f,
                "node output: … and {} more such lines",
                self.node_bugs.len() - NODE_BUG_LINES_SHOWN
            )?;
        }
        Ok(())
    }
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> History {
        History { start: Instant::now(), ops: Mutex::new(Vec::new()) }
    }

    /// Nanoseconds since the history was created.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// `WRITE key value` through `client`, recorded as `client_id`'s.
    pub fn write(&self, client_id: u64, client: &mut Client, key: &str, value: &str) -> Answer {
        let invoke = self.now();
        let result = client.write(key, value.as_bytes());
        let complete = self.now();
        let answer = classify_write(&result);
        let complete = match answer {
            Answer::Done => Some(complete),
            Answer::Unknown => None,
            Answer::Failed => return answer,
        };
        let op = Op::write(client_id, invoke, complete, Some(value.as_bytes().to_vec()));
        self.ops.lock().push((key.to_string(), op));
        answer
    }

    /// `READ key` through `client`, recorded as `client_id`'s. A read without a definite
    /// answer is not recorded and counts as [`Answer::Failed`].
    pub fn read(&self, client_id: u64, client: &mut Client, key: &str) -> Answer {
        let invoke = self.now();
        let result = client.read(key);
        let complete = self.now();
        let value = match result {
            Ok(Reply::Value { value, .. }) => Some(value),
            Ok(Reply::NotFound) => None,
            _ => return Answer::Failed,
        };
        self.ops.lock().push((key.to_string(), Op::read(client_id, invoke, Some(complete), value)));
        Answer::Done
    }

    /// The keys the history touches.
    pub fn keys(&self) -> Vec<String> {
        let ops = self.ops.lock();
        let mut keys: Vec<String> = ops.iter().map(|(k, _)| k.clone()).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// A copy of the recorded operations.
    pub fn ops(&self) -> Vec<(String, Op)> {
        self.ops.lock().clone()
    }

    /// Checks the history: linearizability per key, then lost writes as seen by the reads of
    /// `final_client` (their id), which should be the last operations of the history.
    pub fn judge(&self, final_client: u64) -> Verdict {
        let ops = self.ops();
        let violations = check_keys(&ops);
        let keys = self.keys().len();
        Verdict { violations, lost_writes: lost_writes(&ops, final_client), node_bugs: Vec::new(), keys }
    }
}

fn is_read(op: &Op) -> bool {
    matches!(op.kind, OpKind::Read { .. })
}

/// How a write's result is counted.
pub fn classify_write(result: &dsm::Result<Reply>) -> Answer {
    match result {
        Ok(Reply::Ok(_)) => Answer::Done,
        Ok(Reply::Err(ErrorReply::Timeout(_))) => Answer::Unknown,
        Ok(Reply::Err(e)) if e.had_no_effect() => Answer::Failed,
        // An answer that is neither OK nor an error is a protocol surprise: do not trust it.
        Ok(_) => Answer::Unknown,
        // Connecting failed: nothing was sent.
        Err(Error::Unavailable(_)) => Answer::Failed,
        // Sent, then the connection broke or the deadline passed.
        Err(_) => Answer::Unknown,
    }
}

/// Acknowledged writes that the final reads (by `final_client`) show were lost: the final read
/// of a key returned nothing although a write of it was acknowledged, or returned a value whose
/// every write completed before some acknowledged write of the key was invoked.
fn lost_writes(ops: &[(String, Op)], final_client: u64) -> Vec<String> {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for (key, op) in ops {
        by_key.entry(key).or_default().push(op);
    }
    let mut lost = Vec::new();
    for (key, ops) in by_key {
        let Some(last) =
            ops.iter().filter(|o| o.client == final_client && is_read(o)).max_by_key(|o| o.invoke)
        else {
            continue;
        };
        let OpKind::Read { result } = &last.kind else { continue };
        let acked: Vec<&&Op> =
            ops.iter().filter(|o| !is_read(o) && o.complete.is_some() && o.invoke < last.invoke).collect();
        let Some(latest) = acked.iter().max_by_key(|o| o.invoke) else { continue };
        // When the value read was written, at the latest (an unknown write: any time).
        let written_by: HashMap<u64, Option<u64>> = ops
            .iter()
            .filter(|o| matches!(&o.kind, OpKind::Write { value } if value == result) && result.is_some())
            .map(|o| (o.invoke, o.complete))
            .collect();
        let newest_possible = written_by.values().map(|c| c.unwrap_or(u64::MAX)).max();
        let stale = match newest_possible {
            None => true,
            Some(done) => done < latest.invoke,
        };
        if stale {
            lost.push(format!(
                "{key}: acknowledged {latest}, but the final read after healing returned {}",
                match result {
                    Some(v) => format!("{:?}", String::from_utf8_lossy(v)),
                    None => "nothing".into(),
                }
            ));
        }
    }
    lost
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(client: u64, t: (u64, Option<u64>), v: &str) -> (String, Op) {
        ("k".into(), Op::write(client, t.0, t.1, Some(v.as_bytes().to_vec())))
    }

    fn r(client: u64, t: (u64, u64), v: Option<&str>) -> (String, Op) {
        ("k".into(), Op::read(client, t.0, Some(t.1), v.map(|v| v.as_bytes().to_vec())))
    }

    #[test]
    fn a_final_read_of_an_older_value_is_a_lost_write() {
        let ops = vec![w(1, (0, Some(10)), "a"), w(2, (20, Some(30)), "b"), r(9, (40, 50), Some("a"))];
        assert_eq!(lost_writes(&ops, 9).len(), 1);
        let ops = vec![w(1, (0, Some(10)), "a"), r(9, (40, 50), None)];
        assert_eq!(lost_writes(&ops, 9).len(), 1);
    }

    #[test]
    fn concurrent_or_unknown_writes_are_not_lost() {
        // "a" overlaps "b": either may be last.
        let ops = vec![w(1, (0, Some(25)), "a"), w(2, (20, Some(30)), "b"), r(9, (40, 50), Some("a"))];
        assert!(lost_writes(&ops, 9).is_empty());
        // "c" is of unknown outcome and may have taken effect last.
        let ops = vec![w(2, (20, Some(30)), "b"), w(3, (5, None), "c"), r(9, (40, 50), Some("c"))];
        assert!(lost_writes(&ops, 9).is_empty());
        let ops = vec![w(2, (20, Some(30)), "b"), r(9, (40, 50), Some("b"))];
        assert!(lost_writes(&ops, 9).is_empty());
    }

    #[test]
    fn writes_are_classified_by_their_answer() {
        assert_eq!(classify_write(&Ok(Reply::Ok(3))), Answer::Done);
        assert_eq!(classify_write(&Ok(Reply::Err(ErrorReply::Timeout("x".into())))), Answer::Unknown);
        assert_eq!(classify_write(&Ok(Reply::Err(ErrorReply::Unavailable("x".into())))), Answer::Failed);
        assert_eq!(classify_write(&Err(Error::Unavailable("no server".into()))), Answer::Failed);
        assert_eq!(classify_write(&Err(Error::Timeout("late".into()))), Answer::Unknown);
    }
}
