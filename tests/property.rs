//! Seeded property tests of every parser: random and mutated input never panics, and valid
//! values round-trip (encode, then parse) for client requests and replies, slave messages, log
//! records and the auth handshake. Deterministic (fixed seeds) and a few seconds at most; the
//! open-ended search is the cargo-fuzz targets in `fuzz/`.

use dsm::auth::{PeerHandshake, PeerRole, Secret, ServerHandshake};
use dsm::peer::{self, Command, Outcome, Registration, Stamp};
use dsm::protocol::{self, Reply, Request};
use dsm::wal::{self, Record};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Cases per property.
const CASES: usize = 4000;

/// Bytes that make up the protocols, so random input often gets past the first word.
const ALPHABET: &[u8] = b"0123456789 abcdefkSETDLGPINOKVALUECHSMBRWQTXZ\\\r\t\x00\xff\xc3:-_.";

/// Protocol words, spliced into random input.
const WORDS: &[&str] = &[
    "WRITE",
    "READ",
    "DELETE",
    "SET",
    "GET",
    "DEL",
    "PUT",
    "PING",
    "STATS",
    "MEMBERS",
    "REMOVE",
    "QUIT",
    "CLIENT",
    "AUTH",
    "SLAVE",
    "WELCOME",
    "OK",
    "VALUE",
    "TOMB",
    "NONE",
    "PONG",
    "FENCED",
    "WAIT",
    "ERR",
    "ITEM",
    "END",
    "SCAN",
    "EPOCH",
    "MEMBER",
    "V",
    "T",
    "CHALLENGE",
    "PROOF",
    "18446744073709551616",
    "0",
];

fn random_line(rng: &mut StdRng) -> Vec<u8> {
    let mut line = Vec::new();
    for _ in 0..rng.gen_range(0..12) {
        match rng.gen_range(0..4) {
            0 => line.extend_from_slice(WORDS[rng.gen_range(0..WORDS.len())].as_bytes()),
            1 => line.push(b' '),
            2 => line.push(ALPHABET[rng.gen_range(0..ALPHABET.len())]),
            _ => line.push(rng.gen()),
        }
    }
    line
}

fn mutate(rng: &mut StdRng, line: &[u8]) -> Vec<u8> {
    let mut out = line.to_vec();
    for _ in 0..rng.gen_range(1..4) {
        let at = rng.gen_range(0..=out.len());
        match rng.gen_range(0..5) {
            0 if at < out.len() => out[at] = rng.gen(),
            1 => out.insert(at, ALPHABET[rng.gen_range(0..ALPHABET.len())]),
            2 if at < out.len() => {
                out.remove(at);
            }
            3 => out.truncate(at),
            _ => {
                let word = WORDS[rng.gen_range(0..WORDS.len())].as_bytes();
                out.splice(at..at, word.iter().copied());
            }
        }
    }
    out
}

fn key(rng: &mut StdRng) -> String {
    const KEY: &[u8] = b"abcxyz0129:_-./!~";
    let len = if rng.gen_bool(0.01) { protocol::MAX_KEY } else { rng.gen_range(1..12) };
    let mut k: String = (0..len).map(|_| KEY[rng.gen_range(0..KEY.len())] as char).collect();
    if rng.gen_bool(0.1) && k.len() < protocol::MAX_KEY - 2 {
        k.push('é');
    }
    k
}

fn id(rng: &mut StdRng) -> String {
    const ID: &[u8] = b"abz09-_.:";
    (0..rng.gen_range(1..=peer::MAX_ID)).map(|_| ID[rng.gen_range(0..ID.len())] as char).collect()
}

/// Any bytes at all (slave messages and log records escape them).
fn value(rng: &mut StdRng) -> Vec<u8> {
    (0..rng.gen_range(0..20)).map(|_| rng.gen()).collect()
}

/// Bytes a client can put in one line: anything but `\n` (and `\r`, which framing may strip).
fn line_value(rng: &mut StdRng) -> Vec<u8> {
    value(rng).into_iter().filter(|&b| b != b'\n' && b != b'\r').collect()
}

fn stamp(rng: &mut StdRng) -> Stamp {
    let n = |rng: &mut StdRng| if rng.gen_bool(0.1) { u64::MAX } else { rng.gen_range(0..1000) };
    Stamp::new(n(rng), seq(rng))
}

/// A sequence number a master could hand out: up to `peer::MAX_SEQ`, often at it.
fn seq(rng: &mut StdRng) -> u64 {
    if rng.gen_bool(0.1) {
        peer::MAX_SEQ
    } else {
        rng.gen_range(0..=peer::MAX_SEQ)
    }
}

fn num(rng: &mut StdRng) -> u64 {
    if rng.gen_bool(0.1) {
        u64::MAX
    } else {
        rng.gen()
    }
}

fn request(rng: &mut StdRng) -> Request {
    match rng.gen_range(0..10) {
        0 => Request::Write { key: key(rng), value: line_value(rng) },
        1 => Request::Read { key: key(rng) },
        2 => Request::Delete { key: key(rng) },
        3 => Request::Remove { id: id(rng) },
        4 => Request::Ping,
        5 => Request::Stats,
        6 => Request::Members,
        7 => Request::Quit,
        8 => Request::Hello,
        _ => {
            let mut password = line_value(rng);
            password.insert(0, b'p');
            Request::Auth { password }
        }
    }
}

fn command(rng: &mut StdRng) -> Command {
    match rng.gen_range(0..6) {
        0 => Command::Set { stamp: stamp(rng), key: key(rng), value: value(rng) },
        1 => Command::Del { stamp: stamp(rng), key: key(rng) },
        2 => Command::Get { key: key(rng) },
        3 => Command::Ping { synced: rng.gen_bool(0.5).then(|| seq(rng)) },
        4 => Command::Batch(
            (0..rng.gen_range(0..4))
                .map(|_| (stamp(rng), key(rng), rng.gen_bool(0.7).then(|| value(rng))))
                .collect(),
        ),
        _ => Command::Scan { epoch: num(rng), seq: seq(rng), older_seq: seq(rng) },
    }
}

fn outcome(rng: &mut StdRng) -> Outcome {
    match rng.gen_range(0..11) {
        0 => Outcome::Ok(stamp(rng)),
        1 => Outcome::Value(stamp(rng), value(rng)),
        2 => Outcome::Tomb(stamp(rng)),
        3 => Outcome::None,
        4 => Outcome::Pong(num(rng)),
        5 => Outcome::Fenced(num(rng)),
        6 => Outcome::Wait(num(rng)),
        7 => Outcome::Err(String::from_utf8_lossy(&value(rng)).into_owned()),
        8 => Outcome::Item { stamp: stamp(rng), key: key(rng), value: rng.gen_bool(0.5).then(|| value(rng)) },
        9 => Outcome::Applied(num(rng)),
        _ => Outcome::End(num(rng)),
    }
}

fn record(rng: &mut StdRng) -> Record {
    match rng.gen_range(0..5) {
        0 => Record::Set { key: key(rng), value: value(rng) },
        1 => Record::Del { key: key(rng) },
        2 => Record::Member { id: id(rng) },
        3 => Record::Remove { id: id(rng) },
        _ => Record::Epoch { epoch: num(rng) },
    }
}

/// Every parser, on one line; none may panic.
fn parse_everything(line: &[u8]) {
    let _ = Request::parse(line);
    let _ = Reply::parse_line(line);
    let _ = protocol::parse_table_row(line);
    let _ = Registration::parse(line);
    let _ = peer::Message::parse(line);
    let _ = peer::Response::parse(line);
    let _ = wal::decode(line);
    let _ = dsm::escape::unescape(line);
}

#[test]
fn random_and_mutated_lines_never_panic_any_parser() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0001);
    let mut valid = Vec::new();
    for _ in 0..CASES {
        let mut wire = Vec::new();
        request(&mut rng).encode_into(&mut wire).unwrap();
        valid.push(wire);
        let mut wire = Vec::new();
        peer::Message { rid: num(&mut rng), epoch: num(&mut rng), command: command(&mut rng) }
            .encode_into(&mut wire);
        valid.push(wire);
        let mut wire = Vec::new();
        peer::Response { rid: num(&mut rng), outcome: outcome(&mut rng) }.encode_into(&mut wire);
        valid.push(wire);
        let mut wire = Vec::new();
        wal::encode(num(&mut rng), &record(&mut rng), &mut wire);
        valid.push(wire);
    }
    for _ in 0..CASES {
        parse_everything(&random_line(&mut rng));
    }
    for line in &valid {
        let line = &line[..line.len() - 1];
        parse_everything(line);
        for _ in 0..3 {
            parse_everything(&mutate(&mut rng, line));
        }
    }
}

#[test]
fn client_requests_and_replies_round_trip() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0002);
    for _ in 0..CASES {
        let r = request(&mut rng);
        let mut wire = Vec::new();
        r.encode_into(&mut wire).unwrap();
        assert_eq!(Request::parse(&wire[..wire.len() - 1]), Ok(r));
        let reply = match rng.gen_range(0..5) {
            0 => Reply::Ok(num(&mut rng)),
            1 => Reply::Value { version: num(&mut rng), value: line_value(&mut rng) },
            2 => Reply::NotFound,
            3 => Reply::Done,
            _ => Reply::Pong,
        };
        let wire = reply.encode();
        assert_eq!(Reply::parse_line(&wire[..wire.len() - 2]), Ok(reply));
    }
}

#[test]
fn slave_messages_round_trip() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0003);
    for _ in 0..CASES {
        let held = stamp(&mut rng);
        let hello = Registration { id: id(&mut rng), epoch: num(&mut rng), max_seq: seq(&mut rng), held };
        assert_eq!(Registration::parse(hello.encode().as_bytes()), Ok(hello));
        let r = peer::Message { rid: num(&mut rng), epoch: num(&mut rng), command: command(&mut rng) };
        let mut wire = Vec::new();
        r.encode_into(&mut wire);
        assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        assert_eq!(peer::Message::parse(&wire[..wire.len() - 1]), Ok(r));
        let outcome = match outcome(&mut rng) {
            // An ERR's text goes through a lossy UTF-8 decoding; keep it valid here.
            Outcome::Err(m) => Outcome::Err(m.replace('\u{fffd}', "?")),
            other => other,
        };
        let reply = peer::Response { rid: num(&mut rng), outcome };
        let mut wire = Vec::new();
        reply.encode_into(&mut wire);
        assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        assert_eq!(peer::Response::parse(&wire[..wire.len() - 1]), Ok(reply));
    }
}

#[test]
fn log_records_round_trip_and_a_random_log_file_never_panics() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0004);
    let mut file = Vec::new();
    for seq in 1..=CASES as u64 {
        let r = record(&mut rng);
        let mut wire = Vec::new();
        wal::encode(seq, &r, &mut wire);
        assert_eq!(wal::decode(&wire[..wire.len() - 1]), Ok((seq, r)));
        file.extend_from_slice(&wire);
    }
    // A valid file replays whole; mutated copies replay a prefix or are reported, never panic.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.log");
    std::fs::write(&path, &file).unwrap();
    let mut n = 0;
    wal::Wal::open(&path, wal::Fsync::Never, |_, _| {
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, CASES);
    for _ in 0..20 {
        let mut bad = file.clone();
        for _ in 0..rng.gen_range(1..5) {
            let at = rng.gen_range(0..bad.len());
            bad[at] = rng.gen();
        }
        bad.truncate(rng.gen_range(0..=bad.len()));
        std::fs::write(&path, &bad).unwrap();
        let _ = wal::Follower::new(&path).poll(&mut || Ok(()), &mut |records| {
            records.clear();
            Ok(())
        });
        let _ = wal::Wal::open(&path, wal::Fsync::Never, |_, _| Ok(()));
    }
}

#[test]
fn handshakes_pass_with_the_secret_and_mutations_are_refused() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0005);
    let secret = Secret::new(b"property-test-secret-0123").unwrap();
    for _ in 0..500 {
        let nonce =
            |rng: &mut StdRng| (0..32).map(|_| b"0123456789abcdef"[rng.gen_range(0..16)] as char).collect();
        let id = id(&mut rng);
        let server = ServerHandshake::new(&secret, PeerRole::Slave, &id, nonce(&mut rng));
        let mut peer = PeerHandshake::new(&secret, PeerRole::Slave, &id, nonce(&mut rng));
        let proof = peer.answer(server.challenge().as_bytes()).unwrap();
        let bad = mutate(&mut rng, proof.as_bytes());
        if bad != proof.as_bytes() {
            assert!(server.check(&bad).is_err(), "a mutated proof passed: {}", String::from_utf8_lossy(&bad));
        }
        let answer = server.check(proof.as_bytes()).unwrap();
        let bad = mutate(&mut rng, answer.as_bytes());
        if bad != answer.as_bytes() {
            assert!(peer.verify(&bad).is_err());
        }
        peer.verify(answer.as_bytes()).unwrap();
    }
}

/// Random bytes, biased towards the ones a line protocol cares about.
fn hostile_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    const NASTY: &[u8] = b" \t\r\n\x00\x7f\\";
    let len = rng.gen_range(0..=max);
    (0..len)
        .map(|_| match rng.gen_range(0..4) {
            0 => NASTY[rng.gen_range(0..NASTY.len())],
            1 => rng.gen_range(0x80..=0xff),
            _ => rng.gen_range(b'a'..=b'z'),
        })
        .collect()
}

#[test]
fn every_request_the_client_encodes_parses_back_to_exactly_itself() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0004);
    let (mut sent, mut refused) = (0, 0);
    for _ in 0..CASES * 4 {
        let key = String::from_utf8_lossy(&hostile_bytes(&mut rng, 12)).into_owned();
        let r = match rng.gen_range(0..5) {
            0 | 1 => Request::Write { key, value: hostile_bytes(&mut rng, 16) },
            2 => Request::Read { key },
            3 => Request::Delete { key },
            _ => Request::Auth { password: hostile_bytes(&mut rng, 8) },
        };
        let mut wire = Vec::new();
        match r.encode_into(&mut wire) {
            Ok(()) => {
                sent += 1;
                assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 1, "{r:?} is one line");
                assert_eq!(wire.last(), Some(&b'\n'));
                assert_eq!(Request::parse(&wire[..wire.len() - 1]), Ok(r));
            }
            Err(why) => {
                refused += 1;
                assert!(wire.is_empty(), "{r:?} was refused ({why}) but partly encoded");
            }
        }
    }
    // Both branches ran, so the property was really tested.
    assert!(sent > 100 && refused > 100, "sent {sent}, refused {refused}");
}

#[test]
fn a_value_cannot_smuggle_a_second_request() {
    for value in [&b"x\nDELETE a"[..], b"a\nb", b"a\r", b"a\rb"] {
        let r = Request::Write { key: "k".into(), value: value.to_vec() };
        let why = r.encode_into(&mut Vec::new()).expect_err("a line break must be refused");
        assert!(why.contains("line break"), "{why}");
    }
    let why =
        Request::Write { key: "a b".into(), value: b"v".to_vec() }.encode_into(&mut Vec::new()).unwrap_err();
    assert_eq!(why, "key contains whitespace or control bytes", "the server's own words");
}
