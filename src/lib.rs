//! dsm: a replicated in-memory key-value store.
//!
//! A primary master logs every write to a plain-text write-ahead log and replicates it to a
//! majority of slave nodes before acknowledging it; a backup master follows the log and takes
//! over when the primary fails. See `docs/ARCHITECTURE.md` for the whole picture. The tools
//! that test and measure it (cluster launcher, proxy, checker, nemesis, harness, plots) are
//! the workspace's other crate, `dsm-testkit` (`testkit/`). A master serves its counters,
//! latency histograms and state to Prometheus with `--metrics-listen` ([`metrics`]).

pub mod auth;
pub mod backup;
pub mod client;
pub mod error;
pub mod escape;
pub mod failpoint;
pub mod framing;
pub mod keymap;
pub mod limits;
pub mod logging;
pub mod master;
pub mod metrics;
pub mod peer;
pub mod protocol;
pub mod quorum;
pub mod resp;
pub mod slave;
pub mod store;
pub mod wal;
pub mod wire;

pub use error::{Error, Result};
