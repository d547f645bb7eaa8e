//! Following another master's log over TCP (`STREAM`), and the hand-off (`HANDOFF`).

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::framing::{LineError, LineReader};
use crate::master::Shared;
use crate::protocol::truncate_for_display;
use crate::wal::{self, Follower, Record};
use crate::wire::{fields, number, split_word};
use crate::{Error, Result};

impl Shared {
    /// Applies records copied from the other master's log, in their order: to this master's
    /// own log (with the same seqs, so the two logs agree; one batch, one `write(2)`) and to its
    /// state. Both under the state's locks, so a compaction's snapshot never sees a record in
    /// the log but not in the state. `records` is left empty.
    pub fn apply_records(&self, records: &mut Vec<(u64, Record)>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut members = self.members.lock();
        let mut index = self.index.lock();
        let mut history = self.history.lock();
        let logged = self.wal.append_copied(records.iter().map(|(seq, record)| (*seq, record)));
        let mut result = logged;
        let mut epoch = None;
        for (seq, record) in records.drain(..) {
            if result.is_err() {
                continue;
            }
            if let Record::Epoch { epoch: e } = record {
                epoch = Some(e);
            }
            result = crate::master::apply_record(&mut index, &mut members, &mut history, seq, record);
        }
        drop((history, index, members));
        if let Some(epoch) = epoch {
            self.state.follow_epoch(epoch);
        }
        self.state.mark_copy();
        result
    }

    /// Forgets the copied state and empties this master's log: a fresh copy follows.
    pub fn reset_state(&self) -> Result<()> {
        let mut members = self.members.lock();
        for link in members.live_links() {
            link.kill("state reset");
        }
        let mut index = self.index.lock();
        let mut history = self.history.lock();
        self.wal.reset()?;
        *members = crate::master::members::Members::new();
        *index = crate::master::index::Index::new();
        *history = crate::master::history::History::new();
        drop((history, index, members));
        self.state.reset_copy();
        Ok(())
    }
}

/// What a follower says it holds when it asks for a stream: see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Its log's last epoch.
    pub epoch: u64,
    /// The seq of that epoch's `EPOCH` record.
    pub epoch_seq: u64,
    /// The seq of its last record.
    pub last: u64,
}

impl Held {
    /// Parses what follows `STREAM`: nothing (a follower that holds nothing) or three numbers.
    pub fn parse(rest: &[u8]) -> std::result::Result<Option<Held>, String> {
        match fields(rest).as_slice() {
            [] => Ok(None),
            [e, s, l] => Ok(Some(Held { epoch: number(e)?, epoch_seq: number(s)?, last: number(l)? })),
            _ => Err("expected: STREAM [<epoch> <epoch-seq> <last-seq>]".into()),
        }
    }

    /// What `shared`'s log holds, if it has started an epoch.
    fn of(shared: &Shared) -> Option<Held> {
        let history = shared.history.lock();
        let last = history.epochs().last()?;
        Some(Held { epoch: last.epoch, epoch_seq: last.seq, last: shared.wal.last_record() })
    }
}

/// Whether a follower holding `held` holds a prefix of the log whose history is `history` and
/// whose last record is `log_last`: the same `EPOCH` record, and nothing beyond where that
/// epoch ends here (beyond it, the follower's records are not this log's).
pub fn is_prefix(history: &crate::master::history::History, log_last: u64, held: Held) -> bool {
    let epochs = history.epochs();
    let Some(i) = epochs.iter().position(|e| e.epoch == held.epoch && e.seq == held.epoch_seq) else {
        return false;
    };
    let end = epochs.get(i + 1).map_or(log_last, |next| next.before);
    held.last <= end
}

/// Sends this master's log to a follower, then as it grows (`STREAM`): from its start, or
/// from above what the follower holds when that is a prefix of this log.
pub fn serve_stream(shared: &Arc<Shared>, stream: TcpStream, held: Option<Held>) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let from =
        held.filter(|h| is_prefix(&shared.history.lock(), shared.wal.last_record(), *h)).map(|h| h.last);
    let mut follower = match from {
        Some(seq) => {
            log::info!("streaming the log to {peer} from above seq {seq}, which it holds");
            Follower::after(shared.wal.path(), seq)
        }
        None => {
            log::info!(
                "streaming the log to {peer}, all of it (it holds {held:?}, not a prefix of this log)"
            );
            if (&stream).write_all(b"RESET\n").is_err() {
                return;
            }
            Follower::new(shared.wal.path())
        }
    };
    let mut out = Vec::with_capacity(64 * 1024);
    let mut last_heartbeat = Instant::now() - STREAM_HEARTBEAT;
    loop {
        // Only a log that is this master's state is worth copying: a master that is itself
        // following the other one has a log that may be stale.
        if !shared.state.is_authoritative() {
            let _ =
                (&stream).write_all(b"ERR this master is following the other; its log is not its state\n");
            log::info!("stopped streaming the log to {peer}: this master is not authoritative");
            return;
        }
        let polled = {
            let out = std::cell::RefCell::new(&mut out);
            let mut reset = || {
                out.borrow_mut().extend_from_slice(b"RESET\n");
                Ok(())
            };
            follower.poll(&mut reset, &mut |records| {
                let mut out = out.borrow_mut();
                for (seq, record) in records.drain(..) {
                    wal::encode(seq, &record, &mut out);
                }
                // A long log (a whole one after RESET) is sent as it is read, not held whole.
                if out.len() >= STREAM_SEND_BYTES {
                    (&stream).write_all(&out)?;
                    out.clear();
                }
                Ok(())
            })
        };
        if let Err(e) = polled {
            log::error!("cannot stream the log to {peer}: {e}");
            return;
        }
        if last_heartbeat.elapsed() >= STREAM_HEARTBEAT {
            let at = format!("AT {} {} {}\n", follower.last_seq(), shared.epoch(), shared.role().name());
            out.extend_from_slice(at.as_bytes());
            last_heartbeat = Instant::now();
        }
        if !out.is_empty() {
            if let Err(e) = (&stream).write_all(&out) {
                log::info!("log stream to {peer} ended: {e}");
                return;
            }
            out.clear();
        }
        thread::sleep(STREAM_POLL);
    }
}

/// Stops serving and tells the caller the last seq this master logged (`HANDOFF`).
pub fn serve_handoff(shared: &Arc<Shared>, stream: TcpStream) {
    let was = shared.state.hand_off();
    let deadline = Instant::now() + HANDOFF_DRAIN;
    while shared.inflight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    for link in shared.members.lock().live_links() {
        link.kill("handing off to the other master");
    }
    // The last record, not a seq merely reserved (a slave's registration reserves the seqs it
    // holds): the follower waits until it has applied this seq, and must be able to get there.
    let last = shared.wal.last_record();
    log::warn!("handed off (was {}): last logged seq {last}, epoch {}", was.name(), shared.epoch());
    let _ = (&stream).write_all(format!("HANDOFF {last} {}\n", shared.epoch()).as_bytes());
}

/// What a stream's `AT` heartbeat says.
#[derive(Debug, Clone, Copy, Default)]
pub struct At {
    /// The sender's last logged seq.
    pub seq: u64,
    /// The sender's epoch.
    pub epoch: u64,
}

impl At {
    /// Parses what follows `AT `: `<seq> <epoch> <role>`. `None` unless both numbers are there
    /// and valid: a damaged line must not read as seq 0 of epoch 0.
    pub fn parse(rest: &[u8]) -> Option<At> {
        let (seq, rest) = split_word(rest);
        let (epoch, _role) = split_word(rest?);
        Some(At { seq: number(seq).ok()?, epoch: number(epoch).ok()? })
    }
}

/// Applies the log streamed by the master at `addr` to `shared` until `keep_going` returns
/// false (it is called after every `AT` heartbeat with what it said) or the stream fails.
pub fn follow_stream(shared: &Shared, addr: &str, mut keep_going: impl FnMut(At) -> bool) -> Result<()> {
    let first = match Held::of(shared) {
        Some(h) => format!("STREAM {} {} {}\n", h.epoch, h.epoch_seq, h.last),
        None => "STREAM\n".to_string(),
    };
    let (stream, mut reader) = open_master_link(
        addr,
        first.as_bytes(),
        crate::auth::PeerRole::Stream,
        shared.config.secret.as_ref(),
    )?;
    stream.set_read_timeout(Some(STREAM_SILENCE))?;
    // Records read but not applied yet: applied together when no further line is buffered, when
    // the batch is full (`wal::follow_batch_full`), and before any other line.
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    loop {
        let full = wal::follow_batch_full(batch.len(), batch_bytes);
        if !batch.is_empty() && (full || !reader.has_buffered_line()) {
            shared.apply_records(&mut batch)?;
            batch_bytes = 0;
        }
        let line = match reader.read_line() {
            Ok(Some(line)) => line,
            Ok(None) => {
                shared.apply_records(&mut batch)?;
                return Err(Error::Unavailable(format!("{addr} closed the log stream")));
            }
            Err(LineError::TooLong) => return Err(Error::Protocol("log stream line too long".into())),
            Err(LineError::Io(e)) => return Err(Error::Io(e)),
        };
        if line.first().is_some_and(u8::is_ascii_digit) {
            batch_bytes += line.len();
            batch.push(wal::decode(line).map_err(|e| Error::Protocol(format!("log stream: {e}")))?);
            continue;
        }
        shared.apply_records(&mut batch)?;
        batch_bytes = 0;
        if line == b"RESET" {
            shared.reset_state()?;
        } else if let Some(rest) = line.strip_prefix(b"AT ") {
            let at = At::parse(rest).ok_or_else(|| {
                Error::Protocol(format!("log stream: malformed AT line '{}'", truncate_for_display(line)))
            })?;
            if !keep_going(at) {
                return Ok(());
            }
        } else if line.starts_with(b"ERR ") {
            return Err(Error::Unavailable(String::from_utf8_lossy(line).into_owned()));
        } else {
            return Err(Error::Protocol(format!(
                "log stream: unexpected line '{}'",
                truncate_for_display(line)
            )));
        }
    }
}

/// Connects to the master at `addr`, sends `first_line` (`STREAM ...` or `HANDOFF`) and, with a
/// cluster secret, proves to be a master in `role` (allowing [`crate::auth::AUTH_TIMEOUT`] for
/// the handshake).
pub(super) fn open_master_link(
    addr: &str,
    first_line: &[u8],
    role: crate::auth::PeerRole,
    secret: Option<&crate::auth::Secret>,
) -> Result<(TcpStream, LineReader<TcpStream>)> {
    let stream = crate::client::connect(addr)?;
    (&stream).write_all(first_line)?;
    let mut reader = LineReader::with_limit(stream.try_clone()?, crate::limits::MAX_PEER_LINE);
    if let Some(secret) = secret {
        stream.set_read_timeout(Some(crate::auth::AUTH_TIMEOUT))?;
        crate::auth::peer_handshake(secret, role, crate::auth::MASTER_ID, &stream, &mut reader)?;
    }
    Ok((stream, reader))
}

/// Asks the master at `addr` to hand off, proving the cluster secret first if there is one;
/// returns the last seq it logged and its epoch.
pub fn request_handoff(addr: &str, secret: Option<&crate::auth::Secret>) -> Result<At> {
    let (stream, mut reader) = open_master_link(addr, b"HANDOFF\n", crate::auth::PeerRole::Handoff, secret)?;
    stream.set_read_timeout(Some(HANDOFF_DRAIN + STREAM_SILENCE))?;
    let line = match reader.read_line() {
        Ok(Some(line)) => line,
        _ => return Err(Error::Unavailable(format!("{addr} did not answer the hand-off"))),
    };
    // `HANDOFF <last-seq> <epoch>`: the same two numbers as an `AT` line, without a role.
    let at = match fields(line).as_slice() {
        [b"HANDOFF", seq, epoch] => number(seq).ok().zip(number(epoch).ok()),
        _ => None,
    };
    at.map(|(seq, epoch)| At { seq, epoch })
        .ok_or_else(|| Error::Protocol(format!("unexpected hand-off answer: {}", truncate_for_display(line))))
}

/// Copies the whole state of the master at `addr`, then makes it hand off, and returns once
/// every write it logged is applied here. Returns its epoch.
pub fn sync_from(shared: &Shared, addr: &str) -> Result<u64> {
    log::info!("catching up from {addr} over TCP");
    let mut handoff: Option<At> = None;
    let mut failure = None;
    let mut remote_epoch = 0;
    follow_stream(shared, addr, |at| {
        remote_epoch = remote_epoch.max(at.epoch);
        let applied = shared.wal.last_record();
        let lag = crate::master::Lag::Records(at.seq.saturating_sub(applied));
        *shared.following.lock() = Some(crate::master::Following { source: addr.to_string(), lag });
        match handoff {
            None if applied >= at.seq => match request_handoff(addr, shared.config.secret.as_ref()) {
                Ok(h) => {
                    log::info!("{addr} handed off at seq {} (epoch {})", h.seq, h.epoch);
                    remote_epoch = remote_epoch.max(h.epoch);
                    handoff = Some(h);
                    applied < h.seq
                }
                Err(e) => {
                    failure = Some(e);
                    false
                }
            },
            Some(h) => applied < h.seq,
            None => true,
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(remote_epoch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::history::History;

    #[test]
    fn an_at_line_parses_only_when_whole() {
        let at = At::parse(b"17 3 primary").unwrap();
        assert_eq!((at.seq, at.epoch), (17, 3));
        for bad in [&b""[..], b"17", b"x 3 primary", b"17 y primary", b"-1 3 primary", b"\xff 3"] {
            assert!(At::parse(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_follower_is_streamed_only_what_is_above_a_prefix_it_holds() {
        // The sender: epoch 1 from seq 1, epoch 2 taken over at 15 (its log had 10 of epoch 1).
        let mut h = History::new();
        h.note(1, Some(1));
        h.begin(2, 15, 10);
        let held = |epoch, epoch_seq, last| Held { epoch, epoch_seq, last };
        assert!(is_prefix(&h, 30, held(2, 15, 20)), "its own epoch");
        assert!(is_prefix(&h, 30, held(1, 1, 10)), "the old primary, caught up to the takeover");
        assert!(!is_prefix(&h, 30, held(1, 1, 12)), "it logged past what the takeover kept");
        assert!(!is_prefix(&h, 30, held(1, 2, 5)), "another epoch 1, begun elsewhere");
        assert!(!is_prefix(&h, 30, held(3, 40, 41)), "an epoch this log never saw");
        assert_eq!(Held::parse(b"").unwrap(), None);
        assert_eq!(Held::parse(b"2 15 20").unwrap(), Some(held(2, 15, 20)));
        assert!(Held::parse(b"2 15").is_err() && Held::parse(b"2 x 3").is_err());
    }
}
