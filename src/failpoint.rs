//! Failpoints: crash a process at a chosen point of its code, for tests of the worst moments.
//!
//! A test starts a server with `DSM_FAILPOINT=<name>:<n>` in its environment; the n-th time
//! (counting from 1) the code passes `failpoint("<name>")`, the process aborts on the spot, as a
//! power cut would stop it: no reply, no flush, no clean-up. The variable is read once, the
//! first time any failpoint is reached. Failpoints exist only in debug builds (the tests'); in a
//! release build [`failpoint`] is an empty function, so releases carry nothing.
//!
//! The points:
//!
//! - `after-append`: a write is in the log, but not yet sent to any slave.
//! - `after-quorum`: a majority of slaves acknowledged a write, but the client has no reply.
//! - `compact-before-snapshot`: a compaction has chosen its snapshot's seq, nothing written.
//! - `compact-after-snapshot`: the snapshot is written and synced beside the log, which is
//!   still the old one.
//! - `compact-after-rename`: the compacted log has replaced the old one, its directory not yet
//!   synced.

/// The environment variable that arms a failpoint: `<name>:<n>`.
pub const ENV: &str = "DSM_FAILPOINT";

/// Crashes the process if the failpoint `name` is armed and this is its n-th pass.
#[cfg(debug_assertions)]
pub fn failpoint(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static PASSES: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| std::env::var(ENV).ok().and_then(|spec| parse(&spec)));
    if let Some((armed_name, n)) = armed {
        if armed_name == name && PASSES.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            eprintln!("failpoint {name}:{n} reached: aborting");
            std::process::abort();
        }
    }
}

/// Crashes the process if the failpoint `name` is armed: never, in a release build.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn failpoint(_name: &str) {}

/// Parses `<name>:<n>` (n ≥ 1).
pub fn parse(spec: &str) -> Option<(String, u64)> {
    let (name, n) = spec.rsplit_once(':')?;
    let n: u64 = n.trim().parse().ok().filter(|&n| n >= 1)?;
    (!name.is_empty()).then(|| (name.to_string(), n))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn specs_parse() {
        assert_eq!(parse("after-append:3"), Some(("after-append".into(), 3)));
        assert_eq!(parse("after-quorum:1"), Some(("after-quorum".into(), 1)));
        for bad in ["", "after-append", "after-append:0", "after-append:x", ":2"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
