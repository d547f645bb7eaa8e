//! What the master does for each client request: dispatch (here), with the replication round
//! every write goes through; writes, reads, administration and the repair thread in the
//! modules below.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use rand::seq::SliceRandom;

use super::index::Value;
use super::link::{recv_parked, Ack, AckCount, Finish, Link, Replicated};
use super::members::Members;
use super::ReadFrom;
use super::{Shared, WRITE_DEADLINE_ACK_TIMEOUTS};
use crate::peer::{encode_body, Command, Outcome, Stamp};
use crate::protocol::{ErrorReply, Reply, Request};
use crate::quorum::majority;
use crate::wal::Record;

mod admin;
mod client_out;
mod combine;
mod info;
mod read;
mod repair;
mod write;

pub use client_out::ClientOut;
pub use combine::{Combiner, OwedRounds, PendingWrite};
pub use info::info;
pub use repair::repair_loop;
pub use write::{execute_writes, relog, start_writes, SentRun};

use admin::{members_table, remove_member, stats};
use read::read;
use write::{delete, write};

/// What became of a request's answer.
pub enum Answer {
    /// The reply, for the connection's thread to send.
    Reply(Reply),
    /// A write on its way to the slaves: the slave reader that completes its quorum answers
    /// the client; the connection settles it before it serves the next request.
    Pending(PendingWrite),
}

/// Carries out one parsed client request (not `QUIT` or `CLIENT`, which the connection handles).
///
/// `early`: the connection, when nothing is buffered for it and no further request is waiting,
/// so that a write's answer may be sent by the slave reader that completes its quorum
/// ([`Answer::Pending`]).
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
    let _inflight = InFlight::new(shared);
    match shared.role() {
        super::Role::Primary => f(shared),
        super::Role::Candidate => refused(Reply::Err(ErrorReply::Unavailable(format!(
            "taking over as primary (epoch {}): waiting for a majority of slaves",
            shared.epoch()
        )))),
        super::Role::Standby => refused(shared.not_primary()),
    }
}

/// A client write counted in `Shared::inflight` from its role check until it is answered: a
/// hand-off waits until none is left. A write answered by a slave reader carries one until
/// it is answered.
pub(super) struct InFlight(Arc<Shared>);

impl InFlight {
    pub(super) fn new(shared: &Arc<Shared>) -> InFlight {
        shared.inflight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(shared))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Live links and the majority of members, or the reason there is no quorum.
pub(super) fn quorum_links(shared: &Shared) -> Result<(Vec<Arc<Link>>, usize), String> {
    let members = shared.members.lock();
    let need = quorum_of(&members)?;
    Ok((members.live_links(), need))
}

/// Whether a majority of the members is connected (what [`quorum_links`] checks, without
/// collecting the links): the majority, or why not.
pub(super) fn quorum_connected(shared: &Shared) -> Result<usize, String> {
    quorum_of(&shared.members.lock())
}

/// The majority of `members`, if at least that many are connected; otherwise why not.
pub(super) fn quorum_of(members: &Members) -> Result<usize, String> {
    let count = members.count();
    let need = majority(count).ok_or("no slave has registered yet")?;
    let live = members.live().count();
    if live < need {
        return Err(format!("{live} of {count} members connected, {need} needed"));
    }
    Ok(need)
}

/// Marks an acknowledged write committed. Whoever answers the client calls this first, so a
/// read that follows the answer finds the write.
pub(super) fn commit_write(shared: &Shared, key: &str, stamp: Stamp, value: Value) {
    commit_writes(shared, std::iter::once((key, stamp, value)));
}

/// [`commit_write`] for several writes acknowledged together, under one lock of the index.
pub(super) fn commit_writes<'a>(shared: &Shared, writes: impl Iterator<Item = (&'a str, Stamp, Value)>) {
    crate::failpoint::failpoint("after-quorum");
    let mut count = 0;
    let mut index = shared.index.lock();
    for (key, stamp, value) in writes {
        index.commit(key, stamp, value);
        count += 1;
    }
    drop(index);
    shared.stats.writes.fetch_add(count, Ordering::Relaxed);
}

thread_local! {
    /// This thread's channel for slave replies, reused by every request it makes so that a
    /// request does not build a channel of its own. Replies are matched by request id, so a late
    /// reply to an earlier request is recognised and dropped.
    static REPLIES: (Sender<Ack>, Receiver<Ack>) = unbounded();
    /// Replies this thread received while it waited for one of its rounds that belong to
    /// another it has yet to wait for (a connection may have several rounds out at once).
    static STASHED: RefCell<Vec<Ack>> = const { RefCell::new(Vec::new()) };
}

/// The most replies kept in [`STASHED`]: beyond, the oldest are late answers nobody waits for.
const STASH_LIMIT: usize = 4096;

/// Runs `f` with this thread's reply channel, emptied of late replies to earlier requests.
pub(super) fn with_replies<T>(f: impl FnOnce(&Sender<Ack>, &Receiver<Ack>) -> T) -> T {
    drain_replies();
    REPLIES.with(|(tx, rx)| f(tx, rx))
}

/// Empties this thread's reply channel of late replies to requests it no longer waits for:
/// before a request (or a combined batch's rounds) whose replies are to come on it.
pub fn drain_replies() {
    REPLIES.with(|(_, rx)| while rx.try_recv().is_ok() {});
    STASHED.with(|s| s.borrow_mut().clear());
}

/// Where a round's replies go.
pub(super) enum Replies<'a> {
    /// This thread's channel: only this thread may [`Round::wait`] for the round.
    ThisThread,
    /// `tx`, for a round sent for no connection (see `combine`), by a thread that never waits
    /// for a slave's socket (see [`Link::send_counted`]).
    Loose(&'a Sender<Ack>),
}

/// A write sent to its links, whose acknowledgements are still coming in: what
/// [`Round::wait`] needs to collect them, whichever thread does it and whenever.
pub(super) struct Round {
    candidates: Vec<Arc<Link>>,
    quorum: Arc<AckCount>,
    /// (link index, rid, when its ACK is due) of each send not yet acknowledged.
    outstanding: Vec<(usize, u64, Instant)>,
    deadline: Instant,
    /// Sent for no connection ([`Replies::Loose`]): no reply wakes the thread that waits for
    /// it, which looks at its quorum every [`LOOSE_POLL`] instead.
    loose: bool,
}

/// How often a thread waiting for a loose round looks at its quorum (see [`Round::wait`]).
const LOOSE_POLL: Duration = Duration::from_millis(10);

impl Round {
    /// Sends `command` to every one of `candidates`, counting their ACKs in `quorum`, and
    /// returns without waiting. Every connected slave gets every write, so a slave that stays
    /// connected holds all of them (see `slaves::start_resync`). The replies come on this
    /// thread's channel: only this thread may [`wait`](Round::wait).
    pub(super) fn send(
        shared: &Shared,
        candidates: Vec<Arc<Link>>,
        quorum: &Arc<AckCount>,
        epoch: u64,
        command: &Command,
        deadline: Instant,
        for_client: bool,
    ) -> Round {
        let mut body = Vec::with_capacity(64);
        encode_body(epoch, command, &mut body);
        drain_replies();
        Round::send_body(
            shared,
            candidates,
            quorum,
            &body,
            deadline,
            u64::from(for_client),
            Replies::ThisThread,
        )
    }

    /// [`Round::send`] of a message already encoded (everything after `<rid> `), which counts
    /// as `requests` client requests to each slave. With [`Replies::ThisThread`], the caller
    /// has emptied this thread's channel ([`drain_replies`]) before its first round; the
    /// replies of rounds it sent since, and still waits for, stay in it.
    pub(super) fn send_body(
        shared: &Shared,
        candidates: Vec<Arc<Link>>,
        quorum: &Arc<AckCount>,
        body: &[u8],
        deadline: Instant,
        requests: u64,
        replies: Replies<'_>,
    ) -> Round {
        let nowait = matches!(replies, Replies::Loose(_));
        let send = |tx: &Sender<Ack>| {
            let ack_timeout = shared.config.ack_timeout;
            let mut outstanding = Vec::with_capacity(candidates.len());
            for (i, link) in candidates.iter().enumerate() {
                let rid = shared.rid();
                if link.send_counted(rid, body, tx, quorum, nowait) {
                    link.requests.fetch_add(requests, Ordering::Relaxed);
                    outstanding.push((i, rid, Instant::now() + ack_timeout));
                }
            }
            outstanding
        };
        let outstanding = match replies {
            Replies::ThisThread => REPLIES.with(|(tx, _)| send(tx)),
            Replies::Loose(tx) => send(tx),
        };
        Round { candidates, quorum: Arc::clone(quorum), outstanding, deadline, loose: nowait }
    }

    /// The count the round's ACKs go to.
    pub(super) fn quorum(&self) -> &Arc<AckCount> {
        &self.quorum
    }

    /// The first moment [`Round::wait`] would act on without an ACK: the earliest ACK due, or
    /// the deadline; `now` (the caller's, to compare with), if it could no longer reach its
    /// majority. (Returning a fresh `Instant::now()` there made a round never due to a caller
    /// comparing with its own earlier `now`: connections waiting for loose rounds spun on the
    /// list's lock and combined writes stopped, in `make chaos`.)
    pub(super) fn due(&self, now: Instant) -> Instant {
        // Those still to answer cannot make up the majority: it ends as soon as it is waited for.
        let acked = self.quorum.acked();
        let live = self.outstanding.iter().filter(|o| {
            let link = &self.candidates[o.0];
            acked & (1 << link.slot) == 0 && link.is_alive()
        });
        if acked.count_ones() as usize + live.count() < self.quorum.need() {
            return now;
        }
        self.outstanding.iter().map(|o| o.2).min().unwrap_or(self.deadline).min(self.deadline)
    }

    /// Collects ACKs until a majority acknowledged, every candidate failed, or the deadline
    /// passed. A member that does not answer within the ACK timeout while the quorum is still
    /// short is marked down.
    ///
    /// ACKs are counted in the shared [`AckCount`], so this thread wakes once when the quorum
    /// is complete, not once per ACK; it also wakes for every failure, and at each member's
    /// ACK deadline.
    pub(super) fn wait(&mut self, shared: &Shared) -> Replicated {
        let need = self.quorum.need();
        let ack_timeout = shared.config.ack_timeout;
        let Round { candidates, quorum, outstanding, deadline, loose } = self;
        let deadline = *deadline;
        // Not `with_replies`: the replies waiting in the channel are this round's.
        REPLIES.with(|(_, rx)| loop {
            // ACKs that did not complete the quorum arrive as bits, without a message.
            let acked = quorum.acked();
            // A loose round's thread hears of no failure: a dead link will not answer.
            outstanding.retain(|o| {
                acked & (1 << candidates[o.0].slot) == 0 && (!*loose || candidates[o.0].is_alive())
            });
            if acked.count_ones() as usize >= need {
                return Replicated::Majority;
            }
            // Those still to answer cannot make up the majority any more.
            if acked.count_ones() as usize + outstanding.len() < need {
                return Replicated::Short(acked);
            }
            let due = outstanding.iter().map(|o| o.2).min().unwrap_or(deadline).min(deadline);
            let stashed = STASHED.with(|s| {
                let mut s = s.borrow_mut();
                let pos = s.iter().position(|a| outstanding.iter().any(|o| o.1 == a.rid));
                pos.map(|pos| s.swap_remove(pos))
            });
            // No reply wakes this thread for a loose round: it looks again every `LOOSE_POLL`.
            let wake = if *loose { due.min(Instant::now() + LOOSE_POLL) } else { due };
            match stashed.map_or_else(|| recv_parked(rx, wake), Ok) {
                Ok(ack) => {
                    let Some(pos) = outstanding.iter().position(|o| o.1 == ack.rid) else {
                        // Another round's, or late.
                        STASHED.with(|s| {
                            let mut s = s.borrow_mut();
                            if s.len() >= STASH_LIMIT {
                                s.remove(0);
                            }
                            s.push(ack);
                        });
                        continue;
                    };
                    match ack.outcome {
                        // Counted in `quorum` already.
                        Outcome::Ok(_) | Outcome::Applied(_) => {}
                        Outcome::Fenced(newer) => return Replicated::Fenced(newer),
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
                            return Replicated::Majority;
                        }
                        return Replicated::Short(acked);
                    }
                    outstanding.retain_mut(|(i, rid, due)| {
                        let link = &candidates[*i];
                        if *due > now || acked & (1 << link.slot) != 0 {
                            return true;
                        }
                        // Behind but alive: it answered something within the ACK timeout (a
                        // slave growing a table of a million keys stalls for a moment while
                        // messages queue up behind). It gets until the write's deadline, as
                        // long as it keeps answering.
                        let heard_us = link.last_heard_us.load(Ordering::Acquire);
                        let silent = Duration::from_micros(shared.now_us().saturating_sub(heard_us));
                        if silent < ack_timeout {
                            *due = now + (ack_timeout - silent);
                            return true;
                        }
                        link.forget(*rid);
                        link.kill(&format!(
                            "no acknowledgement within {} ms, and silent for {} ms",
                            ack_timeout.as_millis(),
                            silent.as_millis()
                        ));
                        false
                    });
                }
                Err(RecvTimeoutError::Disconnected) => return Replicated::Short(quorum.acked()),
            }
        })
    }
}

impl Drop for Round {
    /// The links forget the requests whose answers nobody waits for any more.
    fn drop(&mut self) {
        let acked = self.quorum.acked();
        for &(i, rid, _) in &self.outstanding {
            let link = &self.candidates[i];
            // An acknowledged request has left the link's table already.
            if acked & (1 << link.slot) == 0 {
                link.forget(rid);
            }
        }
    }
}
