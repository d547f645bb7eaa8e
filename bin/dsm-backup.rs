//! `dsm-backup`: the hot backup master.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dsm::backup::{self, Source};
use dsm::logging;
use dsm::master;
use dsm::master::flags::{serve, usage_error, ServerFlags};

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
    #[command(flatten)]
    server: ServerFlags,
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(args.server.log_level);
    if args.takeover_after_ms == 0 {
        return usage_error("--takeover-after-ms must be positive");
    }
    let source = if args.follow_primary {
        Source::Primary
    } else {
        match std::path::absolute(&args.follow) {
            Ok(p) => Source::File(p),
            Err(e) => return usage_error(&format!("--follow {}: {e}", args.follow.display())),
        }
    };
    let config = match args.server.config(args.listen, args.wal, Some(args.primary.clone())) {
        Ok(c) => c,
        Err(e) => return usage_error(&e),
    };
    let controller = backup::Config {
        primary: args.primary,
        source,
        takeover_after: Duration::from_millis(args.takeover_after_ms),
        heartbeat: config.heartbeat,
    };
    serve(config, move |shared| backup::run(shared, controller))
}
