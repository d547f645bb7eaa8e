//! Reads: from the master's committed copy, or from a slave in sync (`--read-from`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::*;

/// The majority, if this master holds read leases from a majority of the members; otherwise
/// the error to answer. Every answer derived from this master's state — a value, or
/// `NOT_FOUND` — needs this first: a master that was cut off or superseded must not answer from
/// a state that may be stale. It collects nothing: every read passes here.
pub(super) fn read_lease(shared: &Shared) -> Result<usize, Reply> {
    let unavailable = |why| Reply::Err(ErrorReply::Unavailable(why));
    let members = shared.members.lock();
    let need = quorum_of(&members).map_err(unavailable)?;
    let now = shared.now_us();
    let leased = members.live().filter(|l| l.lease_until_us.load(Ordering::Acquire) > now).count();
    if leased < need {
        return Err(unavailable(format!("read lease held from {leased} members, {need} needed")));
    }
    Ok(need)
}

pub(super) fn read(shared: &Arc<Shared>, key: &str) -> Reply {
    if let Err(reply) = read_lease(shared) {
        return reply;
    }
    // The acknowledged (committed) write only: a stamp and a shared value, not a copy of it yet.
    let Some(acked) = shared.index.lock().get(key).map(|s| s.committed.clone()) else {
        shared.stats.reads.fetch_add(1, Ordering::Relaxed);
        return Reply::NotFound;
    };
    let committed = acked.0;
    if committed == Stamp::default() || shared.config.read_from == ReadFrom::Master {
        // Never acknowledged (its write timed out): NOT_FOUND. Otherwise the master's copy,
        // which is the truth while it holds the lease.
        shared.stats.reads.fetch_add(1, Ordering::Relaxed);
        return committed_reply(&acked);
    }
    // `--read-from slaves`: one slave in sync, checked against the committed stamp.
    let links = shared.members.lock().live_links();
    let mut synced: Vec<&Arc<Link>> = links.iter().filter(|l| l.is_synced()).collect();
    synced.shuffle(&mut rand::thread_rng());
    let command = Command::Get { key: key.to_string() };
    let epoch = shared.epoch();
    for link in synced {
        let rid = shared.rid();
        let answer = with_replies(|tx, rx| {
            if !link.send(rid, epoch, &command, Some(tx)) {
                return None;
            }
            link.requests.fetch_add(1, Ordering::Relaxed);
            let deadline = Instant::now() + shared.config.ack_timeout;
            Some(loop {
                match recv_parked(rx, deadline) {
                    Ok(ack) if ack.rid != rid => continue,
                    other => break other,
                }
            })
        });
        let Some(answer) = answer else {
            continue;
        };
        match answer {
            Ok(ack) => match ack.outcome {
                Outcome::Value(s, v) if s == committed => {
                    shared.stats.reads.fetch_add(1, Ordering::Relaxed);
                    return Reply::Value { version: s.seq, value: v };
                }
                Outcome::Value(s, _) | Outcome::Tomb(s) if s >= committed => {
                    shared.stats.reads.fetch_add(1, Ordering::Relaxed);
                    return committed_reply(&acked);
                }
                Outcome::Fenced(newer) => {
                    shared.step_down(newer);
                    return shared.not_primary();
                }
                Outcome::Value(..) | Outcome::Tomb(_) | Outcome::None => {
                    log::warn!("slave {} has a stale copy of '{key}'; repairing", link.id);
                    shared.repair_queue.lock().insert(key.to_string());
                }
                other => log::debug!("slave {} could not serve a read: {other:?}", link.id),
            },
            Err(_) => {
                link.forget(rid);
                link.kill(&format!(
                    "no answer to a read within {} ms",
                    shared.config.ack_timeout.as_millis()
                ));
            }
        }
    }
    // No slave answered with the committed copy: the master's copy is the truth while it holds
    // the lease.
    shared.stats.reads.fetch_add(1, Ordering::Relaxed);
    committed_reply(&acked)
}

/// The answer to a read of `committed`, a key's committed write.
pub(super) fn committed_reply(committed: &(Stamp, Value)) -> Reply {
    match &committed.1 {
        Some(v) => Reply::Value { version: committed.0.seq, value: v.to_vec() },
        None => Reply::NotFound,
    }
}
