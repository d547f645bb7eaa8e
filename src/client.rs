//! The client library: one blocking connection to a master, with failover.
//!
//! A [`Client`] knows the primary's address and optionally the backup's. It connects to the
//! first that accepts, sends one request at a time and reads its reply. When the server answers
//! `ERR NOTPRIMARY <addr>` or `ERR UNAVAILABLE` (nothing was done) the client moves to the other
//! server and sends the request again, and with [`Client::set_wait`] it keeps trying for a
//! while (a takeover takes about a second). When the connection breaks, a write fails with an
//! I/O error (its outcome is then unknown, so it is never silently re-sent) and the next request
//! reconnects, trying the servers in order. Every failover is reported once through
//! [`Client::take_events`] so a user interface can say so.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::framing::{LineError, LineReader};
use crate::protocol::{check_key, check_line_value, parse_table_row, ErrorReply, Reply, Request};
use crate::{Error, Result};

/// How long a connection attempt to one server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a request may wait for its reply by default. Longer than a master's write deadline,
/// so a slow quorum shows as `ERR TIMEOUT` from the server rather than as a client timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times one attempt of a request moves to the other server before giving up, so two
/// servers that each point at the other cannot bounce a client forever.
const MAX_REDIRECTS: usize = 3;

/// The pause between two attempts of a request that no master could take yet (during a
/// takeover), within the client's wait ([`Client::set_wait`]).
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Something the user may want to be told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Connected to this server.
    Connected(String),
    /// The server at the first address failed or refused; moved on to the second.
    FailedOver { from: String, to: String, why: String },
}

/// A connection to a dsm master, with failover between the primary and the backup.
pub struct Client {
    servers: Vec<String>,
    /// Index into `servers` of the server to try first.
    preferred: usize,
    conn: Option<Conn>,
    timeout: Duration,
    events: Vec<Event>,
    /// Sent as `AUTH <password>` on every new connection.
    password: Option<Vec<u8>>,
    /// The request being sent, encoded; kept to send again after a redirect, and reused so a
    /// request does not allocate.
    out: Vec<u8>,
    /// How long a request that no master could take (`ERR UNAVAILABLE`, `ERR NOTPRIMARY`, no
    /// server reachable) is retried; zero by default.
    wait: Duration,
    /// The last move reported, so a retried request does not report it again.
    last_failover: Option<(String, String)>,
}

struct Conn {
    addr: String,
    stream: TcpStream,
    reader: LineReader<TcpStream>,
}

impl Client {
    /// A client of `master`, failing over to `backup` if given. Nothing is connected yet.
    pub fn new(master: &str, backup: Option<&str>) -> Client {
        let mut servers = vec![master.to_string()];
        servers.extend(backup.map(str::to_string));
        Client {
            servers,
            preferred: 0,
            conn: None,
            timeout: DEFAULT_REQUEST_TIMEOUT,
            events: Vec::new(),
            password: None,
            out: Vec::new(),
            wait: Duration::ZERO,
            last_failover: None,
        }
    }

    /// Retries, for up to `wait`, a request that certainly did nothing because no master could
    /// take it: both answered `ERR UNAVAILABLE` or `ERR NOTPRIMARY` (as during a takeover), or
    /// neither could be reached. A write whose outcome is unknown is never sent again.
    pub fn set_wait(&mut self, wait: Duration) {
        self.wait = wait;
    }

    /// Sets how long a request waits for its reply.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
        if let Some(c) = &self.conn {
            let _ = c.stream.set_read_timeout(Some(timeout));
        }
    }

    /// Sends `AUTH <password>` after each connect (servers started with `--requirepass`). A
    /// server that refuses it counts as unreachable, with its error as the reason.
    pub fn set_password(&mut self, password: &[u8]) {
        self.password = Some(password.to_vec());
        self.conn = None;
    }

    /// The address of the server currently connected, if any.
    pub fn connected_to(&self) -> Option<&str> {
        self.conn.as_ref().map(|c| c.addr.as_str())
    }

    /// Drains the events (connections, failovers) since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Connects if not connected: the preferred server first, then the others.
    pub fn connect(&mut self) -> Result<()> {
        if self.conn.is_some() {
            return Ok(());
        }
        let mut failures = Vec::new();
        for i in 0..self.servers.len() {
            let idx = (self.preferred + i) % self.servers.len();
            let addr = self.servers[idx].clone();
            match Conn::open(&addr, self.timeout, self.password.as_deref()) {
                Ok(conn) => {
                    if let Some((from, why)) = failures.last().cloned() {
                        self.failed_over(from, addr.clone(), why);
                    }
                    self.events.push(Event::Connected(addr));
                    self.preferred = idx;
                    self.conn = Some(conn);
                    return Ok(());
                }
                Err(Error::Auth(why)) => return Err(Error::Auth(format!("{addr}: {why}"))),
                Err(e) => failures.push((addr, e.to_string())),
            }
        }
        let tried: Vec<String> = failures.iter().map(|(a, e)| format!("{a}: {e}")).collect();
        Err(Error::Unavailable(format!("no server reachable ({})", tried.join("; "))))
    }

    /// Sends a request and returns the server's reply. `ERR NOTPRIMARY` and `ERR UNAVAILABLE`
    /// (nothing was done) are followed to the other server; with [`Client::set_wait`], they
    /// are retried until the wait runs out. An `ERR` reply is returned as a [`Reply::Err`],
    /// not as an `Err`.
    ///
    /// A request the line protocol cannot carry (a key with a space, a value with a line break)
    /// is refused with [`Error::Invalid`] before anything is sent.
    pub fn request(&mut self, request: &Request) -> Result<Reply> {
        self.out.clear();
        request.encode_into(&mut self.out).map_err(Error::Invalid)?;
        self.send_encoded(is_idempotent(request))
    }

    /// [`Client::request`] for the request already encoded in `self.out`; `idempotent` when
    /// sending it twice is harmless (a read).
    fn send_encoded(&mut self, idempotent: bool) -> Result<Reply> {
        let deadline = Instant::now() + self.wait;
        loop {
            let result = self.send_once(idempotent);
            // Retry only what certainly did nothing: a refusal before the request was sent,
            // or a reply that says nothing was done. A write whose connection broke has an
            // unknown outcome and is never sent again.
            let retry = matches!(
                result,
                Ok(Reply::Err(ErrorReply::NotPrimary(_) | ErrorReply::Unavailable(_)))
                    | Err(Error::Unavailable(_))
            );
            if !retry || Instant::now() >= deadline {
                return result;
            }
            std::thread::sleep(RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now())));
        }
    }

    /// One attempt: the preferred server, then (after `ERR NOTPRIMARY`, `ERR UNAVAILABLE`, or
    /// for a read a broken connection) the other one.
    fn send_once(&mut self, idempotent: bool) -> Result<Reply> {
        let mut redirects = 0;
        let mut first_refusal: Option<Reply> = None;
        loop {
            self.connect()?;
            let reply = match self.exchange() {
                Ok(r) => r,
                Err(e) => {
                    let from = self.connected_to().unwrap_or_default().to_string();
                    // A read has no effect, so it is safe to send again elsewhere; a write's
                    // outcome is unknown and is left to the caller.
                    if idempotent && redirects < MAX_REDIRECTS {
                        redirects += 1;
                        self.switch_server(from, e.to_string())?;
                        continue;
                    }
                    self.disconnect_and_prefer_other();
                    return Err(e);
                }
            };
            let why = match &reply {
                Reply::Err(ErrorReply::NotPrimary(_)) => "not the primary",
                Reply::Err(ErrorReply::Unavailable(_)) => "unavailable",
                _ => return Ok(reply),
            };
            if redirects >= MAX_REDIRECTS || self.servers.len() < 2 {
                return Ok(first_refusal.unwrap_or(reply));
            }
            redirects += 1;
            let from = self.connected_to().unwrap_or_default().to_string();
            // Both servers refused: tell the first refusal, which names the primary.
            let first = first_refusal.get_or_insert(reply).clone();
            if redirects > 1 {
                return Ok(first);
            }
            if self.switch_server(from, why.to_string()).is_err() {
                return Ok(first);
            }
        }
    }

    /// Reports a move from one server to another, unless it is the same move as the last one
    /// reported (a request retried through a takeover makes it again and again).
    fn failed_over(&mut self, from: String, to: String, why: String) {
        let this = (from, to);
        if self.last_failover.as_ref() != Some(&this) {
            self.events.push(Event::FailedOver { from: this.0.clone(), to: this.1.clone(), why });
            self.last_failover = Some(this);
        }
    }

    /// Leaves the server `from` for the other one, and reports the move once.
    fn switch_server(&mut self, from: String, why: String) -> Result<()> {
        self.disconnect_and_prefer_other();
        let connected = self.connect();
        if let Some(to) = self.connected_to() {
            if to != from {
                let to = to.to_string();
                // `connect` reports its own failovers; add this one only if it did not.
                if !matches!(self.events.last(), Some(Event::FailedOver { .. })) {
                    self.failed_over(from, to, why);
                }
            }
        }
        connected
    }

    /// `WRITE key value`: the version on success.
    pub fn write(&mut self, key: &str, value: &[u8]) -> Result<Reply> {
        // What Request::encode_into writes for a Write, without building one.
        check_key(key.as_bytes()).map_err(Error::Invalid)?;
        check_line_value(value, "value").map_err(Error::Invalid)?;
        self.out.clear();
        self.out.extend_from_slice(b"WRITE ");
        self.out.extend_from_slice(key.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(value);
        self.out.push(b'\n');
        self.send_encoded(false)
    }

    /// `READ key`.
    pub fn read(&mut self, key: &str) -> Result<Reply> {
        check_key(key.as_bytes()).map_err(Error::Invalid)?;
        self.out.clear();
        self.out.extend_from_slice(b"READ ");
        self.out.extend_from_slice(key.as_bytes());
        self.out.push(b'\n');
        self.send_encoded(true)
    }

    /// `STATS` as name/value pairs.
    pub fn stats(&mut self) -> Result<Vec<(String, String)>> {
        match self.request(&Request::Stats)? {
            Reply::Table { rows, .. } => Ok(rows),
            Reply::Err(e) => Err(Error::Protocol(format!("STATS failed: {e}"))),
            other => Err(Error::Protocol(format!("unexpected reply to STATS: {other:?}"))),
        }
    }

    /// Closes the connection; the next request reconnects, trying the other server first.
    pub fn disconnect_and_prefer_other(&mut self) {
        self.conn = None;
        if self.servers.len() > 1 {
            self.preferred = (self.preferred + 1) % self.servers.len();
        }
    }

    /// Connects (to the first server that answers, with `AUTH` if a password is set) and hands
    /// the connection over for streaming: requests are written to the stream as they come, and
    /// their replies read, in order, from the [`ReplyReader`] on another thread.
    pub fn into_stream(mut self) -> Result<(TcpStream, ReplyReader)> {
        self.connect()?;
        let conn = self.conn.take().ok_or_else(|| Error::Unavailable("not connected".into()))?;
        Ok((conn.stream.try_clone()?, ReplyReader(conn)))
    }

    fn exchange(&mut self) -> Result<Reply> {
        let conn = self.conn.as_mut().ok_or_else(|| Error::Unavailable("not connected".into()))?;
        conn.stream.write_all(&self.out)?;
        conn.read_reply()
    }
}

/// The reading side of [`Client::into_stream`].
pub struct ReplyReader(Conn);

impl ReplyReader {
    /// The next reply.
    pub fn next_reply(&mut self) -> Result<Reply> {
        self.0.read_reply()
    }

    /// The server's address.
    pub fn addr(&self) -> &str {
        &self.0.addr
    }
}

impl Conn {
    fn open(addr: &str, timeout: Duration, password: Option<&[u8]>) -> Result<Conn> {
        let stream = connect(addr)?;
        stream.set_read_timeout(Some(timeout))?;
        let reader = LineReader::new(stream.try_clone()?);
        let mut conn = Conn { addr: addr.to_string(), stream, reader };
        if let Some(password) = password {
            let mut auth = Vec::new();
            Request::Auth { password: password.to_vec() }.encode_into(&mut auth).map_err(Error::Invalid)?;
            conn.stream.write_all(&auth)?;
            match conn.read_reply()? {
                Reply::Done => {}
                Reply::Err(e) => return Err(Error::Auth(format!("ERR {e}"))),
                other => return Err(Error::Protocol(format!("unexpected reply to AUTH: {other:?}"))),
            }
        }
        Ok(conn)
    }

    fn read_reply(&mut self) -> Result<Reply> {
        // The first line is parsed where it lies in the reader's buffer, without a copy.
        let (mut reply, end) = {
            let first = self.next_line_ref()?;
            (Reply::parse_line(first).map_err(Error::Protocol)?, first == b"END")
        };
        if let Reply::Table { rows, .. } = &mut reply {
            if !end {
                loop {
                    let line = self.next_line()?;
                    if line == b"END" {
                        break;
                    }
                    let row = parse_table_row(&line).ok_or_else(|| {
                        Error::Protocol(format!("bad table row: {}", String::from_utf8_lossy(&line)))
                    })?;
                    rows.push(row);
                }
            }
        }
        Ok(reply)
    }

    fn next_line(&mut self) -> Result<Vec<u8>> {
        self.next_line_ref().map(<[u8]>::to_vec)
    }

    fn next_line_ref(&mut self) -> Result<&[u8]> {
        match self.reader.read_line() {
            Ok(Some(line)) => Ok(line),
            Ok(None) => Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} closed the connection", self.addr),
            ))),
            Err(LineError::TooLong) => Err(Error::Protocol("reply line too long".into())),
            Err(LineError::Io(e)) if is_timeout(&e) => {
                Err(Error::Timeout(format!("no reply from {} in time", self.addr)))
            }
            Err(LineError::Io(e)) => Err(Error::Io(e)),
        }
    }
}

/// Connects to `addr` (within [`CONNECT_TIMEOUT`] per resolved address), with `TCP_NODELAY`.
pub fn connect(addr: &str) -> Result<TcpStream> {
    let sockaddrs: Vec<SocketAddr> =
        addr.to_socket_addrs().map_err(|e| Error::Config(format!("bad address {addr}: {e}")))?.collect();
    let mut last = None;
    for sa in sockaddrs {
        match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.map(Error::Io).unwrap_or_else(|| Error::Config(format!("{addr} resolves to nothing"))))
}

/// True for requests that change nothing, so sending one twice is harmless.
fn is_idempotent(request: &Request) -> bool {
    matches!(request, Request::Read { .. } | Request::Ping | Request::Stats | Request::Members)
}

/// True for the errors a socket read timeout produces.
pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_requests_parse_back() {
        let requests = [
            Request::Write { key: "k".into(), value: b"a b ".to_vec() },
            Request::Write { key: "k".into(), value: Vec::new() },
            Request::Read { key: "k".into() },
            Request::Delete { key: "k".into() },
            Request::Remove { id: "s1".into() },
            Request::Ping,
            Request::Stats,
            Request::Members,
            Request::Quit,
            Request::Hello,
            Request::Auth { password: b"a b".to_vec() },
        ];
        for r in requests {
            let mut out = Vec::new();
            r.encode_into(&mut out).unwrap();
            assert_eq!(Request::parse(&out[..out.len() - 1]).unwrap(), r);
        }
    }

    #[test]
    fn write_and_read_send_what_encode_request_does() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = LineReader::new(stream.try_clone().unwrap());
            let mut lines = Vec::new();
            for reply in [&b"OK 7\r\n"[..], b"VALUE 7 a b\r\n"] {
                lines.push(reader.read_line().unwrap().unwrap().to_vec());
                (&stream).write_all(reply).unwrap();
            }
            lines
        });
        let mut c = Client::new(&addr, None);
        assert_eq!(c.write("k", b"a b").unwrap(), Reply::Ok(7));
        assert_eq!(c.read("k").unwrap(), Reply::Value { version: 7, value: b"a b".to_vec() });
        let mut want = Vec::new();
        Request::Write { key: "k".into(), value: b"a b".to_vec() }.encode_into(&mut want).unwrap();
        Request::Read { key: "k".into() }.encode_into(&mut want).unwrap();
        let got: Vec<u8> = server
            .join()
            .unwrap()
            .into_iter()
            .flat_map(|mut l| {
                l.push(b'\n');
                l
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn no_server_is_a_clear_error() {
        // Bind then drop a listener so the port is very likely closed.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut c = Client::new(&addr.to_string(), None);
        match c.request(&Request::Ping) {
            Err(Error::Unavailable(msg)) => assert!(msg.contains("no server reachable"), "{msg}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
