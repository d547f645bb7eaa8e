//! A whole log file of arbitrary bytes: opening it replays a clean prefix or reports it
//! corrupt, never panics; a follower reading it never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("kv.log");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let mut follower = dsm::wal::Follower::new(&path);
    let _ = follower.poll(&mut || {}, &mut |_, _| {});
    let _ = dsm::wal::Wal::open(&path, dsm::wal::Fsync::Never, |_, _| Ok(()));
});
