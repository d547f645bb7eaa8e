//! The primary's controller: start, fail back from the backup, watch for being superseded.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::master::{Role, Shared};

/// What a master says of itself in `STATS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    /// `primary`, `candidate` or `standby`.
    pub role: String,
    /// Its epoch.
    pub epoch: u64,
    /// Its state is its own log's (see [`RoleState::is_authoritative`](crate::master::RoleState::is_authoritative)).
    pub authoritative: bool,
    /// Its live, caught-up slaves.
    pub slaves: usize,
    /// Its members.
    pub members: usize,
}

impl PeerState {
    /// True when it is primary with a majority of its members connected: it can serve.
    pub fn serving(&self) -> bool {
        self.role == "primary" && crate::quorum::is_majority(self.slaves, self.members)
    }
}

/// Asks the master at `addr` for its role and epoch (`STATS`, after `AUTH` when the cluster has
/// a client password); `None` if it does not answer.
pub fn probe(addr: &str, timeout: Duration, password: Option<&crate::auth::Password>) -> Option<PeerState> {
    let mut c = crate::client::Client::new(addr, None);
    c.set_timeout(timeout);
    if let Some(password) = password {
        c.set_password(password.as_bytes());
    }
    let rows = c.stats().ok()?;
    let get = |name: &str| rows.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    Some(PeerState {
        role: get("role")?,
        epoch: get("epoch")?.parse().ok()?,
        authoritative: get("authoritative").as_deref() == Some("1"),
        slaves: get("slaves").and_then(|v| v.parse().ok()).unwrap_or(0),
        members: get("members").and_then(|v| v.parse().ok()).unwrap_or(0),
    })
}

/// How often a primary asks its backup whether it has taken over (a primary that was paused
/// or cut off learns it was superseded even if no slave talks to it any more).
pub const PEER_WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// Returns when this master is no longer primary: it stepped down, or its peer serves in a
/// newer epoch (then it steps down here).
pub(super) fn watch_peer(shared: &Shared) {
    while shared.role() == Role::Primary {
        thread::sleep(PEER_WATCH_INTERVAL);
        let Some(peer) = shared.config.peer.as_deref() else { continue };
        if let Some(p) = probe(peer, PEER_WATCH_INTERVAL, shared.config.requirepass.as_ref()) {
            if p.role == "primary" && p.epoch > shared.epoch() {
                shared.step_down(p.epoch);
            }
        }
    }
}

/// How long a primary waits between attempts to reach its backup while it cannot serve.
pub const RETRY_PAUSE: Duration = Duration::from_millis(300);

/// The primary's controller: at start (and after being superseded) it asks the backup whether
/// it has served in an epoch this log does not know; if so it catches up from it over TCP and
/// takes the writes back, otherwise it takes over from its own log (plus what a majority of
/// slaves holds). Superseded while the backup is unreachable, it waits: its log may lack writes
/// only the backup's log has.
pub fn run_primary(shared: Arc<Shared>) {
    loop {
        let superseded = shared.state.superseded();
        let mut known = shared.epoch().max(superseded.unwrap_or(0));
        let stale = superseded.is_some();
        if let Some(peer) = shared.config.peer.clone() {
            match probe(&peer, Duration::from_secs(1), shared.config.requirepass.as_ref()) {
                Some(p) if p.authoritative && (p.epoch > shared.epoch() || p.role == "primary") => {
                    match sync_from(&shared, &peer) {
                        Ok(epoch) => known = known.max(epoch),
                        Err(e) => {
                            log::warn!("catching up from {peer} failed: {e}; retrying");
                            thread::sleep(RETRY_PAUSE);
                            continue;
                        }
                    }
                }
                Some(p) => known = known.max(p.epoch),
                None if stale => {
                    log::warn!("superseded, and the backup {peer} is unreachable: not serving until it is");
                    thread::sleep(RETRY_PAUSE);
                    continue;
                }
                None => log::info!("backup {peer} unreachable; starting from this master's log"),
            }
        }
        // Give up if the backup turns out to be serving (a cut between the two masters that
        // healed, or a primary restarted while it was cut off): its slaves will not come back
        // to a candidate, and the way back is the failback at the top of this loop.
        let mut last_check = Instant::now();
        let mut abort = || {
            let Some(peer) = shared.config.peer.as_deref() else { return false };
            if last_check.elapsed() < PEER_WATCH_INTERVAL {
                return false;
            }
            last_check = Instant::now();
            let serving = probe(peer, PEER_WATCH_INTERVAL, shared.config.requirepass.as_ref())
                .filter(PeerState::serving);
            if let Some(p) = &serving {
                log::warn!(
                    "the backup {peer} serves in epoch {} with a majority: giving the takeover up",
                    p.epoch
                );
            }
            serving.is_some()
        };
        match takeover(&shared, next_epoch(known, 1), &mut abort) {
            Ok(()) => {
                watch_peer(&shared);
                log::warn!("no longer primary; looking for the newer master");
            }
            Err(TakeoverError::Stale(newer)) => {
                log::warn!("a slave has joined epoch {newer} elsewhere: this master's log is stale");
            }
            Err(TakeoverError::Aborted) => log::warn!("takeover given up"),
            Err(TakeoverError::Log(e)) => {
                log::error!("cannot rewrite the log: {e}; retrying");
                thread::sleep(RETRY_PAUSE);
            }
        }
    }
}
