//! `dsm-backup`: the hot backup master.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dsm::auth::{PasswordArgs, SecretArgs};
use dsm::backup::{self, Source};
use dsm::logging::{self, Level};
use dsm::master::{self, Config, Master};
use dsm::wal::Fsync;

/// The backup master of a dsm cluster: follows the primary's write-ahead log, takes over when
/// the primary is unreachable, and hands back when it returns.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free port, printed as `listening on ADDR`).
    #[arg(long, default_value = master::DEFAULT_BACKUP_ADDR)]
    listen: String,
    /// The primary master.
    #[arg(long, default_value = master::DEFAULT_PRIMARY_ADDR)]
    primary: String,
    /// The primary's write-ahead log to follow (a shared disk). Relative paths are resolved
    /// against the directory the backup starts in.
    #[arg(long, default_value = "kv_store.log")]
    follow: PathBuf,
    /// Stream the primary's log over TCP instead of reading the file (for another host).
    #[arg(long)]
    follow_primary: bool,
    /// The backup's own write-ahead log, used once it serves.
    #[arg(long, default_value = "backup_kv_store.log")]
    wal: PathBuf,
    /// How long the primary must be unreachable before the backup takes over.
    #[arg(long, default_value_t = backup::DEFAULT_TAKEOVER_AFTER_MS)]
    takeover_after_ms: u64,
    /// When to fsync the backup's own log (see dsm-master --help).
    #[arg(long, value_enum, default_value_t = Fsync::Everysec)]
    fsync: Fsync,
    /// How long a write waits for one slave's ACK once the backup serves.
    #[arg(long, default_value_t = master::DEFAULT_ACK_TIMEOUT_MS)]
    ack_timeout_ms: u64,
    /// Heartbeat interval, to slaves and to the primary.
    #[arg(long, default_value_t = master::DEFAULT_HEARTBEAT_MS)]
    heartbeat_ms: u64,
    /// Most connections at once.
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
    if args.ack_timeout_ms == 0 || args.heartbeat_ms == 0 || args.takeover_after_ms == 0 {
        eprintln!("error: --ack-timeout-ms, --heartbeat-ms and --takeover-after-ms must be positive");
        return ExitCode::from(2);
    }
    let source = if args.follow_primary {
        Source::Primary
    } else {
        match std::path::absolute(&args.follow) {
            Ok(p) => Source::File(p),
            Err(e) => {
                eprintln!("error: --follow {}: {e}", args.follow.display());
                return ExitCode::from(2);
            }
        }
    };
    let heartbeat = Duration::from_millis(args.heartbeat_ms);
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
        peer: Some(args.primary.clone()),
        fsync: args.fsync,
        ack_timeout: Duration::from_millis(args.ack_timeout_ms),
        heartbeat,
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
    let controller = backup::Config {
        primary: args.primary,
        source,
        takeover_after: Duration::from_millis(args.takeover_after_ms),
        heartbeat,
    };
    match master.run(move |shared| backup::run(shared, controller)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
