//! `INFO`, the Redis view of `STATS`: the sections `server`, `replication`, `keyspace` and
//! `dsm` (every `STATS` row), as `name:value` lines under `# Section` headers.

use std::sync::Arc;

use super::admin::{member_state, stats};
use super::Shared;
use crate::master::session::REDIS_COMPAT_VERSION;
use crate::master::Role;
use crate::protocol::Reply;

/// The sections `INFO` with no argument (or `default`, `all`, `everything`) shows.
const SECTIONS: [&str; 4] = ["server", "replication", "keyspace", "dsm"];

/// The text of `INFO <sections>`: the named sections (case-insensitive) in their usual order,
/// or all of them; an unknown name adds nothing (as in Redis).
pub fn info(shared: &Arc<Shared>, asked: &[String]) -> String {
    let all =
        asked.is_empty() || asked.iter().any(|s| matches!(s.as_str(), "default" | "all" | "everything"));
    let mut text = String::new();
    for section in SECTIONS {
        if !all && !asked.iter().any(|a| a == section) {
            continue;
        }
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        let rows = match section {
            "server" => server(shared),
            "replication" => replication(shared),
            "keyspace" => keyspace(shared),
            _ => dsm(shared),
        };
        let mut title = section.to_string();
        title[..1].make_ascii_uppercase();
        text.push_str(&format!("# {title}\r\n"));
        for (name, value) in rows {
            text.push_str(&format!("{name}:{}\r\n", value.replace(['\r', '\n'], " ")));
        }
    }
    text
}

fn server(shared: &Shared) -> Vec<(String, String)> {
    let port = shared.config.listen.rsplit(':').next().unwrap_or("").to_string();
    let uptime = shared.now_us() / 1_000_000;
    vec![
        ("redis_version".into(), REDIS_COMPAT_VERSION.into()),
        ("dsm_version".into(), env!("CARGO_PKG_VERSION").into()),
        ("redis_mode".into(), "standalone".into()),
        ("process_id".into(), std::process::id().to_string()),
        ("tcp_port".into(), port),
        ("uptime_in_seconds".into(), uptime.to_string()),
        ("uptime_in_days".into(), (uptime / 86_400).to_string()),
    ]
}

/// Redis's `role` is `master` for the serving primary and `slave` for a standby (which, like a
/// Redis replica, follows the primary named in `master_host`/`master_port`); dsm's own role,
/// epoch and members follow, and one `slaveN` line per member.
fn replication(shared: &Shared) -> Vec<(String, String)> {
    let role = shared.role();
    let members = shared.members.lock().all();
    let up = members.iter().filter(|(_, m)| member_state(m) == "up").count();
    let mut rows = vec![
        ("role".to_string(), if role == Role::Primary { "master" } else { "slave" }.to_string()),
        ("dsm_role".into(), role.name().into()),
        ("dsm_epoch".into(), shared.epoch().to_string()),
    ];
    if role != Role::Primary {
        let peer = shared.config.peer.clone().unwrap_or_default();
        let (host, port) = peer.rsplit_once(':').unwrap_or((&peer, ""));
        rows.push(("master_host".into(), host.to_string()));
        rows.push(("master_port".into(), port.to_string()));
        let following = shared.following.lock().is_some();
        rows.push(("master_link_status".into(), if following { "up" } else { "down" }.into()));
    }
    rows.push(("connected_slaves".into(), up.to_string()));
    rows.push(("dsm_members".into(), members.len().to_string()));
    rows.push(("dsm_members_up".into(), up.to_string()));
    for (i, (_, m)) in members.iter().enumerate() {
        let synced = m.link.as_ref().map_or(0, |l| l.synced_seq.load(std::sync::atomic::Ordering::Relaxed));
        rows.push((
            format!("slave{i}"),
            format!("id={},state={},synced_seq={synced}", m.id, member_state(m)),
        ));
    }
    rows.push(("master_repl_offset".into(), shared.wal.last_seq().to_string()));
    rows
}

fn keyspace(shared: &Shared) -> Vec<(String, String)> {
    let keys = shared.index.lock().live_keys();
    if keys == 0 {
        return Vec::new();
    }
    vec![("db0".into(), format!("keys={keys},expires=0,avg_ttl=0"))]
}

/// Every row of `STATS`, under its own name.
fn dsm(shared: &Arc<Shared>) -> Vec<(String, String)> {
    match stats(shared) {
        Reply::Table { rows, .. } => rows,
        _ => Vec::new(),
    }
}
