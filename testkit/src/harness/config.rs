//! What one harness run does: the load, the cluster, the faults and where the files go, with
//! the original harness's defaults, and the checks that reject a configuration before anything
//! is started.

use std::path::PathBuf;
use std::time::Duration;

use dsm::master::ReadFrom;
use dsm::{Error, Result};

/// The original harness's client count.
pub const DEFAULT_CLIENTS: usize = 5;
/// The original harness's slave count.
pub const DEFAULT_SLAVES: usize = 3;
/// The original harness's connections per client.
pub const DEFAULT_CONNS_PER_CLIENT: usize = 10;
/// The original harness's key space (`key0` .. `key999`).
pub const DEFAULT_KEYS: u64 = 1000;
/// The original harness's share of writes, in percent.
pub const DEFAULT_WRITE_PCT: u8 = 30;
/// The original harness's warm-up, in seconds.
pub const DEFAULT_WARMUP_S: u64 = 5;
/// The original harness's measured duration, in seconds.
pub const DEFAULT_DURATION_S: u64 = 30;
/// The original harness's sleep after each request, in milliseconds.
pub const DEFAULT_THINK_MS: u64 = 10;
/// Bytes in each written value.
pub const DEFAULT_VALUE_SIZE: usize = 16;
/// How long a request may take before it counts as a `deadline` error, in milliseconds.
/// Shorter than the client library's default so a stall is visible within a second or two.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 2000;
/// The largest `--value-size`: the protocol's longest value (see `dsm::limits`).
pub const MAX_VALUE_SIZE: usize = dsm::limits::MAX_VALUE;
/// The most client threads (times connections) one run may open, so a typo cannot exhaust the
/// machine's file descriptors.
pub const MAX_CONNECTIONS: usize = 20_000;

/// The `--fsync` policies of `dsm-master` and `dsm-backup`.
pub const FSYNC_POLICIES: [&str; 3] = ["always", "everysec", "never"];

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Client threads; each sends one request at a time over its pool of connections.
    pub clients: usize,
    /// Slaves to start (ignored with `master`).
    pub slaves: usize,
    /// Connections per client, used round-robin.
    pub conns_per_client: usize,
    /// Keys `key0` .. `key{keys-1}`, chosen uniformly.
    pub keys: u64,
    /// Share of writes, in percent; the rest are reads.
    pub write_pct: u8,
    /// Seconds of load before the measured window; never written to the results.
    pub warmup_s: u64,
    /// Measured seconds.
    pub duration_s: u64,
    /// Sleep after each request in closed-loop mode (zero: full load).
    pub think: Duration,
    /// Bytes in each written value.
    pub value_size: usize,
    /// Seed of the request mix; `None` picks one from the clock (it is written to the summary,
    /// so the run can be repeated).
    pub seed: Option<u64>,
    /// The directory for `metrics.csv`, `metrics.json`, `summary.json`, `slaves.csv` and
    /// `events.csv`.
    pub out: PathBuf,
    /// Replace the files of an earlier run in `out` (otherwise such a run is refused).
    pub overwrite: bool,
    /// No progress line.
    pub quiet: bool,
    /// Test this existing master instead of starting a cluster.
    pub master: Option<String>,
    /// The existing cluster's backup master.
    pub backup: Option<String>,
    /// Do not start a backup master even if `dsm-backup` is built.
    pub no_backup: bool,
    /// Open loop: requests per second over all clients, on a fixed schedule.
    pub rate: Option<f64>,
    /// Kill the primary (SIGKILL) this many seconds after the end of the warm-up.
    pub kill_primary_at: Option<f64>,
    /// Kill slave `s1` (SIGKILL) this many seconds after the end of the warm-up.
    pub kill_slave_at: Option<f64>,
    /// Start the killed primary again this many seconds after the end of the warm-up (it then
    /// fails back from the backup).
    pub restart_primary_at: Option<f64>,
    /// A request's deadline.
    pub request_timeout: Duration,
    /// `--fsync` for the master we start, if not its default.
    pub fsync: Option<String>,
    /// `--read-from` for both masters we start; `None` is the masters' default, `master`. An
    /// existing cluster (`master`) reads as its masters were started, which the harness cannot
    /// set or see.
    pub read_from: Option<ReadFrom>,
    /// Copy the servers' output to stderr.
    pub echo: bool,
    /// Copy the servers' output into `OUT/logs/` at the end of the run.
    pub keep_logs: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            clients: DEFAULT_CLIENTS,
            slaves: DEFAULT_SLAVES,
            conns_per_client: DEFAULT_CONNS_PER_CLIENT,
            keys: DEFAULT_KEYS,
            write_pct: DEFAULT_WRITE_PCT,
            warmup_s: DEFAULT_WARMUP_S,
            duration_s: DEFAULT_DURATION_S,
            think: Duration::from_millis(DEFAULT_THINK_MS),
            value_size: DEFAULT_VALUE_SIZE,
            seed: None,
            out: PathBuf::from("results"),
            overwrite: false,
            quiet: false,
            master: None,
            backup: None,
            no_backup: false,
            rate: None,
            kill_primary_at: None,
            kill_slave_at: None,
            restart_primary_at: None,
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            fsync: None,
            read_from: None,
            echo: false,
            keep_logs: false,
        }
    }
}

impl RunConfig {
    /// True when the harness starts (and owns) the cluster.
    pub fn owns_cluster(&self) -> bool {
        self.master.is_none()
    }

    /// Who answers reads in the cluster the harness starts; `None` for an existing cluster,
    /// whose mode the harness does not know.
    pub fn read_mode(&self) -> Option<ReadFrom> {
        self.owns_cluster().then(|| self.read_from.unwrap_or_default())
    }

    /// Rejects what cannot run, with a message naming the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.clients == 0 {
            return bad("--clients must be at least 1".into());
        }
        if self.conns_per_client == 0 {
            return bad("--conns-per-client must be at least 1".into());
        }
        if self.clients.saturating_mul(self.conns_per_client) > MAX_CONNECTIONS {
            return bad(format!("--clients x --conns-per-client is over {MAX_CONNECTIONS} connections"));
        }
        if self.keys == 0 {
            return bad("--keys must be at least 1".into());
        }
        if self.write_pct > 100 {
            return bad(format!("--write-pct is a percentage (0..100), got {}", self.write_pct));
        }
        if self.duration_s == 0 {
            return bad("--duration must be at least 1 second".into());
        }
        if self.value_size > MAX_VALUE_SIZE {
            return bad(format!(
                "--value-size {} is over the protocol's limit of {MAX_VALUE_SIZE} bytes",
                self.value_size
            ));
        }
        if self.request_timeout.is_zero() {
            return bad("--request-timeout-ms must be at least 1".into());
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return bad(format!("--rate must be a positive number, got {r}"));
            }
        }
        if let Some(f) = &self.fsync {
            if !FSYNC_POLICIES.contains(&f.as_str()) {
                return bad(format!("--fsync must be one of {}, got {f:?}", FSYNC_POLICIES.join(", ")));
            }
            if !self.owns_cluster() {
                return bad("--fsync applies to a cluster the harness starts (not --master)".into());
            }
        }
        if self.read_from.is_some() && !self.owns_cluster() {
            return bad("--read-from applies to a cluster the harness starts (not --master)".into());
        }
        if self.owns_cluster() && self.slaves == 0 {
            return bad("--slaves must be at least 1 (a write needs a quorum of slaves)".into());
        }
        if self.backup.is_some() && self.master.is_none() {
            return bad("--backup needs --master (an existing cluster)".into());
        }
        match (self.kill_primary_at, self.restart_primary_at) {
            (None, Some(_)) => return bad("--restart-primary-at needs --kill-primary-at".into()),
            (Some(kill), Some(restart)) if restart <= kill => {
                return bad(format!(
                    "--restart-primary-at {restart} must come after --kill-primary-at {kill}"
                ))
            }
            _ => {}
        }
        for (flag, at) in [
            ("--kill-primary-at", self.kill_primary_at),
            ("--kill-slave-at", self.kill_slave_at),
            ("--restart-primary-at", self.restart_primary_at),
        ] {
            let Some(at) = at else { continue };
            if !self.owns_cluster() {
                return bad(format!("{flag} needs a cluster the harness starts (not --master)"));
            }
            if !(at.is_finite() && at >= 0.0 && at < self.duration_s as f64) {
                return bad(format!(
                    "{flag} {at} is outside the measured window 0..{} seconds",
                    self.duration_s
                ));
            }
        }
        Ok(())
    }
}

/// Parses a comma-separated list of positive counts, as `1,3,5,7,9`.
pub fn parse_list(flag: &str, text: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<usize>() {
            Ok(n) if n > 0 => out.push(n),
            _ => {
                return Err(Error::Config(format!(
                    "{flag}: expected positive whole numbers separated by commas, got {part:?}"
                )))
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Config(format!("{flag}: the list is empty")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_original_harness_and_valid() {
        let c = RunConfig::default();
        assert_eq!(
            (c.clients, c.slaves, c.conns_per_client, c.keys, c.write_pct, c.warmup_s, c.duration_s),
            (5, 3, 10, 1000, 30, 5, 30)
        );
        assert_eq!(c.think, Duration::from_millis(10));
        assert_eq!(c.read_mode(), Some(ReadFrom::Master), "the masters' default");
        c.validate().unwrap();
    }

    #[test]
    fn bad_configurations_name_their_flag() {
        let cases: Vec<(RunConfig, &str)> = vec![
            (RunConfig { clients: 0, ..RunConfig::default() }, "--clients"),
            (RunConfig { write_pct: 101, ..RunConfig::default() }, "--write-pct"),
            (RunConfig { duration_s: 0, ..RunConfig::default() }, "--duration"),
            (RunConfig { rate: Some(0.0), ..RunConfig::default() }, "--rate"),
            (RunConfig { kill_primary_at: Some(31.0), ..RunConfig::default() }, "--kill-primary-at"),
            (
                RunConfig {
                    master: Some("127.0.0.1:1".into()),
                    kill_slave_at: Some(1.0),
                    ..RunConfig::default()
                },
                "--kill-slave-at",
            ),
            (RunConfig { backup: Some("127.0.0.1:1".into()), ..RunConfig::default() }, "--backup"),
            (
                RunConfig {
                    master: Some("127.0.0.1:1".into()),
                    read_from: Some(ReadFrom::Slaves),
                    ..RunConfig::default()
                },
                "--read-from",
            ),
        ];
        for (c, flag) in cases {
            let msg = c.validate().unwrap_err().to_string();
            assert!(msg.contains(flag), "{msg} should name {flag}");
        }
    }

    #[test]
    fn lists_parse() {
        assert_eq!(parse_list("--x", "1,3, 5").unwrap(), vec![1, 3, 5]);
        assert!(parse_list("--x", "1,0").is_err());
        assert!(parse_list("--x", "a").is_err());
        assert!(parse_list("--x", "").is_err());
    }
}
