//! The backup master's controller: follow the primary's log while it is healthy, take over when
//! it is not, and follow again after the primary has taken its writes back.
//!
//! The backup is a [`crate::master::Master`] that starts in the standby role (clients get
//! `ERR NOTPRIMARY <primary>`: a standby's copy may lag, and a stale read is a wrong answer).
//! This controller keeps the standby's index a copy of the primary's log — by polling the log
//! file (`--follow PATH`, the original design) or over TCP (`--follow-primary`) — and
//! heartbeats the primary. When the primary has been unreachable for `--takeover-after-ms`, it
//! reads the followed log to its end and runs [`crate::master::replica::takeover`] in a new
//! (even) epoch. When the primary returns, it catches up from the backup over TCP and asks it
//! to hand off ([`crate::master::replica::serve_handoff`]); the backup is then a standby again.
//!
//! A backup's own log is a copy of the primary's, record for record. One whose log ends in an
//! epoch of its own (even) parity was the last to serve: it keeps that copy and does not follow
//! until the followed log moves past that epoch, since the primary must first catch up from it.
//! One whose log ends in the primary's epoch follows again at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::master::replica::{self, follow_stream, next_epoch, takeover};
use crate::master::{Following, Lag, Role, Shared};
use crate::protocol::{Reply, Request};
use crate::wal::{Follower, Record};

/// Default for `--takeover-after-ms`: how long the primary must be unreachable before the
/// backup takes over. Short enough that a killed primary is replaced in well under 3 s, long
/// enough that a few lost heartbeats do not cause a failover.
pub const DEFAULT_TAKEOVER_AFTER_MS: u64 = 1000;

/// How often the followed log file is polled.
pub const FOLLOW_POLL: Duration = Duration::from_millis(10);

/// How often a candidate backup checks whether the primary serves after all.
pub const PRIMARY_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// The epoch parity of backups (primaries use odd epochs; see [`next_epoch`]).
pub const BACKUP_PARITY: u64 = 0;

/// Where the standby's copy of the log comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Poll this file (the primary's log on a shared disk).
    File(PathBuf),
    /// Stream it from the primary over TCP.
    Primary,
}

/// The backup controller's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The primary master.
    pub primary: String,
    /// Where the log comes from.
    pub source: Source,
    /// How long the primary may be unreachable before a takeover.
    pub takeover_after: Duration,
    /// How often the primary is probed.
    pub heartbeat: Duration,
}

/// Runs the controller forever.
pub fn run(shared: Arc<Shared>, config: Config) {
    let mut standby = Standby::new(&shared, &config);
    loop {
        if shared.role() != Role::Standby {
            thread::sleep(Duration::from_millis(20));
            continue;
        }
        standby.round(&shared, &config);
    }
}

/// The standby's following state.
struct Standby {
    /// The epoch of the state this backup served last (0 if none): it holds that copy until the
    /// followed log's epoch passes it.
    own_epoch: u64,
    /// The newest epoch seen in the followed log.
    followed_epoch: u64,
    /// File mode: a follower that only watches for `EPOCH` records while holding.
    peek: Option<Follower>,
    /// File mode: the follower that feeds the index, once following.
    follower: Option<Follower>,
    /// When the primary last answered.
    last_ok: Instant,
    last_probe: Instant,
    probe: Client,
}

impl Standby {
    fn new(shared: &Shared, config: &Config) -> Standby {
        // The epoch this backup served in last, if its log says so: its log is a copy of the
        // primary's, so its last epoch is its own only when it has the backups' parity.
        let epoch = shared.epoch();
        let own_epoch = if epoch % 2 == BACKUP_PARITY && epoch > 0 { epoch } else { 0 };
        let peek = match &config.source {
            Source::File(path) => Some(Follower::new(path)),
            Source::Primary => None,
        };
        let mut probe = Client::new(&config.primary, None);
        probe.set_timeout(config.heartbeat * 3);
        Standby {
            own_epoch,
            followed_epoch: 0,
            peek,
            follower: None,
            last_ok: Instant::now(),
            last_probe: Instant::now() - config.heartbeat,
            probe,
        }
    }

    fn round(&mut self, shared: &Arc<Shared>, config: &Config) {
        match &config.source {
            Source::File(path) => {
                self.follow_file(shared, path);
                self.heartbeat(config);
                thread::sleep(FOLLOW_POLL);
            }
            Source::Primary => self.follow_tcp(shared, config),
        }
        if self.last_ok.elapsed() >= config.takeover_after {
            self.take_over(shared, config);
        }
    }

    fn follow_file(&mut self, shared: &Shared, path: &std::path::Path) {
        if self.follower.is_none() {
            let Some(peek) = self.peek.as_mut() else { return };
            let newest = std::cell::Cell::new(self.followed_epoch);
            let mut reset = || {
                newest.set(0);
                Ok(())
            };
            let polled = peek.poll(&mut reset, &mut |records| {
                for (_, record) in records.drain(..) {
                    if let Record::Epoch { epoch } = record {
                        newest.set(newest.get().max(epoch));
                    }
                }
                Ok(())
            });
            if let Err(e) = polled {
                log::error!("cannot read the followed log {}: {e}", path.display());
                return;
            }
            self.followed_epoch = newest.get();
            if self.own_epoch != 0 && self.followed_epoch <= self.own_epoch {
                return;
            }
            log::info!(
                "following {} (its epoch {}, ours {})",
                path.display(),
                self.followed_epoch,
                self.own_epoch
            );
            if let Err(e) = shared.reset_state() {
                log::error!("cannot reset this master's log to copy {}: {e}", path.display());
                return;
            }
            self.follower = Some(Follower::new(path));
        }
        if let Some(f) = self.follower.as_mut() {
            let polled = f.poll(&mut || shared.reset_state(), &mut |records| shared.apply_records(records));
            match polled {
                Ok(_) => {
                    *shared.following.lock() = Some(Following {
                        source: path.display().to_string(),
                        lag: Lag::Bytes(f.lag_bytes()),
                    });
                }
                Err(e) => log::error!("cannot apply the followed log {}: {e}", path.display()),
            }
        }
    }

    /// Streams the primary's log until the stream breaks; the stream's heartbeats count as the
    /// primary answering.
    fn follow_tcp(&mut self, shared: &Shared, config: &Config) {
        let mut allowed = false;
        let result = follow_stream(shared, &config.primary, |at| {
            self.last_ok = Instant::now();
            self.followed_epoch = at.epoch;
            if !allowed && (self.own_epoch == 0 || at.epoch > self.own_epoch) {
                allowed = true;
            }
            let lag = Lag::Records(at.seq.saturating_sub(shared.wal.last_record()));
            *shared.following.lock() = Some(Following { source: config.primary.clone(), lag });
            // While holding a newer copy of our own, do not let the stream overwrite it.
            allowed && shared.role() == Role::Standby
        });
        if !allowed && self.own_epoch != 0 {
            // Only logged. The stream's RESET and the records before its first heartbeat were
            // applied before `allowed` could be decided, so the copy held now is the primary's
            // older one, not ours; what we acknowledged in our epoch is still on a majority of
            // the slaves, where a takeover's SCAN finds it. Deferring RESET until the first
            // heartbeat would keep our copy; not done yet.
            log::debug!("the primary's log (epoch at most {}) is older than our own", self.own_epoch);
        }
        if let Err(e) = result {
            log::info!("log stream from {} broke: {e}", config.primary);
            thread::sleep(config.heartbeat);
        }
    }

    fn heartbeat(&mut self, config: &Config) {
        if self.last_probe.elapsed() < config.heartbeat {
            return;
        }
        self.last_probe = Instant::now();
        if let Ok(Reply::Pong) = self.probe.request(&Request::Ping) {
            self.last_ok = Instant::now();
        }
    }

    fn take_over(&mut self, shared: &Arc<Shared>, config: &Config) {
        log::warn!(
            "primary {} unreachable for {} ms: taking over",
            config.primary,
            self.last_ok.elapsed().as_millis()
        );
        if let (Some(f), Source::File(path)) = (self.follower.as_mut(), &config.source) {
            // Read the followed log to its end: every write the primary logged.
            if let Err(e) = f.poll(&mut || shared.reset_state(), &mut |records| shared.apply_records(records))
            {
                log::error!("cannot finish reading {}: {e}", path.display());
            }
        }
        let epoch = next_epoch(shared.epoch().max(self.own_epoch).max(self.followed_epoch), BACKUP_PARITY);
        // Give up if the primary turns out to be serving after all (it was only slow, or came
        // back before a majority joined us): waiting for slaves that stay with it would leave
        // the cluster split between a primary and a candidate that can never complete.
        let mut last_check = Instant::now();
        let password = shared.config.requirepass.clone();
        let primary = config.primary.clone();
        let mut abort = || {
            if last_check.elapsed() < PRIMARY_CHECK_INTERVAL {
                return false;
            }
            last_check = Instant::now();
            let serving = replica::probe(&primary, PRIMARY_CHECK_INTERVAL, password.as_ref())
                .is_some_and(|p| p.serving());
            if serving {
                log::warn!("the primary {primary} is serving with a majority after all");
            }
            serving
        };
        match takeover(shared, epoch, &mut abort) {
            Ok(()) => {
                self.own_epoch = epoch;
                self.follower = None;
                if let Source::File(path) = &config.source {
                    self.peek = Some(Follower::new(path));
                }
                *shared.following.lock() = None;
            }
            Err(replica::TakeoverError::Stale(newer)) => {
                log::warn!("takeover abandoned: a slave has joined epoch {newer}; following again");
                self.follower = None;
                self.followed_epoch = self.followed_epoch.max(newer);
            }
            Err(replica::TakeoverError::Aborted) => {
                log::warn!("takeover given up; following again");
                self.follower = None;
            }
            Err(replica::TakeoverError::Log(e)) => log::error!("takeover failed: {e}"),
        }
        self.last_ok = Instant::now();
    }
}
