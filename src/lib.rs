//! dsm: a replicated in-memory key-value store.
//!
//! A primary master logs every write to a plain-text write-ahead log and replicates it to a
//! majority of slave nodes before acknowledging it; a backup master follows the log and takes
//! over when the primary fails. See `docs/ARCHITECTURE.md` for the whole picture.

pub mod auth;
pub mod backup;
pub mod checker;
pub mod client;
pub mod cluster;
pub mod error;
pub mod escape;
pub mod failpoint;
pub mod framing;
pub mod harness;
pub mod limits;
pub mod logging;
pub mod master;
pub mod nemesis;
pub mod peer;
pub mod plot;
pub mod protocol;
pub mod proxy;
pub mod quorum;
pub mod slave;
pub mod store;
pub mod wal;

pub use error::{Error, Result};
