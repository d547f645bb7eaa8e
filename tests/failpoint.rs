//! Crashes of the primary at the worst moments of a write, through failpoints (debug builds):
//! after the log append but before any slave has the write, and after the quorum but before
//! the client's reply; and at every step of a compaction of its log (before the snapshot is
//! written, after it is written, after it replaced the old log). The backup takes over, the
//! primary restarts from what its log holds and fails back, and the whole history — with the
//! crashed write of unknown outcome — must be linearizable with every acknowledged write
//! surviving.

mod faults;

use std::sync::Arc;

use dsm::client::Client;
use dsm::protocol::{Reply, Request};
use dsm_testkit::cluster::wait_for;
use dsm_testkit::nemesis::History;
use faults::{wait_acked, Cluster, READY};

/// The primary crashes on this write it handles (counting from 1), well after start-up.
const CRASH_ON_WRITE: u64 = 40;

fn crash_at(failpoint: &str, seed: u64) {
    crash(failpoint, CRASH_ON_WRITE, seed, false);
}

/// Arms `failpoint` for its `n`-th pass, runs a workload (asking the primary to compact its log
/// once some writes are in, if `compact`) until the primary crashes there, then fails over and
/// back and judges the history.
fn crash(failpoint: &str, n: u64, seed: u64, compact: bool) {
    let mut c = Cluster::start(3, Some(&format!("{failpoint}:{n}")), false);
    let history = Arc::new(History::new());
    let workload = c.workload(&history, 3, 40, seed);
    if compact {
        wait_acked(&workload, 0, 300, "writes before the compaction");
        let mut primary = Client::new(&c.primary_addr, None);
        // The compaction thread, woken by the request, may reach the failpoint and end the
        // process before the connection's thread has written `DONE`: then the request fails
        // with the connection. Where the primary crashed is checked in its log below.
        match primary.request(&Request::Compact) {
            Ok(Reply::Done) | Err(_) => {}
            Ok(other) => panic!("COMPACT answered {other:?}"),
        }
    }
    wait_for("the primary to crash at the failpoint", READY, || !c.primary.is_running())
        .unwrap_or_else(|e| panic!("{e}: {:?}", workload.counts()));
    // The backup takes over and the clients go on through it.
    c.wait_serving(&c.backup_addr.clone(), 3);
    let acked = wait_acked(&workload, workload.counts().acked_writes, 30, "writes through the backup");
    // The primary comes back (unarmed), takes its writes back, and serves again.
    c.restart_primary();
    c.wait_serving(&c.primary_addr.clone(), 3);
    wait_acked(&workload, acked, 30, "writes after the fail-back");
    // The first primary's output (the restart appended to it) says where it crashed.
    let log = c.primary.output();
    assert!(log.contains(&format!("failpoint {failpoint}:{n} reached")), "{log}");
    let counts = c.stop_and_judge(workload, &history, failpoint);
    if !compact {
        assert!(counts.unknown_writes >= 1, "the crashed write should be of unknown outcome: {counts:?}");
    }
}

#[test]
fn crash_during_compaction_before_the_snapshot_is_written() {
    crash("compact-before-snapshot", 1, 13, true);
}

#[test]
fn crash_during_compaction_after_the_snapshot_is_written() {
    crash("compact-after-snapshot", 1, 14, true);
}

#[test]
fn crash_during_compaction_after_the_snapshot_replaced_the_log() {
    crash("compact-after-rename", 1, 15, true);
}

#[test]
fn crash_after_append_before_quorum() {
    crash_at("after-append", 11);
}

#[test]
fn crash_after_quorum_before_reply() {
    crash_at("after-quorum", 12);
}
