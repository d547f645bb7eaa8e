//! Command-line flags and start-up shared by the two master binaries, `dsm-master` and
//! `dsm-backup`: both run a [`Master`]; they differ only in their addresses and controller.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::compaction::{Policy, DEFAULT_COMPACT_MIN_BYTES, DEFAULT_COMPACT_PERCENT};
use super::{
    Config, Master, ReadFrom, Shared, DEFAULT_ACK_TIMEOUT_MS, DEFAULT_HEARTBEAT_MS, DEFAULT_MAX_CONNECTIONS,
};
use crate::auth::{PasswordArgs, SecretArgs};
use crate::logging::{self, Level};
use crate::wal::Fsync;

/// The flags every master has.
#[derive(clap::Args, Debug)]
pub struct ServerFlags {
    /// When to fsync the log: `always` before every reply (with group commit), `everysec`, or
    /// `never`. With everysec a killed process loses nothing; an OS crash may lose up to 1 s.
    #[arg(long, default_value_t = Fsync::Everysec)]
    pub fsync: Fsync,
    /// How long a write waits for one slave's ACK before replacing that slave.
    #[arg(long, default_value_t = DEFAULT_ACK_TIMEOUT_MS)]
    pub ack_timeout_ms: u64,
    /// Heartbeat interval (to the slaves, and a backup's probes of the primary); a slave silent
    /// for 10 intervals is marked down.
    #[arg(long, default_value_t = DEFAULT_HEARTBEAT_MS)]
    pub heartbeat_ms: u64,
    /// Most connections (clients and slaves) at once.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Who answers reads: `master` (from its committed copy, while it holds read leases from a
    /// majority) or `slaves` (a slave holding the committed version, checked by the master).
    #[arg(long, default_value_t = ReadFrom::Master)]
    pub read_from: ReadFrom,
    /// Compact the log in the background when it has grown by this many percent over its size
    /// after the last compaction and holds this many percent of the keys in superseded
    /// records (0: whenever it is over --compact-min-bytes).
    #[arg(long, default_value_t = DEFAULT_COMPACT_PERCENT)]
    pub compact_percent: u64,
    /// Never compact a smaller log on its own (`COMPACT` does).
    #[arg(long, default_value_t = DEFAULT_COMPACT_MIN_BYTES)]
    pub compact_min_bytes: u64,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (port 0 picks a free port; the real
    /// address is logged as `metrics on http://ADDR/metrics`). Off when not given.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Log verbosity.
    #[arg(long, value_enum, default_value_t = Level::Info)]
    pub log_level: Level,
    #[command(flatten)]
    pub secret: SecretArgs,
    #[command(flatten)]
    pub password: PasswordArgs,
}

impl ServerFlags {
    /// Checks the flags and builds a master's configuration; the error is for the user.
    pub fn config(&self, listen: String, wal: PathBuf, peer: Option<String>) -> Result<Config, String> {
        if self.ack_timeout_ms == 0 || self.heartbeat_ms == 0 || self.max_connections == 0 {
            return Err("--ack-timeout-ms, --heartbeat-ms and --max-connections must be positive".into());
        }
        let secret = self.secret.load().map_err(|e| e.to_string())?;
        let requirepass = self.password.load().map_err(|e| e.to_string())?;
        Ok(Config {
            listen,
            wal,
            peer,
            fsync: self.fsync,
            ack_timeout: Duration::from_millis(self.ack_timeout_ms),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            max_connections: self.max_connections,
            secret,
            requirepass,
            read_from: self.read_from,
            compaction: Policy { percent: self.compact_percent, min_bytes: self.compact_min_bytes },
            metrics_listen: self.metrics_listen.clone(),
        })
    }
}

/// Binds a master, prints `listening on ADDR`, and serves with `controller`; the process's exit
/// code (1 if it could not start).
pub fn serve(config: Config, controller: impl FnOnce(Arc<Shared>) + Send + 'static) -> ExitCode {
    let started = Master::bind(config).and_then(|master| {
        logging::announce_listening(master.local_addr()?);
        master.run(controller)
    });
    match started {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reports a usage error the way clap does (exit code 2).
pub fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}
