//! A full disk under the master's log: every write whose append fails is answered `ERR`, never
//! `OK`; reads go on; `STATS` says why; once there is room again writes are taken again; and
//! every write acknowledged before, during and after replays after a restart.
//!
//! The log lives on a tmpfs of 1 MiB mounted for the test, so this needs root. It is ignored
//! by a plain `cargo test`; `make test` runs it as root (`cargo test --test disk_full --
//! --ignored`), and it fails, rather than passing, when it cannot mount.

mod common;

use std::process::Command;

use common::{Raw, READY};
use dsm_testkit::cluster::{stat, wait_for, Node};

/// Unmounts on drop, after the processes using it are gone.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
#[ignore = "needs root to mount a small tmpfs; `make test` runs it as root"]
fn a_full_disk_fails_writes_with_an_error_and_they_resume_when_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&disk)
        .status()
        .expect("run mount");
    assert!(mounted.success(), "cannot mount a tmpfs (this test needs root)");
    let _mount = Mount(disk.clone());
    // Most of the disk taken by a file the test removes later.
    let filler = disk.join("filler");
    std::fs::write(&filler, vec![0u8; 900 << 10]).unwrap();

    let wal = disk.join("kv.log").display().to_string();
    let args = ["--listen", "127.0.0.1:0", "--wal", &wal, "--backup", "none"].map(String::from).to_vec();
    let mut master =
        Node::start("master", &common::bin("dsm-master"), args, dir.path(), false, true).unwrap();
    let addr = master.addr().to_string();
    let args =
        vec!["--id".into(), "s1".into(), "--master".into(), addr.clone(), "--backup".into(), "none".into()];
    let _slave = Node::start("s1", &common::bin("dsm-slave"), args, dir.path(), false, false).unwrap();
    wait_for("the slave", READY, || stat(&addr, "slaves").as_deref() == Some("1")).unwrap();

    let mut r = Raw::connect(&addr);
    let value = "v".repeat(1000);
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..1000 {
        let reply = r.ask(&format!("WRITE k{i} {value}"));
        if reply.starts_with("OK ") {
            acked.push(i);
        } else {
            refused = Some((i, reply));
            break;
        }
    }
    let (failed, why) = refused.expect("the disk never filled up");
    assert!(why.starts_with("ERR UNAVAILABLE") && why.contains("write-ahead log"), "{why}");
    assert!(why.contains("No space left on device"), "{why}");
    // Nothing half-done: the refused key does not exist, the earlier ones are readable.
    assert_eq!(r.ask(&format!("READ k{failed}")), "NOT_FOUND");
    assert!(r.ask(&format!("READ k{}", acked[0])).starts_with("VALUE "));
    assert!(stat(&addr, "wal_error").unwrap_or_default().contains("No space left"));
    // Still full: a write as big is refused again, never OK.
    assert!(r.ask(&format!("WRITE again {value}")).starts_with("ERR "));
    assert_eq!(r.ask("READ again"), "NOT_FOUND");
    // The same over RESP: Redis's code for a store that cannot persist.
    r.send(&dsm::resp::encode_request(&[b"SET", b"again", value.as_bytes()]));
    let reply = r.line();
    assert!(reply.starts_with("-MISCONF the write-ahead log") && reply.contains("No space left"), "{reply}");

    std::fs::remove_file(&filler).unwrap();
    let reply = r.ask("WRITE after room");
    assert!(reply.starts_with("OK "), "{reply}");
    assert_eq!(stat(&addr, "wal_error").as_deref(), Some(""));

    // Every acknowledged write replays.
    master.restart().unwrap();
    wait_for("the slave again", READY, || stat(&addr, "slaves").as_deref() == Some("1")).unwrap();
    let mut r = Raw::connect(&addr);
    for i in acked {
        assert!(r.ask(&format!("READ k{i}")).starts_with("VALUE "), "k{i}");
    }
    assert!(r.ask("READ after").ends_with(" room"));
    assert_eq!(r.ask(&format!("READ k{failed}")), "NOT_FOUND");
}
