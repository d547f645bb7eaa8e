//! `make run` (through its `cluster` target, which skips the build): a server that cannot start
//! stops the whole cluster, and make exits with an error instead of running on without it.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use dsm_testkit::cluster::{free_port, wait_for};

#[test]
fn make_run_exits_with_an_error_when_a_server_cannot_start() {
    // `make test` is how the tests run, so make is there; a missing one is a failure here.
    Command::new("make").arg("--version").output().expect("this test needs GNU make");
    // The primary's port is taken, as by a first `make run`.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let primary = taken.local_addr().unwrap().to_string();
    let backup = free_port().unwrap().to_string();
    let run_dir = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_dsm-master")).parent().unwrap().to_path_buf();
    // Output to a file, not a pipe: a pipe would keep the test waiting for as long as any
    // process that inherited it lives, and that is what the test checks.
    let logs = tempfile::tempdir().unwrap();
    let stderr_path = logs.path().join("make.err");
    let mut child = Command::new("make")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["-s", "cluster", "SLAVES=1"])
        .arg(format!("BIN={}", bin_dir.display()))
        .arg(format!("PRIMARY={primary}"))
        .arg(format!("BACKUP={backup}"))
        .arg(format!("RUN_DIR={}", run_dir.path().display()))
        // Its own process group: on the way out the recipe kills its whole group.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let group = child.id();
    let mut status = None;
    wait_for("make to exit", Duration::from_secs(60), || {
        status = child.try_wait().unwrap();
        status.is_some()
    })
    .unwrap_or_else(|e| {
        let _ = child.kill();
        panic!("{e}: make ran on without its primary");
    });
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(!status.unwrap().success(), "make exited 0");
    assert!(stderr.contains("could not start"), "{stderr}");
    // Each server's output is kept in the run directory.
    let master = std::fs::read_to_string(run_dir.path().join("master.out")).unwrap_or_default();
    assert!(master.contains("cannot listen on"), "master.out: {master}");
    // Nothing of that cluster is left running: every one of its servers names the primary's
    // address on its command line (the backup's --primary, each slave's --master).
    wait_for("the other servers to stop", Duration::from_secs(30), || {
        let pgrep = Command::new("pgrep").args(["-f", &format!("dsm-.* .*{primary}")]).output();
        pgrep.map(|o| o.stdout.is_empty()).unwrap_or(true)
    })
    .unwrap_or_else(|e| {
        // Do not leave them behind for the next test, then fail.
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).status();
        panic!("{e}: a server outlived make");
    });
}
