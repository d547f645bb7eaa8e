//! Raw line-protocol exchanges with a real master, exactly as a netcat user sees them.

mod common;

use common::{Raw, TestCluster};

#[test]
fn netcat_session_with_every_reply() {
    let c = TestCluster::start(3);
    let mut r = c.raw();
    // The original client's handshake line is accepted and gets no reply.
    r.send(b"CLIENT\r\n");
    let v1: u64 = r.ask("WRITE greeting hello  wide world ").strip_prefix("OK ").unwrap().parse().unwrap();
    assert_eq!(r.ask("READ greeting"), format!("VALUE {v1} hello  wide world "));
    assert_eq!(r.ask("get greeting"), format!("VALUE {v1} hello  wide world "));
    let v2: u64 = r.ask("set greeting ").strip_prefix("OK ").unwrap().parse().unwrap();
    assert!(v2 > v1, "versions must grow: {v1} then {v2}");
    assert_eq!(r.ask("READ greeting"), format!("VALUE {v2} "));
    assert_eq!(r.ask("READ missing"), "NOT_FOUND");
    assert_eq!(r.ask("DELETE missing"), "NOT_FOUND");
    let v3: u64 = r.ask("del greeting").strip_prefix("OK ").unwrap().parse().unwrap();
    assert!(v3 > v2);
    assert_eq!(r.ask("READ greeting"), "NOT_FOUND");
    assert_eq!(r.ask("PUT greeting back"), format!("OK {}", v3 + 1));
    assert_eq!(r.ask("ping"), "PONG");
    // Every error reply, and the connection stays open after each.
    assert_eq!(r.ask("FROB x"), "ERR unknown command 'FROB'");
    assert_eq!(r.ask(""), "ERR empty command");
    assert_eq!(r.ask("WRITE onlykey"), "ERR wrong number of arguments for 'write'");
    assert_eq!(r.ask("READ a b"), "ERR wrong number of arguments for 'read'");
    assert_eq!(r.ask("DELETE"), "ERR wrong number of arguments for 'delete'");
    assert_eq!(r.ask("PING now"), "ERR wrong number of arguments for 'ping'");
    assert_eq!(r.ask(&format!("READ {}", "k".repeat(251))), "ERR key too long (251 bytes, max 250)");
    assert_eq!(r.ask("READ a\u{1}b"), "ERR key contains whitespace or control bytes");
    assert_eq!(r.ask("CLIENT"), "ERR CLIENT is accepted only as the first line");
    assert_eq!(r.ask("REMOVE nobody"), "ERR no member 'nobody'");
    assert_eq!(r.ask("REMOVE s1"), "ERR slave 's1' is connected; stop it before removing it");
    // STATS and MEMBERS are tables closed by END.
    r.send(b"STATS\n");
    let mut stats = Vec::new();
    loop {
        let line = r.line();
        if line == "END" {
            break;
        }
        stats.push(line);
    }
    for name in [
        "role primary",
        "slaves 3",
        "members 3",
        "keys 1",
        "epoch ",
        "seq ",
        "writes ",
        "reads ",
        "errors ",
        "wal_bytes ",
        "uptime_s ",
    ] {
        assert!(stats.iter().any(|l| l.starts_with(&format!("STAT {name}"))), "no STAT {name} in {stats:?}");
    }
    r.send(b"MEMBERS\n");
    assert_eq!(
        [r.line(), r.line(), r.line(), r.line()],
        ["MEMBER s1 up", "MEMBER s2 up", "MEMBER s3 up", "END"]
    );
    assert_eq!(r.ask("QUIT"), "BYE");
    assert!(r.closed());
}

#[test]
fn pipelined_requests_get_replies_in_order() {
    let c = TestCluster::start(3);
    let mut r = c.raw();
    let mut batch = Vec::new();
    for i in 0..200 {
        batch.extend_from_slice(format!("WRITE k{} value {i}\nREAD k{}\n", i % 7, i % 7).as_bytes());
    }
    batch.extend_from_slice(b"PING\n");
    r.send(&batch);
    let mut last_version = 0;
    for i in 0..200 {
        let ok = r.line();
        let version: u64 = ok.strip_prefix("OK ").unwrap_or_else(|| panic!("{ok}")).parse().unwrap();
        assert!(version > last_version, "versions out of order: {last_version} then {version}");
        last_version = version;
        assert_eq!(r.line(), format!("VALUE {version} value {i}"));
    }
    assert_eq!(r.line(), "PONG");
}

#[test]
fn a_run_of_pipelined_writes_is_executed_together_and_reads_after_it_see_it() {
    let c = TestCluster::start(3);
    let mut r = c.raw();
    // More writes than one run takes, the same key overwritten, then a read, a delete, a read.
    let n = dsm::master::MAX_PIPELINED_WRITES * 2 + 10;
    let mut batch = Vec::new();
    for i in 0..n {
        batch.extend_from_slice(format!("WRITE k{} v{i}\r\n", i % 100).as_bytes());
    }
    batch.extend_from_slice(
        format!("READ k{}\r\nDELETE k0\r\nREAD k0\r\nWRITE k0 again\r\n", (n - 1) % 100).as_bytes(),
    );
    r.send(&batch);
    let mut last = 0;
    for i in 0..n {
        let ok = r.line();
        let version: u64 =
            ok.strip_prefix("OK ").unwrap_or_else(|| panic!("write {i}: {ok}")).parse().unwrap();
        assert!(
            i == 0 || version == last + 1,
            "one append, consecutive versions in request order: {last} then {version}"
        );
        last = version;
    }
    assert_eq!(r.line(), format!("VALUE {last} v{}", n - 1));
    assert!(r.line().starts_with("OK "));
    assert_eq!(r.line(), "NOT_FOUND");
    assert!(r.line().starts_with("OK "));
    // The master's log has them all, and so does each slave.
    let stat = |name: &str| dsm_testkit::cluster::stat(&c.addr(), name);
    assert_eq!(stat("keys").as_deref(), Some("100"));
    dsm_testkit::cluster::wait_for("every slave to count 100 keys", common::READY, || {
        (1..=3).all(|i| stat(&format!("slave.s{i}.keys")).as_deref() == Some("100"))
    })
    .unwrap();
}

#[test]
fn an_oversized_line_is_refused_and_the_connection_closed() {
    let c = TestCluster::start(1);
    let mut r = c.raw();
    assert!(r.ask("WRITE small v").starts_with("OK "));
    let mut huge = b"WRITE big ".to_vec();
    huge.resize(dsm::framing::MAX_LINE + 100, b'x');
    huge.push(b'\n');
    // The server may close before reading all of it; a failed send is fine.
    let _ = std::io::Write::write_all(&mut r.stream, &huge);
    assert_eq!(r.line(), "ERR line too long");
    assert!(r.closed());
    // The server is unharmed, and nothing of the long line was stored.
    let mut r2 = c.raw();
    assert_eq!(r2.ask("READ big"), "NOT_FOUND");
    assert!(r2.ask("READ small").starts_with("VALUE "));
}

#[test]
fn bad_bytes_and_half_lines_never_hurt_the_server() {
    let c = TestCluster::start(1);
    let mut r = c.raw();
    assert!(r.ask("WRITE k v").starts_with("OK "));
    assert_eq!(r.ask("READ \u{7f}"), "ERR key contains whitespace or control bytes");
    r.send(b"READ \xff\xfe\r\n");
    assert_eq!(r.line(), "ERR key is not valid UTF-8");
    r.send(b"\xff\xff\xff\n");
    assert!(r.line().starts_with("ERR unknown command"));
    // A half line, then a disconnect: nothing is executed.
    let mut half = c.raw();
    half.send(b"WRITE k overwritten-by-half-line");
    drop(half);
    // A slave-protocol message from a client is just an unknown command.
    assert!(r.ask("1 1 SET 1 9 k evil").starts_with("ERR unknown command"));
    assert!(r.ask("READ k").ends_with(" v"), "stored data changed");
}

#[test]
fn connections_beyond_the_limit_are_refused_with_an_error() {
    let c = TestCluster::start_with(1, &["--max-connections", "3"]);
    // The slave holds one connection; two clients fit (once the readiness probes' connections
    // have been noticed closed).
    let pinged = || {
        let mut conn = None;
        dsm_testkit::cluster::wait_for("a connection slot", common::READY, || {
            let mut r = Raw::connect(&c.addr());
            let ok = r.ask("PING") == "PONG";
            conn = ok.then_some(r);
            ok
        })
        .unwrap();
        conn.unwrap()
    };
    let a = pinged();
    let mut b = pinged();
    let mut over = Raw::connect(&c.addr());
    assert_eq!(over.line(), "ERR too many connections");
    assert!(over.closed());
    drop(a);
    // The slot frees up once the server notices the close.
    drop(pinged());
    assert_eq!(b.ask("PING"), "PONG");
}
