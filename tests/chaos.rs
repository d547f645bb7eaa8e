//! A short nemesis run inside `make test`: a real cluster under concurrent clients while
//! processes are killed, paused and restarted on a fixed seed's schedule; the history must be
//! linearizable with no acknowledged write lost. `make chaos` runs the long version.

use std::path::PathBuf;
use std::time::Duration;

use dsm_testkit::nemesis::{self, Action, Config, FaultKind, Schedule, Target};

/// The search for the run's seed starts here; the seed used is the first from here whose plan
/// starts by killing the serving master and pausing some node, so it is fixed for a given
/// schedule algorithm.
const FIRST_SEED: u64 = 1;

/// How many first steps of the plan must show up in the run: they always fit (each takes at
/// most 3 s plus a restart).
const PLANNED_STEPS: usize = 3;

#[test]
fn short_nemesis_run_is_linearizable_and_loses_nothing() {
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_dsm-master")).parent().unwrap().to_path_buf();
    let mut config = Config {
        duration: Duration::from_secs(16),
        slaves: 3,
        clients: 4,
        keys_at_once: 3,
        ops_per_key: 60,
        fault_gap: (Duration::from_millis(800), Duration::from_millis(1500)),
        fault_length: (Duration::from_millis(500), Duration::from_millis(1500)),
        bin_dir,
        ..Config::default()
    };
    let plan = |seed| Schedule::new(seed, &config).take(PLANNED_STEPS).map(|s| s.kind).collect::<Vec<_>>();
    let wanted = |kinds: &[FaultKind]| {
        kinds.iter().any(|k| k.target == Target::Serving && k.action == Action::Kill)
            && kinds.iter().any(|k| k.action == Action::Pause)
    };
    let seed = (FIRST_SEED..).find(|&s| wanted(&plan(s))).expect("some seed plans both");
    let planned = plan(seed);
    config.seed = seed;
    let report = nemesis::run(&config).expect("the nemesis run could not be carried out");
    eprintln!("{report}");
    assert!(report.is_ok(), "{report}");
    for kind in &planned {
        assert!(
            report.faults.get(kind).copied().unwrap_or(0) >= 1,
            "{kind} planned but not applied: {report}"
        );
    }
    assert!(report.counts.acked_writes >= 100, "too little work done: {report}");
    assert!(report.counts.answered_reads >= 100, "too little work done: {report}");
}
