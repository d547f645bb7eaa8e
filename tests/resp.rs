//! RESP on the client port, tested with clients nobody here wrote: the `redis` crate
//! (redis-rs), and the `redis-cli` and `redis-benchmark` programs (`make test` installs
//! `redis-tools` where it is missing; without them these tests fail and say so). Also raw RESP
//! bytes, well-formed and malformed, and the line protocol beside RESP on one connection.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{FailoverCluster, Raw, TestCluster, READY};
use dsm_testkit::cluster::Link;
use dsm_testkit::proxy::Fault;
use redis::{Commands, ErrorKind, ServerErrorKind};

/// A redis-rs connection to `addr`, with a timeout so a hang fails the test.
fn redis_conn(addr: &str, password: Option<&str>) -> redis::Connection {
    let url = match password {
        Some(p) => format!("redis://:{p}@{addr}/"),
        None => format!("redis://{addr}/"),
    };
    let client = redis::Client::open(url).expect("a redis URL");
    let con = client.get_connection_with_timeout(Duration::from_secs(30)).expect("connect with redis-rs");
    con.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    con
}

/// A program of `redis-tools`, or a failure that says how to get it.
fn redis_tool(name: &str) -> Command {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "{name} is not installed: `make test` installs it (apt-get install redis-tools); \
         this test cannot run without it"
    );
    Command::new(name)
}

fn port(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap()
}

/// Runs `redis-cli -p <port> <args>` and returns its standard output, trimmed.
fn cli(addr: &str, args: &[&str]) -> String {
    let out = redis_tool("redis-cli").args(["-p", port(addr)]).args(args).output().expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// Sends raw bytes and reads one RESP reply (a line; for a bulk, also its payload).
fn resp_reply(raw: &mut Raw) -> String {
    let line = raw.line();
    if let Some(len) = line.strip_prefix('$').and_then(|l| l.parse::<usize>().ok()) {
        let mut payload = raw.line();
        while payload.len() < len {
            payload.push_str("\r\n");
            payload.push_str(&raw.line());
        }
        return format!("{line} {payload}");
    }
    line
}

fn resp(args: &[&str]) -> Vec<u8> {
    dsm::resp::encode_request(&args.iter().map(|a| a.as_bytes()).collect::<Vec<_>>())
}

#[test]
fn redis_rs_single_commands_pipelines_and_errors() {
    let c = TestCluster::start(3);
    let mut con = redis_conn(&c.addr(), None);

    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    let echo: String = redis::cmd("ECHO").arg("hi there").query(&mut con).unwrap();
    assert_eq!(echo, "hi there");
    let _: () = con.set("a", "1").unwrap();
    assert_eq!(con.get::<_, Option<String>>("a").unwrap().as_deref(), Some("1"));
    assert_eq!(con.get::<_, Option<String>>("missing").unwrap(), None);
    // Binary values, line breaks included, round-trip exactly.
    let binary: Vec<u8> = (0u8..=255).collect();
    let _: () = con.set("bin", &binary[..]).unwrap();
    assert_eq!(con.get::<_, Vec<u8>>("bin").unwrap(), binary);
    let _: () = con.mset(&[("b", "2"), ("c", "3")]).unwrap();
    let got: Vec<Option<String>> = con.mget(&["a", "nope", "c"]).unwrap();
    assert_eq!(got, [Some("1".into()), None, Some("3".into())]);
    assert_eq!(con.exists::<_, u64>(&["a", "b", "nope"]).unwrap(), 2);
    // A key named twice counts twice, as in Redis.
    assert_eq!(con.exists::<_, u64>(&["a", "a"]).unwrap(), 2);
    assert_eq!(con.exists::<_, u64>(&["a", "nope", "a"]).unwrap(), 2);
    assert_eq!(con.del::<_, u64>(&["a", "nope", "b"]).unwrap(), 2);
    // Deleting a key twice in one DEL deletes it once.
    let _: () = con.set("twice", "x").unwrap();
    assert_eq!(con.del::<_, u64>(&["twice", "twice"]).unwrap(), 1);
    assert_eq!(con.exists::<_, u64>(&["twice"]).unwrap(), 0);
    assert_eq!(con.get::<_, Option<String>>("a").unwrap(), None);
    let size: u64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(size, 2, "bin and c");
    // A key's version, as the line protocol's READ shows it.
    let version: u64 = redis::cmd("DSM.VERSION").arg("c").query(&mut con).unwrap();
    let mut raw = c.raw();
    let line = raw.ask("READ c");
    assert_eq!(line, format!("VALUE {version} 3"));
    let none: Option<u64> = redis::cmd("DSM.VERSION").arg("a").query(&mut con).unwrap();
    assert_eq!(none, None);

    // A pipeline: the writes go as one run, the reads after them see them.
    let mut pipe = redis::pipe();
    for i in 0..200 {
        pipe.set(format!("p{i}"), i).ignore();
    }
    for i in [0, 99, 199] {
        pipe.get(format!("p{i}"));
    }
    let values: Vec<u64> = pipe.query(&mut con).unwrap();
    assert_eq!(values, [0, 99, 199]);
    let size: u64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(size, 202);

    // Errors are errors, and the connection goes on.
    let e = redis::cmd("FLUSHALL").query::<()>(&mut con).unwrap_err();
    assert!(e.to_string().contains("unknown command 'FLUSHALL'"), "{e}");
    let e = redis::cmd("SET").arg("k").arg("v").arg("EX").arg(10).query::<()>(&mut con).unwrap_err();
    assert!(e.to_string().contains("'EX' is not supported"), "{e}");
    let e = redis::cmd("GET").query::<()>(&mut con).unwrap_err();
    assert!(e.to_string().contains("wrong number of arguments for 'get' command"), "{e}");
    let e = con.set::<_, _, ()>("a key", "v").unwrap_err();
    assert!(e.to_string().contains("whitespace"), "{e}");
    // A pipeline with an error in it: redis-rs reports the error, and the commands around
    // it were executed, in order.
    let e = redis::pipe().set("ok1", "x").cmd("NOPE").set("ok2", "y").query::<()>(&mut con).unwrap_err();
    assert!(e.to_string().contains("unknown command 'NOPE'"), "{e}");
    assert_eq!(con.get::<_, Option<String>>("ok1").unwrap().as_deref(), Some("x"));
    assert_eq!(con.get::<_, Option<String>>("ok2").unwrap().as_deref(), Some("y"));

    // INFO has Redis's sections and dsm's.
    let info: String = redis::cmd("INFO").query(&mut con).unwrap();
    for field in ["# Server", "redis_version:", "# Replication", "role:master", "dsm_epoch:", "db0:keys=204"]
    {
        assert!(info.contains(field), "{field} missing from INFO:\n{info}");
    }
    let replication: String = redis::cmd("INFO").arg("replication").query(&mut con).unwrap();
    assert!(!replication.contains("# Server") && replication.contains("dsm_members_up:3"), "{replication}");
    // HELLO 3 is refused, so RESP3-first clients fall back to RESP2; HELLO 2 is answered.
    let e = redis::cmd("HELLO").arg(3).query::<()>(&mut con).unwrap_err();
    assert!(e.to_string().contains("NOPROTO"), "{e}");
    for args in [&[][..], &["2"][..]] {
        let mut raw = c.raw();
        raw.send(&resp(&[&["HELLO"][..], args].concat()));
        assert_eq!(raw.line(), "*14", "HELLO {args:?}");
        let fields: Vec<String> = (0..14).map(|_| resp_reply(&mut raw)).collect();
        let id = fields[7].strip_prefix(':').and_then(|n| n.parse::<u64>().ok());
        assert!(id.is_some_and(|id| id > 0), "HELLO {args:?}: id {:?}", fields[7]);
        let want = [
            "$6 server",
            "$3 dsm",
            "$7 version",
            "$5 7.0.0",
            "$5 proto",
            ":2",
            "$2 id",
            &fields[7],
            "$4 mode",
            "$10 standalone",
            "$4 role",
            "$6 master",
            "$7 modules",
            "*0",
        ];
        assert_eq!(fields, want, "HELLO {args:?}");
    }
    let _: () = redis::cmd("CLIENT").arg("SETNAME").arg("tester").query(&mut con).unwrap();
    let name: String = redis::cmd("CLIENT").arg("GETNAME").query(&mut con).unwrap();
    assert_eq!(name, "tester");
    let _: () = redis::cmd("SELECT").arg(0).query(&mut con).unwrap();
    assert!(redis::cmd("SELECT").arg(1).query::<()>(&mut con).is_err());
    let count: u64 = redis::cmd("COMMAND").arg("COUNT").query(&mut con).unwrap();
    assert!(count >= 15, "{count}");
    // Without --requirepass, a client configured with Redis's default user still connects.
    let mut named = redis::Client::open(format!("redis://default:anything@{}/", c.addr()))
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(30))
        .expect("AUTH default <password> is accepted");
    assert_eq!(named.get::<_, Option<String>>("c").unwrap().as_deref(), Some("3"));
    // One MGET may not make the master build a reply of gigabytes.
    let big = vec![b'b'; dsm::limits::MAX_VALUE];
    let _: () = con.set("big", &big[..]).unwrap();
    let e = con.mget::<_, Vec<Vec<u8>>>(&["big"; 9]).unwrap_err();
    assert!(e.to_string().contains("reply too large"), "{e}");
    assert_eq!(con.mget::<_, Vec<Vec<u8>>>(&["big"; 2]).unwrap().len(), 2);
}

#[test]
fn a_resp_set_is_ok_only_once_a_majority_has_it() {
    let mut c = TestCluster::start_with(3, &["--ack-timeout-ms", "300"]);
    let mut con = redis_conn(&c.addr(), None);
    let _: () = con.set("before", "1").unwrap();
    // With two of three slaves gone no write can be on a majority: every SET is an error,
    // never +OK (NOREPLICAS when the master knows, TIMEOUT while it finds out).
    c.slaves[0].kill();
    c.slaves[1].kill();
    for i in 0..5 {
        let e = con.set::<_, _, ()>(format!("after{i}"), "x").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("NOREPLICAS") || text.contains("TIMEOUT"), "{text}");
    }
    // Once the master knows, the error is NOREPLICAS, naming the members.
    let deadline = Instant::now() + READY;
    loop {
        let e = con.set::<_, _, ()>("later", "x").unwrap_err();
        if e.to_string().contains("NOREPLICAS") {
            assert!(e.to_string().contains("members connected"), "{e}");
            break;
        }
        assert!(Instant::now() < deadline, "never NOREPLICAS: {e}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_standby_answers_readonly_naming_the_primary_and_takes_over() {
    let mut c = FailoverCluster::start(3, false);
    let mut primary = redis_conn(&c.primary_addr, None);
    let _: () = primary.set("k", "v1").unwrap();
    let mut standby = redis_conn(&c.backup_addr, None);
    for e in
        [standby.set::<_, _, ()>("k", "v2").unwrap_err(), standby.get::<_, Option<String>>("k").unwrap_err()]
    {
        assert_eq!(e.kind(), ErrorKind::Server(ServerErrorKind::ReadOnly), "{e}");
        assert!(e.to_string().contains(&c.primary_addr), "{e}");
    }
    let info: String = redis::cmd("INFO").arg("replication").query(&mut standby).unwrap();
    assert!(info.contains("role:slave") && info.contains("dsm_role:standby"), "{info}");
    assert!(info.contains(&format!("master_port:{}", port(&c.primary_addr))), "{info}");

    // Kill the primary: the standby takes over and a Redis client writes and reads there.
    c.primary.kill();
    let backup_addr = c.backup_addr.clone();
    c.wait_role(&backup_addr, "primary", 3);
    let mut con = redis_conn(&c.backup_addr, None);
    assert_eq!(con.get::<_, Option<String>>("k").unwrap().as_deref(), Some("v1"));
    let _: () = con.set("k", "v3").unwrap();
    assert_eq!(con.get::<_, Option<String>>("k").unwrap().as_deref(), Some("v3"));
    let info: String = redis::cmd("INFO").arg("replication").query(&mut con).unwrap();
    assert!(info.contains("role:master"), "{info}");
}

#[test]
fn auth_with_requirepass_in_redis_terms() {
    let c = TestCluster::from_builder(
        common::builder().slaves(3).primary_args(["--requirepass", "s3cret-pass"]).password("s3cret-pass"),
    );
    let addr = c.addr();
    let mut raw = c.raw();
    raw.send(&resp(&["SET", "k", "v"]));
    assert_eq!(raw.line(), "-NOAUTH Authentication required.");
    // Before AUTH only small requests are read: a big one is a protocol error and a close.
    let mut big = Raw::connect(&addr);
    big.send(&resp(&["SET", "k", &"x".repeat(20_000)]));
    assert_eq!(big.line(), "-ERR Protocol error: unauthenticated bulk length");
    assert!(big.closed());
    raw.send(&resp(&["AUTH", "wrong"]));
    assert!(raw.line().starts_with("-WRONGPASS"));
    raw.send(&resp(&["AUTH", "someone", "s3cret-pass"]));
    assert!(raw.line().starts_with("-WRONGPASS"), "only the default user exists");
    raw.send(&resp(&["HELLO", "2"]));
    assert!(raw.line().starts_with("-NOAUTH HELLO must be called"));
    raw.send(&resp(&["HELLO", "2", "AUTH", "default", "s3cret-pass"]));
    assert_eq!(raw.line(), "*14");
    // redis-rs sends AUTH from the URL's password.
    let mut con = redis_conn(&addr, Some("s3cret-pass"));
    let _: () = con.set("k", "v").unwrap();
    assert_eq!(con.get::<_, String>("k").unwrap(), "v");
    let out = redis_tool("redis-cli")
        .args(["-p", port(&addr), "--no-auth-warning", "-a", "s3cret-pass", "GET", "k"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v");
    let out = redis_tool("redis-cli").args(["-p", port(&addr), "GET", "k"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOAUTH"), "{out:?}");
}

#[test]
fn redis_cli_sets_gets_deletes_and_shows_info() {
    let c = TestCluster::start(3);
    let addr = c.addr();
    assert_eq!(cli(&addr, &["PING"]), "PONG");
    assert_eq!(cli(&addr, &["SET", "a", "b"]), "OK");
    assert_eq!(cli(&addr, &["GET", "a"]), "b");
    assert_eq!(cli(&addr, &["DEL", "a"]), "1");
    assert_eq!(cli(&addr, &["GET", "a"]), "");
    assert_eq!(cli(&addr, &["EXISTS", "a"]), "0");
    let info = cli(&addr, &["INFO", "replication"]);
    assert!(info.contains("role:master") && info.contains("connected_slaves:3"), "{info}");
    assert!(cli(&addr, &["SET", "k", "v", "NX"]).contains("'NX' is not supported"));
    // Commands from standard input, as in a script.
    let mut child = redis_tool("redis-cli")
        .args(["-p", port(&addr)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"SET x 1\nMSET y 2 z 3\nMGET x y z\nDBSIZE\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\nOK\n1\n2\n3\n3\n");
    // Interactive, on a terminal (`script` gives it one, with a size so the line editor does
    // not ask the terminal where its cursor is): it starts, asks `COMMAND DOCS` for its
    // hints, and shows no error. Input is sent only once the prompt shows, because the line
    // editor discards what arrived before it took the terminal.
    let mut child = Command::new("script")
        .args(["-qec", &format!("stty cols 100 rows 30; redis-cli -p {}", port(&addr)), "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs redis-cli on a terminal");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 || tx.send(chunk[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = String::new();
    let wait_for = |want: &str, screen: &mut String| {
        let deadline = Instant::now() + READY;
        while !screen.contains(want) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(bytes) => screen.push_str(&String::from_utf8_lossy(&bytes)),
                Err(_) => panic!("redis-cli never showed {want:?}; screen: {screen:?}"),
            }
        }
    };
    let prompt = format!("{addr}> ");
    wait_for(&prompt, &mut screen);
    stdin.write_all(b"PING\r").unwrap();
    wait_for("PONG", &mut screen);
    stdin.write_all(b"quit\r").unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    assert!(!screen.contains("ERR") && !screen.contains("rror"), "{screen}");
    // --pipe, Redis's bulk load: every reply counted, no errors.
    let mut input = Vec::new();
    for i in 0..1000 {
        input.extend(resp(&["SET", &format!("bulk{i}"), &format!("value{i}")]));
    }
    let mut child = redis_tool("redis-cli")
        .args(["-p", port(&addr), "--pipe"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("errors: 0, replies: 1000"), "{text}");
    assert_eq!(cli(&addr, &["GET", "bulk999"]), "value999");
}

#[test]
fn redis_benchmark_completes_without_errors() {
    let c = TestCluster::start(3);
    let addr = c.addr();
    for pipeline in ["1", "16"] {
        let out = redis_tool("redis-benchmark")
            .args(["-p", port(&addr), "-t", "set,get", "-n", "3000", "-c", "10", "-P", pipeline, "-q"])
            .args(["-r", "1000"])
            .output()
            .expect("run redis-benchmark");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "-P {pipeline}: {text}");
        assert!(text.contains("SET: ") && text.contains("GET: "), "-P {pipeline}: {text}");
        assert!(!text.contains("ERR") && !text.to_lowercase().contains("error"), "-P {pipeline}: {text}");
        // Such as `WARNING: Could not fetch server CONFIG`, when CONFIG GET is not answered.
        assert!(!text.contains("WARNING"), "-P {pipeline}: {text}");
    }
    // Its writes landed: keys of the form key:000000000NNN.
    let size: u64 = cli(&addr, &["DBSIZE"]).parse().unwrap();
    assert!(size > 100 && size <= 1000, "{size}");
    let errors = c.stat(&addr, "errors").unwrap();
    assert_eq!(errors, "0", "the master counted errors");
}

#[test]
fn line_protocol_and_resp_share_a_connection() {
    let c = TestCluster::start(3);
    let mut raw = c.raw();
    // Pipelined in one send, mixed: each reply in the framing of its request.
    let mut batch = b"WRITE k1 hello\r\n".to_vec();
    batch.extend(resp(&["SET", "k2", "multi\r\nline"]));
    batch.extend_from_slice(b"WRITE k3 x\r\n");
    batch.extend(resp(&["GET", "k1"]));
    batch.extend_from_slice(b"READ k2\r\n");
    batch.extend(resp(&["GET", "k2"]));
    batch.extend_from_slice(b"*0\r\nPING\r\n");
    raw.send(&batch);
    assert!(raw.line().starts_with("OK "));
    assert_eq!(raw.line(), "+OK");
    assert!(raw.line().starts_with("OK "));
    assert_eq!(resp_reply(&mut raw), "$5 hello");
    // The line protocol cannot carry a value with a line break: it says so.
    assert!(raw.line().starts_with("ERR the value holds a line feed"));
    assert_eq!(resp_reply(&mut raw), "$11 multi\r\nline");
    // `*0` is skipped without a reply.
    assert_eq!(raw.line(), "PONG");
}

#[test]
fn config_get_client_setinfo_and_select_answer_as_redis_does() {
    let c = TestCluster::start(1);
    let mut raw = c.raw();
    // What redis-benchmark asks, answered as name/value pairs.
    let mut ask = |args: &[&str], lines: usize| {
        raw.send(&resp(args));
        (0..lines).map(|_| resp_reply(&mut raw)).collect::<Vec<_>>()
    };
    assert_eq!(ask(&["CONFIG", "GET", "save"], 3), ["*2", "$4 save", "$0 "]);
    assert_eq!(ask(&["config", "get", "APPENDONLY"], 3), ["*2", "$10 appendonly", "$3 yes"]);
    assert_eq!(ask(&["CONFIG", "GET", "*"], 5), ["*4", "$4 save", "$0 ", "$10 appendonly", "$3 yes"]);
    assert_eq!(
        ask(&["CONFIG", "GET", "append*", "save"], 5),
        ["*4", "$4 save", "$0 ", "$10 appendonly", "$3 yes"]
    );
    assert_eq!(ask(&["CONFIG", "GET", "maxmemory"], 1), ["*0"]);
    // CLIENT SETINFO takes the two attributes Redis knows, in any case, and no other.
    assert_eq!(ask(&["CLIENT", "SETINFO", "lib-name", "redis-rs"], 1), ["+OK"]);
    assert_eq!(ask(&["CLIENT", "SETINFO", "LIB-VER", "1.8.2"], 1), ["+OK"]);
    assert_eq!(
        ask(&["CLIENT", "SETINFO", "lib-colour", "blue"], 1),
        ["-ERR Unrecognized option 'lib-colour'"]
    );
    // Only database 0 exists: any other index is out of range, a negative one too.
    assert_eq!(ask(&["SELECT", "0"], 1), ["+OK"]);
    for index in ["1", "-1", "16"] {
        assert_eq!(ask(&["SELECT", index], 1), ["-ERR DB index is out of range"], "SELECT {index}");
    }
    assert_eq!(ask(&["SELECT", "x"], 1), ["-ERR value is not an integer or out of range"]);
    // The same through redis-rs.
    let mut con = redis_conn(&c.addr(), None);
    let config: Vec<(String, String)> =
        redis::cmd("CONFIG").arg("GET").arg("appendonly").query(&mut con).unwrap();
    assert_eq!(config, [("appendonly".to_string(), "yes".to_string())]);
}

#[test]
fn an_mset_of_big_values_is_written_in_runs_and_no_slave_falls_behind() {
    // Each slave's link carries 3 MiB a second towards it. A run of writes must be
    // acknowledged within WRITE_DEADLINE_ACK_TIMEOUTS ACK timeouts (2 s): a run of 1 MiB gets
    // through in a third of a second, one of 8 MiB would take more than 2.6 s (as one run,
    // this MSET was answered TIMEOUT).
    let c = TestCluster::from_builder(common::builder().slaves(3).proxy(Link::SlaveToPrimary));
    for link in &c.links.slave_to_primary {
        link.set_fault_directed(Fault::None, Fault::Throttle(3 << 20));
    }
    let addr = c.addr();
    let mut con = redis_conn(&addr, None);
    // Eight values of the largest size, the last a little smaller so that the whole request
    // fits a RESP frame (MAX_RESP_FRAME, which counts the command's name and keys too).
    let max = dsm::limits::MAX_VALUE;
    let pairs: Vec<(String, Vec<u8>)> =
        (0..8u8).map(|i| (format!("big{i}"), vec![b'a' + i; if i == 7 { max - 64 } else { max }])).collect();
    let _: () = con.mset(&pairs).unwrap();
    for (key, value) in &pairs {
        assert!(con.get::<_, Vec<u8>>(key).unwrap() == *value, "{key} read back wrong");
    }
    // Pipelined SETs of big values are bounded the same way.
    let mut pipe = redis::pipe();
    for (key, value) in &pairs {
        pipe.set(key, &value[1..]).ignore();
    }
    let _: () = pipe.query(&mut con).unwrap();
    for (key, value) in &pairs {
        assert!(con.get::<_, Vec<u8>>(key).unwrap() == value[1..], "{key} read back wrong");
    }
    // Every slave acknowledged in time: none was marked down.
    let out = c.primary.output();
    assert!(!out.contains("marked down"), "{out}");
    assert_eq!(c.stat(&addr, "slaves").as_deref(), Some("3"));
}

#[test]
fn a_redis_client_over_the_connection_limit_reads_why() {
    let c = TestCluster::start_with(1, &["--max-connections", "2"]);
    // The slave holds one connection; one client fits (once the readiness probes' connections
    // have been noticed closed).
    let mut held = None;
    dsm_testkit::cluster::wait_for("a connection slot", READY, || {
        let mut r = c.raw();
        let ok = r.ask("PING") == "PONG";
        held = ok.then_some(r);
        ok
    })
    .unwrap();
    // A Redis client sends its request at once, and is refused in RESP, as Redis refuses.
    let mut over = c.raw();
    over.send(&resp(&["PING"]));
    assert_eq!(over.line(), "-ERR max number of clients reached");
    assert!(over.closed());
    let out = redis_tool("redis-cli").args(["-p", port(&c.addr()), "PING"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("ERR max number of clients reached") && !text.contains("Protocol error"), "{text}");
    // A line-protocol client is refused in the line protocol, whether it spoke or not.
    let mut line = c.raw();
    line.send(b"PING\r\n");
    assert_eq!(line.line(), "ERR too many connections");
    assert!(line.closed());
    let mut silent = c.raw();
    assert_eq!(silent.line(), "ERR too many connections");
    assert!(silent.closed());
    assert_eq!(held.unwrap().ask("PING"), "PONG");
}

/// Opens a connection, sends `bytes`, and returns what the server answered before closing or
/// before `quiet` passed without a byte.
fn exchange(addr: &str, bytes: &[u8], close_write: bool) -> (String, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Send in pieces, so the server sees the frame arrive over several reads.
    for chunk in bytes.chunks(1 << 16) {
        if s.write_all(chunk).is_err() {
            break;
        }
    }
    if close_write {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        match s.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

#[test]
fn a_frame_cut_anywhere_is_completed_when_its_rest_comes() {
    let c = TestCluster::start(1);
    let frame = resp(&["SET", "slow", "ab\r\ncd"]);
    let mut con = redis_conn(&c.addr(), None);
    // Cut inside the header, after it, inside a bulk's length, inside the payload (at its
    // line break), and between the last `\r` and `\n`.
    for cut in [2, 4, 13, 25, 27, frame.len() - 1] {
        let mut s = TcpStream::connect(c.addr()).unwrap();
        s.write_all(&frame[..cut]).unwrap();
        // Half a frame is not answered: nothing comes while the client sends no more.
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut byte = [0u8; 1];
        match s.read(&mut byte) {
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            other => panic!("cut at {cut}: answered half a frame: {other:?} {byte:?}"),
        }
        // The rest completes it. A server that lost the first part hangs here: the read
        // timeout fails the test instead.
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(&frame[cut..]).unwrap();
        s.write_all(&resp(&["GET", "slow"])).unwrap();
        let mut raw = Raw::from_stream(s);
        assert_eq!(raw.line(), "+OK", "cut at {cut}");
        assert_eq!(resp_reply(&mut raw), "$6 ab\r\ncd", "cut at {cut}");
        let _: () = con.set("slow", "reset").unwrap();
    }
}

#[test]
fn malformed_resp_gets_an_error_or_a_clean_close_never_a_hang() {
    let c = TestCluster::start(3);
    let addr = c.addr();
    let big_bulk = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", dsm::limits::MAX_VALUE + 1);
    let mut million = b"*1000000\r\n".to_vec();
    for _ in 0..10 {
        million.extend_from_slice(b"$1\r\nx\r\n");
    }
    // What each case must get: the reply in full or its start ("" is no reply at all), after
    // which the server closes the connection.
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("a length longer than the payload", b"*2\r\n$3\r\nGET\r\n$9\r\nk\r\n".to_vec(), ""),
        (
            "an array that counts fewer elements than it has",
            b"*1\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec(),
            "-ERR wrong number of arguments for 'get' command\r\n-ERR Protocol error: expected '*', got '$'\r\n",
        ),
        (
            "a length shorter than the payload",
            b"*2\r\n$3\r\nGET\r\n$1\r\nkey\r\n".to_vec(),
            "-ERR Protocol error",
        ),
        ("a negative count", b"*-5\r\n".to_vec(), "-ERR Protocol error: invalid multibulk length"),
        ("a negative bulk length", b"*1\r\n$-3\r\n".to_vec(), "-ERR Protocol error: invalid bulk length"),
        ("not a number", b"*x\r\n".to_vec(), "-ERR Protocol error: invalid multibulk length"),
        ("an element that is not a bulk", b"*1\r\n:1\r\n".to_vec(), "-ERR Protocol error: expected '$'"),
        ("a bulk over the limit", big_bulk.into_bytes(), "-ERR Protocol error: invalid bulk length"),
        ("an array of a million elements", million, "-ERR Protocol error: too many arguments"),
        ("a frame cut in the middle", b"*3\r\n$3\r\nSET\r\n$3\r\ncut\r\n$5\r\nab".to_vec(), ""),
    ];
    for (what, bytes, want) in cases {
        let (got, closed) = exchange(&addr, &bytes, true);
        assert!(closed, "{what}: the server kept the connection open; got {got:?}");
        if want.is_empty() {
            assert_eq!(got, "", "{what}: a frame the stream ended inside is dropped unanswered");
        } else {
            assert!(got.starts_with(want), "{what}: got {got:?}, want {want:?}");
            // One protocol error, the last thing sent.
            let last = got.trim_end_matches("\r\n").rsplit("\r\n").next().unwrap();
            assert!(last.starts_with("-ERR Protocol error: ") && got.ends_with("\r\n"), "{what}: {got:?}");
            assert_eq!(got.matches("Protocol error").count(), 1, "{what}: {got:?}");
        }
        // The server serves a new connection after it.
        assert_eq!(exchange(&addr, &resp(&["PING"]), true), ("+PONG\r\n".to_string(), true), "after {what}");
    }
    // A cut frame was never executed, and the server serves on.
    let mut con = redis_conn(&addr, None);
    assert_eq!(con.get::<_, Option<String>>("cut").unwrap(), None);
    let _: () = con.set("after", "fine").unwrap();
    let status = c.primary.output();
    assert!(!status.contains("panicked"), "the master panicked:\n{status}");
}
