//! The master's side of its slaves: registration, the reader thread of each slave connection,
//! catch-up of a slave that (re)joins, and heartbeats.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::unbounded;

use super::link::Link;
use super::{Role, Shared, HEARTBEAT_MISSES, SYNC_WINDOW};
use crate::framing::{LineError, LineReader};
use crate::peer::{Command, Hello, Outcome, Reply, Stamp};
use crate::wal::Record;

/// Registers a slave and then reads its replies until the connection ends. Runs on the
/// connection's thread.
pub fn serve_slave(shared: &Arc<Shared>, stream: TcpStream, mut reader: LineReader<TcpStream>, hello: Hello) {
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
                let Some(slot) = members.add(&hello.id) else {
                    return refuse(format!("cluster full ({} members)", super::members::MAX_MEMBERS));
                };
                if let Err(e) = shared.wal.append(&Record::Member { id: hello.id.clone() }) {
                    members.remove(&hello.id);
                    return refuse(format!("cannot log the new member: {e}"));
                }
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
        let link = Arc::new(Link::new(hello.id.clone(), slot, write_half, shared.now_us() + grace));
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
        // It may have lost its memory: it holds nothing until catch-up says otherwise.
        shared.index.lock().forget_slot(slot);
        link
    };
    log::info!("slave {} registered from {} (epoch {epoch})", link.id, link.peer);
    if shared.role() == Role::Primary {
        start_catch_up(shared, &link);
    } else {
        // A candidate only needs to know the slave has joined its epoch: the answer to this
        // heartbeat comes after the slave has.
        let rid = shared.rid();
        link.record_ping(rid, shared.now_us());
        link.send(rid, epoch, &Command::Ping, None);
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
        match Reply::parse(line) {
            Ok(Reply { rid, outcome }) => {
                match outcome {
                    Outcome::Pong => link.on_pong(rid),
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

/// Starts copying every committed key to `link` on a thread of its own.
pub fn start_catch_up(shared: &Arc<Shared>, link: &Arc<Link>) {
    if !link.claim_catch_up() {
        return;
    }
    let sync_shared = Arc::clone(shared);
    let sync_link = Arc::clone(link);
    let _ = std::thread::Builder::new()
        .name(format!("sync-{}", link.id))
        .spawn(move || catch_up(&sync_shared, &sync_link));
}

/// Copies every committed key to a slave that just registered, then lets it serve reads.
fn catch_up(shared: &Arc<Shared>, link: &Arc<Link>) {
    let started = Instant::now();
    let epoch = shared.epoch();
    // A heartbeat first, so the slave's read lease is in place when it starts serving.
    let ping = shared.rid();
    link.record_ping(ping, shared.now_us());
    link.send(ping, epoch, &Command::Ping, None);
    let keys = shared.index.lock().select(|s| s.committed.0 != Stamp::default());
    let (tx, rx) = unbounded();
    let mut in_flight = std::collections::HashMap::new();
    let mut iter = keys.into_iter();
    let stall = shared.config.ack_timeout * super::WRITE_DEADLINE_ACK_TIMEOUTS;
    let mut sent = 0usize;
    loop {
        while in_flight.len() < SYNC_WINDOW {
            let Some((key, state)) = iter.next() else {
                break;
            };
            let (stamp, value) = state.committed;
            let command = Command::store(stamp, &key, value.as_deref());
            let rid = shared.rid();
            if !link.send(rid, epoch, &command, Some(&tx)) {
                return;
            }
            in_flight.insert(rid, (key, stamp));
            sent += 1;
        }
        if in_flight.is_empty() {
            break;
        }
        match rx.recv_timeout(stall) {
            Ok(ack) => {
                if let Some((key, stamp)) = in_flight.remove(&ack.rid) {
                    match ack.outcome {
                        Outcome::Ok(_) => shared.index.lock().add_holders(&key, stamp, 1 << link.slot),
                        Outcome::Fenced(newer) => return shared.step_down(newer),
                        Outcome::Err(why) => {
                            // The slave could not take this one record (it cannot happen with
                            // agreeing limits; see crate::limits). Killing the link would only
                            // send it again after the reconnect, for ever: skip it. The slave
                            // is not a holder of the key, so its reads go elsewhere.
                            log::error!("slave {} refused {key} in catch-up, skipped: {why}", link.id);
                        }
                        other => {
                            link.kill(&format!("catch-up write failed: {other:?}"));
                            return;
                        }
                    }
                }
            }
            Err(_) => {
                link.kill("catch-up stalled");
                return;
            }
        }
    }
    if link.is_alive() {
        link.set_synced();
        log::info!("slave {} caught up: {sent} keys in {:?}", link.id, started.elapsed());
    }
}

/// The heartbeat thread: pings every slave each interval, and disconnects a slave that has
/// been silent for [`HEARTBEAT_MISSES`] intervals (it will reconnect and be caught up).
pub fn heartbeat_loop(shared: &Arc<Shared>) {
    let interval = shared.config.heartbeat;
    let silence_limit = (interval * HEARTBEAT_MISSES).as_micros() as u64;
    loop {
        std::thread::sleep(interval);
        let links = shared.members.lock().live_links();
        let epoch = shared.epoch();
        for link in links {
            let now = shared.now_us();
            let silent = now.saturating_sub(link.last_heard_us.load(Ordering::Acquire));
            if silent > silence_limit {
                link.kill(&format!("silent for {} ms", silent / 1000));
                continue;
            }
            let rid = shared.rid();
            link.record_ping(rid, now);
            link.send(rid, epoch, &Command::Ping, None);
        }
    }
}
