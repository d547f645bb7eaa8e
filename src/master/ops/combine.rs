//! Writes of different connections, combined: one log append, one `MSET` per slave and one
//! acknowledgement per slave for all the writes that were waiting together.
//!
//! A connection whose write may be answered by another thread (nothing else waits on it, see
//! `Session::early`) queues the write in the [`Combiner`] and goes back to reading its client.
//! If no connection is combining, it becomes the combiner: it takes every queued write (its own
//! among them), appends them to the log in one batch, records them in the index, and sends them
//! to every connected slave as one `MSET` (a few, for a batch too big for one line), each with
//! one [`AckCount`]; then it takes what was queued meanwhile, until the queue is empty (flat
//! combining, as the log's group commit and the links' sends do). The slave reader whose
//! acknowledgement completes a message's majority runs its [`Finish`]: it commits every write
//! of the message in the index, then answers each write's client (without blocking, see
//! [`ClientOut::send_or_keep`]) — so under load a write costs its connection's thread one
//! queue push, and the log, the slaves and the readers one step per batch, not per write.
//!
//! A round that no reader completes (no majority in time, a slave that joined a newer epoch) is
//! settled by the combiner's connection, which waited for nothing so far: before it serves its
//! next request, or when its client has been silent for `SETTLE_AFTER`, it waits for each of
//! its rounds as a blocking write does (marking silent slaves down, up to the write deadline)
//! and, where no reader ran the finish, runs it with how the round ended: every write of the
//! message is answered `TIMEOUT` and queued for repair. Every other connection only waits, when
//! it settles, until its write was answered, so its replies stay in order and a request that
//! follows a write sees it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::*;
use crate::metrics::CommandKind;
use crate::peer::{batch_item_bound, encode_batch_body, MAX_BATCH, MAX_BATCH_BYTES};

/// The writes queued for the next combined batch.
#[derive(Default)]
pub struct Combiner {
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    writes: Vec<Queued>,
    /// A connection's thread is combining: it takes every write queued before it stops.
    busy: bool,
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

    /// Waits until answered, or `limit` passed (false).
    fn wait(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut done = self.done.lock();
        while !*done {
            if self.cond.wait_until(&mut done, deadline).timed_out() {
                return *done;
            }
        }
        true
    }
}

/// A write left to be answered by another thread, which its connection settles before it
/// serves anything else (see the module documentation).
pub struct PendingWrite {
    client: Arc<ClientOut>,
    answered: Arc<Answered>,
    /// The rounds this connection's thread sent as the combiner, which only it can wait for.
    rounds: Vec<Round>,
    shared: Arc<Shared>,
}

impl PendingWrite {
    /// Returns once the write is answered and its answer sent: waits for the rounds this
    /// connection combined (answering their writes if no reader did), then for its own write.
    pub fn settle(self) {
        let PendingWrite { client, answered, rounds, shared } = self;
        for mut round in rounds {
            let quorum = Arc::clone(round.quorum());
            if quorum.finished() {
                continue;
            }
            let result = round.wait(&shared);
            drop(round);
            match quorum.take_finish() {
                Some(finish) => finish(result),
                None => wait_for_reader(&shared, &quorum),
            }
        }
        // The combiner settles the round of this write within its deadline and `SETTLE_AFTER`;
        // the limit only keeps a bug from hanging the connection.
        let limit = shared.config.ack_timeout * (WRITE_DEADLINE_ACK_TIMEOUTS + 2) + Duration::from_secs(1);
        if !answered.wait(limit) {
            log::error!("a combined write was not answered within {} ms", limit.as_millis());
        }
        client.flush_unsent();
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
    if !queue.busy {
        queue.busy = true;
        loop {
            let batch = std::mem::take(&mut queue.writes);
            if batch.is_empty() {
                queue.busy = false;
                break;
            }
            MutexGuard::unlocked(&mut queue, || send_batch(shared, batch, &mut rounds));
        }
    }
    drop(queue);
    let (shared, client) = (Arc::clone(shared), Arc::clone(client));
    Answer::Pending(PendingWrite { client, answered, rounds, shared })
}

/// Logs `batch` and sends it to every connected slave, adding its rounds to `rounds`; a batch
/// refused before it was sent is answered here.
fn send_batch(shared: &Arc<Shared>, batch: Vec<Queued>, rounds: &mut Vec<Round>) {
    // Refused before anything is logged when a majority is not even connected.
    if let Err(why) = quorum_links(shared) {
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
        let finish: Finish =
            Box::new(move |result| conclude_all(&finish_shared, message, result, need, None));
        let quorum = Arc::new(AckCount::with_finish(need, Some(finish)));
        rounds.push(Round::send_body(shared, links.clone(), &quorum, &body, deadline, count));
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
    w.client.answer_write(shared, kind, reply, w.started);
    w.answered.set();
}

/// After a reader took a round's finish: waits until it has run (it commits and hands the
/// answers to the clients' sockets without blocking).
fn wait_for_reader(shared: &Shared, quorum: &AckCount) {
    let deadline = Instant::now() + shared.config.ack_timeout;
    while !quorum.finished() {
        let now = Instant::now();
        if now >= deadline {
            log::error!("a slave reader took the answers of a combined round but did not send them in time");
            return;
        }
        // The reader unparks this thread when it delivers the ACK, after the finish.
        std::thread::park_timeout(deadline - now);
    }
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
