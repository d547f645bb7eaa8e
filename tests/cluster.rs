//! The cluster under failure: real processes, killed and paused.

mod common;

use std::time::{Duration, Instant};

use common::{must_read, must_write, TestCluster, READY};
use dsm::protocol::{ErrorReply, Reply};
use dsm_testkit::cluster::{stat, wait_for, Listen};

fn writes_and_reads_with(n: usize) {
    let c = TestCluster::start(n);
    let mut client = c.client();
    let mut last = 0;
    for i in 0..50 {
        let v = must_write(&mut client, &format!("key{}", i % 10), &format!("value {i}"));
        assert!(v > last);
        last = v;
    }
    for k in 0..10 {
        assert_eq!(must_read(&mut client, &format!("key{k}")), Some(format!("value {}", 40 + k)));
    }
    assert_eq!(stat(&c.addr(), "members"), Some(n.to_string()));
}

#[test]
fn one_slave() {
    writes_and_reads_with(1);
}

#[test]
fn three_slaves() {
    writes_and_reads_with(3);
}

#[test]
fn five_slaves() {
    writes_and_reads_with(5);
}

#[test]
fn kill_one_slave_of_three_loses_no_acknowledged_write() {
    let mut c = TestCluster::start(3);
    let mut client = c.client();
    let mut acked = Vec::new();
    for i in 0..100 {
        let key = format!("k{i}");
        must_write(&mut client, &key, &format!("v{i}"));
        acked.push(key);
        if i == 50 {
            c.slaves[0].kill();
        }
    }
    // Writes go on with two of three, and every acknowledged write is readable.
    for (i, key) in acked.iter().enumerate() {
        assert_eq!(must_read(&mut client, key), Some(format!("v{i}")), "lost {key}");
    }
    // Kill another slave: only one of three left, so writes are refused, never acknowledged.
    c.slaves[1].kill();
    wait_for("the second death noticed", READY, || stat(&c.addr(), "slaves") == Some("1".into())).unwrap();
    match client.write("k-more", b"x") {
        Ok(Reply::Err(ErrorReply::Unavailable(msg))) => assert!(msg.contains("1 of 3 members"), "{msg}"),
        other => panic!("expected ERR UNAVAILABLE, got {other:?}"),
    }
    // Restart both: they are caught up and everything is still there.
    c.slaves[0].restart().unwrap();
    c.slaves[1].restart().unwrap();
    c.wait_slaves(3);
    for (i, key) in acked.iter().enumerate() {
        assert_eq!(must_read(&mut client, key), Some(format!("v{i}")), "lost {key} after restarts");
    }
    // The restarted slaves were given every key: kill the one that never died, and the two
    // restarted ones must still hold everything.
    c.slaves[2].kill();
    wait_for("third death noticed", READY, || stat(&c.addr(), "slaves") == Some("2".into())).unwrap();
    for (i, key) in acked.iter().enumerate() {
        assert_eq!(must_read(&mut client, key), Some(format!("v{i}")), "{key} not caught up");
    }
}

#[test]
fn one_dead_one_paused_gives_an_error_quickly_then_recovers() {
    let mut c = TestCluster::start(3);
    let mut client = c.client();
    must_write(&mut client, "before", "1");
    c.slaves[0].kill();
    c.slaves[1].pause().unwrap();
    // The write cannot reach a majority: an error within seconds, never OK, never a hang.
    let started = Instant::now();
    let reply = client.write("during", b"2").expect("a reply");
    assert!(
        matches!(reply, Reply::Err(ErrorReply::Timeout(_)) | Reply::Err(ErrorReply::Unavailable(_))),
        "expected an error, got {reply:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    // Further writes keep failing while the paused slave is stopped.
    let reply = client.write("during2", b"3").expect("a reply");
    assert!(matches!(reply, Reply::Err(_)), "{reply:?}");
    c.slaves[1].resume().unwrap();
    // The paused slave reconnects and is caught up; writes resume.
    wait_for("writes to resume", READY, || matches!(client.write("after", b"4"), Ok(Reply::Ok(_)))).unwrap();
    assert_eq!(must_read(&mut client, "before"), Some("1".into()));
    assert_eq!(must_read(&mut client, "after"), Some("4".into()));
}

#[test]
fn master_restart_replays_the_log() {
    let mut c = TestCluster::start(3);
    let mut client = c.client();
    let mut versions = Vec::new();
    for i in 0..30 {
        versions.push(must_write(&mut client, &format!("k{i}"), &format!("v{i} with spaces")));
    }
    assert!(matches!(client.request(&dsm::protocol::Request::Delete { key: "k0".into() }), Ok(Reply::Ok(_))));
    let seq_before: u64 = stat(&c.addr(), "seq").unwrap().parse().unwrap();
    let epoch_before: u64 = stat(&c.addr(), "epoch").unwrap().parse().unwrap();
    c.primary.restart().unwrap();
    c.wait_slaves(3);
    let mut client = c.client();
    assert_eq!(stat(&c.addr(), "members"), Some("3".into()));
    let epoch_after: u64 = stat(&c.addr(), "epoch").unwrap().parse().unwrap();
    assert!(epoch_after > epoch_before);
    assert!(stat(&c.addr(), "seq").unwrap().parse::<u64>().unwrap() > seq_before);
    assert_eq!(must_read(&mut client, "k0"), None);
    for (i, &expected) in versions.iter().enumerate().skip(1) {
        match client.read(&format!("k{i}")).unwrap() {
            Reply::Value { version, value } => {
                assert_eq!(version, expected);
                assert_eq!(value, format!("v{i} with spaces").into_bytes());
            }
            other => panic!("k{i}: {other:?}"),
        }
    }
    // New writes get versions above every replayed one.
    assert!(must_write(&mut client, "new", "x") > seq_before);
}

#[test]
fn master_restart_with_all_slaves_restarted_recovers_from_the_log() {
    let mut c = TestCluster::start(3);
    let mut client = c.client();
    for i in 0..20 {
        must_write(&mut client, &format!("k{i}"), &format!("v{i}"));
    }
    // Everything in memory is gone; only the master's log remains.
    c.primary.kill();
    for s in &mut c.slaves {
        s.kill();
    }
    c.primary.restart().unwrap();
    for s in &mut c.slaves {
        s.restart().unwrap();
    }
    c.wait_slaves(3);
    let mut client = c.client();
    for i in 0..20 {
        assert_eq!(must_read(&mut client, &format!("k{i}")), Some(format!("v{i}")));
    }
}

#[test]
fn a_slave_restarted_under_the_same_id_is_not_a_new_member() {
    let mut c = TestCluster::start(3);
    c.slaves[2].restart().unwrap();
    c.wait_slaves(3);
    assert_eq!(stat(&c.addr(), "members"), Some("3".into()));
    // An operator removes a dead member for good.
    c.slaves[2].kill();
    wait_for("death noticed", READY, || stat(&c.addr(), "slaves") == Some("2".into())).unwrap();
    let mut r = c.raw();
    assert!(r.ask("REMOVE s3").starts_with("OK "));
    assert_eq!(stat(&c.addr(), "members"), Some("2".into()));
    let mut client = c.client();
    must_write(&mut client, "after-remove", "ok");
}

fn keys_held(c: &TestCluster, id: &str) -> u64 {
    stat(&c.addr(), &format!("slave.{id}.keys")).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[test]
fn a_paused_slave_is_marked_down_and_caught_up_when_it_returns() {
    let c = TestCluster::start(3);
    let mut client = c.client();
    c.slaves[2].pause().unwrap();
    wait_for("s3 marked down", READY, || stat(&c.addr(), "slave.s3.state").as_deref() == Some("down"))
        .unwrap();
    for i in 0..20 {
        must_write(&mut client, &format!("k{i}"), &format!("v{i}"));
    }
    assert_eq!(keys_held(&c, "s3"), 0);
    c.slaves[2].resume().unwrap();
    c.wait_slaves(3);
    // It came back as the same member and holds the newest version of every key.
    assert_eq!(stat(&c.addr(), "members"), Some("3".into()));
    wait_for("s3 caught up", READY, || keys_held(&c, "s3") == 20).unwrap();
}

#[test]
fn keys_losing_their_copies_are_re_replicated() {
    let mut c = TestCluster::start(3);
    let mut client = c.client();
    for i in 0..30 {
        must_write(&mut client, &format!("k{i}"), &format!("v{i}"));
    }
    // Each write went to a majority (two of three); after a death, keys left with one live copy
    // are copied to the other survivor.
    c.slaves[0].kill();
    wait_for("re-replication", READY, || keys_held(&c, "s2") == 30 && keys_held(&c, "s3") == 30).unwrap();
    for i in 0..30 {
        assert_eq!(must_read(&mut client, &format!("k{i}")), Some(format!("v{i}")));
    }
}

#[test]
fn a_server_that_exits_before_listening_is_reported_with_its_output() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = Listen::At(taken.local_addr().unwrap().to_string());
    let err = match common::builder().primary_listen(listen).start() {
        Ok(_) => panic!("a master on a taken port must not start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("exited with"), "{err}");
    assert!(err.contains("cannot listen on"), "the error quotes the server's own reason: {err}");
}

#[test]
fn a_second_slave_with_a_connected_id_is_refused_and_backs_off() {
    let mut c = TestCluster::start(1);
    c.add_slave("s1-twin", "s1", &[]).unwrap();
    let dir = c.dir().to_path_buf();
    let read = |name: &str| std::fs::read_to_string(dir.join(format!("{name}.out"))).unwrap_or_default();
    // Refused again and again with a clear reason, while the first keeps its connection.
    wait_for("the twin to be refused three times", READY, || {
        read("s1-twin").matches("already connected").count() >= 3
    })
    .unwrap_or_else(|e| panic!("{e}: {}", read("s1-twin")));
    let master = read("primary");
    assert_eq!(master.matches("slave s1 registered").count(), 1, "the first s1 was replaced:\n{master}");
    assert!(master.contains("give every slave its own --id"), "{master}");
    assert_eq!(stat(&c.addr(), "slave.s1.state").as_deref(), Some("up"));
    // Backing off, not fighting: a few refusals, not thousands.
    let refusals = read("s1-twin").matches("already connected").count();
    assert!(refusals < 50, "{refusals} refusals: the twin does not back off");
    // Once the first is gone for good, the id is free for the other.
    c.slaves[0].kill();
    wait_for("the twin to take the id over", READY, || {
        read("primary").matches("slave s1 registered").count() == 2
    })
    .unwrap_or_else(|e| panic!("{e}: {}", read("primary")));
    c.wait_slaves(1);
}

#[test]
fn slave_stats_count_live_keys_and_client_requests_only() {
    let c = TestCluster::start_with(1, &["--read-from", "slaves"]);
    let mut r = c.raw();
    assert!(r.ask("WRITE only v").starts_with("OK "));
    for _ in 0..5 {
        assert!(r.ask("READ only").ends_with(" v"));
    }
    // With one slave and reads from the slaves, every read and write went to it: exactly 6,
    // though heartbeats have been sent all along (ten a second).
    assert_eq!(stat(&c.addr(), "slave.s1.requests").as_deref(), Some("6"));
    // The slave's own count, as its next answer to a heartbeat says.
    let keys = || stat(&c.addr(), "slave.s1.keys");
    wait_for("the slave to count the key", READY, || keys().as_deref() == Some("1")).unwrap();
    assert!(r.ask("DELETE only").starts_with("OK "));
    // A tombstone is not a key, for the slave as for the master.
    assert_eq!(stat(&c.addr(), "keys").as_deref(), Some("0"));
    wait_for("the slave to drop the key", READY, || keys().as_deref() == Some("0")).unwrap();
}

#[test]
fn reads_from_the_master_never_reach_a_slave() {
    let c = TestCluster::start(1);
    let mut r = c.raw();
    assert!(r.ask("WRITE k v").starts_with("OK "));
    for _ in 0..5 {
        assert!(r.ask("READ k").ends_with(" v"));
    }
    assert_eq!(r.ask("READ missing"), "NOT_FOUND");
    // Only the write went to the slave.
    assert_eq!(stat(&c.addr(), "slave.s1.requests").as_deref(), Some("1"));
}

#[test]
fn concurrent_writes_are_combined_and_each_answered_in_order() {
    const THREADS: usize = 8;
    const WRITES: usize = 200;
    let c = TestCluster::start(3);
    let addr = c.addr();
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let mut client = c.client();
            std::thread::spawn(move || {
                let mut last = 0;
                for i in 0..WRITES {
                    // Alternating with a read on the same connection: each must see the write
                    // just acknowledged, and versions only grow on a connection.
                    let version = must_write(&mut client, &format!("t{t}"), &format!("{i}"));
                    assert!(version > last, "version {version} after {last}");
                    last = version;
                    if i % 10 == 0 {
                        assert_eq!(must_read(&mut client, &format!("t{t}")), Some(format!("{i}")));
                    }
                }
                let reply = client.request(&dsm::protocol::Request::Delete { key: format!("t{t}") }).unwrap();
                assert!(matches!(reply, Reply::Ok(_)), "{reply:?}");
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let mut client = c.client();
    for t in 0..THREADS {
        assert_eq!(must_read(&mut client, &format!("t{t}")), None);
    }
    let writes: u64 = stat(&addr, "writes").unwrap().parse().unwrap();
    let batches: u64 = stat(&addr, "write_batches").unwrap().parse().unwrap();
    assert_eq!(writes, (THREADS * (WRITES + 1)) as u64);
    // Eight connections writing at once share batches (every write went through one).
    assert!(batches > 0 && batches < writes, "{batches} batches for {writes} writes");
    // The batches slave readers sent are not kept once complete (they were, one per batch,
    // until the master slowed to a halt under their weight).
    let loose: u64 = stat(&addr, "loose_rounds").unwrap().parse().unwrap();
    assert!(loose <= 2, "{loose} loose rounds kept after {batches} batches");
}

#[test]
fn combined_writes_without_a_majority_are_all_answered_with_an_error() {
    const THREADS: usize = 6;
    let mut c = TestCluster::start(3);
    let mut client = c.client();
    must_write(&mut client, "before", "1");
    c.slaves[0].kill();
    c.slaves[1].pause().unwrap();
    // Writers on several connections at once: whichever connection combined a batch settles
    // it, and every writer gets an error — never OK, never a hang.
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let mut client = c.client();
            std::thread::spawn(move || client.write(&format!("during{t}"), b"2").expect("a reply"))
        })
        .collect();
    for w in writers {
        let reply = w.join().unwrap();
        assert!(
            matches!(reply, Reply::Err(ErrorReply::Timeout(_)) | Reply::Err(ErrorReply::Unavailable(_))),
            "expected an error, got {reply:?}"
        );
    }
    c.slaves[1].resume().unwrap();
    wait_for("writes to resume", READY, || matches!(client.write("after", b"4"), Ok(Reply::Ok(_)))).unwrap();
    assert_eq!(must_read(&mut client, "before"), Some("1".into()));
}

/// A master's statistic `name`, a number.
fn stat_number(addr: &str, name: &str) -> u64 {
    let value = stat(addr, name).unwrap_or_else(|| panic!("no statistic {name}"));
    value.parse().unwrap_or_else(|e| panic!("{name} = {value:?}: {e}"))
}

/// Flags that keep paused slaves from being marked down while a test holds a round in flight:
/// heartbeats 2 s apart (silent for 20 s to be marked down), and the ACK timeout `ack_ms`.
fn patient(ack_ms: &str) -> [&str; 4] {
    ["--heartbeat-ms", "2000", "--ack-timeout-ms", ack_ms]
}

/// Starts one write on its own connection and thread.
fn write_in_background(c: &TestCluster, key: &str) -> std::thread::JoinHandle<Reply> {
    let (mut client, key) = (c.client(), key.to_string());
    std::thread::spawn(move || client.write(&key, b"1").expect("a reply"))
}

/// With slaves s1 and s2 paused, sends a write whose round only s3 can acknowledge, then
/// `writers` more writes, which queue behind that round; returns them all (the first one
/// first) once they wait in the queue, with `write_batches` before the first.
fn queue_behind_a_round(c: &TestCluster, writers: usize) -> (Vec<std::thread::JoinHandle<Reply>>, u64) {
    let addr = c.addr();
    let before = stat_number(&addr, "write_batches");
    c.slaves[0].pause().unwrap();
    c.slaves[1].pause().unwrap();
    let mut handles = vec![write_in_background(c, "first")];
    wait_for("the first write's round", READY, || stat_number(&addr, "write_batches") == before + 1).unwrap();
    handles.extend((0..writers).map(|t| write_in_background(c, &format!("queued{t}"))));
    wait_for("the writes queued behind it", READY, || stat_number(&addr, "write_queue") == writers as u64)
        .unwrap();
    (handles, before)
}

#[test]
fn writes_queued_behind_a_round_in_flight_go_out_as_one_batch_when_it_ends() {
    const WRITERS: usize = 6;
    let c = TestCluster::start_with(3, &patient("60000"));
    let (handles, before) = queue_behind_a_round(&c, WRITERS);
    // One combined round in flight at a time: nothing more was sent meanwhile.
    assert_eq!(stat_number(&c.addr(), "write_batches"), before + 1);
    // s1's acknowledgement completes the first round (with s3's); the reader that counted it
    // sends the queued writes, which s1 and s3 acknowledge.
    c.slaves[0].resume().unwrap();
    for h in handles {
        let reply = h.join().unwrap();
        assert!(matches!(reply, Reply::Ok(_)), "{reply:?}");
    }
    assert_eq!(stat_number(&c.addr(), "write_batches"), before + 2, "the queued writes went as one batch");
    c.slaves[1].resume().unwrap();
    let mut client = c.client();
    for t in 0..WRITERS {
        assert_eq!(must_read(&mut client, &format!("queued{t}")), Some("1".into()));
    }
}

/// As [`queue_behind_a_round`], then s3 paused too once it has acknowledged the first round (it
/// awaits nothing; heartbeats come and go) and s1 resumed: s1 completes the first round, whose
/// write is answered `OK`, and its reader sends the queued writes as a batch for no connection,
/// which only s1 acknowledges. Returns the queued writers and `write_batches` before the first.
fn loose_round_only_s1_acknowledges(
    c: &TestCluster,
    writers: usize,
) -> (Vec<std::thread::JoinHandle<Reply>>, u64) {
    let addr = c.addr();
    let (mut handles, before) = queue_behind_a_round(c, writers);
    wait_for("s3's acknowledgement", READY, || stat_number(&addr, "slave.s3.awaiting") == 0).unwrap();
    c.slaves[2].pause().unwrap();
    c.slaves[0].resume().unwrap();
    let first = handles.remove(0).join().unwrap();
    assert!(matches!(first, Reply::Ok(_)), "{first:?}");
    (handles, before)
}

/// Every write of `handles` is answered `ERR TIMEOUT`.
fn all_time_out(handles: Vec<std::thread::JoinHandle<Reply>>) {
    for h in handles {
        let reply = h.join().unwrap();
        assert!(matches!(reply, Reply::Err(ErrorReply::Timeout(_))), "expected a timeout, got {reply:?}");
    }
}

#[test]
fn a_batch_sent_for_no_connection_without_a_majority_is_answered_with_errors() {
    // The first round must end by s1's acknowledgement, not by its ACK timeout: 6 s for the
    // steps before, which take well under a second.
    let c = TestCluster::start_with(3, &patient("6000"));
    let addr = c.addr();
    let (handles, before) = loose_round_only_s1_acknowledges(&c, 4);
    // Nothing more acknowledges the batch; one of the connections waiting settles it.
    all_time_out(handles);
    assert_eq!(stat_number(&addr, "write_batches"), before + 2, "the queued writes went as one batch");
    c.slaves[1].resume().unwrap();
    c.slaves[2].resume().unwrap();
    let mut client = c.client();
    wait_for("writes to resume", READY, || matches!(client.write("after", b"2"), Ok(Reply::Ok(_)))).unwrap();
    assert_eq!(must_read(&mut client, "first"), Some("1".into()));
}

#[test]
fn a_batch_sent_for_no_connection_whose_slaves_die_is_answered_at_once() {
    let mut c = TestCluster::start_with(3, &patient("6000"));
    let (handles, _) = loose_round_only_s1_acknowledges(&c, 4);
    // The other two die: the batch can no longer reach its majority, and a connection waiting
    // for it settles it then, not at the ACK deadline (nor never: a round out of reach used to
    // be due at a moment always just after the waiting connection's look).
    c.slaves[1].kill();
    c.slaves[2].kill();
    all_time_out(handles);
}
