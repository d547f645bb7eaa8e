//! What the master does for each client request, and the background repair that keeps every
//! key on a majority of members.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use rand::seq::SliceRandom;

use super::index::{KeyState, Value};
use super::link::{recv_parked, Ack, Finish, Link, Quorum};
use super::ReadFrom;
use super::{Shared, WRITE_DEADLINE_ACK_TIMEOUTS};
use crate::peer::{encode_body, Command, Outcome, Stamp};
use crate::protocol::{ErrorReply, Reply, Request};
use crate::quorum::majority;
use crate::wal::Record;

/// A client connection's write half, shared with the slave readers so that the one whose ACK
/// completes a write's quorum can answer the client itself (one thread hop sooner than waking
/// the connection's thread to do it).
pub struct ClientOut {
    stream: TcpStream,
    /// The part of an answer a slave reader could not send without blocking; the connection's
    /// thread sends it. A reader never blocks on a client's socket: a client that does not read
    /// its answers must not hold up a slave's link.
    unsent: Mutex<Vec<u8>>,
}

impl ClientOut {
    /// Wraps a client connection's socket.
    pub fn new(stream: TcpStream) -> ClientOut {
        ClientOut { stream, unsent: Mutex::new(Vec::new()) }
    }

    /// The connection's socket, for the connection's own thread.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The socket back, when nothing else shares it (a peer connection, told apart by its first
    /// line before any request could have shared it).
    pub fn into_stream(this: Arc<ClientOut>) -> Option<TcpStream> {
        Arc::into_inner(this).map(|out| out.stream)
    }

    /// Sends `bytes` without blocking; what the socket does not take is kept in `unsent`
    /// (behind anything kept before, so answers stay in order).
    fn send_or_keep(&self, bytes: &[u8]) {
        let mut unsent = self.unsent.lock();
        if !unsent.is_empty() {
            unsent.extend_from_slice(bytes);
            return;
        }
        // Non-blocking for this one call only (the connection's own thread blocks on the same
        // socket), through socket2's safe wrapper of send(2).
        let sent = socket2::SockRef::from(&self.stream)
            .send_with_flags(bytes, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            .unwrap_or(0);
        if sent < bytes.len() {
            unsent.extend_from_slice(&bytes[sent..]);
        }
    }

    /// Sends, blocking, whatever a reader left unsent.
    fn flush_unsent(&self) {
        let unsent = std::mem::take(&mut *self.unsent.lock());
        if !unsent.is_empty() {
            // A failed write closes the connection at its next read.
            let _ = (&self.stream).write_all(&unsent);
        }
    }
}

/// Carries out one parsed client request (not `QUIT` or `CLIENT`, which the connection handles).
///
/// `client`: the connection, when nothing is buffered for it and no further request is waiting,
/// so a write's answer may be sent by the slave reader that completes its quorum. `None` means
/// the answer was sent that way.
pub fn execute(shared: &Arc<Shared>, request: Request, client: Option<&Arc<ClientOut>>) -> Option<Reply> {
    match request {
        Request::Write { key, value } => guarded(shared, |s| write(s, key, Some(value.into()), client)),
        Request::Delete { key } => guarded(shared, |s| delete(s, key, client)),
        Request::Read { key } => guarded(shared, |s| Some(read(s, &key))),
        Request::Ping => Some(Reply::Pong),
        Request::Stats => Some(stats(shared)),
        Request::Members => Some(members_table(shared)),
        Request::Remove { id } => guarded(shared, |s| Some(remove_member(s, &id))),
        Request::Compact => {
            shared.compaction.request();
            Some(Reply::Done)
        }
        Request::Quit | Request::Hello | Request::Auth { .. } => Some(Reply::invalid("unexpected request")),
    }
}

/// Carries out a run of pipelined `WRITE`s of one connection together: one log append for the
/// run, each write sent to every connected slave (the links combine them into few sends), and
/// one wait until every write has its majority or the deadline passed. One reply per write,
/// in order; all are answered once all are done.
pub fn execute_writes(shared: &Arc<Shared>, writes: Vec<(String, Vec<u8>)>) -> Vec<Reply> {
    let n = writes.len();
    let mut replies = None;
    guarded(shared, |s| {
        replies = Some(write_run(s, writes));
        None
    })
    .map_or_else(|| replies.unwrap_or_default(), |refusal| vec![refusal; n])
}

fn write_run(shared: &Arc<Shared>, writes: Vec<(String, Vec<u8>)>) -> Vec<Reply> {
    let n = writes.len();
    let unavailable = |why: String| vec![Reply::Err(ErrorReply::Unavailable(why)); n];
    if let Err(why) = quorum_links(shared, false) {
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
    let (links, need) = match quorum_links(shared, false) {
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
        let mut rids = std::collections::HashMap::with_capacity(n * links.len());
        let quorums: Vec<Arc<Quorum>> = (0..n).map(|_| Arc::new(Quorum::new(need))).collect();
        let mut body = Vec::with_capacity(256);
        for (i, (key, stamp, value)) in writes.iter().enumerate() {
            body.clear();
            encode_body(epoch, &Command::store(*stamp, key, value.as_deref()), &mut body);
            for link in &links {
                let rid = shared.rid();
                if link.send_counted(rid, &body, tx, &quorums[i]) {
                    link.requests.fetch_add(1, Ordering::Relaxed);
                    rids.insert(rid, (i, Arc::clone(link)));
                }
            }
        }
        let mut fenced = None;
        // Failed answers per write: once more than the members that could still answer, the
        // write cannot reach its majority.
        let mut failed = vec![0usize; n];
        let complete =
            |quorums: &[Arc<Quorum>]| quorums.iter().all(|q| q.acked().count_ones() as usize >= need);
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
                    (Outcome::Ok(_), _) | (_, None) => {}
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
        (quorums, fenced)
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

/// Runs `f` only on a primary. The in-flight count is raised before the role is checked, so a
/// hand-off that switches the role and then waits for the count to reach zero cannot miss a
/// write that passed the check.
fn guarded(shared: &Arc<Shared>, f: impl FnOnce(&Arc<Shared>) -> Option<Reply>) -> Option<Reply> {
    shared.inflight.fetch_add(1, Ordering::SeqCst);
    let reply = match shared.role() {
        super::Role::Primary => f(shared),
        super::Role::Candidate => Some(Reply::Err(ErrorReply::Unavailable(format!(
            "taking over as primary (epoch {}): waiting for a majority of slaves",
            shared.epoch()
        )))),
        super::Role::Standby => Some(shared.not_primary()),
    };
    shared.inflight.fetch_sub(1, Ordering::SeqCst);
    reply
}

/// How a replication round ended.
enum Replicated {
    /// A majority acknowledged.
    Quorum,
    /// Fewer acknowledged before the deadline or before candidates ran out.
    Short(u64),
    /// A member has accepted a newer epoch: we are no longer the primary.
    Fenced(u64),
}

/// Live links and the majority of members, or the reason there is no quorum.
fn quorum_links(shared: &Shared, synced_only: bool) -> Result<(Vec<Arc<Link>>, usize), String> {
    let members = shared.members.lock();
    let count = members.count();
    let need = majority(count).ok_or("no slave has registered yet")?;
    let live: Vec<Arc<Link>> =
        members.live_links().into_iter().filter(|l| !synced_only || l.is_synced()).collect();
    if live.len() < need {
        return Err(format!("{} of {count} members connected, {need} needed", live.len()));
    }
    Ok((live, need))
}

fn write(shared: &Arc<Shared>, key: String, value: Value, client: Option<&Arc<ClientOut>>) -> Option<Reply> {
    // Refused before anything is logged when a majority is not even connected.
    if let Err(why) = quorum_links(shared, false) {
        return Some(Reply::Err(ErrorReply::Unavailable(why)));
    }
    let record = Record::store(&key, value.as_deref());
    let epoch = shared.epoch();
    // Unsettled until it has been handed to every link (see `Wal::append_tracked`).
    let appended = match shared.wal.append_tracked(&record) {
        Ok(appended) => appended,
        Err(e) => {
            return Some(Reply::Err(ErrorReply::Unavailable(format!(
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
    let (links, need) = match quorum_links(shared, false) {
        Ok(q) => q,
        Err(why) => {
            shared.repair_queue.lock().insert(key);
            return Some(Reply::Err(ErrorReply::Timeout(format!(
                "{why} after the write was logged at version {seq}; it may still take effect"
            ))));
        }
    };
    let command = Command::store(stamp, &key, value.as_deref());
    let deadline = Instant::now() + shared.config.ack_timeout * WRITE_DEADLINE_ACK_TIMEOUTS;
    // Only while this is the one request in flight: a reader that answers clients does it one
    // after another for all the ACKs it read at once, where the connections' own threads would
    // answer in parallel; under load that costs more than the wake-up it saves.
    let client = client.filter(|_| shared.inflight.load(Ordering::Relaxed) <= EARLY_ANSWER_MAX_INFLIGHT);
    let finish = client.map(|client| finish_write(shared, client, key.clone(), stamp, value.clone()));
    let quorum = Arc::new(Quorum::with_finish(need, finish));
    let result = replicate(shared, links, &quorum, epoch, &command, deadline, true);
    drop(appended);
    if client.is_some() && quorum.take_finish().is_none() {
        // A slave reader completed the quorum, committed the write and answered the client.
        return answered_by_reader(shared, &quorum, client?, seq);
    }
    Some(match result {
        Replicated::Quorum => {
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
    })
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
    let quorum = Arc::new(Quorum::new(need));
    match replicate(shared, links.to_vec(), &quorum, epoch, &command, deadline, false) {
        Replicated::Quorum => {
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

/// The most requests in flight (this one included) at which a write's answer is left to the
/// slave reader that completes its quorum.
const EARLY_ANSWER_MAX_INFLIGHT: usize = 1;

/// Marks an acknowledged write committed. Whoever answers the client calls this first, so a
/// read that follows the answer finds the write.
fn commit_write(shared: &Shared, key: &str, stamp: Stamp, value: Value) {
    crate::failpoint::failpoint("after-quorum");
    shared.index.lock().commit(key, stamp, value);
    shared.stats.writes.fetch_add(1, Ordering::Relaxed);
}

/// What the slave reader that completes a write's quorum runs: commit it and send `OK`.
fn finish_write(
    shared: &Arc<Shared>,
    client: &Arc<ClientOut>,
    key: String,
    stamp: Stamp,
    value: Value,
) -> Finish {
    let (shared, client) = (Arc::clone(shared), Arc::clone(client));
    Box::new(move |_acked| {
        commit_write(&shared, &key, stamp, value);
        let mut answer = Vec::with_capacity(32);
        Reply::Ok(stamp.seq).encode_into(&mut answer);
        client.send_or_keep(&answer);
    })
}

/// After a reader took the write's finish: waits until it has run, then sends what it could
/// not. `None`: the client has its answer.
fn answered_by_reader(shared: &Shared, quorum: &Quorum, client: &ClientOut, seq: u64) -> Option<Reply> {
    let deadline = Instant::now() + shared.config.ack_timeout;
    while !quorum.finished() {
        let now = Instant::now();
        if now >= deadline {
            // Not expected: the finish only commits and sends without blocking.
            log::error!("a slave reader took the answer to the write at version {seq} but did not send it");
            return Some(Reply::Err(ErrorReply::Timeout(format!(
                "the write at version {seq} was acknowledged by a majority but its answer was lost"
            ))));
        }
        // The reader unparks this thread when it delivers the ACK, after the finish.
        std::thread::park_timeout(deadline - now);
    }
    client.flush_unsent();
    None
}

fn delete(shared: &Arc<Shared>, key: String, client: Option<&Arc<ClientOut>>) -> Option<Reply> {
    let exists = shared.index.lock().get(&key).is_some_and(|s| s.committed.1.is_some());
    if !exists {
        // `NOT_FOUND` is a read of the key: it needs the read lease like any read.
        if let Err(reply) = read_lease(shared) {
            return Some(reply);
        }
        return Some(Reply::NotFound);
    }
    write(shared, key, None, client)
}

thread_local! {
    /// This thread's channel for slave replies, reused by every request it makes so that a
    /// request does not build a channel of its own. Replies are matched by request id, so a late
    /// reply to an earlier request is recognised and dropped.
    static REPLIES: (Sender<Ack>, Receiver<Ack>) = unbounded();
}

/// Runs `f` with this thread's reply channel, emptied of late replies to earlier requests.
fn with_replies<T>(f: impl FnOnce(&Sender<Ack>, &Receiver<Ack>) -> T) -> T {
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
/// ACKs are counted in a [`Quorum`] shared with the links, so this thread wakes once when the
/// quorum is complete, not once per ACK; it also wakes for every failure, and at each
/// member's ACK deadline.
fn replicate(
    shared: &Shared,
    candidates: Vec<Arc<Link>>,
    quorum: &Arc<Quorum>,
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
                break Replicated::Quorum;
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
                            break Replicated::Quorum;
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

/// The connected links and the majority, if this master holds read leases from a majority of
/// the members; otherwise the error to answer. Every answer derived from this master's state —
/// a value, or `NOT_FOUND` — needs this first: a master that was cut off or superseded must not
/// answer from a state that may be stale.
fn read_lease(shared: &Shared) -> Result<(Vec<Arc<Link>>, usize), Reply> {
    let (links, need) =
        quorum_links(shared, false).map_err(|why| Reply::Err(ErrorReply::Unavailable(why)))?;
    let now = shared.now_us();
    let leased = links.iter().filter(|l| l.lease_until_us.load(Ordering::Acquire) > now).count();
    if leased < need {
        return Err(Reply::Err(ErrorReply::Unavailable(format!(
            "read lease held from {leased} members, {need} needed"
        ))));
    }
    Ok((links, need))
}

fn read(shared: &Arc<Shared>, key: &str) -> Reply {
    let links = match read_lease(shared) {
        Ok((links, _)) => links,
        Err(reply) => return reply,
    };
    let Some(state) = shared.index.lock().get(key).cloned() else {
        shared.stats.reads.fetch_add(1, Ordering::Relaxed);
        return Reply::NotFound;
    };
    let committed = state.committed.0;
    if committed == Stamp::default() || shared.config.read_from == ReadFrom::Master {
        // Never acknowledged (its write timed out): NOT_FOUND. Otherwise the master's copy,
        // which is the truth while it holds the lease.
        shared.stats.reads.fetch_add(1, Ordering::Relaxed);
        return committed_reply(&state);
    }
    // `--read-from slaves`: one slave in sync, checked against the committed stamp.
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
                    return committed_reply(&state);
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
    committed_reply(&state)
}

fn committed_reply(state: &KeyState) -> Reply {
    match &state.committed.1 {
        Some(v) => Reply::Value { version: state.committed.0.seq, value: v.to_vec() },
        None => Reply::NotFound,
    }
}

fn remove_member(shared: &Arc<Shared>, id: &str) -> Reply {
    let mut members = shared.members.lock();
    let Some(slot) = members.slot_of(id) else {
        return Reply::invalid(format!("no member '{id}'"));
    };
    if members.live_links().iter().any(|l| l.slot == slot) {
        return Reply::invalid(format!("slave '{id}' is connected; stop it before removing it"));
    }
    let seq = match shared.wal.append(&Record::Remove { id: id.to_string() }) {
        Ok(seq) => seq,
        Err(e) => return Reply::Err(ErrorReply::Unavailable(format!("write-ahead log: {e}"))),
    };
    members.remove(id);
    log::info!("member {id} removed by an operator (now {} members)", members.count());
    Reply::Ok(seq)
}

fn stats(shared: &Arc<Shared>) -> Reply {
    let members = shared.members.lock().all();
    let keys = shared.index.lock().live_keys();
    let live = members.iter().filter(|(_, m)| m.link.as_ref().is_some_and(|l| l.is_synced())).count();
    let s = &shared.stats;
    // A standby's log is its copy of the other master's: its seq is how far it has followed.
    let seq = shared.wal.last_seq();
    let compaction = shared.compaction.status();
    let mut rows = vec![
        ("role", shared.role().name().to_string()),
        ("epoch", shared.epoch().to_string()),
        ("slaves", live.to_string()),
        ("members", members.len().to_string()),
        ("keys", keys.to_string()),
        ("seq", seq.to_string()),
        ("writes", s.writes.load(Ordering::Relaxed).to_string()),
        ("reads", s.reads.load(Ordering::Relaxed).to_string()),
        ("errors", s.errors.load(Ordering::Relaxed).to_string()),
        ("wal_bytes", shared.wal.bytes().to_string()),
        ("uptime_s", (shared.now_us() / 1_000_000).to_string()),
        ("connections", shared.connections.load(Ordering::Relaxed).to_string()),
        ("authoritative", u8::from(shared.state.is_authoritative()).to_string()),
        ("wal_error", shared.wal.trouble().unwrap_or_default()),
        ("compacting", u8::from(compaction.running || compaction.requested).to_string()),
        ("compactions", compaction.done.to_string()),
        ("compaction_base_bytes", compaction.base_bytes.to_string()),
        ("last_compaction_ms", compaction.last.map_or(0, |(_, took)| took.as_millis() as u64).to_string()),
        ("compaction_error", compaction.failed.map(|(why, _)| why).unwrap_or_default()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect::<Vec<_>>();
    rows.extend(shared.extra_stats.lock().iter().cloned());
    for (_, m) in &members {
        let link = m.link.as_ref();
        let requests = link.map_or(0, |l| l.requests.load(Ordering::Relaxed));
        rows.push((format!("slave.{}.state", m.id), member_state(m).to_string()));
        rows.push((format!("slave.{}.requests", m.id), requests.to_string()));
        // As the slave said in its last answer to a heartbeat.
        rows.push((
            format!("slave.{}.keys", m.id),
            link.map_or(0, |l| l.keys.load(Ordering::Relaxed)).to_string(),
        ));
        let resync = link.map_or(0, |l| l.resync_keys.load(Ordering::Relaxed));
        rows.push((format!("slave.{}.resync_keys", m.id), resync.to_string()));
    }
    Reply::Table { tag: "STAT", rows }
}

fn member_state(m: &super::members::Member) -> &'static str {
    match &m.link {
        Some(l) if l.is_synced() => "up",
        Some(l) if l.is_alive() => "syncing",
        _ => "down",
    }
}

fn members_table(shared: &Arc<Shared>) -> Reply {
    let rows = shared
        .members
        .lock()
        .all()
        .iter()
        .map(|(_, m)| (m.id.clone(), member_state(m).to_string()))
        .collect();
    Reply::Table { tag: "MEMBER", rows }
}

/// The repair thread: completes writes that timed out. (A key whose copies were lost with a
/// slave's memory is sent to it again when it re-registers: see `slaves::start_resync`.)
pub fn repair_loop(shared: &Arc<Shared>) {
    loop {
        std::thread::sleep(REPAIR_PAUSE);
        if shared.role() != super::Role::Primary {
            continue;
        }
        let Ok((links, need)) = quorum_links(shared, false) else {
            continue;
        };
        repair_timed_out(shared, &links, need);
        rewrite_stale(shared, &links, need);
    }
}

/// Writes again, in this epoch, each key a slave holds a newer copy of than the log.
fn rewrite_stale(shared: &Arc<Shared>, links: &[Arc<Link>], need: usize) {
    let keys: Vec<String> = shared.stale_keys.lock().drain().collect();
    for key in keys {
        let Some(state) = shared.index.lock().get(&key).cloned() else { continue };
        if state.latest.0 != state.committed.0 {
            // A write of the key is in flight or being repaired: it replaces the copy.
            continue;
        }
        if let Err(why) = relog(shared, links, need, shared.epoch(), key.clone(), state.committed.1) {
            log::warn!("cannot rewrite '{key}': {why}; retrying");
            shared.stale_keys.lock().insert(key);
        }
    }
}

/// Pause between repair rounds.
const REPAIR_PAUSE: Duration = super::REPAIR_INTERVAL;

/// Replicates the newest logged write of each key whose write did not reach a majority in
/// time, until it does; then it is committed.
fn repair_timed_out(shared: &Arc<Shared>, links: &[Arc<Link>], need: usize) {
    let keys: Vec<String> = shared.repair_queue.lock().drain().collect();
    for key in keys {
        let Some(state) = shared.index.lock().get(&key).cloned() else {
            continue;
        };
        let (stamp, value) = state.latest.clone();
        let command = Command::store(stamp, &key, value.as_deref());
        let deadline = Instant::now() + shared.config.ack_timeout * WRITE_DEADLINE_ACK_TIMEOUTS;
        let quorum = Arc::new(Quorum::new(need));
        match replicate(shared, links.to_vec(), &quorum, shared.epoch(), &command, deadline, false) {
            Replicated::Quorum => {
                if shared.index.lock().commit(&key, stamp, value) {
                    log::info!("repair completed the write of '{key}' at version {}", stamp.seq);
                }
            }
            Replicated::Short(_) => {
                shared.repair_queue.lock().insert(key);
            }
            Replicated::Fenced(newer) => {
                shared.step_down(newer);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_reader_never_blocks_on_a_client_that_does_not_read() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let out = ClientOut::new(server_side);
        // Far more than the socket buffers hold: a blocking send would never return, since the
        // client never reads.
        let answer = vec![b'x'; 64 << 20];
        out.send_or_keep(&answer);
        let kept = out.unsent.lock().len();
        assert!(kept > 0 && kept < answer.len(), "kept {kept} of {} bytes", answer.len());
        // Nothing overtakes what was kept: the connection's thread sends it all later, in order.
        out.send_or_keep(b"more");
        assert_eq!(out.unsent.lock().len(), kept + 4);
        assert!(out.unsent.lock().ends_with(b"xmore"));
    }
}
