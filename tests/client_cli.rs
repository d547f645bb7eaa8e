//! The `dsm-client` command line, one-shot and interactive, against a real cluster.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

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
    let addr = dsm::cluster::free_port().unwrap().to_string();
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
fn interactive_session_shows_the_server_in_the_prompt() {
    let c = TestCluster::start(1);
    let mut child = Command::new(bin("dsm-client"))
        .args(["--master", &c.addr(), "--backup", "none"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"write fruit ripe mango\nread fruit\nbogus\n\nread\nquit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("[primary {}]> ", c.addr())), "{text}");
    assert!(text.contains(" ripe mango\n"), "{text}");
    assert!(text.contains("ERR unknown command 'bogus'"), "{text}");
    assert!(text.contains("ERR wrong number of arguments for 'read'"), "{text}");
}
