//! The `/metrics` endpoint (`--metrics-listen ADDR`): a small blocking HTTP/1.x server on a
//! port of its own, for Prometheus to scrape.
//!
//! One thread accepts connections and answers them one after the other, one request each,
//! then closes: scrapes are rare and quick, and a client that dawdles is cut off after
//! [`REQUEST_TIMEOUT`], so it holds the next scrape up for at most that long. A scrape reads
//! the master's state from the same sources as `STATS` ([`snapshot`]) and answers with
//! [`crate::metrics::Metrics::encode`]: OpenMetrics text when `Accept` asks for it (Prometheus
//! does), otherwise the Prometheus text format. Deciding the answer ([`respond`]) is a plain
//! function of the request's bytes; the thread around it only moves them.
//!
//! ```text
//! GET /metrics               -> 200 and the metrics        (HEAD: the same headers, no body)
//! GET /anything-else         -> 404
//! POST /metrics, ...         -> 405, Allow: GET, HEAD
//! a malformed request        -> 400
//! a head over 8 KiB          -> 431
//! no whole head within 5 s   -> 408
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::Shared;
use crate::metrics::{Format, Snapshot};
use crate::Result;

/// How long a client has to send its whole request head. One that takes longer gets `408` and
/// is closed: the endpoint serves one connection at a time, so this bounds how long one slow
/// or silent client can hold up a scrape.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long sending the answer may take; a client that does not read it is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest request head (request line and headers) read. A larger one gets `431` and is
/// closed; a scraper's request is a few hundred bytes.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// After an error answer, how long what the client still sends is read and dropped before the
/// connection is closed. Closing a socket with unread bytes makes the kernel reset the
/// connection, and the client could lose the answer.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// The most bytes read and dropped after an error answer (see [`DRAIN_TIMEOUT`]).
pub const MAX_DRAIN: usize = 64 * 1024;

/// How long the accept loop waits after a failed accept (out of file descriptors, say) before
/// it tries again, instead of spinning.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Binds the metrics listener, with an error that names the flag.
pub(super) fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .map_err(|e| crate::Error::Config(format!("cannot listen on {addr} for --metrics-listen: {e}")))
}

/// Starts the endpoint's thread on `listener` and logs where it is.
pub(super) fn start(listener: TcpListener, shared: Arc<Shared>) -> Result<()> {
    let addr = listener.local_addr()?;
    thread::Builder::new().name("metrics".into()).spawn(move || serve(&listener, &shared))?;
    log::info!("metrics on http://{addr}/metrics");
    Ok(())
}

/// The accept loop: each connection is answered in turn.
fn serve(listener: &TcpListener, shared: &Shared) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => handle(shared, stream),
            Err(e) => {
                log::warn!("metrics: accept failed: {e}");
                thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

/// Reads one request from `stream`, answers it, and closes.
fn handle(shared: &Shared, mut stream: TcpStream) {
    let peer = stream.peer_addr().ok();
    let response = match read_head(&mut stream) {
        Ok(Some(head)) => respond(&head, |format| shared.metrics.encode(&snapshot(shared), format)),
        Ok(None) => return,
        Err(status) => Response::error(status),
    };
    if response.status >= 400 {
        log::debug!("metrics: answered {} to {peer:?}", response.status);
    }
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    if stream.write_all(&response.encode()).is_err() {
        return;
    }
    if response.status >= 400 {
        drain(&mut stream);
    }
}

/// Reads up to the end of the request head (the empty line), within [`REQUEST_TIMEOUT`] and
/// [`MAX_REQUEST_HEAD`]. `None` when the client closed or failed before sending anything (there
/// is no one to answer); an error status when the head is too long, incomplete or too slow.
fn read_head(stream: &mut TcpStream) -> std::result::Result<Option<Vec<u8>>, Status> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(Status::RequestTimeout);
        }
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(Status::RequestTimeout)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) if head.is_empty() => return Ok(None),
            Err(_) => return Err(Status::BadRequest),
        };
        if n == 0 {
            return if head.is_empty() { Ok(None) } else { Err(Status::BadRequest) };
        }
        // The terminator may straddle two reads: look again from a little before the new bytes.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&head[from..]).map(|e| from + e) {
            if end > MAX_REQUEST_HEAD {
                return Err(Status::HeadTooLarge);
            }
            head.truncate(end);
            return Ok(Some(head));
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Err(Status::HeadTooLarge);
        }
    }
}

/// Where the head in `bytes` ends, its blank line included (`\r\n\r\n`, or `\n\n` from a
/// lenient client).
fn head_end(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find_map(|i| {
        let rest = &bytes[i..];
        if rest.starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if rest.starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// Reads and drops what the client still sends, for at most [`DRAIN_TIMEOUT`] and
/// [`MAX_DRAIN`] bytes, after telling it no more is coming.
fn drain(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut chunk = [0u8; 4096];
    let mut dropped = 0;
    while dropped < MAX_DRAIN {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => dropped += n,
        }
    }
}

/// The statuses the endpoint answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    HeadTooLarge,
    InternalError,
}

impl Status {
    fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::HeadTooLarge => 431,
            Status::InternalError => 500,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::HeadTooLarge => "Request Header Fields Too Large",
            Status::InternalError => "Internal Server Error",
        }
    }
}

/// An answer, before it is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    /// `HEAD`: the headers of the answer, `Content-Length` included, without its body.
    head_only: bool,
    /// `405`: send `Allow: GET, HEAD`.
    allow: bool,
}

impl Response {
    fn error(status: Status) -> Response {
        Response {
            status: status.code(),
            reason: status.reason(),
            content_type: "text/plain; charset=utf-8",
            body: format!("{}\n", status.reason()),
            head_only: false,
            allow: status == Status::MethodNotAllowed,
        }
    }

    /// The bytes sent: status line, headers, and the body unless `HEAD`.
    fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// The answer to a request whose head (request line and headers, through the blank line) is
/// `head`; `render` encodes the metrics in the format asked for.
pub(super) fn respond(
    head: &[u8],
    render: impl FnOnce(Format) -> std::result::Result<String, std::fmt::Error>,
) -> Response {
    let Ok(text) = std::str::from_utf8(head) else {
        return Response::error(Status::BadRequest);
    };
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut parts = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::error(Status::BadRequest);
    };
    let token = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
    };
    if !token(method) || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Response::error(Status::BadRequest);
    }
    let mut accept = None;
    for line in lines.take_while(|l| !l.is_empty()) {
        match line.split_once(':') {
            Some((name, value)) if token(name) => {
                if name.eq_ignore_ascii_case("accept") {
                    accept = Some(value.trim());
                }
            }
            _ => return Response::error(Status::BadRequest),
        }
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Response::error(Status::MethodNotAllowed),
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path != "/metrics" {
        return Response::error(Status::NotFound);
    }
    let format = Format::negotiate(accept);
    match render(format) {
        Ok(body) => Response {
            status: Status::Ok.code(),
            reason: Status::Ok.reason(),
            content_type: format.content_type(),
            body,
            head_only,
            allow: false,
        },
        Err(_) => {
            log::error!("metrics: the encoder refused the metrics");
            Response::error(Status::InternalError)
        }
    }
}

/// The master's state for a scrape, read from the same sources as `STATS`.
pub(super) fn snapshot(shared: &Shared) -> Snapshot {
    let members = shared.members.lock().all();
    let up = members.iter().filter(|(_, m)| m.link.as_ref().is_some_and(|l| l.is_synced())).count();
    let keys = shared.index.lock().live_keys();
    let stats = &shared.stats;
    Snapshot {
        role: shared.role(),
        epoch: shared.epoch(),
        members: members.len() as u64,
        members_up: up as u64,
        keys: keys as u64,
        wal_bytes: shared.wal.bytes(),
        wal_seq: shared.wal.last_seq(),
        compactions: shared.compaction.status().done,
        connections: shared.connections.load(Ordering::Relaxed) as u64,
        writes: stats.writes.load(Ordering::Relaxed),
        reads: stats.reads.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(head: &str) -> Response {
        respond(head.as_bytes(), |format| Ok(format!("{format:?}")))
    }

    #[test]
    fn requests_are_answered_by_method_and_path() {
        let table = [
            ("GET /metrics HTTP/1.0\r\n\r\n", 200, "Prometheus"),
            ("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", 200, "Prometheus"),
            ("GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text\r\n\r\n", 200, "OpenMetrics"),
            (
                "GET /metrics HTTP/1.1\naccept:application/openmetrics-text;version=1.0.0\n\n",
                200,
                "OpenMetrics",
            ),
            ("GET / HTTP/1.1\r\n\r\n", 404, "Not Found\n"),
            ("GET /nope HTTP/1.1\r\n\r\n", 404, "Not Found\n"),
            ("POST /metrics HTTP/1.1\r\n\r\n", 405, "Method Not Allowed\n"),
            ("GARBAGE\r\n\r\n", 400, "Bad Request\n"),
            ("GET /metrics\r\n\r\n", 400, "Bad Request\n"),
            ("GET /metrics HTTP/2\r\n\r\n", 400, "Bad Request\n"),
            ("GET metrics HTTP/1.1\r\n\r\n", 400, "Bad Request\n"),
            ("GET  /metrics HTTP/1.1\r\n\r\n", 400, "Bad Request\n"),
            ("GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400, "Bad Request\n"),
            ("G(T /metrics HTTP/1.1\r\n\r\n", 400, "Bad Request\n"),
        ];
        for (head, status, body) in table {
            let r = answer(head);
            assert_eq!((r.status, r.body.as_str()), (status, body), "{head:?}");
        }
        assert_eq!(respond(b"GET /metrics HTTP/1.1\r\n\xff: x\r\n\r\n", |_| Ok(String::new())).status, 400);
    }

    #[test]
    fn the_answer_carries_its_length_and_closes() {
        let r = answer("GET /metrics HTTP/1.0\r\n\r\n");
        let bytes = String::from_utf8(r.encode()).unwrap();
        assert_eq!(
            bytes,
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: 10\r\nConnection: close\r\n\r\nPrometheus",
                crate::metrics::PROMETHEUS_CONTENT_TYPE
            )
        );
        let head = String::from_utf8(answer("HEAD /metrics HTTP/1.1\r\n\r\n").encode()).unwrap();
        assert!(head.ends_with("Content-Length: 10\r\nConnection: close\r\n\r\n"), "{head}");
        let refused = String::from_utf8(answer("PUT /metrics HTTP/1.1\r\n\r\n").encode()).unwrap();
        assert!(refused.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{refused}");
        assert!(refused.contains("\r\nAllow: GET, HEAD\r\n"), "{refused}");
    }

    #[test]
    fn an_encoder_failure_is_a_500() {
        assert_eq!(respond(b"GET /metrics HTTP/1.1\r\n\r\n", |_| Err(std::fmt::Error)).status, 500);
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}
