//! Writes and deletes: one at a time, or a run of pipelined writes together.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::read::read_lease;
use super::*;
use crate::metrics::CommandKind;
use crate::peer::{batch_item_bound, encode_batch_body, MAX_BATCH, MAX_BATCH_BYTES};

/// Carries out a run of pipelined `WRITE`s of one connection together: one log append for the
/// run, each write sent to every connected slave (the links combine them into few sends), and
/// one wait until every write has its majority or the deadline passed. One reply per write,
/// in order; all are answered once all are done.
pub fn execute_writes(shared: &Arc<Shared>, writes: Vec<(String, Vec<u8>)>) -> Vec<Reply> {
    let n = writes.len();
    guarded(shared, |s| write_run(s, writes), |refusal| vec![refusal; n])
}

pub(super) fn write_run(shared: &Arc<Shared>, writes: Vec<(String, Vec<u8>)>) -> Vec<Reply> {
    let n = writes.len();
    let unavailable = |why: String| vec![Reply::Err(ErrorReply::Unavailable(why)); n];
    if let Err(why) = quorum_links(shared) {
        return unavailable(why);
    }
    let records: Vec<Record> = writes.iter().map(|(k, v)| Record::store(k, Some(v))).collect();
    let epoch = shared.epoch();
    let run = match shared.wal.append_many_tracked(&records) {
        Ok(run) => run,
        Err(e) => {
            return unavailable(format!(
                "the write-ahead log cannot be appended to, so nothing was written: {e}"
            ))
        }
    };
    drop(records);
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
            return vec![
                Reply::Err(ErrorReply::Timeout(format!(
                    "{why} after the writes were logged; they may still take effect"
                )));
                n
            ];
        }
    };
    let deadline = Instant::now() + shared.config.ack_timeout * WRITE_DEADLINE_ACK_TIMEOUTS;
    let outcome = with_replies(|tx, rx| {
        // The run goes to each slave as few MSETs as its size allows, each one message with one
        // acknowledgement (and one quorum) for all its writes.
        let chunks = batches(&writes);
        let mut rids = std::collections::HashMap::with_capacity(chunks.len() * links.len());
        let quorums: Vec<Arc<AckCount>> = chunks.iter().map(|_| Arc::new(AckCount::new(need))).collect();
        let mut body = Vec::with_capacity(256);
        for (i, chunk) in chunks.iter().enumerate() {
            body.clear();
            let items = writes[chunk.clone()].iter().map(|(k, s, v)| (*s, k.as_str(), v.as_deref()));
            encode_batch_body(epoch, items, &mut body);
            for link in &links {
                let rid = shared.rid();
                if link.send_counted(rid, &body, tx, &quorums[i]) {
                    link.requests.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    rids.insert(rid, (i, Arc::clone(link)));
                }
            }
        }
        let n = chunks.len();
        let mut fenced = None;
        // Failed answers per write: once more than the members that could still answer, the
        // write cannot reach its majority.
        let mut failed = vec![0usize; n];
        let complete =
            |quorums: &[Arc<AckCount>]| quorums.iter().all(|q| q.acked().count_ones() as usize >= need);
        while fenced.is_none() && !complete(&quorums) {
            let short = (0..n).any(|i| {
                quorums[i].acked().count_ones() as usize + links.len().saturating_sub(failed[i]) < need
            });
            if short || Instant::now() >= deadline {
                break;
            }
            // A timeout is noticed at the top of the loop.
            if let Ok(ack) = recv_parked(rx, deadline) {
                match (ack.outcome, rids.get(&ack.rid)) {
                    (Outcome::Applied(_), _) | (_, None) => {}
                    (Outcome::Fenced(newer), _) => fenced = Some(newer),
                    (other, Some((i, _))) => {
                        log::debug!("slave slot {} did not apply a pipelined write: {other:?}", ack.slot);
                        failed[*i] += 1;
                    }
                }
            }
        }
        for (rid, (_, link)) in rids {
            link.forget(rid);
        }
        // Each write's quorum is its batch's.
        let per_write: Vec<Arc<AckCount>> =
            chunks.iter().zip(&quorums).flat_map(|(c, q)| c.clone().map(move |_| Arc::clone(q))).collect();
        (per_write, fenced)
    });
    drop(run);
    let (quorums, fenced) = outcome;
    if let Some(newer) = fenced {
        shared.step_down(newer);
        return vec![
            Reply::Err(ErrorReply::Timeout(format!(
                "superseded by a master of epoch {newer} while writing; outcome unknown"
            )));
            n
        ];
    }
    writes
        .into_iter()
        .zip(quorums)
        .map(|((key, stamp, value), quorum)| {
            let acked = quorum.acked().count_ones() as usize;
            if acked >= need {
                commit_write(shared, &key, stamp, value);
                Reply::Ok(stamp.seq)
            } else {
                shared.repair_queue.lock().insert(key);
                Reply::Err(ErrorReply::Timeout(format!(
                    "{acked} of {need} acknowledgements in time; the write is logged at version {} and may still take effect",
                    stamp.seq
                )))
            }
        })
        .collect()
}

/// Splits a run into the index ranges of its `MSET`s: at most [`MAX_BATCH`] writes and
/// [`MAX_BATCH_BYTES`] (a single write may be bigger: it goes alone), so every `MSET` fits a
/// peer line.
fn batches(writes: &[(String, Stamp, Value)]) -> Vec<std::ops::Range<usize>> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (key, _, value)) in writes.iter().enumerate() {
        let size = batch_item_bound(key, value.as_deref());
        if i > start && (i - start >= MAX_BATCH || bytes + size > MAX_BATCH_BYTES) {
            chunks.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < writes.len() {
        chunks.push(start..writes.len());
    }
    chunks
}

pub(super) fn write(
    shared: &Arc<Shared>,
    key: String,
    value: Value,
    client: Option<&Arc<ClientOut>>,
) -> Answer {
    // Refused before anything is logged when a majority is not even connected.
    if let Err(why) = quorum_links(shared) {
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
    let started = Instant::now();
    let finish =
        client.map(|client| finish_write(shared, client, key.clone(), stamp, value.clone(), started));
    let quorum = Arc::new(AckCount::with_finish(need, finish));
    let mut round = Round::send(shared, links, &quorum, epoch, &command, deadline, true);
    drop(appended);
    if let Some(client) = client {
        let (shared, client) = (Arc::clone(shared), Arc::clone(client));
        return Answer::Pending(PendingWrite { shared, client, round, key, stamp, value, started });
    }
    let result = round.wait(shared);
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

/// A write sent to the slaves whose client's connection did not wait for it: the slave reader
/// whose ACK completes its quorum commits it and answers the client (one thread hop and one
/// sleep of the connection's thread fewer than waking it to do so). The connection
/// [`settle`](PendingWrite::settle)s it before it serves its next request, or when the
/// client has sent nothing for a while, so that replies stay in order, a request that follows
/// sees the write, and a write that cannot reach its majority is answered all the same.
pub struct PendingWrite {
    shared: Arc<Shared>,
    client: Arc<ClientOut>,
    round: Round,
    key: String,
    stamp: Stamp,
    value: Value,
    started: Instant,
}

impl PendingWrite {
    /// Returns once the write is answered: at once if a reader has done it; else after
    /// waiting for its quorum as a blocking write does (marking silent slaves down), and
    /// answering it here if no reader did.
    pub fn settle(mut self) {
        let quorum = Arc::clone(self.round.quorum());
        if !quorum.finished() {
            let result = self.round.wait(&self.shared);
            match quorum.take_finish() {
                Some(finish) => {
                    let PendingWrite { shared, client, round, key, stamp, value, started } = self;
                    drop(round);
                    let kind = write_kind(&value);
                    let reply = conclude(&shared, result, key, stamp, value, quorum.need());
                    client.answer_write(&shared, kind, &reply, started);
                    client.flush_unsent();
                    // It carries the write's place in `Shared::inflight`: released once answered.
                    drop(finish);
                    return;
                }
                None => wait_for_reader(&self.shared, &quorum, self.stamp.seq),
            }
        }
        self.client.flush_unsent();
    }
}

/// What the slave reader that completes a write's quorum runs: commit it and send `OK`.
fn finish_write(
    shared: &Arc<Shared>,
    client: &Arc<ClientOut>,
    key: String,
    stamp: Stamp,
    value: Value,
    started: Instant,
) -> Finish {
    let inflight = InFlight::new(shared);
    let client = Arc::clone(client);
    Box::new(move |_acked| {
        let kind = write_kind(&value);
        commit_write(inflight.shared(), &key, stamp, value);
        client.answer_write(inflight.shared(), kind, &Reply::Ok(stamp.seq), started);
    })
}

/// What the metrics call a write of `value`.
fn write_kind(value: &Value) -> CommandKind {
    if value.is_some() {
        CommandKind::Write
    } else {
        CommandKind::Delete
    }
}

/// After a reader took the write's finish: waits until it has run.
fn wait_for_reader(shared: &Shared, quorum: &AckCount, seq: u64) {
    let deadline = Instant::now() + shared.config.ack_timeout;
    while !quorum.finished() {
        let now = Instant::now();
        if now >= deadline {
            // Not expected: the finish only commits and sends without blocking.
            log::error!("a slave reader took the answer to the write at version {seq} but did not send it");
            return;
        }
        // The reader unparks this thread when it delivers the ACK, after the finish.
        std::thread::park_timeout(deadline - now);
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
    match replicate(shared, links.to_vec(), &quorum, epoch, &command, deadline, false) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(values: &[usize]) -> Vec<(String, Stamp, Value)> {
        values
            .iter()
            .enumerate()
            .map(|(i, &n)| (format!("k{i}"), Stamp::new(1, i as u64), Some(vec![b'x'; n].into())))
            .collect()
    }

    #[test]
    fn a_run_is_cut_into_messages_that_fit_a_peer_line() {
        assert_eq!(batches(&run(&[10; 5000])), vec![0..MAX_BATCH, MAX_BATCH..5000]);
        let max = crate::limits::MAX_VALUE;
        // Each of the biggest values goes alone, and small ones after them share a message.
        assert_eq!(batches(&run(&[max, max, 5, 5])), vec![0..1, 1..2, 2..4]);
        assert_eq!(batches(&[]), Vec::<std::ops::Range<usize>>::new());
        for chunk in batches(&run(&[max / 3; 20])) {
            let bytes: usize =
                run(&[max / 3; 20])[chunk].iter().map(|(k, _, v)| batch_item_bound(k, v.as_deref())).sum();
            assert!(
                bytes <= MAX_BATCH_BYTES || bytes <= batch_item_bound("k0", Some(&vec![0; max])),
                "{bytes}"
            );
        }
    }
}
