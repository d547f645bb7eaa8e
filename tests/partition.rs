//! Partitions through the fault-injecting proxy: the primary cut off from the slaves and the
//! backup while clients still reach it, and a false failover (only the backup loses sight of
//! the primary). Either way the history must be linearizable with no acknowledged write lost:
//! no split brain, no stale reads from a deposed primary.

mod faults;

use std::sync::Arc;

use dsm::client::Client;
use dsm::cluster::{stat, wait_for};
use dsm::nemesis::{Answer, History, REQUEST_DEADLINE};
use dsm::proxy::Fault;
use faults::{wait_acked, Cluster, READY};

/// The client id of the test's own client of the isolated primary alone.
const ISOLATED_CLIENT: u64 = 50;

/// Known to fail about one run in three as of this commit: the isolated primary answers
/// `NOT_FOUND` for keys it has never seen without checking its read lease (`read()` in
/// `src/master/ops.rs` returns before the lease check), a stale read of a key written through
/// the new primary. Note also that once the backup hands off, slaves follow its
/// `ERR NOTPRIMARY <real primary address>` and reach the old primary around the proxies.
#[test]
fn primary_cut_off_from_slaves_and_backup_neither_acknowledges_nor_serves_stale_reads() {
    let c = Cluster::start(3, None, true);
    let history = Arc::new(History::new());
    let workload = c.workload(&history, 3, 40, 21);
    let acked = wait_acked(&workload, 0, 50, "writes before the partition");

    // The primary loses every peer; clients still reach it directly.
    for p in c.links.slave_to_primary.iter().chain(c.links.backup_to_primary.as_ref()) {
        p.set_fault(Fault::Blackhole);
    }
    c.wait_serving(&c.backup_addr, 3);
    let acked = wait_acked(&workload, acked, 50, "writes through the backup during the partition");
    // A client that only knows the isolated primary: nothing it does may succeed as a write,
    // and any read it gets answered is checked with the rest of the history.
    let mut isolated = Client::new(&c.primary_addr, None);
    isolated.set_timeout(REQUEST_DEADLINE);
    let keys = history.keys();
    let mut acked_by_isolated = 0;
    for (i, key) in keys.iter().rev().take(6).enumerate() {
        if history.write(ISOLATED_CLIENT, &mut isolated, key, &format!("iso-{i}")) == Answer::Done {
            acked_by_isolated += 1;
        }
        history.read(ISOLATED_CLIENT, &mut isolated, key);
    }
    assert_eq!(acked_by_isolated, 0, "the isolated primary acknowledged writes: {}", c.roles());

    for p in c.links.slave_to_primary.iter().chain(c.links.backup_to_primary.as_ref()) {
        p.set_fault(Fault::None);
    }
    c.wait_any_serving(3);
    wait_acked(&workload, acked, 30, "writes after healing");
    let counts = workload.stop();
    let verdict = c.judge(&history);
    if !verdict.is_ok() {
        let kept = c.dir.keep();
        panic!("{counts:?}\n{verdict}\nlogs in {}", kept.display());
    }
}

#[test]
fn false_failover_backup_cut_off_from_primary_only_has_no_split_brain() {
    let c = Cluster::start(3, None, true);
    let history = Arc::new(History::new());
    let workload = c.workload(&history, 3, 40, 22);
    let acked = wait_acked(&workload, 0, 50, "writes before the partition");

    // Only the backup's probes are lost: it believes the primary dead, the slaves do not.
    let probe = c.links.backup_to_primary.as_ref().expect("proxied");
    probe.set_fault(Fault::Blackhole);
    wait_for("the backup's probes to be lost", READY, || probe.bytes_discarded().0 > 0).unwrap();
    // The backup gives up on the primary and tries to take over: it becomes a candidate (or
    // primary). The slaves still reach the primary, so whatever the backup does, the history
    // must stay linearizable.
    wait_for("the backup to start a takeover", READY, || {
        stat(&c.backup_addr, "role").as_deref() != Some("standby")
    })
    .unwrap_or_else(|e| panic!("{e}: {}", c.roles()));
    let during = wait_acked(&workload, acked, 100, "writes during the false failover");
    eprintln!("false failover: {} | {:?}", c.roles(), workload.counts());

    probe.set_fault(Fault::None);
    c.wait_any_serving(3);
    wait_acked(&workload, during, 50, "writes after healing");
    let counts = workload.stop();
    let verdict = c.judge(&history);
    if !verdict.is_ok() {
        let kept = c.dir.keep();
        panic!("{counts:?}\n{verdict}\nlogs in {}", kept.display());
    }
}
