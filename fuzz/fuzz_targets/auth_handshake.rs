//! The handshake parsers: arbitrary challenge and proof lines are refused, never panic.
#![no_main]

use dsm::auth::{PeerHandshake, PeerRole, Secret, ServerHandshake};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let Ok(secret) = Secret::new(b"fuzzing-secret-0123456789") else { return };
    let server = ServerHandshake::new(&secret, PeerRole::Slave, "s1", "0".repeat(32));
    let _ = server.check(line);
    let mut peer = PeerHandshake::new(&secret, PeerRole::Slave, "s1", "1".repeat(32));
    let _ = peer.verify(line);
    if peer.answer(line).is_ok() {
        let _ = peer.verify(line);
    }
});
