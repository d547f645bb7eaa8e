//! Writes and deletes: one at a time, or a run of pipelined writes together.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::read::read_lease;
use super::*;
use crate::peer::{batch_item_bound, encode_batch_body};

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
    let epoch = shared.epoch();
    let run = match shared.wal.append_stores_tracked(writes.iter().map(|(k, v)| (k.as_str(), Some(v.as_slice())))) {
        Ok(run) => run,
        Err(e) => {
            return unavailable(format!(
                "the write-ahead log cannot be appended to, so nothing was written: {e}"
            ))
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
        let chunks = combine::batches(writes.iter().map(|(k, _, v)| batch_item_bound(k, v.as_deref())));
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
    let quorum = Arc::new(AckCount::new(need));
    let result = replicate(shared, links, &quorum, epoch, &command, deadline, true);
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
