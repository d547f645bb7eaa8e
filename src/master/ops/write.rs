//! Writes and deletes: one at a time, or a run of pipelined writes together.

use std::sync::Arc;
use std::time::Instant;

use super::read::read_lease;
use super::*;
use crate::peer::{batch_item_bound, encode_batch_body};

/// Carries out a run of pipelined `WRITE`s of one connection together: one log append for the
/// run, sent to every connected slave as few `MSET`s as its size allows, and one wait until
/// every write has its majority or the deadline passed. One reply per write, in order; all are
/// answered once all are done.
pub fn execute_writes(shared: &Arc<Shared>, writes: Vec<(String, Vec<u8>)>) -> Vec<Reply> {
    match start_writes(shared, writes) {
        Ok(run) => run.finish(),
        Err(replies) => replies,
    }
}

/// Logs a run of pipelined writes and sends it to the slaves without waiting for their
/// acknowledgements: the connection can read and send its next run meanwhile, and
/// [`finish`](SentRun::finish) this one after. `Err`: the replies of a run refused or failed
/// before it was sent.
pub fn start_writes(shared: &Arc<Shared>, writes: Vec<(String, Vec<u8>)>) -> Result<SentRun, Vec<Reply>> {
    let n = writes.len();
    guarded(shared, |s| send_run(s, writes), |refusal| Err(vec![refusal; n]))
}

/// A run of writes logged and sent, whose acknowledgements are still coming in.
pub struct SentRun {
    shared: Arc<Shared>,
    writes: Vec<(String, Stamp, Value)>,
    /// Each `MSET`'s writes (a range of `writes`) and round.
    rounds: Vec<(std::ops::Range<usize>, Round)>,
    /// The majority the writes need.
    need: usize,
    /// The run's place in `Shared::inflight` until it is answered.
    _inflight: InFlight,
}

fn send_run(shared: &Arc<Shared>, writes: Vec<(String, Vec<u8>)>) -> Result<SentRun, Vec<Reply>> {
    let n = writes.len();
    let unavailable = |why: String| vec![Reply::Err(ErrorReply::Unavailable(why)); n];
    if let Err(why) = quorum_connected(shared) {
        return Err(unavailable(why));
    }
    let epoch = shared.epoch();
    let stores = writes.iter().map(|(k, v)| (k.as_str(), Some(v.as_slice())));
    let run = match shared.wal.append_stores_tracked(stores) {
        Ok(run) => run,
        Err(e) => {
            return Err(unavailable(format!(
                "the write-ahead log cannot be appended to, so nothing was written: {e}"
            )))
        }
    };
    let writes: Vec<(String, Stamp, Value)> = writes
        .into_iter()
        .zip(run.first..=run.last)
        .map(|((key, value), seq)| (key, Stamp::new(epoch, seq), Some(Arc::from(value))))
        .collect();
    {
        let mut index = shared.index.lock();
        for (key, stamp, value) in &writes {
            index.logged(key, *stamp, value.clone());
        }
    }
    let (links, need) = match quorum_links(shared) {
        Ok(q) => q,
        Err(why) => {
            let mut queue = shared.repair_queue.lock();
            queue.extend(writes.iter().map(|w| w.0.clone()));
            return Err(vec![
                Reply::Err(ErrorReply::Timeout(format!(
                    "{why} after the writes were logged; they may still take effect"
                )));
                n
            ]);
        }
    };
    let deadline = Instant::now() + shared.config.ack_timeout * WRITE_DEADLINE_ACK_TIMEOUTS;
    // Each MSET is one message with one acknowledgement (and one quorum) for all its writes.
    let chunks = combine::batches(writes.iter().map(|(k, _, v)| batch_item_bound(k, v.as_deref())));
    let mut rounds = Vec::with_capacity(chunks.len());
    let mut body = Vec::with_capacity(256);
    for chunk in chunks {
        body.clear();
        let items = writes[chunk.clone()].iter().map(|(k, s, v)| (*s, k.as_str(), v.as_deref()));
        encode_batch_body(epoch, items, &mut body);
        let quorum = Arc::new(AckCount::new(need));
        let requests = chunk.len() as u64;
        rounds.push((
            chunk,
            Round::send_body(shared, links.clone(), &quorum, &body, deadline, requests, Replies::ThisThread),
        ));
    }
    drop(run);
    Ok(SentRun { shared: Arc::clone(shared), writes, rounds, need, _inflight: InFlight::new(shared) })
}

impl SentRun {
    /// Waits for every `MSET` of the run; the replies, in order.
    pub fn finish(self) -> Vec<Reply> {
        let SentRun { shared, writes, rounds, need, _inflight } = self;
        let mut results = Vec::with_capacity(writes.len());
        for (chunk, mut round) in rounds {
            let result = round.wait(&shared);
            results.extend(chunk.map(|_| result));
        }
        if results.iter().all(|r| *r == Replicated::Majority) {
            // The usual case, under one lock of the index.
            commit_writes(&shared, writes.iter().map(|(k, s, v)| (k.as_str(), *s, v.clone())));
            return writes.iter().map(|(_, s, _)| Reply::Ok(s.seq)).collect();
        }
        writes
            .into_iter()
            .zip(results)
            .map(|((key, stamp, value), result)| conclude(&shared, result, key, stamp, value, need))
            .collect()
    }
}

pub(super) fn write(
    shared: &Arc<Shared>,
    key: String,
    value: Value,
    client: Option<&Arc<ClientOut>>,
) -> Answer {
    if let Some(client) = client {
        return combine::write(shared, key, value, client);
    }
    // Refused before anything is logged when a majority is not even connected.
    if let Err(why) = quorum_connected(shared) {
        return Answer::Reply(Reply::Err(ErrorReply::Unavailable(why)));
    }
    let record = Record::store(&key, value.as_deref());
    let epoch = shared.epoch();
    // Unsettled until it has been handed to every link (see `Wal::append_tracked`).
    let appended = match shared.wal.append_tracked(&record) {
        Ok(appended) => appended,
        Err(e) => {
            return Answer::Reply(Reply::Err(ErrorReply::Unavailable(format!(
                "the write-ahead log cannot be appended to, so nothing was written: {e}"
            ))));
        }
    };
    let seq = appended.seq;
    let stamp = Stamp::new(epoch, seq);
    shared.index.lock().logged(&key, stamp, value.clone());
    crate::failpoint::failpoint("after-append");
    // The links are taken after the append: a slave attached before this line is sent the
    // write here, one attached after it finds the write in the index it is resynced from.
    let (links, need) = match quorum_links(shared) {
        Ok(q) => q,
        Err(why) => {
            shared.repair_queue.lock().insert(key);
            return Answer::Reply(Reply::Err(ErrorReply::Timeout(format!(
                "{why} after the write was logged at version {seq}; it may still take effect"
            ))));
        }
    };
    let command = Command::store(stamp, &key, value.as_deref());
    let deadline = Instant::now() + shared.config.ack_timeout * WRITE_DEADLINE_ACK_TIMEOUTS;
    let quorum = Arc::new(AckCount::new(need));
    let result = Round::send(shared, links, &quorum, epoch, &command, deadline, true).wait(shared);
    drop(appended);
    Answer::Reply(conclude(shared, result, key, stamp, value, need))
}

/// The reply to a write whose round ended with `result`, from the thread that waited for it:
/// commits it, or queues it for repair, or steps down.
fn conclude(
    shared: &Shared,
    result: Replicated,
    key: String,
    stamp: Stamp,
    value: Value,
    need: usize,
) -> Reply {
    let seq = stamp.seq;
    match result {
        Replicated::Majority => {
            commit_write(shared, &key, stamp, value);
            Reply::Ok(seq)
        }
        Replicated::Short(acked) => {
            shared.repair_queue.lock().insert(key);
            Reply::Err(ErrorReply::Timeout(format!(
                "{} of {need} acknowledgements in time; the write is logged at version {seq} and may still take effect",
                acked.count_ones()
            )))
        }
        Replicated::Fenced(newer) => {
            shared.step_down(newer);
            Reply::Err(ErrorReply::Timeout(format!(
                "superseded by a master of epoch {newer} while writing; outcome unknown"
            )))
        }
    }
}

/// Logs and replicates `value` under `key` again, in `epoch`, on `links`; `Ok` once a majority
/// has it and it is committed. For a write a new master recovered from the slaves, and for a
/// key a slave holds a newer unacknowledged copy of, which only a newer stamp replaces.
pub fn relog(
    shared: &Shared,
    links: &[Arc<Link>],
    need: usize,
    epoch: u64,
    key: String,
    value: Value,
) -> Result<u64, String> {
    let appended =
        shared.wal.append_tracked(&Record::store(&key, value.as_deref())).map_err(|e| e.to_string())?;
    let stamp = Stamp::new(epoch, appended.seq);
    shared.index.lock().logged(&key, stamp, value.clone());
    let command = Command::store(stamp, &key, value.as_deref());
    let deadline = Instant::now() + shared.config.ack_timeout * WRITE_DEADLINE_ACK_TIMEOUTS;
    let quorum = Arc::new(AckCount::new(need));
    match Round::send(shared, links.to_vec(), &quorum, epoch, &command, deadline, false).wait(shared) {
        Replicated::Majority => {
            shared.index.lock().commit(&key, stamp, value);
            Ok(stamp.seq)
        }
        Replicated::Short(acked) => Err(format!("{} of {need} acknowledgements", acked.count_ones())),
        Replicated::Fenced(newer) => {
            shared.state.note_superseded(newer);
            Err(format!("a slave has joined epoch {newer}"))
        }
    }
}

pub(super) fn delete(shared: &Arc<Shared>, key: String, client: Option<&Arc<ClientOut>>) -> Answer {
    let exists = shared.index.lock().get(&key).is_some_and(|s| s.committed.1.is_some());
    if !exists {
        // `NOT_FOUND` is a read of the key: it needs the read lease like any read.
        if let Err(reply) = read_lease(shared) {
            return Answer::Reply(reply);
        }
        return Answer::Reply(Reply::NotFound);
    }
    write(shared, key, None, client)
}
