//! Changing hands: following another master's log, taking over in a new epoch, and handing
//! back.
//!
//! A master that is not serving (a backup, or a primary catching up after a failure) keeps its
//! log and index a copy of another master's log: it copies records in batches with their seqs
//! ([`Shared::apply_records`](crate::master::Shared::apply_records)) and starts over when told
//! the log is another history ([`Shared::reset_state`](crate::master::Shared::reset_state)).
//! Records come from a file it polls ([`crate::wal::Follower`]) or over TCP from the other
//! master ([`serve_stream`] / [`follow_stream`]):
//!
//! ```text
//! -> STREAM [<epoch> <epoch-seq> <last-seq>]
//!                               what the follower holds: its log's last epoch, the seq of that
//!                               epoch's EPOCH record, and its last record
//! <- RESET                      drop your copy: the whole log follows (unless the follower's
//!                               log is a prefix of the sender's: then only what is above
//!                               <last-seq> follows, without RESET)
//! <- <log line>                 one record, exactly as in the log file
//! <- AT <seq> <epoch> <role>    heartbeat: what the sender has logged so far
//! ```
//!
//! A hand-off (`HANDOFF` as a connection's first line) makes a primary stop serving: it
//! switches to standby, waits for the writes in flight, and answers `HANDOFF <seq> <epoch>`,
//! the last seq it logged. Everything it ever acknowledged is at or below that seq.
//!
//! [`takeover`] makes a master primary in a new epoch. It accepts slaves into the epoch (each
//! waits out the lease it gave the old master), and once a majority has joined — so the old
//! master can neither complete a write nor serve a read — it asks them for the entries its log
//! may lack (`SCAN`, bounded by the writes that were in flight), appends its `EPOCH` record,
//! logs and replicates the recovered writes again, and starts serving. Any write the old master
//! acknowledged was on a majority, and two majorities share a slave, so the scan sees it.

mod primary;
mod stream;
mod takeover;

pub use primary::{probe, run_primary, PeerState, PEER_WATCH_INTERVAL, RETRY_PAUSE};
pub use stream::{
    follow_stream, is_prefix, request_handoff, serve_handoff, serve_stream, sync_from, At, Held,
};
pub use takeover::{next_epoch, takeover, TakeoverError, SCAN_TIMEOUT};

use std::time::Duration;

/// A log stream's sender writes what it has encoded once it holds this much, without waiting
/// for the end of the poll: a whole log sent after `RESET` is never held in memory at once.
pub const STREAM_SEND_BYTES: usize = 1 << 20;

/// How often a log stream's sender polls its log file for new records.
pub const STREAM_POLL: Duration = Duration::from_millis(5);

/// How often a log stream's sender sends an `AT` heartbeat.
pub const STREAM_HEARTBEAT: Duration = Duration::from_millis(100);

/// A stream silent for this long is considered dead by its receiver.
pub const STREAM_SILENCE: Duration = Duration::from_secs(2);

/// How long a hand-off waits for the writes in flight to finish (each ends within a write
/// deadline, so this is a safety net).
pub const HANDOFF_DRAIN: Duration = Duration::from_secs(10);
