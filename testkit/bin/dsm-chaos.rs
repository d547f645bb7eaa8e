//! `dsm-chaos`: seeded nemesis runs against a real cluster; exits non-zero on any violation.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dsm::logging::{self, Level};
use dsm::master::ReadFrom;
use dsm_testkit::nemesis::{self, Config};

/// Runs a dsm cluster (primary, backup, slaves) under concurrent clients while a nemesis kills,
/// pauses and restarts its processes on a seeded schedule, then checks every history for
/// linearizability and lost acknowledged writes. Exit code 1: a violation; 2: the harness
/// itself failed (a node would not start, the cluster never recovered).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// How many runs; run i uses seed SEED+i.
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Seconds of workload and faults per run.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// The first run's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Slaves per cluster.
    #[arg(long, default_value_t = 3)]
    slaves: usize,
    /// Client threads.
    #[arg(long, default_value_t = 5)]
    clients: usize,
    /// Only these fault kinds (repeatable), e.g. kill-serving-master, pause-slave.
    #[arg(long = "fault")]
    faults: Vec<String>,
    /// The backup streams the primary's log over TCP instead of reading its file.
    #[arg(long)]
    tcp_follow: bool,
    /// Who answers reads, on both masters: `master` (its committed copy, under read leases) or
    /// `slaves` (a slave in sync, checked by the master, with read repair).
    #[arg(long, value_name = "master|slaves", default_value_t = ReadFrom::Master)]
    read_from: ReadFrom,
    /// Keys of 100 bytes written before the faults start (at least 100000 for a store where
    /// kills land during resyncs and compactions); a sample is read back at the end.
    #[arg(long, default_value_t = 0)]
    preload: usize,
    /// Keep every run's node logs in `DIR/run-<seed>` (by default only failed runs keep theirs,
    /// in the temporary directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the dsm binaries are (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Copy the nodes' output to stderr.
    #[arg(long)]
    echo: bool,
    /// Log verbosity.
    #[arg(long, value_enum, default_value_t = Level::Info)]
    log_level: Level,
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(args.log_level);
    let mut faults = Vec::new();
    for name in &args.faults {
        match nemesis::parse_fault_kind(name) {
            Ok(kind) => faults.push(kind),
            Err(e) => {
                eprintln!("error: --fault: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let base = Config::default();
    let mut totals = (0u64, 0u64, 0u64, 0u64, 0u64, 0usize, 0usize);
    let mut failed_seeds = Vec::new();
    for i in 0..args.runs {
        let config = Config {
            seed: args.seed + i,
            duration: Duration::from_secs(args.duration),
            slaves: args.slaves,
            clients: args.clients,
            faults: faults.clone(),
            tcp_follow: args.tcp_follow,
            read_from: args.read_from,
            bin_dir: args.bin_dir.clone().unwrap_or_else(|| base.bin_dir.clone()),
            // The nodes run in their own directories: their paths must not be relative.
            out: args.out.as_deref().map(std::path::absolute).transpose().unwrap_or(None),
            echo: args.echo,
            preload: args.preload,
            ..base.clone()
        };
        match nemesis::run(&config) {
            Ok(report) => {
                println!("{report}");
                let c = &report.counts;
                totals.0 += c.issued;
                totals.1 += c.acked_writes;
                totals.2 += c.unknown_writes;
                totals.3 += report.fault_total();
                totals.4 += c.answered_reads;
                totals.5 += report.verdict.violations.len();
                totals.6 += report.verdict.lost_writes.len();
                if !report.is_ok() {
                    failed_seeds.push(config.seed);
                }
            }
            Err(e) => {
                eprintln!("error: run with seed {} could not be carried out: {e}", config.seed);
                return ExitCode::from(2);
            }
        }
    }
    println!(
        "total over {} runs (reads from {}): {} operations, {} writes acknowledged, {} reads answered, {} unknown, \
         {} faults; {} violations, {} lost writes{}",
        args.runs,
        args.read_from,
        totals.0,
        totals.1,
        totals.4,
        totals.2,
        totals.3,
        totals.5,
        totals.6,
        if failed_seeds.is_empty() { String::new() } else { format!(" (failed seeds: {failed_seeds:?})") }
    );
    if failed_seeds.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
