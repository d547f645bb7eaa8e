//! The slave: stores versioned values in memory and answers its master.
//!
//! A slave connects to the primary master, else to the backup, registers with its id, and then
//! answers every request on that connection, in order, tagged with the request's id. It keeps
//! its store across reconnections (only a restart empties it). Connection attempts back off
//! exponentially with jitter up to a cap, forever; every change of state is logged.
//!
//! Fencing: the slave remembers the newest epoch it has accepted and refuses (`FENCED`) any
//! request from an older one, so a deposed master can neither complete a write nor read. It
//! joins a newer epoch only after the read lease it gave the current epoch's master (renewed by
//! every `PING`) has run out, so that master's reads stay correct until it notices.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::framing::{LineError, LineReader};
use crate::peer::{scan_wants, Command, Message, Outcome, Registration, Response, Stamp, LEASE};
use crate::store::Store;
use crate::{Error, Result};

/// First pause after a failed connection round.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(50);

/// Longest pause between connection rounds.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How long connecting and registering may take before the master is considered unreachable.
/// A paused master accepts the TCP connection in its kernel but never answers.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(1500);

/// A master silent for this long (it pings every 100 ms by default) is considered hung; the
/// slave drops the connection and looks for a master again.
pub const MASTER_SILENCE_TIMEOUT: Duration = Duration::from_millis(1000);

/// A session with a master that lasted at least this long was a working one: the slave tries
/// again at once after it ends. A shorter one counts as a failed connection and backs off.
pub const STABLE_SESSION: Duration = Duration::from_secs(1);

/// The longest pause after sessions that keep ending at once. Short, because a failback
/// ends a session that began moments before (the backup took over, then hands off), and the
/// new primary waits for its slaves: a long pause would outlast the backup's patience.
pub const SHORT_SESSION_BACKOFF_MAX: Duration = Duration::from_millis(200);

/// A slave's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The member id.
    pub id: String,
    /// The primary master.
    pub master: String,
    /// The backup master, if any.
    pub backup: Option<String>,
    /// The cluster secret: proven to the master at registration, and required of it.
    pub secret: Option<crate::auth::Secret>,
}

/// The default slave id: `slave-<hostname>`, stable across restarts on one host, so a slave
/// restarted without `--id` comes back as the same member instead of adding one. Run several
/// slaves on one host with distinct `--id`s.
pub fn default_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    let clean: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' })
        .take(crate::peer::MAX_ID - 6)
        .collect();
    format!("slave-{clean}")
}

/// Everything a slave keeps across connections.
struct Node {
    config: Config,
    store: Store,
    /// The newest epoch accepted.
    epoch: u64,
    /// The read lease given: to which epoch, until when.
    lease: Option<(u64, Instant)>,
    /// How much of a master's log this store is known to hold (see [`Registration::held`]): set by a
    /// `PING <seq>`, which a master sends only to a slave in sync, and kept across sessions so
    /// that the next master sends only what is newer.
    held: Stamp,
}

/// How a session with a master ended.
enum End {
    /// Could not connect or register; try the other master.
    Unreachable(String),
    /// Was registered, then the connection ended.
    Lost(String),
}

/// Runs a slave forever.
pub fn run(config: Config) -> ! {
    let mut node = Node { config, store: Store::new(), epoch: 0, lease: None, held: Stamp::default() };
    let mut backoff = BACKOFF_INITIAL;
    let mut short_backoff = BACKOFF_INITIAL;
    let mut servers = vec![node.config.master.clone()];
    servers.extend(node.config.backup.clone());
    let mut which = 0;
    loop {
        let mut lost = None;
        for _ in 0..servers.len() {
            let addr = servers[which].clone();
            let started = Instant::now();
            match node.session(&addr) {
                End::Lost(why) => {
                    log::warn!("lost master {addr}: {why}");
                    lost = Some(started.elapsed());
                    break;
                }
                End::Unreachable(why) if why.contains("already connected") => {
                    // Another slave runs with this id: an operator's mistake, and it will not
                    // go away by itself.
                    log::error!("master {addr} refused this slave: {why}");
                    which = (which + 1) % servers.len();
                }
                End::Unreachable(why) => {
                    log::info!("master {addr} unavailable: {why}");
                    which = (which + 1) % servers.len();
                }
            }
        }
        match lost {
            Some(lasted) if lasted >= STABLE_SESSION => {
                backoff = BACKOFF_INITIAL;
                short_backoff = BACKOFF_INITIAL;
                // Try the same server first again: a broken connection is often brief, and a
                // superseded primary answers NOTPRIMARY quickly.
            }
            Some(_) => {
                // A session that ended as soon as it began: a fault that reconnecting at once
                // could repeat for ever, or a master handing off right after a takeover. A
                // short pause, growing to a small cap, serves both.
                backoff = BACKOFF_INITIAL;
                let pause = jitter(short_backoff);
                log::info!("the session ended at once; retrying in {} ms", pause.as_millis());
                thread::sleep(pause);
                short_backoff = (short_backoff * 2).min(SHORT_SESSION_BACKOFF_MAX);
            }
            None => {
                let pause = jitter(backoff);
                log::info!("no master reachable; retrying in {} ms", pause.as_millis());
                thread::sleep(pause);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// A random duration between half and all of `d`, so many slaves do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis().max(2) as u64;
    Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms))
}

impl Node {
    fn session(&mut self, addr: &str) -> End {
        let (stream, mut reader) = match self.register(addr) {
            Ok(s) => s,
            // The message alone: the log line says it was unreachable.
            Err(Error::Unavailable(why)) => return End::Unreachable(why),
            Err(e) => return End::Unreachable(e.to_string()),
        };
        log::info!(
            "registered with {addr} as {} (epoch {}, {} keys held)",
            self.config.id,
            self.epoch,
            self.store.len()
        );
        let mut out = Vec::with_capacity(4096);
        loop {
            let line = match reader.read_line() {
                Ok(Some(line)) => line,
                Ok(None) => return End::Lost("connection closed".into()),
                Err(LineError::TooLong) => {
                    // Cannot happen with a dsm master (see crate::limits). If it does, the one
                    // request fails and the connection goes on: reconnecting would only be
                    // sent the same message again.
                    let prefix = match reader.skip_long_line() {
                        Ok(prefix) => prefix,
                        Err(e) => return End::Lost(format!("inside a message too long to take: {e}")),
                    };
                    let why = format!("message longer than {} bytes", crate::limits::MAX_PEER_LINE);
                    log::error!("refused a {why} from {addr}");
                    let rid = crate::peer::leading_rid(&prefix).unwrap_or(0);
                    Response { rid, outcome: Outcome::Err(why) }.encode_into(&mut out);
                    if let Err(e) = (&stream).write_all(&out) {
                        return End::Lost(e.to_string());
                    }
                    out.clear();
                    continue;
                }
                Err(LineError::Io(e)) if crate::client::is_timeout(&e) => {
                    return End::Lost(format!("silent for {} ms", MASTER_SILENCE_TIMEOUT.as_millis()))
                }
                Err(LineError::Io(e)) => return End::Lost(e.to_string()),
            };
            let reply = match Message::parse(line) {
                Ok(Message { rid, epoch, command: Command::Scan { epoch: log_epoch, seq, older_seq } })
                    if epoch >= self.epoch =>
                {
                    let sent = self.scan_into(rid, epoch, (log_epoch, seq, older_seq), &mut out);
                    Response { rid, outcome: Outcome::End(sent) }
                }
                Ok(request) => Response {
                    rid: request.rid,
                    outcome: self.handle(request.epoch, request.command, Instant::now()),
                },
                Err(e) => {
                    // The id may be unreadable; answer with id 0 so the master logs it.
                    log::warn!("refused a malformed message from {addr}: {e}");
                    Response { rid: crate::peer::leading_rid(line).unwrap_or(0), outcome: Outcome::Err(e) }
                }
            };
            reply.encode_into(&mut out);
            if !reader.has_buffered_line() {
                if let Err(e) = (&stream).write_all(&out) {
                    return End::Lost(e.to_string());
                }
                out.clear();
            }
        }
    }

    /// Connects and registers: `SLAVE <id> <epoch> <max-seq>`, answered by `WELCOME <epoch>`.
    fn register(&mut self, addr: &str) -> Result<(TcpStream, LineReader<TcpStream>)> {
        let sockaddr: SocketAddr = addr
            .to_socket_addrs()
            .map_err(|e| Error::Config(format!("bad address {addr}: {e}")))?
            .next()
            .ok_or_else(|| Error::Config(format!("{addr} resolves to nothing")))?;
        let stream = TcpStream::connect_timeout(&sockaddr, HANDSHAKE_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let hello = Registration {
            id: self.config.id.clone(),
            epoch: self.epoch,
            max_seq: self.store.max_seq(),
            held: self.held,
        };
        (&stream).write_all(format!("{}\n", hello.encode()).as_bytes())?;
        let mut reader = LineReader::with_limit(stream.try_clone()?, crate::limits::MAX_PEER_LINE);
        if let Some(secret) = &self.config.secret {
            crate::auth::peer_handshake(
                secret,
                crate::auth::PeerRole::Slave,
                &hello.id,
                &stream,
                &mut reader,
            )?;
        }
        let line = match reader.read_line() {
            Ok(Some(line)) => String::from_utf8_lossy(line).into_owned(),
            Ok(None) => return Err(Error::Unavailable("closed during registration".into())),
            Err(LineError::Io(e)) if crate::client::is_timeout(&e) => {
                return Err(Error::Timeout("no answer to registration".into()))
            }
            Err(LineError::Io(e)) => return Err(Error::Io(e)),
            Err(LineError::TooLong) => return Err(Error::Protocol("registration reply too long".into())),
        };
        let epoch: u64 =
            match line.strip_prefix("WELCOME ").and_then(|e| crate::wire::number(e.as_bytes()).ok()) {
                Some(e) => e,
                None => return Err(Error::Unavailable(format!("refused: {line}"))),
            };
        if epoch < self.epoch {
            return Err(Error::Unavailable(format!(
                "its epoch {epoch} is older than the accepted {}; it has been superseded",
                self.epoch
            )));
        }
        self.join_epoch(epoch);
        stream.set_read_timeout(Some(MASTER_SILENCE_TIMEOUT))?;
        Ok((stream, reader))
    }

    /// Accepts `epoch`, first waiting out a live lease given to another epoch's master. Only
    /// registration and `SCAN` wait here (a new master asks them once, while it gathers its
    /// majority); every other request is answered by [`Node::handle`] without sleeping.
    fn join_epoch(&mut self, epoch: u64) {
        if let Some(wait) = self.lease_blocking(epoch, Instant::now()) {
            log::info!(
                "waiting {} ms for the lease of epoch {} to expire before joining epoch {epoch}",
                wait.as_millis(),
                self.epoch
            );
            thread::sleep(wait);
        }
        self.accept_epoch(epoch);
    }

    /// Accepts `epoch` if it is newer: the lease given to the old one is over.
    fn accept_epoch(&mut self, epoch: u64) {
        if epoch <= self.epoch {
            return;
        }
        log::info!("accepted epoch {epoch} (was {})", self.epoch);
        self.epoch = epoch;
        self.lease = None;
    }

    /// How long, from `now`, a lease given to another epoch still runs.
    fn lease_blocking(&self, epoch: u64, now: Instant) -> Option<Duration> {
        match self.lease {
            Some((e, until)) if e != epoch => until.checked_duration_since(now),
            _ => None,
        }
    }

    /// Writes one `ITEM` reply per entry the described log may lack (see [`Command::Scan`]);
    /// returns how many (the caller adds the `END`).
    fn scan_into(&mut self, rid: u64, epoch: u64, log: (u64, u64, u64), out: &mut Vec<u8>) -> u64 {
        if epoch > self.epoch {
            self.join_epoch(epoch);
        }
        let mut sent = 0;
        for (key, entry) in self.store.iter().filter(|(_, e)| scan_wants(e.stamp, log.0, log.1, log.2)) {
            let outcome =
                Outcome::Item { stamp: entry.stamp, key: key.to_string(), value: entry.value.clone() };
            Response { rid, outcome }.encode_into(out);
            sent += 1;
        }
        sent
    }

    /// The step function of a slave: what it answers to `command` of a master in `epoch`, at
    /// time `now`. It never sleeps and never touches a socket.
    fn handle(&mut self, epoch: u64, command: Command, now: Instant) -> Outcome {
        if epoch < self.epoch {
            return Outcome::Fenced(self.epoch);
        }
        if epoch > self.epoch {
            if let Some(wait) = self.lease_blocking(epoch, now) {
                return Outcome::Wait(wait.as_millis() as u64 + 1);
            }
            self.accept_epoch(epoch);
        }
        match command {
            Command::Set { stamp, key, value } => Outcome::Ok(self.store.apply(&key, stamp, Some(value))),
            Command::Del { stamp, key } => Outcome::Ok(self.store.apply(&key, stamp, None)),
            Command::Batch(writes) => {
                let n = writes.len() as u64;
                for (stamp, key, value) in writes {
                    self.store.apply(&key, stamp, value);
                }
                Outcome::Applied(n)
            }
            Command::Get { key } => match self.store.get(&key) {
                Some(e) => match &e.value {
                    Some(v) => Outcome::Value(e.stamp, v.clone()),
                    None => Outcome::Tomb(e.stamp),
                },
                None => Outcome::None,
            },
            Command::Ping { synced } => {
                self.lease = Some((epoch, now + LEASE));
                if let Some(seq) = synced {
                    self.held = Stamp::new(epoch, seq);
                }
                Outcome::Pong(self.store.live() as u64)
            }
            // Answered by the request loop, which can send several lines.
            Command::Scan { .. } => Outcome::Err("SCAN is answered elsewhere".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        let config = Config { id: "s1".into(), master: "127.0.0.1:1".into(), backup: None, secret: None };
        Node { config, store: Store::new(), epoch: 0, lease: None, held: Stamp::default() }
    }

    fn set(key: &str, epoch: u64, seq: u64, value: &str) -> Command {
        Command::Set { stamp: Stamp::new(epoch, seq), key: key.into(), value: value.into() }
    }

    #[test]
    fn an_older_epoch_is_fenced_and_a_newer_one_joined() {
        let (mut n, t) = (node(), Instant::now());
        assert_eq!(n.handle(2, set("k", 2, 1, "a"), t), Outcome::Ok(Stamp::new(2, 1)));
        assert_eq!(n.epoch, 2);
        assert_eq!(n.handle(1, Command::Get { key: "k".into() }, t), Outcome::Fenced(2));
        assert_eq!(
            n.handle(3, Command::Get { key: "k".into() }, t),
            Outcome::Value(Stamp::new(2, 1), b"a".to_vec())
        );
        assert_eq!(n.epoch, 3);
    }

    #[test]
    fn a_lease_given_holds_a_newer_epoch_off_until_it_runs_out() {
        let (mut n, t) = (node(), Instant::now());
        assert_eq!(n.handle(1, Command::PING, t), Outcome::Pong(0));
        // Within the lease, a newer master is told how long to wait, and nothing is applied.
        let half = t + LEASE / 2;
        match n.handle(2, set("k", 2, 5, "new"), half) {
            Outcome::Wait(ms) => assert!(ms > 0 && ms <= LEASE.as_millis() as u64 / 2 + 1, "{ms}"),
            other => panic!("expected WAIT, got {other:?}"),
        }
        assert_eq!((n.epoch, n.store.get("k").is_none()), (1, true));
        // The lease holder itself is served meanwhile.
        assert_eq!(n.handle(1, Command::PING, half), Outcome::Pong(0));
        // Once the lease (renewed at `half`) has run out, the newer epoch is joined.
        let after = half + LEASE + Duration::from_millis(1);
        assert_eq!(n.handle(2, set("k", 2, 5, "new"), after), Outcome::Ok(Stamp::new(2, 5)));
        assert_eq!(n.epoch, 2);
        // ... and the old master is fenced.
        assert_eq!(n.handle(1, Command::PING, after), Outcome::Fenced(2));
    }

    #[test]
    fn stamps_decide_and_tombstones_are_kept() {
        let (mut n, t) = (node(), Instant::now());
        assert_eq!(n.handle(3, set("k", 3, 10, "b"), t), Outcome::Ok(Stamp::new(3, 10)));
        // An older stamp (a late repair, a re-sent write) never replaces a newer one.
        assert_eq!(n.handle(3, set("k", 2, 99, "old"), t), Outcome::Ok(Stamp::new(3, 10)));
        let del = Command::Del { stamp: Stamp::new(3, 11), key: "k".into() };
        assert_eq!(n.handle(3, del, t), Outcome::Ok(Stamp::new(3, 11)));
        assert_eq!(n.handle(3, Command::Get { key: "k".into() }, t), Outcome::Tomb(Stamp::new(3, 11)));
        assert_eq!(n.handle(3, Command::Get { key: "never".into() }, t), Outcome::None);
    }

    #[test]
    fn a_sync_position_is_kept_only_from_a_ping_that_carries_one() {
        let (mut n, t) = (node(), Instant::now());
        assert_eq!(n.handle(3, Command::PING, t), Outcome::Pong(0));
        assert_eq!(n.held, Stamp::default());
        assert_eq!(n.handle(3, Command::Ping { synced: Some(40) }, t), Outcome::Pong(0));
        assert_eq!(n.held, Stamp::new(3, 40));
        // A plain heartbeat of a new master (the slave is not in sync with it yet) keeps it.
        let later = t + LEASE * 2;
        assert_eq!(n.handle(5, Command::PING, later), Outcome::Pong(0));
        assert_eq!(n.held, Stamp::new(3, 40));
        // A fenced request changes nothing.
        assert_eq!(n.handle(3, Command::Ping { synced: Some(90) }, later), Outcome::Fenced(5));
        assert_eq!(n.held, Stamp::new(3, 40));
    }
}
