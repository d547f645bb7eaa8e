//! The client line parser: never panics, and whatever parses re-encodes to a line that parses
//! to the same request. Also the client's reply parser.
#![no_main]

use dsm::protocol::{Reply, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    if let Ok(request) = Request::parse(line) {
        let mut wire = Vec::new();
        dsm::client::encode_request(&request, &mut wire);
        let again = Request::parse(&wire[..wire.len() - 1]).expect("an encoded request parses");
        assert_eq!(again, request);
    }
    let _ = Reply::parse_line(line);
    let _ = dsm::protocol::parse_table_row(line);
});
