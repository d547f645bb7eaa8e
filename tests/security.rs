//! The cluster secret and the client password, against real processes: who gets in, who is
//! refused with `ERR`, and that a refused peer changes nothing.

mod common;

use std::path::{Path, PathBuf};

use common::{bin, stat_with_password, FailoverCluster, Raw, READY};
use dsm::auth::{PeerHandshake, PeerRole, Secret, MASTER_ID};
use dsm::client::Client;
use dsm::protocol::Reply;
use dsm_testkit::cluster::{wait_for, Cluster, Ready};

const SECRET: &str = "test-cluster-secret-0123456789";
const PASSWORD: &str = "open sesame";

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

/// Waits until a process's output (stdout and stderr, copied to `<name>.out`) contains `text`.
fn wait_output(dir: &Path, name: &str, text: &str) {
    let path = dir.join(format!("{name}.out"));
    wait_for(&format!("'{text}' in {}", path.display()), READY, || {
        std::fs::read_to_string(&path).map(|s| s.contains(text)).unwrap_or(false)
    })
    .unwrap_or_else(|e| panic!("{e}; output: {}", std::fs::read_to_string(&path).unwrap_or_default()));
}

fn members(addr: &str, password: Option<&str>) -> Vec<String> {
    let mut r = Raw::connect(addr);
    if let Some(p) = password {
        assert_eq!(r.ask(&format!("AUTH {p}")), "OK");
    }
    r.send(b"MEMBERS\n");
    let mut out = Vec::new();
    loop {
        let line = r.line();
        if line == "END" {
            return out;
        }
        out.push(line);
    }
}

/// A master with the secret and a password, and three slaves with the secret.
struct Secured {
    /// Declared before `dir`, so the processes die before the secret is removed.
    cluster: Cluster,
    secret: PathBuf,
    dir: tempfile::TempDir,
}

impl Secured {
    fn start() -> Secured {
        let dir = tempfile::tempdir().unwrap();
        let secret = write_file(dir.path(), "secret", &format!("{SECRET}\n"));
        let secret_flag = ["--secret-file", &secret.display().to_string()].map(String::from);
        let cluster = common::builder()
            .dir(dir.path())
            .primary_args(&secret_flag)
            .primary_args(["--requirepass", PASSWORD])
            .slaves(3)
            .slave_args(&secret_flag)
            .password(PASSWORD)
            .start()
            .unwrap();
        Secured { cluster, secret, dir }
    }

    fn addr(&self) -> String {
        self.cluster.primary_addr().to_string()
    }
}

#[test]
fn slaves_with_the_secret_join_and_others_are_refused() {
    let mut c = Secured::start();
    let addr = c.addr();
    let mut client = Client::new(&addr, None);
    client.set_password(PASSWORD.as_bytes());
    assert!(matches!(client.write("k", b"v"), Ok(Reply::Ok(_))));

    // A slave with the wrong secret, and one with none, never become members.
    let wrong = write_file(c.dir.path(), "wrong", "another-secret-0123456789");
    c.cluster.add_slave("intruder", "intruder", &["--secret-file", &wrong.display().to_string()]).unwrap();
    c.cluster.add_slave("nosecret", "nosecret", &[]).unwrap();
    wait_output(c.dir.path(), "primary", "refused a slave connection (intruder)");
    wait_output(c.dir.path(), "primary", "refused a slave connection (nosecret)");
    wait_output(c.dir.path(), "intruder", "auth failed");
    assert_eq!(members(&addr, Some(PASSWORD)), ["MEMBER s1 up", "MEMBER s2 up", "MEMBER s3 up"]);

    // By hand: the master challenges, a garbage proof is refused with ERR and a close.
    let mut r = Raw::connect(&addr);
    r.send(b"SLAVE evil 99 99\n");
    let challenge = r.line_lf();
    assert!(challenge.starts_with("CHALLENGE ") && challenge.len() == 10 + 32, "{challenge}");
    r.send(format!("PROOF {} {}\n", "0".repeat(32), "ab".repeat(32)).as_bytes());
    assert!(r.line_lf().starts_with("ERR auth failed: wrong proof"));
    assert!(r.closed());
    // Claiming a newer epoch did not make the unauthenticated peer able to depose the primary.
    assert_eq!(stat_with_password(&addr, "role", Some(PASSWORD)).as_deref(), Some("primary"));
    assert_eq!(members(&addr, Some(PASSWORD)).len(), 3);
    assert!(matches!(client.read("k"), Ok(Reply::Value { value, .. }) if value == b"v"));
}

#[test]
fn master_to_master_connections_need_the_secret_and_do_not_replay() {
    let c = Secured::start();
    let addr = c.addr();
    let secret = Secret::from_file(&c.secret).unwrap();
    // HANDOFF without a proof: challenged, then refused; the primary keeps serving.
    let mut r = Raw::connect(&addr);
    r.send(b"HANDOFF\n");
    assert!(r.line_lf().starts_with("CHALLENGE "));
    r.send(b"HANDOFF\n");
    assert!(r.line_lf().starts_with("ERR auth failed"));
    assert!(r.closed());
    assert_eq!(stat_with_password(&addr, "role", Some(PASSWORD)).as_deref(), Some("primary"));

    // A real STREAM handshake succeeds and the log follows...
    let mut r = Raw::connect(&addr);
    r.send(b"STREAM\n");
    let mut peer = PeerHandshake::new(&secret, PeerRole::Stream, MASTER_ID, dsm::auth::fresh_nonce());
    let proof = peer.answer(r.line_lf().as_bytes()).unwrap();
    r.send(format!("{proof}\n").as_bytes());
    peer.verify(r.line_lf().as_bytes()).unwrap();
    let first = r.line_lf();
    assert!(first == "RESET" || dsm::wal::decode(first.as_bytes()).is_ok(), "{first}");
    drop(r);
    // ...but the same proof recorded and replayed on a new connection is refused.
    let mut replay = Raw::connect(&addr);
    replay.send(b"STREAM\n");
    assert!(replay.line_lf().starts_with("CHALLENGE "));
    replay.send(format!("{proof}\n").as_bytes());
    assert!(replay.line_lf().starts_with("ERR auth failed"));
    assert!(replay.closed());
    // The same proof for another role is refused too.
    let mut other = Raw::connect(&addr);
    other.send(b"HANDOFF\n");
    let mut peer = PeerHandshake::new(&secret, PeerRole::Stream, MASTER_ID, dsm::auth::fresh_nonce());
    let proof = peer.answer(other.line_lf().as_bytes()).unwrap();
    other.send(format!("{proof}\n").as_bytes());
    assert!(other.line_lf().starts_with("ERR auth failed"));
    assert_eq!(stat_with_password(&addr, "role", Some(PASSWORD)).as_deref(), Some("primary"));
}

#[test]
fn a_slave_with_a_secret_refuses_a_master_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_file(dir.path(), "secret", SECRET);
    let c = common::builder()
        .dir(dir.path())
        .slaves(1)
        .slave_args(["--secret-file", &secret.display().to_string()])
        .ready(Ready::Started)
        .start()
        .unwrap();
    let addr = c.primary_addr().to_string();
    wait_output(dir.path(), "s1", "did not ask for a proof");
    // The master welcomed it (it has no secret), but the slave did not stay.
    assert_eq!(stat_with_password(&addr, "slaves", None).as_deref(), Some("0"));
}

#[test]
fn the_client_password_gates_every_command_but_auth_ping_and_quit() {
    let c = Secured::start();
    let mut r = Raw::connect(&c.addr());
    assert_eq!(r.ask("PING"), "PONG");
    assert_eq!(r.ask("WRITE k v"), "ERR NOAUTH authentication required");
    assert_eq!(r.ask("READ k"), "ERR NOAUTH authentication required");
    assert_eq!(r.ask("STATS"), "ERR NOAUTH authentication required");
    assert_eq!(r.ask("MEMBERS"), "ERR NOAUTH authentication required");
    assert_eq!(r.ask("REMOVE s1"), "ERR NOAUTH authentication required");
    assert_eq!(r.ask("AUTH"), "ERR wrong number of arguments for 'auth'");
    assert_eq!(r.ask("AUTH open"), "ERR invalid password");
    assert_eq!(r.ask(&format!("AUTH {PASSWORD}x")), "ERR invalid password");
    assert_eq!(r.ask("READ k"), "ERR NOAUTH authentication required");
    assert_eq!(r.ask(&format!("AUTH {PASSWORD}")), "OK");
    assert!(r.ask("WRITE k v").starts_with("OK "));
    assert!(r.ask("READ k").ends_with(" v"));
    // Another connection starts unauthenticated.
    let mut r2 = Raw::connect(&c.addr());
    assert_eq!(r2.ask("READ k"), "ERR NOAUTH authentication required");
    assert_eq!(r2.ask("QUIT"), "BYE");

    // The command-line client, with and without the password.
    let run = |extra: &[&str]| {
        std::process::Command::new(bin("dsm-client"))
            .args(["--master", &c.addr(), "--backup", "none"])
            .args(extra)
            .env_remove("DSM_PASSWORD")
            .output()
            .unwrap()
    };
    let out = run(&["--password", PASSWORD, "read", "k"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(" v\n"), "{out:?}");
    let out = run(&["read", "k"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOAUTH"), "{out:?}");
    let out = run(&["--password", "nope", "read", "k"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid password"), "{out:?}");
}

#[test]
fn a_secured_cluster_fails_over_and_back_over_tcp() {
    // Declared before the cluster, so the secret outlives the processes that read it.
    let keys = tempfile::tempdir().unwrap();
    let secret = write_file(keys.path(), "secret", SECRET).display().to_string();
    let server_flags = ["--secret-file", &secret, "--requirepass", PASSWORD, "--heartbeat-ms", "50"];
    let mut c =
        FailoverCluster::start_with(3, true, &server_flags, &["--secret-file", &secret], Some(PASSWORD));
    let mut client = c.client();
    assert!(matches!(client.write("a", b"1"), Ok(Reply::Ok(_))));
    // The backup follows the log over an authenticated stream.
    wait_output(c.dir(), "primary", "streaming the log to");

    c.primary.kill();
    c.wait_role(&c.backup_addr, "primary", 3);
    let mut got = None;
    wait_for("a write on the backup", READY, || {
        got = Some(client.write("b", b"2"));
        matches!(got, Some(Ok(Reply::Ok(_))))
    })
    .unwrap_or_else(|e| panic!("{e}: {got:?}"));

    // The primary comes back, streams from the backup and makes it hand off: both authenticated.
    c.primary.restart().unwrap();
    c.wait_role(&c.primary_addr, "primary", 3);
    wait_output(c.dir(), "primary", "handed off at seq");
    let mut primary = Client::new(&c.primary_addr, None);
    primary.set_password(PASSWORD.as_bytes());
    assert!(matches!(primary.read("a"), Ok(Reply::Value { value, .. }) if value == b"1"));
    assert!(matches!(primary.read("b"), Ok(Reply::Value { value, .. }) if value == b"2"));
    let log = c.primary.output() + &c.backup().output();
    assert!(!log.contains("auth failed"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}
