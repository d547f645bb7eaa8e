//! The repair thread: completes writes that timed out and rewrites stale copies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// The repair thread: completes writes that timed out. (A key whose copies were lost with a
/// slave's memory is sent to it again when it re-registers: see `slaves::start_resync`.)
pub fn repair_loop(shared: &Arc<Shared>) {
    loop {
        std::thread::sleep(REPAIR_PAUSE);
        if shared.role() != crate::master::Role::Primary {
            continue;
        }
        let Ok((links, need)) = quorum_links(shared) else {
            continue;
        };
        repair_timed_out(shared, &links, need);
        rewrite_stale(shared, &links, need);
    }
}

/// Writes again, in this epoch, each key a slave holds a newer copy of than the log.
pub(super) fn rewrite_stale(shared: &Arc<Shared>, links: &[Arc<Link>], need: usize) {
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
pub(super) const REPAIR_PAUSE: Duration = crate::master::REPAIR_INTERVAL;

/// Replicates the newest logged write of each key whose write did not reach a majority in
/// time, until it does; then it is committed.
pub(super) fn repair_timed_out(shared: &Arc<Shared>, links: &[Arc<Link>], need: usize) {
    let keys: Vec<String> = shared.repair_queue.lock().drain().collect();
    for key in keys {
        let Some(state) = shared.index.lock().get(&key).cloned() else {
            continue;
        };
        let (stamp, value) = state.latest.clone();
        let command = Command::store(stamp, &key, value.as_deref());
        let deadline = Instant::now() + shared.config.ack_timeout * WRITE_DEADLINE_ACK_TIMEOUTS;
        let quorum = Arc::new(AckCount::new(need));
        match Round::send(shared, links.to_vec(), &quorum, shared.epoch(), &command, deadline, false)
            .wait(shared)
        {
            Replicated::Majority => {
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
