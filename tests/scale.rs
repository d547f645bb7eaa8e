//! What a change of master costs, and the log's size: a takeover, a failback and a slave's
//! reconnection send each slave only what it lacks; a slave that lost its memory gets every
//! key; the log is compacted while the cluster serves, and what it replays is the same state.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{stat_with_password, FailoverCluster, TestCluster, READY};
use dsm::client::Client;
use dsm::protocol::Reply;
use dsm_testkit::cluster::{stat, wait_for};

/// Keys written before each fault: enough that resending them all is told apart from sending
/// what was in flight.
const KEYS: usize = 2000;

/// Writes `KEYS` keys over one pipelined connection (fast, so the test stays short).
fn load(addr: &str, prefix: &str) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut batch = Vec::new();
    for i in 0..KEYS {
        batch.extend_from_slice(format!("WRITE {prefix}{i} value-{i}\r\n").as_bytes());
    }
    stream.write_all(&batch).unwrap();
    let mut reader = std::io::BufReader::new(stream);
    for i in 0..KEYS {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
        assert!(line.starts_with("OK "), "write {i}: {line}");
    }
}

fn check(client: &mut Client, prefix: &str) {
    for i in (0..KEYS).step_by(97) {
        match client.read(&format!("{prefix}{i}")) {
            Ok(Reply::Value { value, .. }) => assert_eq!(value, format!("value-{i}").as_bytes()),
            other => panic!("read {prefix}{i}: {other:?}"),
        }
    }
}

fn resync_keys(addr: &str, id: &str) -> u64 {
    stat(addr, &format!("slave.{id}.resync_keys")).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
}

/// Waits until the master at `addr` has told every slave, by a heartbeat, that it holds the
/// whole log (`slave.<id>.synced_seq` at the log's last seq).
fn wait_told_all(addr: &str) {
    let n = |name: &str| stat(addr, name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    wait_for("every slave told it holds the whole log", READY, || {
        let seq = n("seq");
        ["s1", "s2", "s3"].iter().all(|id| n(&format!("slave.{id}.synced_seq")) >= seq)
    })
    .unwrap_or_else(|e| panic!("{e}: seq {}", n("seq")));
}

#[test]
fn a_takeover_and_a_failback_resend_only_what_slaves_lack() {
    let mut c = FailoverCluster::start(3, false);
    load(&c.primary_addr, "a");
    wait_told_all(&c.primary_addr);
    c.primary.kill();
    c.wait_role(&c.backup_addr.clone(), "primary", 3);
    // Each slave was told it holds the whole log: the new master sends it nothing.
    for id in ["s1", "s2", "s3"] {
        let sent = resync_keys(&c.backup_addr, id);
        assert_eq!(sent, 0, "{id} was sent {sent} of {KEYS} keys after the takeover");
    }
    let mut client = c.client();
    check(&mut client, "a");
    load(&c.backup_addr, "b");
    wait_told_all(&c.backup_addr);
    // The old primary comes back: it streams only what its log lacks, takes the writes back,
    // and the slaves are sent what they lack again.
    c.primary.restart().unwrap();
    c.wait_role(&c.primary_addr.clone(), "primary", 3);
    let log = c.primary.output();
    assert!(log.contains("handed off at seq"), "{log}");
    for id in ["s1", "s2", "s3"] {
        let sent = resync_keys(&c.primary_addr, id);
        assert_eq!(sent, 0, "{id} was sent {sent} of {KEYS} keys after the failback");
    }
    check(&mut client, "a");
    check(&mut client, "b");
}

#[test]
fn a_slave_that_lost_its_memory_is_sent_every_key() {
    let mut c = TestCluster::start(3);
    load(&c.addr(), "k");
    c.slaves[0].restart().unwrap();
    let addr = c.addr();
    wait_for("s1 to hold every key again", READY, || {
        stat(&addr, "slave.s1.state").as_deref() == Some("up")
            && stat(&addr, "slave.s1.keys") == Some(KEYS.to_string())
    })
    .unwrap_or_else(|e| panic!("{e}: keys={:?}", stat(&addr, "slave.s1.keys")));
    assert_eq!(resync_keys(&addr, "s1"), KEYS as u64);
    // A slave that only reconnects is sent nothing it holds.
    c.slaves[1].pause().unwrap();
    wait_for("s2 marked down", READY, || stat(&addr, "slave.s2.state").as_deref() == Some("down")).unwrap();
    c.slaves[1].resume().unwrap();
    wait_for("s2 back", READY, || stat(&addr, "slave.s2.state").as_deref() == Some("up")).unwrap();
    assert!(resync_keys(&addr, "s2") < (KEYS / 4) as u64, "s2 was sent {}", resync_keys(&addr, "s2"));
    check(&mut c.client(), "k");
}

/// A slave that registers empty is resynced with `MSET`s (one acknowledgement per batch): what
/// it then serves must be every key's committed version, values, overwrites and deletions.
#[test]
fn an_emptied_slave_serves_every_key_as_committed_after_its_resync() {
    let mut c = TestCluster::start_with(3, &["--read-from", "slaves"]);
    let addr = c.addr();
    load(&addr, "k");
    let mut client = c.client();
    for i in (0..KEYS).step_by(3) {
        assert!(matches!(client.write(&format!("k{i}"), b"again"), Ok(Reply::Ok(_))));
    }
    for i in (1..KEYS).step_by(5) {
        let delete = dsm::protocol::Request::Delete { key: format!("k{i}") };
        assert!(matches!(client.request(&delete), Ok(Reply::Ok(_))));
    }
    c.slaves[0].restart().unwrap();
    wait_for("s1 resynced", READY, || {
        stat(&addr, "slave.s1.state").as_deref() == Some("up") && resync_keys(&addr, "s1") == KEYS as u64
    })
    .unwrap_or_else(|e| panic!("{e}: resync_keys={}", resync_keys(&addr, "s1")));
    // Reads now go to s1 or s3, checked against the committed version by the master.
    c.slaves[1].pause().unwrap();
    wait_for("s2 marked down", READY, || stat(&addr, "slave.s2.state").as_deref() == Some("down")).unwrap();
    let served_before = stat(&addr, "slave.s1.requests").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    for i in 0..KEYS {
        let key = format!("k{i}");
        match client.read(&key) {
            Ok(Reply::NotFound) if i % 5 == 1 => {}
            Ok(Reply::Value { value, .. }) if i % 5 != 1 => {
                let expected = if i % 3 == 0 { "again".to_string() } else { format!("value-{i}") };
                assert_eq!(value, expected.as_bytes(), "{key}");
            }
            other => panic!("read {key}: {other:?}"),
        }
    }
    let served = stat(&addr, "slave.s1.requests").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    assert!(
        served > served_before + (KEYS / 10) as u64,
        "s1 served {} of {KEYS} reads",
        served - served_before
    );
    let log = c.primary.output();
    assert!(!log.contains("stale copy"), "a slave served a stale copy:\n{log}");
    c.slaves[1].resume().unwrap();
}

#[test]
fn compaction_keeps_the_state_while_writes_go_on_and_the_backup_follows_the_stream() {
    compaction_while_the_backup_follows(true);
}

#[test]
fn compaction_keeps_the_state_while_writes_go_on_and_the_backup_follows_the_file() {
    compaction_while_the_backup_follows(false);
}

/// `tcp`: the backup streams the primary's log; otherwise it polls the file, which the
/// compaction replaces by a rename.
fn compaction_while_the_backup_follows(tcp: bool) {
    let mut c = FailoverCluster::start(3, tcp);
    // Every key written three times: the log holds three records per key.
    for _ in 0..3 {
        load(&c.primary_addr, "c");
    }
    let bytes = |addr: &str| -> u64 {
        stat_with_password(addr, "wal_bytes", None).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let before = bytes(&c.primary_addr);
    let mut raw = common::Raw::connect(&c.primary_addr);
    assert_eq!(raw.ask("COMPACT"), "OK");
    // Writes go on meanwhile; each is acknowledged.
    for i in 0..200 {
        assert!(raw.ask(&format!("WRITE during{i} x")).starts_with("OK "));
    }
    wait_for("the compaction", READY, || {
        stat(&c.primary_addr, "compactions").as_deref() == Some("1")
            && stat(&c.primary_addr, "compacting").as_deref() == Some("0")
    })
    .unwrap();
    let after = bytes(&c.primary_addr);
    assert!(after * 2 < before, "the log went from {before} to {after} bytes");
    assert_eq!(stat(&c.primary_addr, "compaction_error").as_deref(), Some(""));
    // The backup went on across it (never reloading: the replaced file is a subsequence of the
    // old one): a takeover finds every write.
    c.primary.kill();
    c.wait_role(&c.backup_addr.clone(), "primary", 3);
    let mut client = c.client();
    check(&mut client, "c");
    assert!(matches!(client.read("during199"), Ok(Reply::Value { .. })));
    // And the compacted log replays: the old primary restarts from it and fails back.
    c.primary.restart().unwrap();
    c.wait_role(&c.primary_addr.clone(), "primary", 3);
    check(&mut client, "c");
    assert!(matches!(client.read("during0"), Ok(Reply::Value { .. })));
}

#[test]
fn a_lone_master_compacts_on_its_own_and_restarts_from_the_compacted_log() {
    // A 1-byte threshold and 50 % growth: compaction starts as soon as the log has grown.
    let mut c = TestCluster::start_with(1, &["--compact-min-bytes", "1", "--compact-percent", "50"]);
    load(&c.addr(), "x");
    load(&c.addr(), "x");
    let addr = c.addr();
    wait_for("an automatic compaction", READY, || {
        stat(&addr, "compactions").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) >= 1
    })
    .unwrap();
    c.primary.restart().unwrap();
    c.wait_slaves(1);
    check(&mut c.client(), "x");
    assert_eq!(stat(&c.addr(), "keys"), Some(KEYS.to_string()));
}
