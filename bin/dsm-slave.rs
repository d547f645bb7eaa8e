//! `dsm-slave`: a storage node.

use clap::Parser;
use dsm::auth::SecretArgs;
use dsm::logging::{self, Level};
use dsm::master::{DEFAULT_BACKUP_ADDR, DEFAULT_PRIMARY_ADDR};
use dsm::slave::{self, Config};

/// A dsm storage node: keeps versioned values in memory and serves its master. It connects to
/// the primary, else the backup, and reconnects forever.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Member id; keep it the same across restarts (default: `slave-<hostname>`; give each
    /// slave on one host its own).
    #[arg(long)]
    id: Option<String>,
    /// The primary master's address.
    #[arg(long, default_value = DEFAULT_PRIMARY_ADDR)]
    master: String,
    /// The backup master's address, tried when the primary is unreachable (`none` to disable).
    #[arg(long, default_value = DEFAULT_BACKUP_ADDR)]
    backup: String,
    /// Log verbosity.
    #[arg(long, value_enum, default_value_t = Level::Info)]
    log_level: Level,
    #[command(flatten)]
    secret: SecretArgs,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    logging::init(args.log_level);
    let id = args.id.unwrap_or_else(slave::default_id);
    if let Err(e) = dsm::peer::parse_slave_id(id.as_bytes()) {
        eprintln!("error: --id: {e}");
        return std::process::ExitCode::from(2);
    }
    let secret = match args.secret.load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    slave::run(Config {
        id,
        master: args.master,
        backup: (args.backup != "none").then_some(args.backup),
        secret,
    })
}
