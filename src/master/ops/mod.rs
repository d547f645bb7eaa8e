//! What the master does for each client request: dispatch (here), with the replication round
//! every write goes through; writes, reads, administration and the repair thread in the
//! modules below.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use rand::seq::SliceRandom;

use super::index::{KeyState, Value};
use super::link::{recv_parked, Ack, AckCount, Finish, Link};
use super::ReadFrom;
use super::{Shared, WRITE_DEADLINE_ACK_TIMEOUTS};
use crate::peer::{encode_body, Command, Outcome, Stamp};
use crate::protocol::{ErrorReply, Reply, Request};
use crate::quorum::majority;
use crate::wal::Record;

mod admin;
mod client_out;
mod info;
mod read;
mod repair;
mod write;

pub use client_out::ClientOut;
pub use info::info;
pub use repair::repair_loop;
pub use write::{execute_writes, relog};

use admin::{members_table, remove_member, stats};
use read::read;
use write::{delete, write};

/// What became of a request's answer.
#[derive(Debug)]
pub enum Answer {
    /// The reply, for the connection's thread to send.
    Reply(Reply),
    /// Already sent to the client, by the slave reader that completed the write's quorum.
    Sent,
}

/// Carries out one parsed client request (not `QUIT` or `CLIENT`, which the connection handles).
///
/// `early`: the connection, when nothing is buffered for it and no further request is waiting,
/// so that a write's answer may be sent by the slave reader that completes its quorum
/// ([`Answer::Sent`]).
pub fn execute(shared: &Arc<Shared>, request: Request, early: Option<&Arc<ClientOut>>) -> Answer {
    let reply = match request {
        Request::Write { key, value } => {
            return guarded(shared, |s| write(s, key, Some(value.into()), early), Answer::Reply)
        }
        Request::Delete { key } => return guarded(shared, |s| delete(s, key, early), Answer::Reply),
        Request::Read { key } => guarded(shared, |s| read(s, &key), |refusal| refusal),
        Request::Ping => Reply::Pong,
        Request::Stats => stats(shared),
        Request::Members => members_table(shared),
        Request::Remove { id } => guarded(shared, |s| remove_member(s, &id), |refusal| refusal),
        Request::Compact => {
            shared.compaction.request();
            Reply::Done
        }
        Request::Quit | Request::Hello | Request::Auth { .. } => Reply::invalid("unexpected request"),
    };
    Answer::Reply(reply)
}

/// Runs `f` only on a primary; otherwise makes the refusal (`NOTPRIMARY`, or `UNAVAILABLE`
/// while taking over) into what `f` would return with `refused`. The in-flight count is raised
/// before the role is checked, so a hand-off that switches the role and then waits for the
/// count to reach zero cannot miss a write that passed the check.
pub(super) fn guarded<T>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Arc<Shared>) -> T,
    refused: impl FnOnce(Reply) -> T,
) -> T {
    shared.inflight.fetch_add(1, Ordering::SeqCst);
    let result = match shared.role() {
        super::Role::Primary => f(shared),
        super::Role::Candidate => refused(Reply::Err(ErrorReply::Unavailable(format!(
            "taking over as primary (epoch {}): waiting for a majority of slaves",
            shared.epoch()
        )))),
        super::Role::Standby => refused(shared.not_primary()),
    };
    shared.inflight.fetch_sub(1, Ordering::SeqCst);
    result
}

/// How a replication round ended.
pub(super) enum Replicated {
    /// A majority acknowledged.
    Majority,
    /// Fewer acknowledged before the deadline or before candidates ran out.
    Short(u64),
    /// A member has accepted a newer epoch: we are no longer the primary.
    Fenced(u64),
}

/// Live links and the majority of members, or the reason there is no quorum.
pub(super) fn quorum_links(shared: &Shared) -> Result<(Vec<Arc<Link>>, usize), String> {
    let members = shared.members.lock();
    let count = members.count();
    let need = majority(count).ok_or("no slave has registered yet")?;
    let live = members.live_links();
    if live.len() < need {
        return Err(format!("{} of {count} members connected, {need} needed", live.len()));
    }
    Ok((live, need))
}

/// Marks an acknowledged write committed. Whoever answers the client calls this first, so a
/// read that follows the answer finds the write.
pub(super) fn commit_write(shared: &Shared, key: &str, stamp: Stamp, value: Value) {
    crate::failpoint::failpoint("after-quorum");
    shared.index.lock().commit(key, stamp, value);
    shared.stats.writes.fetch_add(1, Ordering::Relaxed);
}

thread_local! {
    /// This thread's channel for slave replies, reused by every request it makes so that a
    /// request does not build a channel of its own. Replies are matched by request id, so a late
    /// reply to an earlier request is recognised and dropped.
    static REPLIES: (Sender<Ack>, Receiver<Ack>) = unbounded();
}

/// Runs `f` with this thread's reply channel, emptied of late replies to earlier requests.
pub(super) fn with_replies<T>(f: impl FnOnce(&Sender<Ack>, &Receiver<Ack>) -> T) -> T {
    REPLIES.with(|(tx, rx)| {
        while rx.try_recv().is_ok() {}
        f(tx, rx)
    })
}

/// Sends `command` to every one of `candidates` and collects ACKs until `need` acknowledged,
/// every candidate failed, or `deadline` passed. A member that does not answer within the ACK
/// timeout while the quorum is still short is marked down. Every connected slave gets every
/// write, so a slave that stays connected holds all of them (see `slaves::start_resync`).
///
/// ACKs are counted in a [`AckCount`] shared with the links, so this thread wakes once when the
/// quorum is complete, not once per ACK; it also wakes for every failure, and at each
/// member's ACK deadline.
pub(super) fn replicate(
    shared: &Shared,
    candidates: Vec<Arc<Link>>,
    quorum: &Arc<AckCount>,
    epoch: u64,
    command: &Command,
    deadline: Instant,
    for_client: bool,
) -> Replicated {
    let need = quorum.need();
    let mut body = Vec::with_capacity(64);
    encode_body(epoch, command, &mut body);
    with_replies(|tx, rx| {
        let ack_timeout = shared.config.ack_timeout;
        // (link index, rid, when its ACK is due)
        let mut outstanding: Vec<(usize, u64, Instant)> = Vec::with_capacity(need);
        let mut next = 0;
        let result = loop {
            // ACKs that did not complete the quorum arrive as bits, without a message.
            let acked = quorum.acked();
            outstanding.retain(|o| acked & (1 << candidates[o.0].slot) == 0);
            let acks = acked.count_ones() as usize;
            while next < candidates.len() {
                let rid = shared.rid();
                if candidates[next].send_counted(rid, &body, tx, quorum) {
                    if for_client {
                        candidates[next].requests.fetch_add(1, Ordering::Relaxed);
                    }
                    outstanding.push((next, rid, Instant::now() + ack_timeout));
                }
                next += 1;
            }
            if acks >= need {
                break Replicated::Majority;
            }
            if outstanding.is_empty() {
                break Replicated::Short(acked);
            }
            let due = outstanding.iter().map(|o| o.2).min().unwrap_or(deadline).min(deadline);
            match recv_parked(rx, due) {
                Ok(ack) => {
                    let Some(pos) = outstanding.iter().position(|o| o.1 == ack.rid) else {
                        continue;
                    };
                    match ack.outcome {
                        // Counted in `quorum` already.
                        Outcome::Ok(_) => {}
                        Outcome::Fenced(newer) => break Replicated::Fenced(newer),
                        other => {
                            log::debug!("slave slot {} did not apply: {other:?}", ack.slot);
                            outstanding.swap_remove(pos);
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    let acked = quorum.acked();
                    if now >= deadline {
                        if acked.count_ones() as usize >= need {
                            break Replicated::Majority;
                        }
                        break Replicated::Short(acked);
                    }
                    outstanding.retain(|&(i, rid, due)| {
                        let link = &candidates[i];
                        if due > now || acked & (1 << link.slot) != 0 {
                            return true;
                        }
                        link.forget(rid);
                        link.kill(&format!("no acknowledgement within {} ms", ack_timeout.as_millis()));
                        false
                    });
                }
                Err(RecvTimeoutError::Disconnected) => break Replicated::Short(quorum.acked()),
            }
        };
        for (i, rid, _) in outstanding {
            candidates[i].forget(rid);
        }
        result
    })
}
