//! `dsm-harness`: load-tests a dsm cluster and draws the plots in `results/`.
//!
//! ```text
//! dsm-harness [run flags]                      one run (starts its own cluster)
//! dsm-harness --master ADDR [--backup ADDR]    one run against an existing cluster
//! dsm-harness --sweep-slaves 1,3,5,7,9         one run per slave count + a summary CSV
//! dsm-harness --sweep-clients 1,2,5,10,20,50   one run per client count + a summary CSV
//! dsm-harness plot --out results/              redraw every PNG from the CSVs
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use dsm::master::ReadFrom;
use dsm_testkit::harness::config::{self, parse_list, RunConfig};
use dsm_testkit::harness::{self, signal, summary_text, SweepAxis};

const AFTER_HELP: &str = "\
A run writes into --out: metrics.csv and metrics.json (one row per measured second; the warm-up is
never written), summary.json, slaves.csv (requests and keys per slave, as the master counts them)
and events.csv (faults). An --out holding files of an earlier run is refused unless --overwrite,
which deletes them first. A sweep writes OUT/by_slave_count.csv or OUT/by_client_count.csv, one
row per point, and each point's files under OUT/by_slave_count/slaves-N/ (or clients-N/).

Only OK to a write and VALUE or NOT_FOUND to a read, within the deadline, are successes; every
other outcome is an error and stays out of the latencies. Ctrl-C stops the load and every
process the harness started, writes nothing, and exits with status 130.";

/// The exit status after Ctrl-C or SIGTERM, as shells report a process ended by SIGINT.
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Parser, Debug)]
#[command(
    name = "dsm-harness",
    version,
    about = "Load-tests a dsm cluster: per-second metrics, sweeps, faults, and the plots in results/",
    args_conflicts_with_subcommands = true,
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Redraw every plot under OUT from the CSVs the runs wrote there.
    Plot {
        /// The results directory (holding by_slave_count.csv, by_client_count.csv,
        /// read_from_slaves/by_client_count.csv, load_distribution/ and failover/).
        #[arg(long, default_value = "results")]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Client threads; each sends one request at a time.
    #[arg(long, default_value_t = config::DEFAULT_CLIENTS)]
    clients: usize,
    /// Slaves to start (ignored with --master).
    #[arg(long, default_value_t = config::DEFAULT_SLAVES)]
    slaves: usize,
    /// Connections per client, used round-robin.
    #[arg(long, default_value_t = config::DEFAULT_CONNS_PER_CLIENT)]
    conns_per_client: usize,
    /// Keys key0..key{N-1}, chosen uniformly.
    #[arg(long, default_value_t = config::DEFAULT_KEYS)]
    keys: u64,
    /// Share of writes, in percent.
    #[arg(long, default_value_t = config::DEFAULT_WRITE_PCT)]
    write_pct: u8,
    /// Seconds of warm-up, excluded from the results.
    #[arg(long, default_value_t = config::DEFAULT_WARMUP_S)]
    warmup: u64,
    /// Measured seconds.
    #[arg(long, default_value_t = config::DEFAULT_DURATION_S)]
    duration: u64,
    /// Sleep after each request, in ms (0: full load). Ignored with --rate.
    #[arg(long, default_value_t = config::DEFAULT_THINK_MS)]
    think_ms: u64,
    /// Bytes in each written value.
    #[arg(long, default_value_t = config::DEFAULT_VALUE_SIZE)]
    value_size: usize,
    /// Seed of the request mix (default: from the clock; written to summary.json).
    #[arg(long)]
    seed: Option<u64>,
    /// Output directory. The default is a fresh directory under target/harness/, so a run
    /// never overwrites the committed results/ by accident; `make results` names results/.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace the files of an earlier run in --out (otherwise the run is refused).
    #[arg(long)]
    overwrite: bool,
    /// No progress line and no summary on stdout.
    #[arg(long)]
    quiet: bool,
    /// Test this existing master instead of starting a cluster.
    #[arg(long, value_name = "ADDR")]
    master: Option<String>,
    /// The existing cluster's backup master (with --master).
    #[arg(long, value_name = "ADDR")]
    backup: Option<String>,
    /// Do not start a backup master, even if dsm-backup is built.
    #[arg(long)]
    no_backup: bool,
    /// Open loop: requests per second over all clients, on a fixed schedule; latency is
    /// measured from each request's scheduled time.
    #[arg(long, value_name = "N")]
    rate: Option<f64>,
    /// Kill the primary (SIGKILL) S seconds after the warm-up.
    #[arg(long, value_name = "S")]
    kill_primary_at: Option<f64>,
    /// Kill slave s1 (SIGKILL) S seconds after the warm-up.
    #[arg(long, value_name = "S")]
    kill_slave_at: Option<f64>,
    /// Start the killed primary again S seconds after the warm-up: it fails back from the
    /// backup. The takeover and the failback are marked in events.csv and the plot.
    #[arg(long, value_name = "S")]
    restart_primary_at: Option<f64>,
    /// A request's deadline, in ms; a later reply is an error.
    #[arg(long, default_value_t = config::DEFAULT_REQUEST_TIMEOUT_MS)]
    request_timeout_ms: u64,
    /// --fsync for the master the harness starts (always|everysec|never).
    #[arg(long)]
    fsync: Option<String>,
    /// --read-from for both masters the harness starts: master (the default: the master's
    /// committed copy under read leases) or slaves (a slave in sync, with read repair).
    #[arg(long, value_name = "master|slaves")]
    read_from: Option<ReadFrom>,
    /// Copy the servers' output to stderr, prefixed by their names.
    #[arg(long)]
    echo_servers: bool,
    /// Copy the servers' output into OUT/logs/ at the end of the run.
    #[arg(long)]
    keep_logs: bool,
    /// One run per slave count, e.g. 1,3,5,7,9; writes OUT/by_slave_count.csv.
    #[arg(long, value_name = "LIST")]
    sweep_slaves: Option<String>,
    /// One run per client count, e.g. 1,2,5,10,20,50; writes OUT/by_client_count.csv.
    #[arg(long, value_name = "LIST")]
    sweep_clients: Option<String>,
}

/// A new directory name under `target/harness/` for a run given no `--out`.
fn fresh_out_dir() -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let dir = PathBuf::from("target").join("harness").join(format!("run-{secs}-{}", std::process::id()));
    eprintln!("no --out given: writing into {}", dir.display());
    dir
}

impl RunArgs {
    fn config(&self) -> RunConfig {
        RunConfig {
            clients: self.clients,
            slaves: self.slaves,
            conns_per_client: self.conns_per_client,
            keys: self.keys,
            write_pct: self.write_pct,
            warmup_s: self.warmup,
            duration_s: self.duration,
            think: Duration::from_millis(self.think_ms),
            value_size: self.value_size,
            seed: self.seed,
            out: self.out.clone().unwrap_or_else(fresh_out_dir),
            overwrite: self.overwrite,
            quiet: self.quiet,
            master: self.master.clone(),
            backup: self.backup.clone(),
            no_backup: self.no_backup,
            rate: self.rate,
            kill_primary_at: self.kill_primary_at,
            kill_slave_at: self.kill_slave_at,
            restart_primary_at: self.restart_primary_at,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            fsync: self.fsync.clone(),
            read_from: self.read_from,
            echo: self.echo_servers,
            keep_logs: self.keep_logs,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = simplelog::TermLogger::init(
        log::LevelFilter::Warn,
        simplelog::Config::default(),
        simplelog::TerminalMode::Stderr,
        simplelog::ColorChoice::Never,
    );
    signal::install();
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) if signal::interrupted() => {
            eprintln!("dsm-harness: interrupted; every process it started was stopped; the interrupted run wrote no files");
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Err(e) => {
            eprintln!("dsm-harness: {e}");
            ExitCode::FAILURE
        }
    }
}

fn execute(cli: Cli) -> dsm::Result<()> {
    if let Some(Command::Plot { out }) = cli.command {
        for (path, outcome) in dsm_testkit::plot::plot_all(&out)? {
            println!("{}: {outcome}", path.display());
        }
        return Ok(());
    }
    let args = cli.run;
    let cfg = args.config();
    cfg.validate()?;
    let sweeps = [
        (SweepAxis::Slaves, "--sweep-slaves", &args.sweep_slaves),
        (SweepAxis::Clients, "--sweep-clients", &args.sweep_clients),
    ];
    let mut swept = false;
    for (axis, flag, list) in sweeps {
        if let Some(list) = list {
            let points = parse_list(flag, list)?;
            harness::sweep(&cfg, axis, &points)?;
            swept = true;
        }
    }
    if !swept {
        let report = harness::run(&cfg)?;
        if !cfg.quiet {
            print!("{}", summary_text(&report));
        }
    }
    Ok(())
}
