//! `dsm-master`: the primary master.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dsm::auth::{PasswordArgs, SecretArgs};
use dsm::logging::{self, Level};
use dsm::master::{self, Config, Master};
use dsm::wal::Fsync;

/// The primary master of a dsm cluster: logs every write, replicates it to a majority of the
/// slave members, and serves clients on a line protocol (try `nc 127.0.0.1 12345`).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on for clients and slaves (port 0 picks a free port; the real address
    /// is printed as `listening on ADDR`).
    #[arg(long, default_value = master::DEFAULT_PRIMARY_ADDR)]
    listen: String,
    /// Path of the write-ahead log (created if missing, replayed at start).
    #[arg(long, default_value = "kv_store.log")]
    wal: PathBuf,
    /// Address of the backup master: asked at start whether it has served since (then this
    /// master fails back from it), and given to clients in `ERR NOTPRIMARY` replies (`none` if
    /// there is no backup).
    #[arg(long, default_value = master::DEFAULT_BACKUP_ADDR)]
    backup: String,
    /// When to fsync the log: `always` before every reply (with group commit), `everysec`, or
    /// `never`. With everysec a killed process loses nothing; an OS crash may lose up to 1 s.
    #[arg(long, value_enum, default_value_t = Fsync::Everysec)]
    fsync: Fsync,
    /// How long a write waits for one slave's ACK before replacing that slave.
    #[arg(long, default_value_t = master::DEFAULT_ACK_TIMEOUT_MS)]
    ack_timeout_ms: u64,
    /// Heartbeat interval; a slave silent for 5 intervals is marked down.
    #[arg(long, default_value_t = master::DEFAULT_HEARTBEAT_MS)]
    heartbeat_ms: u64,
    /// Most connections (clients and slaves) at once.
    #[arg(long, default_value_t = master::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Log verbosity.
    #[arg(long, value_enum, default_value_t = Level::Info)]
    log_level: Level,
    #[command(flatten)]
    secret: SecretArgs,
    #[command(flatten)]
    password: PasswordArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(args.log_level);
    if args.ack_timeout_ms == 0 || args.heartbeat_ms == 0 || args.max_connections == 0 {
        eprintln!("error: --ack-timeout-ms, --heartbeat-ms and --max-connections must be positive");
        return ExitCode::from(2);
    }
    let (secret, requirepass) = match (args.secret.load(), args.password.load()) {
        (Ok(s), Ok(p)) => (s, p),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let config = Config {
        listen: args.listen,
        wal: args.wal,
        peer: (args.backup != "none").then_some(args.backup),
        fsync: args.fsync,
        ack_timeout: Duration::from_millis(args.ack_timeout_ms),
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        max_connections: args.max_connections,
        secret,
        requirepass,
    };
    let master = match Master::bind(config) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match master.local_addr() {
        Ok(addr) => logging::announce_listening(addr),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    match master.run(dsm::master::replica::run_primary) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
