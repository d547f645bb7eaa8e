//! One log line: `wal::decode` never panics, and a decoded record re-encodes to a line that
//! decodes to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    if let Ok((seq, record)) = dsm::wal::decode(line) {
        let mut wire = Vec::new();
        dsm::wal::encode(seq, &record, &mut wire);
        let again = dsm::wal::decode(&wire[..wire.len() - 1]).expect("re-decode");
        assert_eq!(again, (seq, record));
    }
});
