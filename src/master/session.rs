//! One client connection: reads requests in either framing, executes them, and writes the
//! replies in the framing of each request.
//!
//! A request starting with `*` is RESP ([`crate::resp`]); any other line is the line protocol
//! ([`crate::protocol`]). Both reach the same operations (`super::ops`) with the same limits,
//! authentication and guarantees: a RESP `SET` is answered `+OK` only after a majority of the
//! members acknowledged it, exactly as `WRITE` is answered `OK <version>`.
//!
//! Pipelining: the writes a client has queued (`WRITE` lines and RESP `SET`s, in any mix) are
//! executed together, in runs of up to [`MAX_PIPELINED_WRITES`] writes and
//! [`MAX_PIPELINED_BYTES`] of values: one log append, one message to each slave, and the
//! replies in order once acknowledged. The next run is sent while the slaves apply this one
//! (`MAX_RUNS_IN_FLIGHT`); every run is settled before any other request (so a read that
//! follows sees them) and before the connection waits for its client. A lone write is left
//! to the slave reader that completes its quorum (`ops::PendingWrite`). A RESP `MSET` is
//! split into runs by the same bounds. Replies are buffered while further requests are, and
//! written when the connection would otherwise wait, or at [`MAX_PENDING_REPLY_BYTES`].
//!
//! Errors in RESP: dsm's refusals carry the codes Redis clients act on. A standby answers
//! `-READONLY ... the primary is <addr>` (Redis's reply from a replica: Sentinel-aware clients
//! take it as "reconnect to the primary"); no quorum is `-NOREPLICAS` (Redis's reply when
//! `min-replicas-to-write` is not met: nothing was written); a log that cannot be written is
//! `-MISCONF` (Redis's reply when it cannot persist); a write whose quorum did not answer in
//! time is `-TIMEOUT` (its outcome is unknown); anything else is `-ERR`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ops::{self, ClientOut};
use super::{Shared, MAX_PENDING_REPLY_BYTES, MAX_PIPELINED_BYTES, MAX_PIPELINED_WRITES};
use crate::framing::{LineError, LineReader};
use crate::metrics::{CommandKind, ErrorKind, Outcome, Protocol};
use crate::protocol::{ErrorReply, Reply, Request};
use crate::resp::command::{config_get, Command, CommandQuery, COMMANDS};
use crate::resp::{self, FrameError};

/// The Redis version whose protocol and commands dsm follows, as `INFO` and `HELLO` report it
/// (clients read it to decide what they may send; dsm answers the RESP2 subset of 7.0 listed
/// in `crate::resp::command`).
pub const REDIS_COMPAT_VERSION: &str = "7.0.0";

/// How long a connection whose last write is still pending waits for its client to send
/// something before it settles the write itself (see [`SessionStream`]): how much later than
/// a blocking write's own deadlines a write that no slave reader answers (no majority, a newer
/// epoch) is answered.
const SETTLE_AFTER: Duration = Duration::from_millis(100);

/// A client connection's read half, holding the connection's pending write
/// (`ops::PendingWrite`): the slave reader that completes the write's quorum answers it
/// while this thread already waits for the next request. If the client sends nothing for
/// [`SETTLE_AFTER`] while the write is pending, it is settled here (answered, if no reader
/// did), so a write that cannot reach its majority is answered although this thread is
/// blocked reading. The read timeout is set while a write is pending and cleared only by a
/// read that timed out with none, so a busy connection makes no extra system call per write.
pub(super) struct SessionStream {
    stream: TcpStream,
    pending: Option<ops::PendingWrite>,
    /// Rounds this connection combined for others and still owes (see `ops::OwedRounds`).
    owed: Option<ops::OwedRounds>,
    /// Whether the socket's read timeout is set.
    polling: bool,
}

impl SessionStream {
    fn new(stream: TcpStream) -> SessionStream {
        SessionStream { stream, pending: None, owed: None, polling: false }
    }

    /// Settles the pending write, if any: returns once it is answered. Rounds owed for others
    /// are settled if they are due.
    fn settle(&mut self) {
        if let Some(pending) = self.pending.take() {
            let owed = pending.settle();
            match &mut self.owed {
                Some(all) => all.absorb(owed),
                None => self.owed = Some(owed),
            }
        }
        if let Some(owed) = &mut self.owed {
            owed.settle(false);
            if owed.is_empty() {
                self.owed = None;
            }
        }
    }

    /// Settles the pending write and every owed round: before the connection ends.
    fn settle_all(&mut self) {
        self.settle();
        if let Some(mut owed) = self.owed.take() {
            owed.settle(true);
        }
    }

    /// Whether something waits to be settled by this thread.
    fn owes(&self) -> bool {
        self.pending.is_some() || self.owed.is_some()
    }
}

impl Drop for SessionStream {
    /// However the connection ends, the writes it answers for (its own, and those of the
    /// rounds it owes) are answered.
    fn drop(&mut self) {
        self.settle_all();
    }
}

impl Read for SessionStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.owes() && !self.polling {
                self.stream.set_read_timeout(Some(SETTLE_AFTER))?;
                self.polling = true;
            }
            match self.stream.read(buf) {
                Err(e)
                    if self.polling
                        && matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
                {
                    if self.owes() {
                        self.settle();
                    } else {
                        // Idle: sleep until the client sends something.
                        self.stream.set_read_timeout(None)?;
                        self.polling = false;
                    }
                }
                other => return other,
            }
        }
    }
}

/// Which framing a request came in, and so its reply goes out in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// The line protocol.
    Line,
    /// RESP2.
    Resp,
}

/// One request read from the connection.
enum Incoming {
    Line(Result<Request, String>),
    Resp(Result<Command, String>),
    /// An empty RESP array (`*0`, `*-1`): skipped without a reply, as Redis does.
    Nothing,
}

impl Incoming {
    /// The key and value of a write, or the request back.
    fn take_write(self) -> Result<(String, Vec<u8>, Dialect), Incoming> {
        match self {
            Incoming::Line(Ok(Request::Write { key, value })) => Ok((key, value, Dialect::Line)),
            Incoming::Resp(Ok(Command::Set { key, value })) => Ok((key, value, Dialect::Resp)),
            other => Err(other),
        }
    }

    fn from_write((key, value, dialect): (String, Vec<u8>, Dialect)) -> Incoming {
        match dialect {
            Dialect::Line => Incoming::Line(Ok(Request::Write { key, value })),
            Dialect::Resp => Incoming::Resp(Ok(Command::Set { key, value })),
        }
    }
}

/// The connection ends after the replies so far and these last bytes (none, `BYE`, or the
/// error that explains why).
struct Stop(Vec<u8>);

/// A client connection's state.
pub(super) struct Session<'a> {
    shared: &'a Arc<Shared>,
    reader: LineReader<SessionStream>,
    client: Arc<ClientOut>,
    out: Vec<u8>,
    authenticated: bool,
    name: Option<String>,
    id: u64,
    /// Whether a RESP request came: from then on an empty line is skipped, as Redis skips
    /// one (`redis-cli --pipe` sends `\r\n` before its closing `ECHO`), instead of being
    /// answered `ERR empty command` as on a line-protocol connection.
    spoke_resp: bool,
    /// How the request being served ended, for the metrics.
    outcome: Outcome,
    /// The request being served is a write answered later: it is counted in the metrics then.
    answered_later: bool,
    /// Runs of pipelined writes sent to the slaves and not yet answered, oldest first, with
    /// the framing of each write and when the run was read (see [`MAX_RUNS_IN_FLIGHT`]).
    runs: VecDeque<(ops::SentRun, Vec<Dialect>, Instant, usize)>,
    /// Bytes of values in `runs`.
    runs_bytes: usize,
}

/// The most runs of pipelined writes a connection has sent to the slaves without waiting for
/// their acknowledgements: while the slaves apply one, the master logs and sends the next
/// (with one, the master and the slaves took turns). Replies still go out in order. Together
/// they carry at most [`MAX_PIPELINED_BYTES`] of values, as one run does: each message must be
/// acknowledged within the ACK timeout of its send, and on a slow link a message waits behind
/// the ones sent before it.
const MAX_RUNS_IN_FLIGHT: usize = 2;

impl<'a> Session<'a> {
    pub(super) fn new(
        shared: &'a Arc<Shared>,
        reader: LineReader<TcpStream>,
        client: Arc<ClientOut>,
    ) -> Self {
        Session {
            shared,
            reader: reader.map_inner(SessionStream::new),
            client,
            out: Vec::with_capacity(4096),
            authenticated: shared.config.requirepass.is_none(),
            name: None,
            id: shared.next_client_id.fetch_add(1, Ordering::Relaxed),
            spoke_resp: false,
            outcome: Outcome::Ok,
            answered_later: false,
            runs: VecDeque::new(),
            runs_bytes: 0,
        }
    }

    /// Serves the connection until it closes; `first` is its first line, already read.
    pub(super) fn run(mut self, first: &[u8]) {
        let mut incoming = match Request::parse(first) {
            // The original system's handshake line: accepted as the first line, unanswered.
            Ok(Request::Hello) => self.read(),
            _ if first.first() == Some(&b'*') => {
                let len = resp::request_len(first, self.authenticated);
                self.resp_args(len)
            }
            parsed => Ok(Incoming::Line(parsed)),
        };
        loop {
            let stop = match incoming {
                Ok(request) => self.serve_run(request),
                Err(stop) => Some(stop),
            };
            if let Some(Stop(last)) = stop {
                self.settle_all_runs();
                self.out.extend_from_slice(&last);
                break;
            }
            if !self.reader.has_buffered_line() {
                // About to wait for the client: every reply it can have is due now.
                self.settle_all_runs();
            }
            // Flush only when no further request is already buffered, so a pipelining client
            // gets its replies in few system calls; but never let replies pile up without bound
            // for a client that pipelines many reads of big values.
            if (!self.reader.has_buffered_line() || self.out.len() >= MAX_PENDING_REPLY_BYTES)
                && !self.out.is_empty()
            {
                if self.client.stream().write_all(&self.out).is_err() {
                    return;
                }
                self.out.clear();
            }
            incoming = self.read();
            // Whatever came, the last write is answered before anything else.
            self.reader.get_mut().settle();
        }
        self.reader.get_mut().settle_all();
        let _ = self.client.stream().write_all(&self.out);
    }

    /// Reads the next request.
    fn read(&mut self) -> Result<Incoming, Stop> {
        let line = match self.reader.read_line() {
            Ok(Some(line)) => line,
            Ok(None) | Err(LineError::Io(_)) => return Err(Stop(Vec::new())),
            Err(LineError::TooLong) if self.spoke_resp => {
                return Err(self.protocol_error("too big inline request"))
            }
            Err(LineError::TooLong) => return Err(Stop(b"ERR line too long\r\n".to_vec())),
        };
        match line.first() {
            Some(b'*') => {}
            None if self.spoke_resp => return Ok(Incoming::Nothing),
            // A bulk string where a request should start: the array before it counted fewer
            // elements than it had. No line-protocol request starts with `$`, so on a connection
            // that speaks RESP the framing is lost; answering the rest of the frame line by line
            // would only pile up confusing errors. (Redis would read it as an inline command.)
            Some(b'$') if self.spoke_resp => return Err(self.protocol_error("expected '*', got '$'")),
            _ => return Ok(Incoming::Line(Request::parse(line))),
        }
        let len = resp::request_len(line, self.authenticated);
        self.resp_args(len)
    }

    /// Reads the bulk strings of a RESP request whose header gave `len`.
    fn resp_args(&mut self, len: Result<u64, FrameError>) -> Result<Incoming, Stop> {
        self.spoke_resp = true;
        let authenticated = self.authenticated;
        match len.and_then(|n| resp::read_args(n, &mut self.reader, authenticated)) {
            Ok(args) if args.is_empty() => Ok(Incoming::Nothing),
            Ok(args) => Ok(Incoming::Resp(Command::parse(args))),
            Err(FrameError::Protocol(why)) => Err(self.protocol_error(&why)),
            Err(FrameError::Closed) => Err(Stop(Vec::new())),
        }
    }

    /// Ends the connection with `-ERR Protocol error: <why>`, counted as a failed request (of
    /// no known command) in `STATS` and the metrics. Nothing was executed, so it took no time.
    fn protocol_error(&mut self, why: &str) -> Stop {
        self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
        let outcome = Outcome::Err(ErrorKind::Invalid);
        self.shared.metrics.observe(CommandKind::Other, Protocol::Resp, outcome, Duration::ZERO);
        let mut last = Vec::new();
        resp::push_error(&mut last, &format!("ERR Protocol error: {why}"));
        Stop(last)
    }

    /// True when a write may wait for the writes queued behind it.
    fn may_batch(&self) -> bool {
        self.authenticated && self.reader.has_buffered_line() && self.out.len() < MAX_PENDING_REPLY_BYTES
    }

    /// Serves `first` and, if it is a write with more writes queued behind it, those too, as
    /// one run.
    fn serve_run(&mut self, first: Incoming) -> Option<Stop> {
        let mut pending = Some(first);
        while let Some(incoming) = pending.take() {
            let write = match incoming.take_write() {
                Ok(write) if self.may_batch() => write,
                Ok(write) => return self.serve(Incoming::from_write(write)),
                Err(other) => return self.serve(other),
            };
            let started = Instant::now();
            let mut stop = None;
            let mut dialects = vec![write.2];
            let mut bytes = write.1.len();
            let mut batch = vec![(write.0, write.1)];
            while batch.len() < MAX_PIPELINED_WRITES && self.reader.has_buffered_line() {
                match self.read().map(Incoming::take_write) {
                    Ok(Ok((key, value, dialect))) if run_takes(batch.len(), bytes, value.len()) => {
                        bytes += value.len();
                        batch.push((key, value));
                        dialects.push(dialect);
                    }
                    // Over the run's bytes: it starts the next run.
                    Ok(Ok(write)) => {
                        pending = Some(Incoming::from_write(write));
                        break;
                    }
                    Ok(Err(other)) => {
                        pending = Some(other);
                        break;
                    }
                    Err(end) => {
                        stop = Some(end);
                        break;
                    }
                }
            }
            if self.runs.is_empty() {
                // Late replies to this connection's earlier requests.
                ops::drain_replies();
            }
            // Room for this run among those in flight.
            self.settle_runs(MAX_RUNS_IN_FLIGHT - 1, MAX_PIPELINED_BYTES.saturating_sub(bytes));
            match ops::start_writes(self.shared, batch) {
                Ok(run) => {
                    self.runs_bytes += bytes;
                    self.runs.push_back((run, dialects, started, bytes));
                }
                Err(replies) => {
                    self.settle_all_runs();
                    self.run_replies(replies, dialects, started);
                }
            }
            if stop.is_some() {
                return stop;
            }
        }
        None
    }

    /// Waits for every run in flight, and adds their replies to the output.
    fn settle_all_runs(&mut self) {
        self.settle_runs(0, 0);
    }

    /// Waits for the oldest runs in flight until at most `keep` are left, carrying at most
    /// `keep_bytes` of values, and adds their replies to the output.
    fn settle_runs(&mut self, keep: usize, keep_bytes: usize) {
        while self.runs.len() > keep || (!self.runs.is_empty() && self.runs_bytes > keep_bytes) {
            let Some((run, dialects, started, bytes)) = self.runs.pop_front() else {
                break;
            };
            self.runs_bytes -= bytes;
            let replies = run.finish();
            self.run_replies(replies, dialects, started);
        }
    }

    fn run_replies(&mut self, replies: Vec<Reply>, dialects: Vec<Dialect>, started: Instant) {
        let elapsed = started.elapsed();
        for (reply, dialect) in replies.into_iter().zip(dialects) {
            let protocol = if dialect == Dialect::Resp { Protocol::Resp } else { Protocol::Line };
            self.shared.metrics.observe(CommandKind::Write, protocol, Outcome::of(&reply), elapsed);
            match dialect {
                Dialect::Line => self.line_reply(reply),
                Dialect::Resp => self.resp_status(reply, "OK"),
            }
        }
    }

    /// Serves one request.
    fn serve(&mut self, incoming: Incoming) -> Option<Stop> {
        // Whatever it is, it comes after the writes before it: a read sees them.
        self.settle_all_runs();
        let started = Instant::now();
        self.outcome = Outcome::Ok;
        self.answered_later = false;
        let (kind, protocol, stop) = match incoming {
            Incoming::Nothing => return None,
            Incoming::Line(request) => {
                let kind = CommandKind::of_parsed(&request);
                (kind, Protocol::Line, self.serve_line(request))
            }
            Incoming::Resp(Ok(command)) => {
                let kind = CommandKind::of_resp(&command);
                (kind, Protocol::Resp, self.serve_resp(command))
            }
            Incoming::Resp(Err(message)) => {
                self.resp_err(&message);
                (CommandKind::Other, Protocol::Resp, None)
            }
        };
        if !self.answered_later {
            self.shared.metrics.observe(kind, protocol, self.outcome, started.elapsed());
        }
        stop
    }

    /// Leaves a write to be answered by the slave reader that completes its quorum; the
    /// connection settles it before it serves anything else.
    fn answer_later(&mut self, pending: ops::PendingWrite) {
        self.answered_later = true;
        let stream = self.reader.get_mut();
        // Never two: the last one was settled when this request was read.
        stream.settle();
        stream.pending = Some(pending);
    }

    fn serve_line(&mut self, request: Result<Request, String>) -> Option<Stop> {
        let reply = match request {
            Ok(Request::Auth { password }) => self.check_password(&password),
            Ok(Request::Hello) => Reply::invalid("CLIENT is accepted only as the first line"),
            Ok(Request::Quit) => return Some(Stop(b"BYE\r\n".to_vec())),
            Ok(request) if !self.authenticated && request != Request::Ping => {
                Reply::invalid("NOAUTH authentication required")
            }
            Ok(request) => {
                self.client.set_dialect(Dialect::Line);
                match ops::execute(self.shared, request, self.early()) {
                    ops::Answer::Reply(reply) => reply,
                    ops::Answer::Pending(pending) => {
                        self.answer_later(pending);
                        return None;
                    }
                }
            }
            Err(msg) => Reply::invalid(msg),
        };
        self.line_reply(reply);
        None
    }

    /// The connection, when a write's answer may be sent by the slave reader that completes
    /// its quorum: only when it would be sent at once anyway (nothing waits in `out`, no
    /// further request is buffered).
    fn early(&self) -> Option<&Arc<ClientOut>> {
        (self.out.is_empty() && !self.reader.has_buffered_line()).then_some(&self.client)
    }

    fn line_reply(&mut self, reply: Reply) {
        let reply = match reply {
            // A `\r` is fine: the reply ends at the `\n`, and the client drops one `\r` before it.
            Reply::Value { value, .. } if value.contains(&b'\n') => Reply::invalid(
                "the value holds a line feed, which a line-protocol reply cannot carry: read it over RESP",
            ),
            other => other,
        };
        if matches!(reply, Reply::Err(_)) {
            self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
            self.outcome = Outcome::of(&reply);
        }
        reply.encode_into(&mut self.out);
    }

    /// Answers `AUTH <password>`: `OK` and an authenticated connection, or an error.
    fn check_password(&mut self, attempt: &[u8]) -> Reply {
        match &self.shared.config.requirepass {
            None => Reply::invalid("AUTH given, but no password is configured"),
            Some(password) if password.check(attempt) => {
                self.authenticated = true;
                Reply::Done
            }
            Some(_) => Reply::invalid("invalid password"),
        }
    }

    fn serve_resp(&mut self, command: Command) -> Option<Stop> {
        if !self.authenticated && !command.allowed_before_auth() {
            self.resp_err("NOAUTH Authentication required.");
            return None;
        }
        let shared = self.shared;
        match command {
            Command::Ping(None) => resp::push_simple(&mut self.out, "PONG"),
            Command::Ping(Some(message)) | Command::Echo(message) => resp::push_bulk(&mut self.out, &message),
            Command::Get(key) => match self.read_key(key) {
                Reply::Value { value, .. } => resp::push_bulk(&mut self.out, &value),
                Reply::NotFound => resp::push_null(&mut self.out),
                other => self.resp_reply_error(other),
            },
            Command::Version(key) => match self.read_key(key) {
                Reply::Value { version, .. } => resp::push_int(&mut self.out, version as i64),
                Reply::NotFound => resp::push_null(&mut self.out),
                other => self.resp_reply_error(other),
            },
            Command::Set { key, value } => {
                self.client.set_dialect(Dialect::Resp);
                match ops::execute(shared, Request::Write { key, value }, self.early()) {
                    ops::Answer::Reply(reply) => self.resp_status(reply, "OK"),
                    ops::Answer::Pending(pending) => self.answer_later(pending),
                }
            }
            Command::MSet(pairs) => {
                // In runs, as pipelined writes are: one run of many big values could not be
                // acknowledged within the ACK timeout. After a run with an error the rest is not
                // tried, and the error is the reply.
                for run in into_runs(pairs) {
                    let replies = ops::execute_writes(shared, run);
                    if let Some(error) = replies.into_iter().find(|r| matches!(r, Reply::Err(_))) {
                        self.resp_reply_error(error);
                        return None;
                    }
                }
                resp::push_simple(&mut self.out, "OK");
            }
            Command::Del(keys) => {
                let mut deleted = 0;
                for key in keys {
                    match ops::execute(shared, Request::Delete { key }, None) {
                        ops::Answer::Reply(Reply::Ok(_)) => deleted += 1,
                        ops::Answer::Reply(Reply::NotFound) => {}
                        // Not without a connection to answer on.
                        ops::Answer::Pending(pending) => pending.settle().settle(true),
                        ops::Answer::Reply(other) => {
                            self.resp_reply_error(other);
                            return None;
                        }
                    }
                }
                resp::push_int(&mut self.out, deleted);
            }
            Command::Exists(keys) => {
                let mut present = 0;
                for key in keys {
                    match self.read_key(key) {
                        Reply::Value { .. } => present += 1,
                        Reply::NotFound => {}
                        other => {
                            self.resp_reply_error(other);
                            return None;
                        }
                    }
                }
                resp::push_int(&mut self.out, present);
            }
            Command::MGet(keys) => {
                let mut values = Vec::with_capacity(keys.len());
                let mut bytes = 0;
                for key in keys {
                    match self.read_key(key) {
                        Reply::Value { value, .. } if bytes + value.len() > resp::MAX_RESP_REPLY => {
                            self.resp_err(&format!(
                                "ERR reply too large (over {} bytes of values): ask for fewer keys at once",
                                resp::MAX_RESP_REPLY
                            ));
                            return None;
                        }
                        Reply::Value { value, .. } => {
                            bytes += value.len();
                            values.push(Some(value));
                        }
                        Reply::NotFound => values.push(None),
                        other => {
                            self.resp_reply_error(other);
                            return None;
                        }
                    }
                }
                resp::push_array(&mut self.out, values.len());
                for value in values {
                    match value {
                        Some(v) => resp::push_bulk(&mut self.out, &v),
                        None => resp::push_null(&mut self.out),
                    }
                }
            }
            Command::DbSize => {
                let keys = shared.index.lock().live_keys();
                resp::push_int(&mut self.out, keys as i64);
            }
            Command::Info(sections) => {
                let text = ops::info(shared, &sections);
                resp::push_bulk(&mut self.out, text.as_bytes());
            }
            Command::Auth { user, password } => {
                if let Some(error) = self.resp_auth(user.as_deref(), &password) {
                    self.resp_err(&error);
                } else {
                    resp::push_simple(&mut self.out, "OK");
                }
            }
            Command::Hello { protocol, auth, name } => self.hello(protocol, auth, name),
            Command::ClientSetName(name) => {
                self.name = (!name.is_empty()).then_some(name);
                resp::push_simple(&mut self.out, "OK");
            }
            Command::ClientGetName => match &self.name {
                Some(name) => resp::push_bulk(&mut self.out, name.as_bytes()),
                None => resp::push_null(&mut self.out),
            },
            Command::ClientId => resp::push_int(&mut self.out, self.id as i64),
            Command::ClientInfo => {
                let info = self.client_info();
                resp::push_bulk(&mut self.out, info.as_bytes());
            }
            Command::ClientSetInfo => resp::push_simple(&mut self.out, "OK"),
            Command::Select(0) => resp::push_simple(&mut self.out, "OK"),
            Command::Select(_) => self.resp_err("ERR DB index is out of range"),
            Command::Command(query) => self.command_table(query),
            Command::ConfigGet(patterns) => {
                let found = config_get(&patterns);
                resp::push_array(&mut self.out, 2 * found.len());
                for (name, value) in found {
                    resp::push_bulk(&mut self.out, name.as_bytes());
                    resp::push_bulk(&mut self.out, value.as_bytes());
                }
            }
            Command::Compact => {
                shared.compaction.request();
                resp::push_simple(&mut self.out, "Background append only file rewriting started");
            }
            Command::Quit => {
                let mut last = Vec::new();
                resp::push_simple(&mut last, "OK");
                return Some(Stop(last));
            }
        }
        None
    }

    fn read_key(&self, key: String) -> Reply {
        match ops::execute(self.shared, Request::Read { key }, None) {
            ops::Answer::Reply(reply) => reply,
            // Only writes are answered by another thread, and only given the connection.
            ops::Answer::Pending(pending) => {
                pending.settle().settle(true);
                Reply::invalid("unexpected answer to a read")
            }
        }
    }

    /// `AUTH [user] password` in Redis's terms: `None` when it succeeded, else the error.
    fn resp_auth(&mut self, user: Option<&[u8]>, password: &[u8]) -> Option<String> {
        let Some(expected) = &self.shared.config.requirepass else {
            // Redis's default user without a password takes any password, named with the user.
            if user == Some(b"default".as_slice()) {
                return None;
            }
            return Some(
                "ERR AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?"
                    .into(),
            );
        };
        if user.is_some_and(|u| u != b"default") || !expected.check(password) {
            return Some("WRONGPASS invalid username-password pair or user is disabled.".into());
        }
        self.authenticated = true;
        None
    }

    /// `HELLO`: RESP2 only, so a client asking for RESP3 is told `NOPROTO` and falls back.
    fn hello(&mut self, protocol: Option<u64>, auth: Option<(Vec<u8>, Vec<u8>)>, name: Option<String>) {
        if protocol.is_some_and(|p| p != 2) {
            self.resp_err("NOPROTO sorry, this protocol version is not supported");
            return;
        }
        if let Some((user, password)) = auth {
            if let Some(error) = self.resp_auth(Some(&user), &password) {
                self.resp_err(&error);
                return;
            }
        }
        if !self.authenticated {
            self.resp_err(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
                 HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
                 select the RESP protocol version at the same time",
            );
            return;
        }
        if let Some(name) = name {
            self.name = Some(name);
        }
        let role = if self.shared.role() == super::Role::Primary { "master" } else { "replica" };
        let out = &mut self.out;
        resp::push_array(out, 14);
        for (field, value) in [("server", "dsm"), ("version", REDIS_COMPAT_VERSION)] {
            resp::push_bulk(out, field.as_bytes());
            resp::push_bulk(out, value.as_bytes());
        }
        resp::push_bulk(out, b"proto");
        resp::push_int(out, 2);
        resp::push_bulk(out, b"id");
        resp::push_int(out, self.id as i64);
        for (field, value) in [("mode", "standalone"), ("role", role)] {
            resp::push_bulk(out, field.as_bytes());
            resp::push_bulk(out, value.as_bytes());
        }
        resp::push_bulk(out, b"modules");
        resp::push_array(out, 0);
    }

    fn client_info(&self) -> String {
        let addr = self.client.stream().peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let name = self.name.as_deref().unwrap_or("");
        format!("id={} addr={addr} name={name} db=0 resp=2\n", self.id)
    }

    /// `COMMAND`: the table of `crate::resp::command`, in Redis's six-field form.
    fn command_table(&mut self, query: CommandQuery) {
        let out = &mut self.out;
        let push_spec = |out: &mut Vec<u8>, spec: &crate::resp::command::Spec| {
            resp::push_array(out, 6);
            resp::push_bulk(out, spec.name.as_bytes());
            resp::push_int(out, spec.arity);
            resp::push_array(out, spec.flags.len());
            for flag in spec.flags {
                resp::push_simple(out, flag);
            }
            resp::push_int(out, spec.first_key);
            resp::push_int(out, spec.last_key);
            resp::push_int(out, spec.step);
        };
        match query {
            CommandQuery::All => {
                resp::push_array(out, COMMANDS.len());
                for spec in COMMANDS {
                    push_spec(out, spec);
                }
            }
            CommandQuery::Count => resp::push_int(out, COMMANDS.len() as i64),
            // No documentation to give. An error (not an empty answer) makes redis-cli use the
            // help it carries itself.
            CommandQuery::Docs => resp::push_error(
                out,
                "ERR unknown subcommand 'docs'. dsm has no command documentation to give",
            ),
            CommandQuery::Info(names) if names.is_empty() => {
                resp::push_array(out, COMMANDS.len());
                for spec in COMMANDS {
                    push_spec(out, spec);
                }
            }
            CommandQuery::Info(names) => {
                resp::push_array(out, names.len());
                for name in names {
                    match COMMANDS.iter().find(|s| s.name == name) {
                        Some(spec) => push_spec(out, spec),
                        None => resp::push_null(out),
                    }
                }
            }
        }
    }

    /// A write's reply as a RESP status (`+OK`), or its error.
    fn resp_status(&mut self, reply: Reply, status: &str) {
        match reply {
            Reply::Ok(_) | Reply::Done => resp::push_simple(&mut self.out, status),
            other => self.resp_reply_error(other),
        }
    }

    /// A reply that is not what the command answers on success: its error in Redis's terms.
    fn resp_reply_error(&mut self, reply: Reply) {
        let text = match reply {
            Reply::Err(e) => {
                let text = resp_error_text(&e);
                self.resp_err(&text);
                self.outcome = Outcome::Err(ErrorKind::of(&e));
                return;
            }
            other => {
                format!("ERR unexpected reply {:?}", String::from_utf8_lossy(&other.encode()).trim_end())
            }
        };
        self.resp_err(&text);
    }

    fn resp_err(&mut self, text: &str) {
        self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
        self.outcome = Outcome::Err(ErrorKind::Invalid);
        resp::push_error(&mut self.out, text);
    }
}

/// Whether a run of `writes` writes holding `bytes` bytes of values may take one more, of
/// `value` bytes: while it stays within [`MAX_PIPELINED_WRITES`] and [`MAX_PIPELINED_BYTES`].
/// An empty run takes any write, so a run is never empty.
fn run_takes(writes: usize, bytes: usize, value: usize) -> bool {
    writes == 0 || (writes < MAX_PIPELINED_WRITES && bytes + value <= MAX_PIPELINED_BYTES)
}

/// Splits `writes` (an `MSET`'s) into runs as a pipelined run is bounded ([`run_takes`]), in
/// order.
fn into_runs(writes: Vec<(String, Vec<u8>)>) -> Vec<Vec<(String, Vec<u8>)>> {
    let mut runs: Vec<Vec<(String, Vec<u8>)>> = Vec::new();
    let mut bytes = 0;
    for (key, value) in writes {
        match runs.last_mut() {
            Some(run) if run_takes(run.len(), bytes, value.len()) => {
                bytes += value.len();
                run.push((key, value));
            }
            _ => {
                bytes = value.len();
                runs.push(vec![(key, value)]);
            }
        }
    }
    runs
}

/// A dsm refusal as a RESP error: the code a Redis client acts on, then dsm's reason.
pub fn resp_error_text(error: &ErrorReply) -> String {
    match error {
        ErrorReply::NotPrimary(addr) => {
            format!("READONLY this dsm master is a standby and serves neither reads nor writes; the primary is {addr}")
        }
        ErrorReply::Unavailable(why) if why.contains("write-ahead log") => format!("MISCONF {why}"),
        ErrorReply::Unavailable(why) => format!("NOREPLICAS {why}"),
        ErrorReply::Timeout(why) => format!("TIMEOUT {why}"),
        ErrorReply::Invalid(message) => format!("ERR {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(runs: &[Vec<(String, Vec<u8>)>]) -> Vec<Vec<usize>> {
        runs.iter().map(|run| run.iter().map(|(_, v)| v.len()).collect()).collect()
    }

    fn writes(sizes: &[usize]) -> Vec<(String, Vec<u8>)> {
        sizes.iter().enumerate().map(|(i, &n)| (format!("k{i}"), vec![b'x'; n])).collect()
    }

    #[test]
    fn an_mset_is_split_into_runs_by_count_and_bytes() {
        let max = MAX_PIPELINED_BYTES;
        assert!(into_runs(Vec::new()).is_empty());
        assert_eq!(sizes(&into_runs(writes(&[1, 2, 3]))), [vec![1, 2, 3]]);
        // Values that fill the byte budget exactly share a run; one byte more starts another.
        assert_eq!(sizes(&into_runs(writes(&[max / 2, max / 2, 1]))), [vec![max / 2, max / 2], vec![1]]);
        // A value of the whole budget goes alone, and so does one of more than it.
        assert_eq!(
            sizes(&into_runs(writes(&[max, max, 0, max + 1]))),
            [vec![max], vec![max, 0], vec![max + 1]]
        );
        // Empty values: bounded by the count alone.
        let runs = into_runs(writes(&vec![0; 2 * MAX_PIPELINED_WRITES + 1]));
        assert_eq!(
            runs.iter().map(Vec::len).collect::<Vec<_>>(),
            [MAX_PIPELINED_WRITES, MAX_PIPELINED_WRITES, 1]
        );
        // In order.
        let keys: Vec<String> = runs.into_iter().flatten().map(|(k, _)| k).collect();
        assert_eq!(keys, (0..2 * MAX_PIPELINED_WRITES + 1).map(|i| format!("k{i}")).collect::<Vec<_>>());
    }

    #[test]
    fn a_run_always_takes_its_first_write() {
        assert!(run_takes(0, 0, MAX_PIPELINED_BYTES + 1));
        assert!(run_takes(1, 10, MAX_PIPELINED_BYTES - 10));
        assert!(!run_takes(1, 10, MAX_PIPELINED_BYTES - 9));
        assert!(!run_takes(MAX_PIPELINED_WRITES, 0, 0));
    }
}
