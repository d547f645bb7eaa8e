//! The `dsm-client` command line, one-shot and interactive, against a real cluster.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::{bin, TestCluster};

fn client(c: &TestCluster, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("dsm-client"))
        .args(["--master", &c.addr(), "--backup", "none"])
        .args(args)
        .output()
        .expect("run dsm-client");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn one_shot_commands_print_the_reply_and_set_the_exit_code() {
    let c = TestCluster::start(3);
    let (code, out, _) = client(&c, &["write", "city", "New York"]);
    assert_eq!(code, 0);
    let version = out.trim().strip_prefix("OK ").expect("OK <version>").to_string();
    let (code, out, _) = client(&c, &["read", "city"]);
    assert_eq!((code, out), (0, format!("VALUE {version} New York\n")));
    let (code, out, _) = client(&c, &["read", "nowhere"]);
    assert_eq!((code, out), (0, "NOT_FOUND\n".to_string()));
    let (code, out, _) = client(&c, &["stats"]);
    assert_eq!(code, 0);
    assert!(out.contains("STAT role primary\n") && out.ends_with("END\n"), "{out}");
    let (code, out, _) = client(&c, &["delete", "city"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("OK "));
    // A bad key is refused locally with a clear message and exit code 2.
    let long = "k".repeat(300);
    let (code, _, err) = client(&c, &["read", &long]);
    assert_eq!(code, 2);
    assert!(err.contains("key too long"), "{err}");
}

#[test]
fn one_shot_fails_clearly_when_no_server_is_there() {
    let addr = dsm_testkit::cluster::free_port().unwrap().to_string();
    let out = Command::new(bin("dsm-client"))
        .args(["--master", &addr, "--backup", "none", "read", "k"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no server reachable"), "{err}");
}

#[test]
fn bad_arguments_fail_with_usage() {
    let out = Command::new(bin("dsm-client")).args(["write", "only-key"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
    let out = Command::new(bin("dsm-master")).args(["--fsync", "sometimes"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sometimes"));
    let out = Command::new(bin("dsm-slave")).args(["--id", "bad id!"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid slave id"));
}

#[test]
fn piped_commands_print_no_prompt_and_a_failure_sets_the_exit_code() {
    let c = TestCluster::start(1);
    let run = |input: &[u8]| {
        let mut child = Command::new(bin("dsm-client"))
            .args(["--master", &c.addr(), "--backup", "none"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(b"write fruit ripe mango\nread fruit\nbogus\n\nread\nquit\n");
    assert_eq!(code, Some(1), "a failed command fails the run: {out} {err}");
    assert!(!out.contains("]> "), "no prompt when standard input is not a terminal: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("OK ") && lines[1].ends_with(" ripe mango"), "{out}");
    // The client's own errors are told apart from the server's.
    assert!(err.contains("error: unknown command 'bogus'"), "{err}");
    assert!(err.contains("error: wrong number of arguments for 'read'"), "{err}");
    assert!(!out.contains("ERR"), "{out}");
    let (code, out, _) = run(b"ping\nhelp\n");
    assert_eq!(code, Some(0));
    assert!(out.starts_with("PONG\n") && out.contains("READ <key>"), "{out}");
}

#[test]
fn interactive_session_on_a_terminal_has_a_prompt_and_history() {
    // `script` (util-linux) gives the client a pseudo-terminal, as a user's shell would.
    Command::new("script").arg("--version").output().expect("this test needs script(1), from util-linux");
    let c = TestCluster::start(1);
    let home = tempfile::tempdir().unwrap();
    let cmd = format!("{} --master {} --backup none", bin("dsm-client").display(), c.addr());
    let mut child = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .env("HOME", home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Typed one line per prompt, as a user would: a line editor may drop what is typed ahead.
    let screen = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().unwrap();
    let reader = {
        let screen = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut chunk) {
                screen.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        })
    };
    let prompt = format!("[primary {}]> ", c.addr());
    let mut stdin = child.stdin.take().unwrap();
    for (i, line) in
        [&b"write fruit ripe mango\r"[..], b"read fruit\r", b"help\r", b"\x04"].iter().enumerate()
    {
        dsm_testkit::cluster::wait_for("the prompt", common::READY, || {
            String::from_utf8_lossy(&screen.lock().unwrap()).matches(&prompt).count() > i
        })
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&screen.lock().unwrap())));
        stdin.write_all(line).unwrap();
    }
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
    let text = String::from_utf8_lossy(&screen.lock().unwrap()).into_owned();
    assert!(text.contains(" ripe mango"), "{text}");
    assert!(text.contains("READ <key>"), "{text}");
    let history = std::fs::read_to_string(home.path().join(".dsm_history")).expect("history saved in HOME");
    assert!(history.contains("read fruit"), "{history}");
}

#[test]
fn requests_the_protocol_cannot_carry_are_refused_before_sending() {
    let c = TestCluster::start(1);
    let (code, out, _) = client(&c, &["set", "a", "kept"]);
    assert_eq!(code, 0, "{out}");
    // A line break in a value would have sent a second request (DELETE a).
    let (code, _, err) = client(&c, &["write", "k", "x\nDELETE a"]);
    assert_eq!(code, 2);
    assert!(err.contains("line break"), "{err}");
    // A key with a space would have been written as key 'a'.
    let (code, _, err) = client(&c, &["write", "a b", "v"]);
    assert_eq!(code, 2);
    assert!(err.contains("error: key contains whitespace or control bytes"), "{err}");
    let (code, out, _) = client(&c, &["get", "a"]);
    assert_eq!(code, 0);
    assert!(out.ends_with(" kept\n"), "{out}");
    let (code, out, _) = client(&c, &["get", "k"]);
    assert_eq!((code, out.as_str()), (0, "NOT_FOUND\n"));
    let (code, out, _) = client(&c, &["del", "a"]);
    assert!(code == 0 && out.starts_with("OK "), "{out}");
    let (code, out, _) = client(&c, &["ping"]);
    assert_eq!((code, out.as_str()), (0, "PONG\n"));
    let (code, out, _) = client(&c, &["members"]);
    assert!(code == 0 && out.contains("MEMBER s1 up") && out.ends_with("END\n"), "{out}");
}

#[test]
fn a_bad_address_is_a_usage_error_and_a_wrong_password_says_so() {
    let out = Command::new(bin("dsm-client")).args(["--master", "nonsense", "ping"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonsense"));
    // Started once the slave has registered (asked with the password).
    let builder = common::builder().primary_args(["--requirepass", "right"]).slaves(1).password("right");
    let c = TestCluster::from_builder(builder);
    let (code, _, err) = client(&c, &["--password", "wrong", "ping"]);
    assert_eq!(code, 1);
    assert!(err.contains("authentication failed"), "{err}");
    assert!(!err.contains("no server reachable"), "{err}");
    let (code, out, _) = client(&c, &["--password", "right", "ping"]);
    assert_eq!((code, out.as_str()), (0, "PONG\n"));
}

#[test]
fn a_one_shot_write_during_a_takeover_waits_for_the_new_primary() {
    let mut c = common::FailoverCluster::start(3, false);
    c.primary.kill();
    // Asked right after the kill, the backup is still standby or taking over: the client
    // retries until it serves, and names the move once, by addresses.
    let out = Command::new(bin("dsm-client"))
        .args(["--master", &c.primary_addr, "--backup", &c.backup_addr, "--wait-ms", "30000"])
        .args(["write", "after", "takeover"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout} {stderr}");
    assert!(stdout.starts_with("OK "), "{stdout}");
    for line in stderr.lines() {
        // `from` is an address, never an error's text, and a move goes somewhere else.
        assert!(!line.contains("from I/O error"), "{line}");
        assert!(!line.contains(&format!("from {} to {}", c.backup_addr, c.backup_addr)), "{line}");
    }
    let note = format!("note: failed over from {} to {}", c.primary_addr, c.backup_addr);
    assert!(stderr.matches(&note).count() <= 1, "{stderr}");
    // Without a wait, a takeover in progress is reported at once, as before.
    let out = Command::new(bin("dsm-client"))
        .args(["--master", &c.primary_addr, "--backup", &c.backup_addr, "--wait-ms", "0", "read", "after"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(" takeover"), "{out:?}");
}

/// Runs `dsm-client --pipe` with `input` on its standard input.
fn pipe(c: &TestCluster, input: &str) -> (i32, String, String) {
    let mut child = Command::new(bin("dsm-client"))
        .args(["--master", &c.addr(), "--backup", "none", "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dsm-client --pipe");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn pipe_mode_sends_every_line_and_sums_up() {
    let c = TestCluster::start(3);
    // More lines than one batch, a read after the writes it must see, and a blank line.
    let mut input = String::new();
    for i in 0..2500 {
        input.push_str(&format!("WRITE bulk:{i} value {i}\n"));
    }
    input.push_str("\nREAD bulk:2499\n");
    let (code, out, err) = pipe(&c, &input);
    assert_eq!((code, out.trim()), (0, "sent 2501, OK 2501, errors 0"), "{err}");
    assert_eq!(dsm_testkit::cluster::stat(&c.addr(), "keys").as_deref(), Some("2500"));
    // A line the protocol refuses and one the server refuses: both counted, both named, a
    // non-zero exit; the good lines around them are still sent.
    let (code, out, err) = pipe(&c, "WRITE a 1\nFROB\nREMOVE nobody\nWRITE b 2\n");
    assert_eq!((code, out.trim()), (1, "sent 3, OK 2, errors 2"), "{err}");
    assert!(err.contains("line 2: error:") && err.contains("line 3: ERR"), "{err}");
}
