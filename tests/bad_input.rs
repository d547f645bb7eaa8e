//! A corpus of bad input against a real cluster: every command with missing or extra
//! arguments, empty lines, control bytes, invalid UTF-8, very long lines, half lines,
//! slave-protocol and master-to-master messages sent by a client, garbage from a slave and to a
//! slave, and thousands of idle connections. Each gets `ERR ...` or a clean close; the servers
//! never panic or hang, and the stored data never changes.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::{must_read, must_write, Raw, TestCluster, READY};
use dsm::framing::{MAX_LINE, MAX_PEER_LINE};
use dsm_testkit::cluster::wait_for;

/// Sends `input` on a fresh connection, then reads everything until the server closes or goes
/// quiet after answering. Returns the reply lines.
fn exchange(addr: &str, input: &[u8], lines: usize) -> Vec<String> {
    let mut r = Raw::connect(addr);
    // The server may close before reading all of a long line; a failed send is fine.
    let _ = r.stream.write_all(input);
    (0..lines).map(|_| r.line()).collect()
}

/// The stored values of the keys the corpus must not change.
fn snapshot(c: &TestCluster) -> Vec<Option<String>> {
    let mut client = c.client();
    (0..5).map(|i| must_read(&mut client, &format!("k{i}"))).collect()
}

fn assert_healthy(c: &mut TestCluster) {
    assert!(c.primary.is_running(), "the master died");
    let out = c.primary.output();
    assert!(!out.contains("panicked"), "the master panicked:\n{out}");
    let mut r = c.raw();
    assert_eq!(r.ask("PING"), "PONG");
}

/// Every malformed request gets one `ERR` line and the connection stays usable.
#[test]
fn every_malformed_request_gets_an_error_and_changes_nothing() {
    let mut c = TestCluster::start(3);
    let mut client = c.client();
    for i in 0..5 {
        must_write(&mut client, &format!("k{i}"), &format!("value {i}"));
    }
    let before = snapshot(&c);
    let long_key = "k".repeat(dsm::protocol::MAX_KEY + 1);
    let corpus: Vec<Vec<u8>> = vec![
        // Missing and extra arguments, for every command and alias.
        b"WRITE".to_vec(),
        b"WRITE k0".to_vec(),
        b"SET".to_vec(),
        b"PUT k0".to_vec(),
        b"WRITE  k0 v".to_vec(),
        b"READ".to_vec(),
        b"READ k0 k1".to_vec(),
        b"GET".to_vec(),
        b"GET k0 extra".to_vec(),
        b"DELETE".to_vec(),
        b"DELETE k0 k1".to_vec(),
        b"DEL".to_vec(),
        b"DEL k0 k1 k2".to_vec(),
        b"REMOVE".to_vec(),
        b"REMOVE a b".to_vec(),
        b"REMOVE bad/id".to_vec(),
        b"PING x".to_vec(),
        b"STATS x".to_vec(),
        b"MEMBERS x".to_vec(),
        b"QUIT now".to_vec(),
        b"CLIENT x".to_vec(),
        b"AUTH".to_vec(),
        b"AUTH whatever".to_vec(),
        // Empty and blank lines, stray spaces.
        b"".to_vec(),
        b" ".to_vec(),
        b"\r".to_vec(),
        b" READ k0".to_vec(),
        b"\t".to_vec(),
        // Control bytes and invalid UTF-8, in the command and in the key.
        b"\x00".to_vec(),
        b"\x00\x01\x02\x1b[2J".to_vec(),
        b"READ \x00".to_vec(),
        b"READ k\x7f".to_vec(),
        b"WRITE k\x01 v".to_vec(),
        b"DELETE k\x1b".to_vec(),
        b"\xff\xfe\xfd".to_vec(),
        b"READ \xc3\x28".to_vec(),
        b"WRITE \xed\xa0\x80 v".to_vec(),
        b"R\xffEAD k0".to_vec(),
        format!("READ {long_key}").into_bytes(),
        format!("DELETE {long_key}").into_bytes(),
        // Slave-protocol and master-to-master messages from a client.
        b"1 1 SET 1 9 k0 evil".to_vec(),
        b"1 1 DEL 1 9 k0".to_vec(),
        b"1 OK 1 1".to_vec(),
        b"WELCOME 5".to_vec(),
        b"SLAVE".to_vec(),
        b"SLAVE bad/id 0 0".to_vec(),
        b"SLAVE s1".to_vec(),
        b"SLAVE s1 x y".to_vec(),
        b"SLAVE s1 1 2 3".to_vec(),
        b"SLAVE s1 -1 0".to_vec(),
        b"SLAVE s1 99999999999999999999999 0".to_vec(),
        format!("SLAVE {} 0 0", "x".repeat(dsm::peer::MAX_ID + 1)).into_bytes(),
        b"AT 1 1 primary".to_vec(),
        b"RESET".to_vec(),
        b"CHALLENGE 00".to_vec(),
        b"PROOF 00 00".to_vec(),
        // Just under the line limit: read whole, then refused on its merits.
        {
            let mut l = b"READ ".to_vec();
            l.resize(MAX_LINE - 1, b'k');
            l
        },
        {
            let mut l = b"FROB ".to_vec();
            l.resize(MAX_LINE, b'x');
            l
        },
    ];
    for line in &corpus {
        let mut input = line.clone();
        input.push(b'\n');
        let reply = exchange(&c.addr(), &input, 1);
        assert!(
            reply[0].starts_with("ERR "),
            "{:?} got {reply:?}",
            dsm::protocol::truncate_for_display(line)
        );
    }
    // After a first request, the words that pick a peer protocol are plain unknown commands.
    for word in ["STREAM", "HANDOFF", "SLAVE s9 0 0"] {
        let reply = exchange(&c.addr(), format!("PING\n{word}\nPING\n").as_bytes(), 3);
        assert_eq!(reply[0], "PONG");
        assert!(reply[1].starts_with("ERR unknown command"), "{word}: {reply:?}");
        assert_eq!(reply[2], "PONG");
    }
    // The whole corpus pipelined on one connection: one ERR per line, in order, and the
    // connection still works at the end. (Lines that pick a peer protocol only do so first.)
    let mut batch = b"PING\n".to_vec();
    let pipelined: Vec<&Vec<u8>> = corpus.iter().filter(|l| l.len() < 1000 && !l.ends_with(b"\r")).collect();
    for line in &pipelined {
        batch.extend_from_slice(line);
        batch.push(b'\n');
    }
    batch.extend_from_slice(b"PING\n");
    let reply = exchange(&c.addr(), &batch, pipelined.len() + 2);
    assert_eq!(reply[0], "PONG");
    assert_eq!(reply[reply.len() - 1], "PONG");
    for (line, r) in pipelined.iter().zip(&reply[1..]) {
        assert!(r.starts_with("ERR "), "{:?} got {r:?}", dsm::protocol::truncate_for_display(line));
    }
    // Over the line limit: refused and closed, with or without a newline ever coming.
    for tail in [&b"\n"[..], b""] {
        let mut r = c.raw();
        let mut huge = b"WRITE k0 ".to_vec();
        huge.resize(MAX_LINE + 2, b'x');
        huge.extend_from_slice(tail);
        let _ = r.stream.write_all(&huge);
        assert_eq!(r.line(), "ERR line too long");
        assert!(r.closed());
    }
    // Half lines, then a disconnect: nothing is executed.
    for half in [&b"WRITE k0 half"[..], b"DELETE k1", b"SLAVE s9 0", b"HANDOFF", b"STREAM"] {
        let mut r = c.raw();
        r.send(half);
        drop(r);
    }
    assert_eq!(snapshot(&c), before, "stored data changed");
    assert_eq!(c.raw().ask("MEMBERS"), "MEMBER s1 up");
    assert_healthy(&mut c);
}

/// A peer that registers as a slave and then answers with garbage is disconnected; writes go
/// on with the real slaves and the fake member can be removed.
#[test]
fn a_slave_that_answers_garbage_is_dropped() {
    let mut c = TestCluster::start(3);
    let mut client = c.client();
    must_write(&mut client, "k0", "before");
    for garbage in [&b"hello there\n"[..], b"\xff\xfe\n", b"1 BOGUS 1\n", b"99 OK x y\n", b"\n"] {
        let mut fake = Raw::connect(&c.addr());
        fake.send(b"SLAVE fake 0 0\n");
        let welcome = fake.line_lf();
        assert!(welcome.starts_with("WELCOME "), "{welcome}");
        // Wait for the master's first request (a heartbeat or a catch-up write), answer garbage.
        let request = fake.line_lf();
        assert!(!request.is_empty());
        fake.send(garbage);
        // The master hangs up on it.
        loop {
            let mut chunk = [0u8; 4096];
            match fake.stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    must_write(&mut client, "k1", "after");
    assert_eq!(must_read(&mut client, "k0").as_deref(), Some("before"));
    wait_for("the fake slave to be down", READY, || c.raw().ask("REMOVE fake").starts_with("OK ")).unwrap();
    assert_healthy(&mut c);
}

/// A real slave whose "master" answers garbage refuses it, reconnects, and survives garbage
/// requests and an over-long line.
#[test]
fn a_slave_survives_a_master_that_sends_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = fake.local_addr().unwrap().to_string();
    let mut slave = common::builder().dir(dir.path()).start_slave("s1", &addr).unwrap();
    let accept = || {
        let (s, _) = fake.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut r = Raw::from_stream(s);
        assert!(r.line_lf().starts_with("SLAVE s1 "));
        r
    };
    // Garbage instead of WELCOME: the slave hangs up and tries again.
    for reply in [&b"\xff\xfe garbage\n"[..], b"WELCOME\n", b"WELCOME x\n", b"ERR go away\n", b"\n"] {
        let mut r = accept();
        r.send(reply);
        assert!(r.closed());
    }
    // Registered, then garbage requests: each answered with ERR, the connection kept.
    let mut r = accept();
    r.send(b"WELCOME 1\n");
    for garbage in
        [&b"garbage\n"[..], b"\xff\n", b"1 1 SET\n", b"1 1 FROB\n", b"x 1 PING\n", b"1 1 GET \x01\n"]
    {
        r.send(garbage);
        let reply = r.line_lf();
        assert!(reply.contains(" ERR "), "{garbage:?} got {reply}");
    }
    r.send(b"7 1 PING\n");
    assert_eq!(r.line_lf(), "7 PONG 0");
    // A line longer than any master sends: that one request fails, and the connection goes
    // on (reconnecting would only be sent the same line again).
    let mut huge = b"9 1 SET 1 1 k ".to_vec();
    huge.resize(MAX_PEER_LINE + 10, b'x');
    huge.push(b'\n');
    r.send(&huge);
    let reply = r.line_lf();
    assert!(reply.starts_with("9 ERR message longer than"), "{reply}");
    r.send(b"8 1 PING\n");
    assert_eq!(r.line_lf(), "8 PONG 0");
    assert!(slave.is_running());
    let out = slave.output();
    assert!(!out.contains("panicked"), "{out}");
}

/// Thousands of idle connections: those over `--max-connections` get `ERR too many
/// connections` and are closed; those within stay usable; the server goes on serving.
#[test]
fn thousands_of_idle_connections_are_bounded_by_the_limit() {
    const IDLE: usize = 2000;
    const LIMIT: usize = 500;
    let mut c = TestCluster::start_with(1, &["--max-connections", &LIMIT.to_string()]);
    let addr = c.addr();
    let conns: Vec<TcpStream> = (0..IDLE).map(|_| TcpStream::connect(&addr).expect("connect")).collect();
    let (mut served, mut refused) = (0, 0);
    // Every connection stays open until all are counted: one closed early would free a slot
    // for a later one that the server had not accepted yet, and that one would be served.
    let mut open = Vec::with_capacity(IDLE);
    for s in conns {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut r = Raw::from_stream(s);
        // A send to a refused connection may fail; its ERR line is already buffered.
        let _ = r.stream.write_all(b"PING\n");
        match r.line().as_str() {
            "PONG" => served += 1,
            "ERR too many connections" => {
                refused += 1;
                assert!(r.closed());
            }
            other => panic!("unexpected reply {other}"),
        }
        open.push(r);
    }
    assert_eq!(served + refused, IDLE);
    assert!(served < LIMIT, "{served} served over a limit of {LIMIT}");
    assert!(refused >= IDLE - LIMIT, "only {refused} refused");
    drop(open);
    // All dropped now: the server serves again.
    wait_for("a free connection slot", READY, || c.raw().ask("PING") == "PONG").unwrap();
    assert_healthy(&mut c);
}
