//! Writes of different connections, combined: one log append, one `MSET` per slave and one
//! acknowledgement per slave for all the writes that were waiting together.
//!
//! A connection whose write may be answered by another thread (nothing else waits on it, see
//! `Session::early`) queues the write in the [`Combiner`] and goes back to reading its client.
//! One combined round is in flight at a time ([`ROUNDS_IN_FLIGHT`]). If none is and no thread
//! is combining, the connection becomes the combiner: it takes every queued write (its own
//! among them), appends them to the log in one batch, records them in the index, and sends them
//! to every connected slave as one `MSET` (a few, for a batch too big for one line), each with
//! one [`AckCount`]. The slave reader whose acknowledgement completes a message's majority runs
//! its [`Finish`]: it commits every write of the message in the index, answers each write's
//! client (without blocking, see [`ClientOut::send_or_keep`]), and then sends everything that
//! queued up meanwhile as the next batch — so under load a write costs its connection's thread
//! one queue push, and the log, the slaves and the readers one step per batch, and the batches
//! grow with the load instead of going out one write at a time as their writes arrive.
//!
//! A round that no reader completes (no majority in time, a slave that joined a newer epoch) is
//! settled by the thread that sent it, or, for a round a reader sent ("loose", see
//! [`Combiner::loose`]), by any connection waiting for a combined write: it waits for such a
//! round as a blocking write does (marking silent slaves down, up to the write deadline) and,
//! where no reader took the finish meanwhile, runs it with how the round ended: every write of
//! the message is answered `TIMEOUT` and queued for repair. A connection settles the rounds of
//! the batch that carried its own write before it serves its next request, or when its client
//! has been silent for `SETTLE_AFTER`; the later batches it sent for others it owes
//! ([`OwedRounds`]) and settles once one is due, so that it does not sleep until a reader
//! completes them. Every connection, the combiner's too, waits until its own write was
//! answered, so its replies stay in order and a request that follows a write sees it. A reader
//! marks a write answered just before its answer leaves (see `ClientOut::answer_write`), so a
//! connection whose client already has the answer goes on without sleeping. A loose round is
//! sent without waiting for any slave's socket (`Link::send_counted`): a reader that
//! waited for one slave to read would stop reading its own slave's acknowledgements.
//!
//! Measured (2026-12-07, a master and 3 slaves, 10 connections writing one key at a time,
//! `perf stat`): before, a connection settling its write often found the reader still
//! answering the rest of its batch, or the combiner waited for its later batches: 0.25–0.29
//! `futex` calls per write; after, 0.010–0.018, and 18,600–24,108 against 18,578–22,970 writes/s
//! in 5 alternating pairs (faster in 4). A reply that an owed round's thread drops from its
//! channel before it waits (a slave's failure, a newer epoch) makes that round end at the
//! slave's ACK deadline as a shortfall instead: its writes are answered `TIMEOUT` and repaired
//! either way.
//!
//! One round in flight (2026-12-07, the same load, 3 alternating pairs against the code before
//! it): 4.1–4.6 writes per batch instead of 1.48, 37.6–40.9 against 51.0–54.6 µs of master CPU
//! and 1.81–1.87 against 2.06–2.10 context switches per write, 22,064–24,175 against
//! 19,403–20,773 writes/s; at 50 connections 1.7× the writes per second. Waiting in the
//! combiner's thread for the round in flight instead (tried first) made the batches as big but
//! no more writes per second: that thread's extra sleep ate the gain.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::{Condvar, Mutex, MutexGuard};

use super::*;
use crate::metrics::CommandKind;
use crate::peer::{batch_item_bound, encode_batch_body, MAX_BATCH, MAX_BATCH_BYTES};

/// How many combined rounds may be in flight at once. While one is, the writes that arrive
/// queue up, and the thread that ends it (usually the slave reader whose ACK completed it)
/// sends them all as the next batch (see the module documentation).
const ROUNDS_IN_FLIGHT: usize = 1;

/// The writes queued for the next combined batch.
pub struct Combiner {
    queue: Mutex<Queue>,
    /// Combined rounds sent whose finish has not run yet. Given up without a lock (see
    /// [`InFlightRound`]); a thread that gives one up looks at the queue after, and one that
    /// queues a write looks at this after, both under the queue's lock, so no write is left
    /// behind.
    rounds: AtomicUsize,
    /// Rounds sent by the thread that ended the round before them, which no connection owns: a
    /// connection waiting for a combined write settles those that fall due.
    loose: Mutex<Vec<Round>>,
    /// Where the replies to loose rounds go: nowhere (its receiver is gone). Their ACKs are
    /// counted in their quorums all the same; a failure reply is not seen, so a loose round
    /// without a majority ends at its slaves' ACK deadlines (a `FENCED` reply still makes the
    /// master step down: the slave reader acts on it whatever it answers).
    nowhere: Sender<Ack>,
}

impl Default for Combiner {
    fn default() -> Combiner {
        let (nowhere, _) = crossbeam_channel::bounded(0);
        Combiner { queue: Mutex::default(), rounds: AtomicUsize::new(0), loose: Mutex::default(), nowhere }
    }
}

impl Combiner {
    /// How many writes wait for the round in flight to end (the `write_queue` statistic).
    pub fn queued(&self) -> usize {
        self.queue.lock().writes.len()
    }

    /// How many loose rounds are kept (the `loose_rounds` statistic): those not known to be
    /// complete, and those completed since the last look.
    pub fn loose(&self) -> usize {
        self.loose.lock().len()
    }
}

#[derive(Default)]
struct Queue {
    writes: Vec<Queued>,
    /// A thread is combining: it sends what is queued before it stops.
    busy: bool,
}

/// A combined round's place in flight, given up when its finish has run: the thread that
/// ran it sends what was queued meanwhile ([`InFlightRound::end`]). A finish dropped unrun
/// (never, unless a round is dropped unsettled) only gives the place up, without a lock, since
/// it may be dropped under a link's or the members' lock: the writes queued then go with the
/// next write, or when a connection waiting for one of them looks again (see
/// [`Answered::wait`]).
struct InFlightRound(Option<Arc<Shared>>);

impl InFlightRound {
    fn new(shared: &Arc<Shared>) -> InFlightRound {
        shared.combiner.rounds.fetch_add(1, Ordering::AcqRel);
        InFlightRound(Some(Arc::clone(shared)))
    }

    /// Gives the place up and sends the writes queued meanwhile, unless another thread is
    /// combining.
    fn end(mut self) {
        let Some(shared) = self.0.take() else { return };
        shared.combiner.rounds.fetch_sub(1, Ordering::AcqRel);
        combine_loose(&shared, shared.combiner.queue.lock());
    }
}

impl Drop for InFlightRound {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.combiner.rounds.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// As the combiner: sends the queued writes, batch after batch, while fewer than
/// [`ROUNDS_IN_FLIGHT`] rounds are in flight; `sent` is told how many rounds each batch took.
/// `loose`: the rounds are sent for no connection (see [`Combiner::loose`]).
fn combine(
    shared: &Arc<Shared>,
    queue: &mut MutexGuard<'_, Queue>,
    rounds: &mut Vec<Round>,
    loose: bool,
    mut sent: impl FnMut(usize),
) {
    queue.busy = true;
    while room_for_a_round(shared) && !queue.writes.is_empty() {
        let batch = std::mem::take(&mut queue.writes);
        let before = rounds.len();
        MutexGuard::unlocked(queue, || send_batch(shared, batch, rounds, loose));
        sent(rounds.len() - before);
    }
    queue.busy = false;
}

/// Whether fewer than [`ROUNDS_IN_FLIGHT`] combined rounds are in flight.
fn room_for_a_round(shared: &Shared) -> bool {
    shared.combiner.rounds.load(Ordering::Acquire) < ROUNDS_IN_FLIGHT
}

/// Sends what is queued as loose rounds, unless a thread is combining or the rounds in flight
/// leave no room.
fn combine_loose(shared: &Arc<Shared>, mut queue: MutexGuard<'_, Queue>) {
    if queue.busy || !room_for_a_round(shared) || queue.writes.is_empty() {
        return;
    }
    let mut rounds = Vec::new();
    combine(shared, &mut queue, &mut rounds, true, |_| {});
    drop(queue);
    if !rounds.is_empty() {
        let mut loose = shared.combiner.loose.lock();
        // Those a reader completed go here: a connection whose write was answered before it
        // settled never looks at this list, so under load nothing else would drop them.
        loose.retain(|round| !round.quorum().reached());
        loose.extend(rounds);
    }
}

/// A write waiting for its batch, and then for its majority.
struct Queued {
    key: String,
    value: Value,
    client: Arc<ClientOut>,
    answered: Arc<Answered>,
    started: Instant,
    /// Its place in `Shared::inflight`, given up once it is answered.
    _inflight: InFlight,
}

/// Whether a combined write has been answered (its bytes handed to its [`ClientOut`]).
#[derive(Default)]
struct Answered {
    done: Mutex<bool>,
    cond: Condvar,
}

impl Answered {
    fn set(&self) {
        *self.done.lock() = true;
        self.cond.notify_all();
    }

    /// Waits until answered, or `limit` passed (false). Meanwhile it settles the loose rounds
    /// that fall due (the write may be in one of them).
    fn wait(&self, shared: &Arc<Shared>, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if *self.done.lock() {
                return true;
            }
            // A loose round sent after this look is seen at the next, an ACK timeout later at
            // most: before it is due.
            let next = settle_loose(shared).min(Instant::now() + shared.config.ack_timeout);
            let wake = deadline.min(next);
            let mut done = self.done.lock();
            while !*done {
                if self.cond.wait_until(&mut done, wake).timed_out() {
                    break;
                }
            }
            if *done {
                return true;
            }
            drop(done);
            // Writes that nobody sends (see `InFlightRound`) go now.
            combine_loose(shared, shared.combiner.queue.lock());
            if Instant::now() >= deadline {
                return false;
            }
        }
    }
}

/// Settles the loose rounds that are due and drops those a reader completed; returns when the
/// next of the others falls due.
fn settle_loose(shared: &Shared) -> Instant {
    let now = Instant::now();
    let mut next = now + Duration::from_secs(3600);
    let due: Vec<Round> = {
        let mut loose = shared.combiner.loose.lock();
        if loose.is_empty() {
            return next;
        }
        loose.retain(|round| !round.quorum().reached());
        let (due, waiting) = std::mem::take(&mut *loose).into_iter().partition(|round| round.due(now) <= now);
        *loose = waiting;
        next = loose.iter().map(|round| round.due(now)).fold(next, Instant::min);
        due
    };
    for round in due {
        settle_round(shared, round);
    }
    next
}

/// A write left to be answered by another thread, which its connection settles before it
/// serves anything else (see the module documentation).
pub struct PendingWrite {
    client: Arc<ClientOut>,
    answered: Arc<Answered>,
    /// The rounds this connection's thread sent as the combiner, which only it can wait for.
    rounds: Vec<Round>,
    /// How many of `rounds` carry the first batch, the one with this connection's write.
    own: usize,
    shared: Arc<Shared>,
}

impl PendingWrite {
    /// Returns once the write is answered and its answer sent: settles the rounds of the
    /// batch that carried it (answering their writes if no reader did), then waits for its own
    /// answer. The later batches this connection combined for others are returned unless a
    /// reader has them already: the connection owes them (see [`OwedRounds`]).
    pub fn settle(self) -> OwedRounds {
        let PendingWrite { client, answered, rounds, own, shared } = self;
        let mut owed = OwedRounds { rounds: Vec::new(), shared: Arc::clone(&shared) };
        for (i, round) in rounds.into_iter().enumerate() {
            if round.quorum().reached() {
                // The reader whose acknowledgement completed it answers every write of it.
                continue;
            }
            if i >= own {
                owed.rounds.push(round);
                continue;
            }
            settle_round(&shared, round);
        }
        // The round of this write is settled within its deadline and `SETTLE_AFTER`, after the
        // round in flight when it was queued (as long again, at most); the limit only keeps a
        // bug from hanging the connection.
        let limit =
            shared.config.ack_timeout * (2 * WRITE_DEADLINE_ACK_TIMEOUTS + 2) + Duration::from_secs(1);
        if !answered.wait(&shared, limit) {
            log::error!("a combined write was not answered within {} ms", limit.as_millis());
        }
        client.flush_unsent();
        owed
    }
}

/// Rounds a connection's thread sent as the combiner for other connections' writes, that no
/// reader has completed yet. Only this thread can wait for them, and nothing of its own waits
/// on them: it settles them when one is due (an ACK late: the wait marks a silent slave down;
/// the write's deadline: its writes are answered `TIMEOUT`), checking at each settle and after
/// `SETTLE_AFTER` of client silence, and all of them before the connection ends. Usually a
/// reader completes them first and they are only dropped. (Waiting for them before its next
/// request, as the combiner did, put its thread to sleep once for every later batch it sent.)
pub struct OwedRounds {
    rounds: Vec<Round>,
    shared: Arc<Shared>,
}

impl OwedRounds {
    /// True when nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.rounds.is_empty()
    }

    /// Takes over the rounds of `other`.
    pub fn absorb(&mut self, other: OwedRounds) {
        self.rounds.extend(other.rounds);
    }

    /// Settles the rounds that are due (all of them with `all`), dropping those a reader
    /// completed.
    pub fn settle(&mut self, all: bool) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.rounds.len() {
            let round = &self.rounds[i];
            if round.quorum().reached() {
                self.rounds.swap_remove(i);
                continue;
            }
            if !all && round.due(now) > now {
                i += 1;
                continue;
            }
            settle_round(&self.shared, self.rounds.swap_remove(i));
        }
    }
}

/// Waits for a round no reader has completed yet, as a blocking write does, and runs its
/// finish with how it ended, unless a reader completed it meanwhile (then the reader answers
/// its writes).
fn settle_round(shared: &Shared, mut round: Round) {
    let quorum = Arc::clone(round.quorum());
    let result = round.wait(shared);
    drop(round);
    if let Some(finish) = quorum.take_finish() {
        finish(result);
    }
}

/// Queues a write of `value` (`None`: a delete) under `key`, to be answered on `client`; if no
/// other connection is combining, combines and sends everything queued.
pub(super) fn write(shared: &Arc<Shared>, key: String, value: Value, client: &Arc<ClientOut>) -> Answer {
    // This thread settled its last write before it came here: what its reply channel still
    // holds is late, and the rounds it may send below share it.
    drain_replies();
    let answered = Arc::new(Answered::default());
    let queued = Queued {
        key,
        value,
        client: Arc::clone(client),
        answered: Arc::clone(&answered),
        started: Instant::now(),
        _inflight: InFlight::new(shared),
    };
    let mut queue = shared.combiner.queue.lock();
    queue.writes.push(queued);
    let mut rounds = Vec::new();
    let mut own = 0;
    if !queue.busy {
        combine(shared, &mut queue, &mut rounds, false, |n| {
            if own == 0 {
                // The first batch holds this connection's write.
                own = n.max(1);
            }
        });
    }
    drop(queue);
    let (shared, client) = (Arc::clone(shared), Arc::clone(client));
    Answer::Pending(PendingWrite { client, answered, rounds, own, shared })
}

/// Logs `batch` and sends it to every connected slave, adding its rounds to `rounds`; a batch
/// refused before it was sent is answered here.
fn send_batch(shared: &Arc<Shared>, batch: Vec<Queued>, rounds: &mut Vec<Round>, loose: bool) {
    // Refused before anything is logged when a majority is not even connected.
    if let Err(why) = quorum_connected(shared) {
        return answer_all(shared, batch, |_| Reply::Err(ErrorReply::Unavailable(why.clone())));
    }
    let epoch = shared.epoch();
    // Unsettled until handed to every link (see `Wal::append_tracked`).
    let run =
        match shared.wal.append_stores_tracked(batch.iter().map(|w| (w.key.as_str(), w.value.as_deref()))) {
            Ok(run) => run,
            Err(e) => {
                let why = format!("the write-ahead log cannot be appended to, so nothing was written: {e}");
                return answer_all(shared, batch, |_| Reply::Err(ErrorReply::Unavailable(why.clone())));
            }
        };
    shared.stats.write_batches.fetch_add(1, Ordering::Relaxed);
    let writes: Vec<Logged> = batch
        .into_iter()
        .zip(run.first..=run.last)
        .map(|(w, seq)| Logged { stamp: Stamp::new(epoch, seq), w })
        .collect();
    {
        let mut index = shared.index.lock();
        for l in &writes {
            index.logged(&l.w.key, l.stamp, l.w.value.clone());
        }
    }
    crate::failpoint::failpoint("after-append");
    // The links are taken after the append: a slave attached before this line is sent the
    // writes here, one attached after it finds them in the index it is resynced from.
    let (links, need) = match quorum_links(shared) {
        Ok(q) => q,
        Err(why) => return conclude_all(shared, writes, Replicated::Short(0), 0, Some(&why)),
    };
    let deadline = Instant::now() + shared.config.ack_timeout * WRITE_DEADLINE_ACK_TIMEOUTS;
    let chunks = batches(writes.iter().map(|l| batch_item_bound(&l.w.key, l.w.value.as_deref())));
    let mut writes = writes.into_iter();
    let mut body = Vec::with_capacity(256);
    for chunk in chunks {
        let message: Vec<Logged> = writes.by_ref().take(chunk.len()).collect();
        body.clear();
        let items = message.iter().map(|l| (l.stamp, l.w.key.as_str(), l.w.value.as_deref()));
        encode_batch_body(epoch, items, &mut body);
        let count = message.len() as u64;
        let finish_shared = Arc::clone(shared);
        let in_flight = InFlightRound::new(shared);
        let finish: Finish = Box::new(move |result| {
            conclude_all(&finish_shared, message, result, need, None);
            in_flight.end();
        });
        let quorum = Arc::new(AckCount::with_finish(need, Some(finish)));
        let replies = if loose { Replies::Loose(&shared.combiner.nowhere) } else { Replies::ThisThread };
        rounds.push(Round::send_body(shared, links.clone(), &quorum, &body, deadline, count, replies));
    }
    drop(run);
}

/// A queued write with its place in the log.
struct Logged {
    w: Queued,
    stamp: Stamp,
}

/// Answers every write of a message whose round ended with `result`: commits them all and
/// answers `OK`, or queues them for repair (or steps down) and answers `TIMEOUT`. `why` says
/// why the round never started, if it did not; `need` is its majority.
fn conclude_all(shared: &Shared, writes: Vec<Logged>, result: Replicated, need: usize, why: Option<&str>) {
    let timeout = |l: &Logged, what: String| {
        Reply::Err(ErrorReply::Timeout(format!(
            "{what}; the write is logged at version {} and may still take effect",
            l.stamp.seq
        )))
    };
    let replies: Vec<Reply> = match result {
        Replicated::Majority => {
            commit_writes(shared, writes.iter().map(|l| (l.w.key.as_str(), l.stamp, l.w.value.clone())));
            writes.iter().map(|l| Reply::Ok(l.stamp.seq)).collect()
        }
        Replicated::Short(acked) => {
            shared.repair_queue.lock().extend(writes.iter().map(|l| l.w.key.clone()));
            let what = match why {
                Some(why) => format!("{why} after the write was logged"),
                None => format!("{} of {need} acknowledgements in time", acked.count_ones()),
            };
            writes.iter().map(|l| timeout(l, what.clone())).collect()
        }
        Replicated::Fenced(newer) => {
            shared.step_down(newer);
            let what = format!("superseded by a master of epoch {newer} while writing");
            writes.iter().map(|l| timeout(l, what.clone())).collect()
        }
    };
    for (l, reply) in writes.into_iter().zip(replies) {
        answer(shared, l.w, &reply);
    }
}

/// Answers every write of `batch` with `reply(write)`; nothing of it was logged.
fn answer_all(shared: &Shared, batch: Vec<Queued>, reply: impl Fn(&Queued) -> Reply) {
    for w in batch {
        let r = reply(&w);
        answer(shared, w, &r);
    }
}

fn answer(shared: &Shared, w: Queued, reply: &Reply) {
    let kind = if w.value.is_some() { CommandKind::Write } else { CommandKind::Delete };
    w.client.answer_write(shared, kind, reply, w.started, || w.answered.set());
}

/// Splits a run of writes of the given sizes ([`batch_item_bound`]) into the index ranges of
/// its `MSET`s: at most [`MAX_BATCH`] writes and [`MAX_BATCH_BYTES`] (a single write may be
/// bigger: it goes alone), so every `MSET` fits a peer line.
pub(super) fn batches(sizes: impl Iterator<Item = usize>) -> Vec<std::ops::Range<usize>> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes, mut len) = (0, 0, 0);
    for (i, size) in sizes.enumerate() {
        if i > start && (i - start >= MAX_BATCH || bytes + size > MAX_BATCH_BYTES) {
            chunks.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
        len = i + 1;
    }
    if start < len {
        chunks.push(start..len);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(values: &[usize]) -> impl Iterator<Item = usize> + '_ {
        values.iter().map(|&n| batch_item_bound("k0", Some(&vec![b'x'; n])))
    }

    #[test]
    fn a_batch_is_cut_into_messages_that_fit_a_peer_line() {
        assert_eq!(batches(sizes(&[10; 5000])), vec![0..MAX_BATCH, MAX_BATCH..5000]);
        let max = crate::limits::MAX_VALUE;
        // Each of the biggest values goes alone, and small ones after them share a message.
        assert_eq!(batches(sizes(&[max, max, 5, 5])), vec![0..1, 1..2, 2..4]);
        assert_eq!(batches(sizes(&[])), Vec::<std::ops::Range<usize>>::new());
        let third: Vec<usize> = sizes(&[max / 3; 20]).collect();
        for chunk in batches(third.iter().copied()) {
            let bytes: usize = third[chunk.clone()].iter().sum();
            assert!(bytes <= MAX_BATCH_BYTES || chunk.len() == 1, "{bytes}");
        }
    }
}
