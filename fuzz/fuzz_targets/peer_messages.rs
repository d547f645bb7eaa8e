//! The slave protocol parsers (registration, requests, replies): never panic, and what parses
//! re-encodes to a line that parses to the same message.
#![no_main]

use dsm::peer::{Hello, Reply, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    if let Ok(hello) = Hello::parse(line) {
        assert_eq!(Hello::parse(hello.encode().as_bytes()).expect("re-parse"), hello);
    }
    if let Ok(request) = Request::parse(line) {
        let mut wire = Vec::new();
        request.encode_into(&mut wire);
        assert_eq!(Request::parse(&wire[..wire.len() - 1]).expect("re-parse"), request);
    }
    if let Ok(reply) = Reply::parse(line) {
        let mut wire = Vec::new();
        reply.encode_into(&mut wire);
        // An ERR's text is lossily decoded, so only its shape is checked.
        let again = Reply::parse(&wire[..wire.len() - 1]).expect("re-parse");
        assert_eq!(again.rid, reply.rid);
    }
});
