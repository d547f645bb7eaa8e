//! dsm: a replicated in-memory key-value store.
//!
//! A primary master logs every write to a plain-text write-ahead log and replicates it to a
//! majority of slave nodes before acknowledging it; a backup master follows the log and takes
//! over when the primary fails. See `docs/ARCHITECTURE.md` for the whole picture. The tools
//! that test and measure it (cluster launcher, proxy, checker, nemesis, harness, plots) are
//! the workspace's other crate, `dsm-testkit` (`testkit/`). A master serves its counters,
//! latency histograms and state to Prometheus with `--metrics-listen` ([`metrics`]).

/// Every program linking dsm allocates with mimalloc (built without transparent huge pages).
/// The servers allocate per key (the key, the value, the table entries) and a bulk load keeps
/// touching fresh memory. Measured 2026-12-07, 1,000,000-key load (16 connections, 100 writes
/// per send; master, backup, 3 slaves), six alternating pairs against glibc's malloc: mimalloc
/// won five, median 253,000 against 224,000 keys/s, CPU per million keys 7.5 s against 8.4 s.
/// jemalloc was no faster than glibc here, and huge pages (jemalloc `thp:always`, mimalloc's
/// default, glibc `malloc.hugetlb`) made the load slower and the master 40% bigger: a first
/// touch of memory costs this VM about the same per byte whatever the page size.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
