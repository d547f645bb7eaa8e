//! The harness end to end: against a real cluster it starts itself (reading from the master or
//! from the slaves), against a master that is not there, across a kill of the primary, and the
//! plots drawn from given CSVs.
//!
//! Every run binds ephemeral ports and writes into a temporary directory; the harness waits
//! for the slaves to register (never a fixed sleep) and kills its cluster when it returns.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

use dsm::master::ReadFrom;
use dsm_testkit::harness::config::RunConfig;
use dsm_testkit::harness::metrics::Cell;
use dsm_testkit::harness::metrics::BASE_COLUMNS;
use dsm_testkit::harness::{self, RUN_FILES};
use dsm_testkit::plot::{self, Table, PLOT_SIZE};

/// A short run: 1 s of warm-up, 3 measured seconds, two clients with a 1 ms think time (enough
/// load to measure, little enough to leave the cluster's heartbeats room on two busy cores).
fn short_run(out: &Path) -> RunConfig {
    RunConfig {
        clients: 2,
        conns_per_client: 2,
        slaves: 3,
        warmup_s: 1,
        duration_s: 3,
        think: Duration::from_millis(1),
        seed: Some(7),
        out: out.to_path_buf(),
        quiet: true,
        no_backup: true,
        ..RunConfig::default()
    }
}

fn int(t: &Table, col: &str) -> Vec<u64> {
    t.numbers(col)
        .unwrap()
        .into_iter()
        .map(|v| v.unwrap_or_else(|| panic!("{col} has an empty cell")) as u64)
        .collect()
}

fn header(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap();
    text.lines().next().unwrap().split(',').map(str::to_string).collect()
}

/// The requests the master sent to its slaves in the measured window (`slaves.csv`).
fn slave_requests(out: &Path) -> u64 {
    int(&Table::read(&out.join("slaves.csv")).unwrap(), "requests").iter().sum()
}

/// The most slave requests a run can cause without any read reaching a slave: every write goes
/// to each of the `slaves` (at most), plus half the reads for the requests the window's edges
/// cut differently in the clients' counts and the master's. A run that reads from the slaves
/// sends each read that finds a committed value to one slave, so it is above this.
fn without_slave_reads(report: &harness::RunReport, slaves: u64) -> u64 {
    slaves * report.total.writes.count + report.total.reads.count / 2
}

/// Every row: total = success + error = reads + writes.
fn assert_counts_add_up(t: &Table) {
    let (total, ok, err) = (int(t, "total_requests"), int(t, "success_count"), int(t, "error_count"));
    let (reads, writes) = (int(t, "read_count"), int(t, "write_count"));
    for i in 0..t.len() {
        assert_eq!(total[i], ok[i] + err[i], "row {i}: total = success + error");
        assert_eq!(total[i], reads[i] + writes[i], "row {i}: total = reads + writes");
    }
}

#[test]
fn a_run_against_a_real_cluster_writes_honest_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let report = harness::run(&short_run(&out)).unwrap();
    for f in RUN_FILES {
        assert!(out.join(f).exists(), "{f} written");
    }

    // The documented columns, the original ones first.
    let cols = header(&out.join("metrics.csv"));
    assert_eq!(&cols[..BASE_COLUMNS.len()], &BASE_COLUMNS);
    for c in [
        "elapsed_s",
        "read_p50_us",
        "read_p95_us",
        "read_p99_us",
        "read_p999_us",
        "write_p50_us",
        "write_p95_us",
        "write_p99_us",
        "write_p999_us",
        "slave_requests.s1",
        "slave_requests.s2",
        "slave_requests.s3",
    ] {
        assert!(cols.iter().any(|h| h == c), "{c} in {cols:?}");
    }

    // One row per measured second, none from the warm-up.
    let t = Table::read(&out.join("metrics.csv")).unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(int(&t, "elapsed_s"), vec![0, 1, 2]);
    let started = report.get("started_at").cloned();
    let Some(harness::metrics::Cell::Float(started)) = started else { panic!("started_at missing") };
    let first_ts = t.numbers("timestamp").unwrap()[0].unwrap();
    assert!((first_ts - (started + 1.0)).abs() < 0.01, "the first row starts after the 1 s warm-up");
    assert_counts_add_up(&t);
    assert_eq!(int(&t, "slave_count"), vec![3, 3, 3], "registered slaves");
    assert_eq!(int(&t, "client_count"), vec![2, 2, 2]);
    let ok: u64 = int(&t, "success_count").iter().sum();
    assert!(ok > 0, "a healthy cluster answers");

    // The rows add up to the summary.
    let total: u64 = int(&t, "total_requests").iter().sum();
    assert_eq!(report.total.total(), total);
    assert_eq!(report.total.success(), ok);

    // metrics.json has the same fields, one object per row.
    let json = fs::read_to_string(out.join("metrics.json")).unwrap();
    assert_eq!(json.matches("\"timestamp\": ").count(), 3);
    for c in &cols {
        assert!(json.contains(&format!("\"{c}\": ")), "{c} in metrics.json");
    }
    let summary = fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(summary.contains("\"throughput_rps\": "), "{summary}");
    assert!(summary.contains("\"read_from\": \"master\""), "the default mode, recorded: {summary}");

    // Per-slave counts, measured by the master, over the measured window only.
    let s = Table::read(&out.join("slaves.csv")).unwrap();
    assert_eq!(s.text("slave_id").unwrap(), vec!["s1".to_string(), "s2".into(), "s3".into()]);
    let served: u64 = int(&s, "requests").iter().sum();
    let per_second: u64 = ["s1", "s2", "s3"]
        .iter()
        .map(|id| int(&t, &format!("slave_requests.{id}")).iter().sum::<u64>())
        .sum();
    assert_eq!(served, per_second, "totals are the sum of the rows");
    assert!(served > 0);
    // Reads from the master's copy: only the writes reach the slaves.
    let most = without_slave_reads(&report, 3);
    assert!(served <= most, "{served} slave requests, at most {most} without reads from slaves");

    // A second run into the same directory is refused, not mixed in.
    let err = harness::run(&short_run(&out)).unwrap_err().to_string();
    assert!(err.contains("--overwrite"), "{err}");
}

#[test]
fn reads_from_slaves_reach_the_slaves_and_the_mode_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    // Ten keys, all written during the warm-up: a read of a key never written is answered
    // NOT_FOUND by the master whatever the mode, so few keys make nearly every read a slave's.
    let cfg =
        RunConfig { read_from: Some(ReadFrom::Slaves), keys: 10, duration_s: 2, ..short_run(dir.path()) };
    let report = harness::run(&cfg).unwrap();
    assert!(matches!(report.get("read_from"), Some(Cell::Text(m)) if m == "slaves"));
    let summary = fs::read_to_string(dir.path().join("summary.json")).unwrap();
    assert!(summary.contains("\"read_from\": \"slaves\""), "{summary}");
    assert!(report.total.reads.success > 0, "the reads were answered");
    let served = slave_requests(dir.path());
    let least = without_slave_reads(&report, 3);
    assert!(
        served > least,
        "{served} slave requests for {} reads and {} writes: the reads did not reach the slaves",
        report.total.reads.count,
        report.total.writes.count
    );
}

#[test]
fn a_master_that_is_not_there_gives_errors_never_successes() {
    let dir = tempfile::tempdir().unwrap();
    // Bind then drop a listener so the port is very likely closed.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let cfg = RunConfig { master: Some(addr.to_string()), duration_s: 2, ..short_run(dir.path()) };
    let report = harness::run(&cfg).unwrap();
    let t = Table::read(&dir.path().join("metrics.csv")).unwrap();
    assert_eq!(t.len(), 2);
    assert_counts_add_up(&t);
    assert_eq!(int(&t, "success_count"), vec![0, 0]);
    assert!(int(&t, "error_count").iter().all(|&e| e > 0));
    assert!(t.numbers("read_latency_us").unwrap().iter().all(Option::is_none));
    assert!(t.numbers("write_p99_us").unwrap().iter().all(Option::is_none));
    assert!(t.numbers("slave_count").unwrap().iter().all(Option::is_none));
    assert_eq!(report.total.success(), 0);
    assert!(report.slaves.is_empty());
    assert_eq!(report.get("read_from"), Some(&Cell::Missing), "a given cluster's read mode is not known");
}

#[test]
fn a_master_that_never_answers_gives_deadline_errors_every_second() {
    let dir = tempfile::tempdir().unwrap();
    // A listener that is never accepted from: connections complete in the kernel's backlog,
    // requests are sent, and no reply ever comes.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = RunConfig {
        master: Some(black_hole.local_addr().unwrap().to_string()),
        request_timeout: Duration::from_millis(300),
        duration_s: 2,
        ..short_run(dir.path())
    };
    let report = harness::run(&cfg).unwrap();
    let t = Table::read(&dir.path().join("metrics.csv")).unwrap();
    assert_counts_add_up(&t);
    assert_eq!(int(&t, "success_count"), vec![0, 0]);
    for (i, e) in int(&t, "error_count").into_iter().enumerate() {
        assert!(e > 0, "second {i}: a hung request shows as an error within its second");
    }
    let deadline = match report.get("errors.deadline") {
        Some(harness::metrics::Cell::Int(n)) => *n,
        other => panic!("errors.deadline: {other:?}"),
    };
    assert_eq!(deadline, report.total.errors(), "every error is a deadline error");
    drop(black_hole);
}

#[test]
fn killing_the_primary_without_a_backup_ends_the_successes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RunConfig { kill_primary_at: Some(1.0), duration_s: 4, ..short_run(dir.path()) };
    let report = harness::run(&cfg).unwrap();
    assert_eq!(report.events.len(), 1);
    assert!(report.events[0].what.contains("killed primary"));
    let at = report.events[0].at_s;
    assert!(at >= 1.0);
    let t = Table::read(&dir.path().join("metrics.csv")).unwrap();
    assert_counts_add_up(&t);
    let ok = int(&t, "success_count");
    assert!(ok[0] > 0, "before the kill");
    // A second that starts a full second after the kill cannot hold a success: the only master
    // is dead (the second of grace covers a reply read from a socket buffer after the kill).
    let after: Vec<usize> = int(&t, "elapsed_s")
        .into_iter()
        .enumerate()
        .filter(|&(_, s)| s as f64 >= at + 1.0)
        .map(|(i, _)| i)
        .collect();
    assert!(!after.is_empty(), "the kill at {at} s left no second after it");
    for i in after {
        assert_eq!(ok[i], 0, "second {i}: nothing can succeed once the only master is dead");
        assert!(int(&t, "error_count")[i] > 0);
    }
    let e = Table::read(&dir.path().join("events.csv")).unwrap();
    assert_eq!(e.len(), 1);
}

#[test]
fn a_failover_run_marks_the_kill_the_takeover_the_restart_and_the_failback() {
    // dsm-backup is a binary of this package, built with the tests.
    assert!(dsm_testkit::cluster::Cluster::has_backup_binary(), "dsm-backup is not built");
    let dir = tempfile::tempdir().unwrap();
    let cfg = RunConfig {
        kill_primary_at: Some(1.0),
        restart_primary_at: Some(4.0),
        duration_s: 12,
        no_backup: false,
        ..short_run(dir.path())
    };
    let report = harness::run(&cfg).unwrap();
    let whats: Vec<&str> = report.events.iter().map(|e| e.what.as_str()).collect();
    let position = |needle: &str| {
        whats.iter().position(|w| w.contains(needle)).unwrap_or_else(|| panic!("no '{needle}' in {whats:?}"))
    };
    // In the order they happened.
    let (kill, takeover, restart, back) = (
        position("killed primary"),
        position("took over"),
        position("restarted primary"),
        position("took back"),
    );
    assert!(kill < takeover && takeover < restart && restart < back, "{whats:?}");
    let e = Table::read(&dir.path().join("events.csv")).unwrap();
    assert_eq!(e.len(), whats.len());
    let t = Table::read(&dir.path().join("metrics.csv")).unwrap();
    assert_counts_add_up(&t);
    assert!(int(&t, "success_count").last().copied().unwrap_or(0) > 0, "serving again at the end");
    // The counters follow the serving master: after the failback, the primary's slaves.
    assert_eq!(int(&t, "slave_count").last().copied(), Some(3), "slave_count after the failback");
}

#[test]
fn open_loop_sends_on_its_schedule_and_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let rate = 200.0;
    let cfg = RunConfig { rate: Some(rate), duration_s: 2, ..short_run(dir.path()) };
    let report = harness::run(&cfg).unwrap();
    let t = Table::read(&dir.path().join("metrics.csv")).unwrap();
    assert_counts_add_up(&t);
    // Requests are due at fixed times, so however fast the cluster answers, the run sends at
    // most rate x (warm-up + duration), plus one per client for the boundaries. (Per second the
    // count may exceed the rate after a stall, when late requests catch up: that is the point.)
    let sent: u64 = int(&t, "total_requests").iter().sum();
    let scheduled = rate * (cfg.warmup_s + cfg.duration_s) as f64 + cfg.clients as f64;
    assert!(sent as f64 <= scheduled, "{sent} requests, {scheduled} scheduled");
    assert!(report.total.success() > 0);
    assert!(matches!(report.get("mode"), Some(harness::metrics::Cell::Text(m)) if m == "open"));
}

const BY_SLAVES: &str = "\
slave_count,client_count,duration_s,throughput_rps,error_rps,read_count,read_error_count,write_count,write_error_count,read_latency_us,read_p50_us,read_p99_us,write_latency_us,write_p50_us,write_p99_us
1,5,20,29000.5,0,406010,0,174000,0,168.5,149,478,177.7,157,480
3,5,20,20748,0,290472,0,124488,0,221.3,198,602,283.5,258,720
5,5,20,17849.3,1.5,249910,20,107100,10,264.6,253,626,312.5,297,770
";

const BY_CLIENTS: &str = "\
slave_count,client_count,duration_s,throughput_rps,error_rps,read_count,read_error_count,write_count,write_error_count,read_latency_us,read_p50_us,read_p99_us,write_latency_us,write_p50_us,write_p99_us
3,1,20,14000,0,196000,0,84000,0,60,50,110,90,80,200
3,2,20,18000,0,252000,0,108000,0,90,80,200,130,120,300
3,50,20,25000,0,,,500000,0,,,,900,700,6000
";

const SLAVES: &str = "\
slave_id,requests,keys,requests_pct
s1,380,279,21.0
s2,378,283,21.0
s3,336,260,18.6
";

const FAILOVER: &str = "\
elapsed_s,throughput_rps,error_count,read_count,read_error_count,write_count,write_error_count
0,480,0,336,0,144,0
1,485,0,340,0,145,0
2,240,70,200,40,110,30
3,0,140,98,98,42,42
4,310,12,225,8,97,4
5,470,0,329,0,141,0
";

const EVENTS: &str = "\
at_s,event
2.03,killed primary 127.0.0.1:40000
3.20,backup 127.0.0.1:40001 took over
4.10,restarted primary 127.0.0.1:40000
4.90,primary 127.0.0.1:40000 took back
";

/// `csv` with a `read_from` column of `mode` added to every row, as a sweep of this harness
/// writes it.
fn with_read_from(csv: &str, mode: &str) -> String {
    let mut lines = csv.lines();
    let mut out = format!("{},read_from\n", lines.next().unwrap());
    for line in lines {
        out.push_str(&format!("{line},{mode}\n"));
    }
    out
}

/// The width and height in a PNG's IHDR chunk, after checking the signature.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = fs::read(path).unwrap();
    assert!(bytes.len() > 10_000, "{} is {} bytes", path.display(), bytes.len());
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is a PNG", path.display());
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    (be(16), be(20))
}

#[test]
fn plots_from_given_csvs_are_valid_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir_all(d.join("load_distribution")).unwrap();
    fs::create_dir_all(d.join("failover")).unwrap();
    fs::write(d.join("by_slave_count.csv"), BY_SLAVES).unwrap();
    fs::write(d.join("by_client_count.csv"), BY_CLIENTS).unwrap();
    fs::write(d.join("load_distribution/slaves.csv"), SLAVES).unwrap();
    fs::write(d.join("failover/metrics.csv"), FAILOVER).unwrap();
    fs::write(d.join("failover/events.csv"), EVENTS).unwrap();

    let drawn = plot::plot_all(d).unwrap();
    let mut expected: HashSet<String> = HashSet::new();
    for (dir, axis) in [("plots_by_slave_count", "slave_count"), ("plots_by_client_count", "client_count")] {
        for m in ["throughput_rps", "read_latency_us", "write_latency_us"] {
            expected.insert(format!("{dir}/{m}_vs_{axis}.png"));
        }
    }
    expected.insert("load_distribution.png".into());
    expected.insert("failover_timeline.png".into());
    for name in &expected {
        let p = d.join(name);
        assert!(drawn.iter().any(|(q, how)| q == &p && how.starts_with("drawn")), "{name} drawn: {drawn:?}");
        assert_eq!(png_size(&p), PLOT_SIZE, "{name}");
    }
}

#[test]
fn the_read_modes_are_compared_by_client_count_when_both_sweeps_record_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let slaves_dir = d.join(plot::READ_FROM_SLAVES_DIR);
    fs::create_dir_all(&slaves_dir).unwrap();
    // A master-mode sweep measured before --read-from existed records no mode: its own plots
    // are drawn, the comparison is not.
    fs::write(d.join("by_client_count.csv"), BY_CLIENTS).unwrap();
    fs::write(slaves_dir.join("by_client_count.csv"), with_read_from(BY_CLIENTS, "slaves")).unwrap();
    let drawn = plot::plot_all(d).unwrap();
    let how = |name: &str| {
        let p = d.join(name);
        drawn.iter().find(|(q, _)| q == &p).map(|(_, how)| how.clone()).unwrap_or_default()
    };
    for m in ["throughput_rps", "read_latency_us", "write_latency_us"] {
        let name = format!("{}/plots_by_client_count/{m}_vs_client_count.png", plot::READ_FROM_SLAVES_DIR);
        assert!(how(&name).starts_with("drawn"), "{name}: {drawn:?}");
        assert_eq!(png_size(&d.join(&name)), PLOT_SIZE, "{name}");
    }
    let skipped = how(plot::READ_FROM_PLOTS_DIR);
    assert!(skipped.starts_with("skipped") && skipped.contains("read_from"), "{drawn:?}");
    assert!(!d.join(plot::READ_FROM_PLOTS_DIR).exists());

    // Both record their mode: one chart per measure, both modes on it.
    fs::write(d.join("by_client_count.csv"), with_read_from(BY_CLIENTS, "master")).unwrap();
    let drawn = plot::plot_all(d).unwrap();
    for m in ["throughput_rps", "read_latency_us", "write_latency_us"] {
        let name = format!("{}/{m}_vs_client_count.png", plot::READ_FROM_PLOTS_DIR);
        let p = d.join(&name);
        assert!(drawn.iter().any(|(q, how)| q == &p && how.starts_with("drawn")), "{name}: {drawn:?}");
        assert_eq!(png_size(&p), PLOT_SIZE, "{name}");
    }

    // Two sweeps of the same mode are not a comparison.
    let master = d.join("by_client_count.csv");
    let err = plot::plot_read_from(&[&master, &master], &d.join("same")).unwrap_err().to_string();
    assert!(err.contains("same read mode"), "{err}");
}

#[test]
fn plot_all_skips_what_has_no_data_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let drawn = plot::plot_all(dir.path()).unwrap();
    assert_eq!(drawn.len(), 6, "{drawn:?}");
    assert!(drawn.iter().all(|(_, how)| how.starts_with("skipped")));
}

#[test]
fn the_cli_names_a_bad_flag_and_plots_on_request() {
    let exe = env!("CARGO_BIN_EXE_dsm-harness");
    let dir = tempfile::tempdir().unwrap();
    for (args, flag) in [
        (vec!["--clients", "0"], "--clients"),
        (vec!["--sweep-slaves", "1,x"], "--sweep-slaves"),
        (vec!["--kill-primary-at", "5", "--master", "127.0.0.1:1"], "--kill-primary-at"),
        (vec!["--read-from", "slaves", "--master", "127.0.0.1:1"], "--read-from"),
        (vec!["--read-from", "backup"], "--read-from"),
    ] {
        let out = std::process::Command::new(exe)
            .args(&args)
            .args(["--out", &dir.path().display().to_string()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
    fs::create_dir_all(dir.path().join("load_distribution")).unwrap();
    fs::write(dir.path().join("load_distribution/slaves.csv"), SLAVES).unwrap();
    let out = std::process::Command::new(exe)
        .args(["plot", "--out", &dir.path().display().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("load_distribution.png: drawn"), "{stdout}");
    assert!(stdout.contains("failover_timeline.png: skipped"), "{stdout}");
    assert_eq!(png_size(&dir.path().join("load_distribution.png")), PLOT_SIZE);
}

#[test]
fn a_run_without_out_writes_under_target_not_into_results() {
    let exe = env!("CARGO_BIN_EXE_dsm-harness");
    let cwd = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(exe)
        .current_dir(cwd.path())
        .args([
            "--slaves",
            "1",
            "--clients",
            "1",
            "--warmup",
            "0",
            "--duration",
            "1",
            "--no-backup",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!cwd.path().join("results").exists(), "wrote into results/");
    let runs: Vec<_> = fs::read_dir(cwd.path().join("target/harness")).unwrap().flatten().collect();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].path().join("metrics.csv").exists());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no --out given: writing into target/harness/run-"));
}
