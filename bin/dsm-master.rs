//! `dsm-master`: the primary master.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dsm::logging;
use dsm::master::flags::{serve, usage_error, ServerFlags};
use dsm::master::{self, replica};

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
    #[command(flatten)]
    server: ServerFlags,
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(args.server.log_level);
    let peer = (args.backup != "none").then_some(args.backup);
    match args.server.config(args.listen, args.wal, peer) {
        Ok(config) => serve(config, replica::run_primary),
        Err(e) => usage_error(&e),
    }
}
