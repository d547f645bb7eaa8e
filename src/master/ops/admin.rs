//! `STATS`, `MEMBERS` and `REMOVE`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::*;

pub(super) fn remove_member(shared: &Arc<Shared>, id: &str) -> Reply {
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

pub(super) fn stats(shared: &Arc<Shared>) -> Reply {
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
        ("write_batches", s.write_batches.load(Ordering::Relaxed).to_string()),
        ("write_queue", shared.combiner.queued().to_string()),
        ("loose_rounds", shared.combiner.loose().to_string()),
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
    if let Some(f) = shared.following.lock().clone() {
        rows.push(("following".into(), f.source));
        rows.push(("follow_seq".into(), seq.to_string()));
        rows.push(match f.lag {
            crate::master::Lag::Bytes(n) => ("lag_bytes".into(), n.to_string()),
            crate::master::Lag::Records(n) => ("lag_records".into(), n.to_string()),
        });
    }
    for (_, m) in &members {
        let link = m.link.as_ref();
        let requests = link.map_or(0, |l| l.requests.load(Ordering::Relaxed));
        rows.push((format!("slave.{}.state", m.id), member_state(m).to_string()));
        rows.push((format!("slave.{}.requests", m.id), requests.to_string()));
        // Sent and not answered yet: writes, reads and heartbeats.
        rows.push((format!("slave.{}.awaiting", m.id), link.map_or(0, |l| l.awaiting()).to_string()));
        // As the slave said in its last answer to a heartbeat.
        rows.push((
            format!("slave.{}.keys", m.id),
            link.map_or(0, |l| l.keys.load(Ordering::Relaxed)).to_string(),
        ));
        let resync = link.map_or(0, |l| l.resync_keys.load(Ordering::Relaxed));
        rows.push((format!("slave.{}.resync_keys", m.id), resync.to_string()));
        let synced = link.map_or(0, |l| l.synced_seq.load(Ordering::Relaxed));
        rows.push((format!("slave.{}.synced_seq", m.id), synced.to_string()));
    }
    Reply::Table { tag: "STAT", rows }
}

pub(super) fn member_state(m: &crate::master::members::Member) -> &'static str {
    match &m.link {
        Some(l) if l.is_synced() => "up",
        Some(l) if l.is_alive() => "syncing",
        _ => "down",
    }
}

pub(super) fn members_table(shared: &Arc<Shared>) -> Reply {
    let rows = shared
        .members
        .lock()
        .all()
        .iter()
        .map(|(_, m)| (m.id.clone(), member_state(m).to_string()))
        .collect();
    Reply::Table { tag: "MEMBER", rows }
}
