//! The backup master: takeover after a kill or a pause, failback, following the log.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{must_read, FailoverCluster, Raw, READY};
use dsm::client::Client;
use dsm::protocol::Reply;
use dsm_testkit::cluster::{stat, wait_for, Follow};

/// Writes `key=value` until one is acknowledged (through failovers); returns its version.
fn write_until_ok(c: &mut Client, key: &str, value: &str) -> u64 {
    let mut version = 0;
    wait_for(&format!("write {key}"), READY, || match c.write(key, value.as_bytes()) {
        Ok(Reply::Ok(v)) => {
            version = v;
            true
        }
        _ => false,
    })
    .unwrap();
    version
}

fn kill_primary_under_writes(tcp_follow: bool) {
    let mut c = FailoverCluster::start(3, tcp_follow);
    let mut client = c.client();
    let mut acked = Vec::new();
    for i in 0..30 {
        if let Ok(Reply::Ok(_)) = client.write(&format!("k{i}"), format!("v{i}").as_bytes()) {
            acked.push(i);
        }
    }
    c.primary.kill();
    // Writes go on against the backup once it has taken over; outcomes of writes cut by the
    // kill are unknown, so only acknowledged ones are checked.
    for i in 30..60 {
        write_until_ok(&mut client, &format!("k{i}"), &format!("v{i}"));
        acked.push(i);
    }
    assert_eq!(stat(&c.backup_addr, "role").as_deref(), Some("primary"));
    for &i in &acked {
        assert_eq!(must_read(&mut client, &format!("k{i}")), Some(format!("v{i}")), "lost k{i}");
    }
}

#[test]
fn kill_primary_backup_takes_over_following_the_file() {
    kill_primary_under_writes(false);
}

#[test]
fn kill_primary_backup_takes_over_following_over_tcp() {
    kill_primary_under_writes(true);
}

#[test]
fn paused_primary_never_acknowledges_or_serves_stale_after_takeover() {
    let c = FailoverCluster::start(3, false);
    let mut client = c.client();
    write_until_ok(&mut client, "k", "old");
    c.primary.pause().unwrap();
    c.wait_role(&c.backup_addr.clone(), "primary", 3);
    let mut to_backup = Client::new(&c.backup_addr, None);
    write_until_ok(&mut to_backup, "k", "new");
    // Talk to the old primary directly, as a client that never learned of the takeover.
    let mut raw = Raw::connect(&c.primary_addr);
    c.primary.resume().unwrap();
    let mut acked = Vec::new();
    for i in 0..40 {
        let read = raw.ask("READ k");
        assert!(!read.ends_with(" old"), "stale read from the old primary: {read}");
        assert!(read.starts_with("ERR") || read.ends_with(" new"), "{read}");
        let key = format!("after{i}");
        let reply = raw.ask(&format!("WRITE {key} x{i}"));
        if reply.starts_with("OK ") {
            acked.push((key, format!("x{i}")));
        } else {
            assert!(reply.starts_with("ERR"), "{reply}");
        }
    }
    // The old primary stepped down (and may since have failed back, with the new data).
    let mut all = c.client();
    read_eventually(&mut all, "k", "new");
    for (key, value) in acked {
        read_eventually(&mut all, &key, &value);
    }
}

#[test]
fn restarted_primary_fails_back_and_the_backup_follows_again() {
    let mut c = FailoverCluster::start(3, false);
    let mut client = c.client();
    write_until_ok(&mut client, "before", "1");
    c.primary.kill();
    c.wait_role(&c.backup_addr.clone(), "primary", 3);
    let mut to_backup = Client::new(&c.backup_addr, None);
    for i in 0..20 {
        write_until_ok(&mut to_backup, &format!("during{i}"), &format!("d{i}"));
    }
    c.primary.restart().unwrap();
    c.wait_role(&c.primary_addr.clone(), "primary", 3);
    assert_eq!(stat(&c.backup_addr, "role").as_deref(), Some("standby"));
    let mut to_primary = Client::new(&c.primary_addr, None);
    for i in 0..20 {
        assert_eq!(must_read(&mut to_primary, &format!("during{i}")), Some(format!("d{i}")));
    }
    assert_eq!(must_read(&mut to_primary, "before"), Some("1".into()));
    // The backup follows the primary's log again.
    let v = write_until_ok(&mut to_primary, "after", "2");
    wait_for("the backup to follow", READY, || {
        stat(&c.backup_addr, "seq").and_then(|s| s.parse::<u64>().ok()).is_some_and(|s| s >= v)
    })
    .unwrap();
    // A standby never serves reads or writes.
    let mut raw = Raw::connect(&c.backup_addr);
    assert_eq!(raw.ask("READ after"), format!("ERR NOTPRIMARY {}", c.primary_addr));
    assert_eq!(raw.ask("WRITE x y"), format!("ERR NOTPRIMARY {}", c.primary_addr));
}

/// Reads `key` until the cluster answers (it may be changing hands); the first answer must be
/// `value`.
fn read_eventually(c: &mut Client, key: &str, value: &str) {
    let mut answer = None;
    wait_for(&format!("a read of {key}"), READY, || match c.read(key) {
        Ok(r @ (Reply::Value { .. } | Reply::NotFound)) => {
            answer = Some(r);
            true
        }
        _ => false,
    })
    .unwrap();
    match answer {
        Some(Reply::Value { value: v, .. }) => assert_eq!(v, value.as_bytes(), "{key}"),
        other => panic!("{key}: expected {value}, got {other:?}"),
    }
}

#[test]
fn both_masters_down_gives_a_clear_error_then_recovers() {
    let mut c = FailoverCluster::start(3, false);
    let mut client = c.client();
    for i in 0..10 {
        write_until_ok(&mut client, &format!("k{i}"), &format!("v{i}"));
    }
    c.primary.kill();
    c.backup().kill();
    client.set_timeout(Duration::from_secs(5));
    match client.read("k1") {
        Err(dsm::Error::Unavailable(msg)) => assert!(msg.contains("no server reachable"), "{msg}"),
        other => panic!("expected a clear error, got {other:?}"),
    }
    c.backup().restart().unwrap();
    c.primary.restart().unwrap();
    let mut client = c.client();
    for i in 0..10 {
        read_eventually(&mut client, &format!("k{i}"), &format!("v{i}"));
    }
}

#[test]
fn backup_follows_a_long_log_partial_lines_and_a_replaced_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("followed.log");
    let mut text = String::from("1 EPOCH 1\n");
    for i in 2..=20_000 {
        text.push_str(&format!("{i} SET key{} value {i}\n", i % 500));
    }
    text.push_str("20001 SET half val");
    std::fs::write(&path, &text).unwrap();
    // No primary is running; a long takeover delay keeps the backup a standby for this test.
    let nowhere = dsm_testkit::cluster::free_port().unwrap().to_string();
    let backup = common::builder()
        .dir(dir.path())
        .backup(Follow::File(path.clone()))
        .backup_args(["--takeover-after-ms", "600000"])
        .start_backup(&nowhere)
        .unwrap();
    let addr = backup.addr().to_string();
    let seq = || stat(&addr, "seq").and_then(|s| s.parse::<u64>().ok());
    wait_for("the long log", READY, || seq() == Some(20_000)).unwrap();
    assert_eq!(stat(&addr, "role").as_deref(), Some("standby"));
    // The partial line is applied once it is complete.
    std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"ue\n20002 DEL key3\n").unwrap();
    wait_for("the completed line", READY, || seq() == Some(20_002)).unwrap();
    // A file replaced by a rename is a compaction (a subsequence of the old log, then what was
    // appended since): the backup goes on after the last record it applied.
    let compacted = dir.path().join("new.log");
    let mut text = String::from("1 EPOCH 1\n");
    for i in 19_501..=20_000 {
        text.push_str(&format!("{i} SET key{} value {i}\n", i % 500));
    }
    text.push_str("20001 SET half value\n20002 DEL key3\n20003 SET after compaction\n");
    std::fs::write(&compacted, &text).unwrap();
    std::fs::rename(&compacted, &path).unwrap();
    wait_for("the record after the compaction", READY, || seq() == Some(20_003)).unwrap();
    assert_eq!(stat(&addr, "keys").as_deref(), Some("501"), "key0..key499 but key3, half, after");
    // A file rewritten in place (shorter) is another history: detected and reloaded, never
    // mis-parsed.
    std::fs::write(&path, "1 EPOCH 3\n7 SET only one\n").unwrap();
    wait_for("the reload", READY, || seq() == Some(7)).unwrap();
    assert_eq!(stat(&addr, "keys").as_deref(), Some("1"));
}

/// A restarted backup whose log is a copy of the primary's (an odd epoch: not one it served
/// in) follows the primary again, by the file and by TCP, rather than holding that copy as if
/// it were its own.
#[test]
fn a_restarted_backup_follows_the_primary_again() {
    for tcp in [false, true] {
        let mut c = FailoverCluster::start(3, tcp);
        let mut client = c.client();
        for i in 0..50 {
            write_until_ok(&mut client, &format!("before{i}"), "x");
        }
        c.backup.as_mut().expect("a backup").restart().unwrap();
        for i in 0..50 {
            write_until_ok(&mut client, &format!("after{i}"), "y");
        }
        let seq = |addr: &str| stat(addr, "seq").and_then(|s| s.parse::<u64>().ok());
        let backup = c.backup_addr.clone();
        wait_for("the restarted backup to copy the new writes", READY, || {
            seq(&backup).is_some() && seq(&backup) >= seq(&c.primary_addr)
        })
        .unwrap_or_else(|e| {
            panic!("{e} (tcp {tcp}): backup at {:?}, primary at {:?}", seq(&backup), seq(&c.primary_addr))
        });
    }
}
