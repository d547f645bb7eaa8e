//! The master's side of its slaves: registration, the reader thread of each slave connection,
//! the resync of a slave that (re)joins, and heartbeats.
//!
//! Every connected slave is sent every write, so a slave that stays connected holds all of
//! them. The heartbeats of a primary tell each slave in sync how far that is (`PING <seq>`:
//! every write up to `seq` was sent before this message), and a slave reports the last such
//! position when it registers again ([`Registration::held`]). The master then sends it only the keys
//! written above that position, if its log shares that history
//! ([`History::resync_from`](super::history::History::resync_from)); a slave that lost its
//! memory, or was in sync with a history this log does not share, is sent every key. Either
//! way in the background: the slave takes new writes meanwhile, and the cluster serves.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::unbounded;

use super::link::Link;
use super::{Role, Shared, HEARTBEAT_MISSES};
use crate::framing::{LineError, LineReader};
use crate::master::index::KeyState;
use crate::peer::{
    batch_item_bound, encode_batch_body, Command, Outcome, Registration, Response, Stamp, MAX_BATCH_BYTES,
};
use crate::wal::Record;

/// Registers a slave and then reads its replies until the connection ends. Runs on the
/// connection's thread.
pub fn serve_slave(
    shared: &Arc<Shared>,
    stream: TcpStream,
    mut reader: LineReader<TcpStream>,
    hello: Registration,
) {
    let refuse = |why: String| {
        log::warn!("refused slave {}: {why}", hello.id);
        let _ = (&stream).write_all(format!("ERR {why}\n").as_bytes());
    };
    if shared.role() == Role::Standby {
        let to = shared.config.peer.clone().unwrap_or_else(|| "unknown".into());
        return refuse(format!("NOTPRIMARY {to}"));
    }
    let epoch = shared.epoch();
    let foreign_same_epoch = hello.epoch == epoch && !shared.welcomed.lock().contains(&hello.id);
    if hello.epoch > epoch || foreign_same_epoch {
        shared.step_down(hello.epoch.max(epoch));
        return refuse(format!(
            "FENCED the slave has joined epoch {} under another master; this master (epoch {epoch}) is stale",
            hello.epoch
        ));
    }
    let link = {
        let mut members = shared.members.lock();
        let slot = match members.slot_of(&hello.id) {
            Some(slot) => slot,
            None => {
                if !members.has_room() {
                    return refuse(format!("cluster full ({} members)", super::members::MAX_MEMBERS));
                }
                let seq = match shared.wal.append(&Record::Member { id: hello.id.clone() }) {
                    Ok(seq) => seq,
                    Err(e) => return refuse(format!("cannot log the new member: {e}")),
                };
                let Some(slot) = members.add(&hello.id, seq) else {
                    return refuse(format!("cluster full ({} members)", super::members::MAX_MEMBERS));
                };
                log::info!("new member {} (now {} members)", hello.id, members.count());
                slot
            }
        };
        // Two slaves given the same id would each replace the other's connection for ever:
        // while the member's connection is alive and answering, a second one is refused.
        if let Some(old) = members.link(slot).filter(|l| l.is_alive()) {
            let silent_us = shared.now_us().saturating_sub(old.last_heard_us.load(Ordering::Acquire));
            let limit_us = (shared.config.heartbeat * HEARTBEAT_MISSES).as_micros() as u64;
            if silent_us <= limit_us {
                let why = format!(
                    "slave id {} is already connected from {} (heard {} ms ago); give every slave its own --id",
                    hello.id,
                    old.peer,
                    silent_us / 1000
                );
                drop(members);
                return refuse(why);
            }
        }
        let Ok(write_half) = stream.try_clone() else {
            return;
        };
        // A slave joining a new epoch first waits out the lease it gave the old master, silent:
        // that is not a failure, so its silence is counted from after that wait.
        let grace = crate::peer::LEASE.as_micros() as u64;
        let link = Arc::new(
            Link::new(hello.id.clone(), slot, write_half, shared.now_us() + grace)
                .holding(hello.held, hello.max_seq == 0),
        );
        // A slave that holds writes the log lost (an OS crash with --fsync never) must never
        // see their versions reused.
        shared.wal.advance_seq(hello.max_seq);
        // WELCOME must be the first line the slave reads: once the link is attached, the
        // heartbeat and write paths may send on it at any moment.
        if (&stream).write_all(format!("WELCOME {epoch}\n").as_bytes()).is_err() {
            return;
        }
        shared.welcomed.lock().insert(link.id.clone());
        if let Some(old) = members.attach(slot, Arc::clone(&link)) {
            old.kill("the slave registered again on a new connection");
        }
        link
    };
    log::info!("slave {} registered from {} (epoch {epoch})", link.id, link.peer);
    if shared.role() == Role::Primary {
        start_resync(shared, &link);
    } else {
        // A candidate only needs to know the slave has joined its epoch: the answer to this
        // heartbeat comes after the slave has.
        let rid = shared.rid();
        link.record_ping(rid, shared.now_us());
        link.send(rid, epoch, &Command::PING, None);
    }
    read_replies(shared, &link, &mut reader);
    link.kill("connection closed");
    shared.members.lock().detach(&link);
}

fn read_replies(shared: &Shared, link: &Link, reader: &mut LineReader<TcpStream>) {
    loop {
        let line = match reader.read_line() {
            Ok(Some(line)) => line,
            Ok(None) | Err(LineError::Io(_)) => return,
            Err(LineError::TooLong) => {
                // Cannot happen between two dsm servers (see crate::limits); if it does, the
                // request it answers fails and the link goes on.
                let Ok(prefix) = reader.skip_long_line() else {
                    return;
                };
                let why = format!("reply longer than {} bytes", crate::limits::MAX_PEER_LINE);
                log::error!("slave {} sent a {why}", link.id);
                if let Some(rid) = crate::peer::leading_rid(&prefix) {
                    link.deliver(rid, Outcome::Err(why));
                }
                continue;
            }
        };
        link.last_heard_us.store(shared.now_us(), Ordering::Release);
        match Response::parse(line) {
            Ok(Response { rid, outcome }) => {
                match outcome {
                    Outcome::Pong(keys) => {
                        link.keys.store(keys, Ordering::Relaxed);
                        link.on_pong(rid);
                    }
                    // Also for a heartbeat, which nobody waits for: the slave has joined a
                    // newer epoch, so this master is stale.
                    Outcome::Fenced(newer) if newer > shared.epoch() => shared.step_down(newer),
                    _ => {}
                }
                link.deliver(rid, outcome);
            }
            Err(e) => {
                link.kill(&format!("sent a malformed reply: {e}"));
                return;
            }
        }
    }
}

/// How many resync writes may be outstanding to one slave at once: enough to keep the link
/// and the slave busy (they are combined into large sends and answered in large batches).
pub const RESYNC_WINDOW: usize = 4096;

/// Keys a resync sends with one `write(2)`: one `MSET` to a slave that registered empty, else
/// that many requests (each with its own acknowledgement).
pub const RESYNC_SEND_BATCH: usize = 256;

/// What a key takes in an `MSET` ([`batch_item_bound`]).
fn batch_size(key: &str, state: &KeyState) -> usize {
    batch_item_bound(key, state.latest.1.as_deref())
}

/// Starts sending `link` what it lacks, on a thread of its own (once per connection).
pub fn start_resync(shared: &Arc<Shared>, link: &Arc<Link>) {
    if !link.claim_resync() {
        return;
    }
    let sync_shared = Arc::clone(shared);
    let sync_link = Arc::clone(link);
    let _ = std::thread::Builder::new()
        .name(format!("sync-{}", link.id))
        .spawn(move || resync(&sync_shared, &sync_link));
}

/// Sends a slave that just registered every key written above the position it holds, then
/// marks it in sync.
fn resync(shared: &Arc<Shared>, link: &Arc<Link>) {
    let started = Instant::now();
    let epoch = shared.epoch();
    // A heartbeat first, so the slave's read lease is in place when it starts serving.
    let ping = shared.rid();
    link.record_ping(ping, shared.now_us());
    link.send(ping, epoch, &Command::PING, None);
    let from = shared.history.lock().resync_from(link.held, shared.wal.last_record());
    // Taken after the link was attached: a write logged before is here, a later one is sent
    // to the link by its writer.
    let keys = shared.index.lock().select(|s| s.latest.0.seq > from);
    log::info!(
        "resyncing slave {}: {} keys above seq {from} (it holds epoch {}'s log up to seq {}{})",
        link.id,
        keys.len(),
        link.held.epoch,
        link.held.seq,
        if link.stores_nothing { "; it stores nothing: keys go as MSETs" } else { "" }
    );
    let (tx, rx) = unbounded();
    // Request id -> the key it carries (the first of an MSET's), its stamp, and how many keys.
    let mut in_flight: std::collections::HashMap<u64, (String, Stamp, usize)> = Default::default();
    let mut in_flight_keys = 0;
    let mut iter = keys.into_iter().peekable();
    let stall = shared.config.ack_timeout * super::WRITE_DEADLINE_ACK_TIMEOUTS;
    let mut sent = 0u64;
    let mut body = Vec::new();
    loop {
        while in_flight_keys < RESYNC_WINDOW && iter.peek().is_some() {
            let room = (RESYNC_WINDOW - in_flight_keys).min(RESYNC_SEND_BATCH);
            let (ok, n) = if link.stores_nothing {
                // An empty slave cannot hold a newer copy of any key: the keys go as MSETs,
                // one request and one acknowledgement for each.
                let mut chunk = Vec::new();
                let mut bytes = 0;
                // (`chunk` is never empty after this: the first key always goes.)
                while let Some((key, state)) =
                    iter.next_if(|(k, s)| chunk.is_empty() || bytes + batch_size(k, s) <= MAX_BATCH_BYTES)
                {
                    bytes += batch_size(&key, &state);
                    chunk.push((key, state.latest));
                    if chunk.len() == room {
                        break;
                    }
                }
                let rid = shared.rid();
                body.clear();
                let writes =
                    chunk.iter().map(|(key, (stamp, value))| (*stamp, key.as_str(), value.as_deref()));
                encode_batch_body(epoch, writes, &mut body);
                let ok = link.send_body(rid, &body, Some(&tx));
                let n = chunk.len();
                let (first, (stamp, _)) = chunk.swap_remove(0);
                in_flight.insert(rid, (first, stamp, n));
                (ok, n)
            } else {
                // Each key its own request, so a key the slave holds newer is reported.
                let chunk: Vec<(u64, String, KeyState)> =
                    iter.by_ref().take(room).map(|(key, state)| (shared.rid(), key, state)).collect();
                let stores =
                    chunk.iter().map(|(rid, key, s)| (*rid, s.latest.0, key.as_str(), s.latest.1.as_deref()));
                let ok = link.send_stores(epoch, stores, &tx);
                let n = chunk.len();
                for (rid, key, state) in chunk {
                    in_flight.insert(rid, (key, state.latest.0, 1));
                }
                (ok, n)
            };
            if !ok {
                return;
            }
            in_flight_keys += n;
            sent += n as u64;
            link.resync_keys.store(sent, Ordering::Relaxed);
        }
        if in_flight.is_empty() {
            break;
        }
        match rx.recv_timeout(stall) {
            Ok(ack) => {
                let Some((key, stamp, n)) = in_flight.remove(&ack.rid) else { continue };
                in_flight_keys -= n;
                match ack.outcome {
                    Outcome::Ok(kept) if kept > stamp => {
                        // A write this log never had, left by a master that was deposed before
                        // it was acknowledged: the slave keeps it over ours. Writing the key
                        // again in this epoch replaces it everywhere.
                        log::warn!(
                            "slave {} holds a newer '{key}' ({kept}) than the log ({stamp}); rewriting it",
                            link.id
                        );
                        shared.stale_keys.lock().insert(key);
                    }
                    Outcome::Ok(_) => {}
                    Outcome::Applied(applied) if applied == n as u64 => {}
                    Outcome::Fenced(newer) => return shared.step_down(newer),
                    Outcome::Err(why) => {
                        // The slave could not take these records (it cannot happen with
                        // agreeing limits; see crate::limits). Killing the link would only
                        // send them again after the reconnect, for ever: skip them.
                        log::error!(
                            "slave {} refused {n} key(s) from '{key}' in its resync, skipped: {why}",
                            link.id
                        );
                    }
                    other => {
                        link.kill(&format!("resync write failed: {other:?}"));
                        return;
                    }
                }
            }
            Err(_) => {
                link.kill("resync stalled");
                return;
            }
        }
    }
    if link.is_alive() {
        link.set_synced();
        log::info!("slave {} in sync: {sent} keys sent in {:?}", link.id, started.elapsed());
    }
}

/// The heartbeat thread: pings every slave each interval, and disconnects a slave that has
/// been silent for [`HEARTBEAT_MISSES`] intervals (it will reconnect and be resynced).
pub fn heartbeat_loop(shared: &Arc<Shared>) {
    let interval = shared.config.heartbeat;
    let silence_limit = (interval * HEARTBEAT_MISSES).as_micros() as u64;
    loop {
        std::thread::sleep(interval);
        let links = shared.members.lock().live_links();
        let epoch = shared.epoch();
        // Every write up to here has been handed to every link that was connected when it was
        // logged; a link in sync gets this PING after all of them (see the module doc).
        let primary = shared.role() == Role::Primary;
        let settled = shared.wal.settled_through();
        for link in links {
            let now = shared.now_us();
            let silent = now.saturating_sub(link.last_heard_us.load(Ordering::Acquire));
            if silent > silence_limit {
                link.kill(&format!("silent for {} ms", silent / 1000));
                continue;
            }
            let rid = shared.rid();
            link.record_ping(rid, now);
            let synced = (primary && link.is_synced()).then_some(settled);
            if link.send(rid, epoch, &Command::Ping { synced }, None) {
                if let Some(seq) = synced {
                    link.synced_seq.store(seq, Ordering::Relaxed);
                }
            }
        }
    }
}
