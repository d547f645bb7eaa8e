//! Partitions through the fault-injecting proxy: the primary cut off from the slaves and the
//! backup while clients still reach it, and a false failover (only the backup loses sight of
//! the primary). Either way the history must be linearizable with no acknowledged write lost:
//! no split brain, no stale reads from a deposed primary.

mod faults;

use std::sync::Arc;

use dsm::client::Client;
use dsm_testkit::cluster::{stat, wait_for};
use dsm_testkit::nemesis::{Answer, History, REQUEST_DEADLINE};
use dsm_testkit::proxy::Fault;
use faults::{wait_acked, Cluster, READY};

/// The client id of the test's own client of the isolated primary alone.
const ISOLATED_CLIENT: u64 = 50;

/// Once the backup hands off, slaves follow its `ERR NOTPRIMARY <real primary address>` and
/// reach the old primary around the proxies; the test allows for that.
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
    c.stop_and_judge(workload, &history, "primary cut off");
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
    c.stop_and_judge(workload, &history, "false failover");
}

/// The false failover of a cut between the two masters, healed: the backup took over with every
/// slave, and the old primary, restarted while cut off, tried to take over from its own log and
/// waited for slaves that never came. Once the cut heals it must find out that the backup
/// serves and fail back, and a client that asks the old primary first must reach whichever
/// master serves all along.
#[test]
fn after_a_cut_between_the_masters_heals_the_old_primary_steps_aside_and_fails_back() {
    let mut c = Cluster::start(3, None, true);
    let history = Arc::new(History::new());
    let workload = c.workload(&history, 3, 40, 23);
    let acked = wait_acked(&workload, 0, 50, "writes before the cut");
    let cut_masters = |c: &faults::Cluster, fault: Fault| {
        c.links.backup_to_primary.as_ref().expect("proxied").set_fault(fault);
        c.links.primary_to_backup.as_ref().expect("proxied").set_fault(fault);
    };

    // The masters lose each other, and the slaves lose the primary: the backup takes over.
    cut_masters(&c, Fault::Blackhole);
    for p in &c.links.slave_to_primary {
        p.set_fault(Fault::Blackhole);
    }
    c.wait_serving(&c.backup_addr, 3);
    for p in &c.links.slave_to_primary {
        p.set_fault(Fault::None);
    }
    // Restarted while it cannot see the backup, the old primary starts a takeover of its own
    // and waits for a majority that stays with the backup.
    c.restart_primary();
    wait_for("the old primary to try a takeover", READY, || {
        stat(&c.primary_addr, "role").as_deref() == Some("candidate")
    })
    .unwrap_or_else(|e| panic!("{e}: {}", c.roles()));
    let acked = wait_acked(&workload, acked, 30, "writes through the backup during the cut");

    // A client that asks the old primary first is sent on to the master that serves.
    let mut primary_first = Client::new(&c.primary_addr, Some(&c.backup_addr));
    primary_first.set_timeout(REQUEST_DEADLINE);
    let key = history.keys()[0].clone();
    assert_eq!(
        history.write(ISOLATED_CLIENT, &mut primary_first, &key, "primary-first"),
        Answer::Done,
        "{}",
        c.roles()
    );

    cut_masters(&c, Fault::None);
    // The old primary gives its takeover up and fails back (or stays aside): never a candidate
    // for good.
    wait_for("the old primary to serve again", READY, || faults::serving(&c.primary_addr, 3))
        .unwrap_or_else(|e| panic!("{e}: {}", c.roles()));
    assert_eq!(
        history.write(ISOLATED_CLIENT, &mut primary_first, &key, "after-healing"),
        Answer::Done,
        "{}",
        c.roles()
    );
    wait_acked(&workload, acked, 30, "writes after healing");
    c.stop_and_judge(workload, &history, "healed cut between the masters");
}
