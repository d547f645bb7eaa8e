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

/// What the runs add up to.
#[derive(Default)]
struct Totals {
    issued: u64,
    acked_writes: u64,
    answered_reads: u64,
    unknown_writes: u64,
    faults: u64,
    violations: usize,
    lost_writes: usize,
    node_bugs: usize,
}

impl Totals {
    fn add(&mut self, report: &nemesis::Report) {
        let c = &report.counts;
        self.issued += c.issued;
        self.acked_writes += c.acked_writes;
        self.answered_reads += c.answered_reads;
        self.unknown_writes += c.unknown_writes;
        self.faults += report.fault_total();
        self.violations += report.verdict.violations.len();
        self.lost_writes += report.verdict.lost_writes.len();
        self.node_bugs += report.verdict.node_bugs.len();
    }
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
    let mut totals = Totals::default();
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
                totals.add(&report);
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
         {} faults; {} violations, {} lost writes, {} bug lines in node output{}",
        args.runs,
        args.read_from,
        totals.issued,
        totals.acked_writes,
        totals.answered_reads,
        totals.unknown_writes,
        totals.faults,
        totals.violations,
        totals.lost_writes,
        totals.node_bugs,
        if failed_seeds.is_empty() { String::new() } else { format!(" (failed seeds: {failed_seeds:?})") }
    );
    if failed_seeds.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
