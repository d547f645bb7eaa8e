//! Refuses a connection over `--max-connections` in the framing its client speaks.
//!
//! Nothing has been read from a refused connection, so its framing is told from its first
//! byte, as a session tells a request's: `*` (a Redis client, which sends its first request as
//! soon as it is connected) is answered Redis's own `-ERR max number of clients reached`;
//! anything else, or nothing within [`REFUSAL_WAIT`] (an `nc` user who has not typed yet), the
//! line protocol's `ERR too many connections`. A Redis client cannot read the line reply
//! (redis-cli: `Protocol error, got "E" as reply type byte`).
//!
//! The accept loop never waits for that byte: it hands the connection to one refusing thread
//! through a queue of [`MAX_REFUSING`], and answers the line reply at once when the queue is
//! full. The thread holds at most [`MAX_REFUSING`] connections and polls them without
//! blocking, so one silent client does not hold up the others.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::thread;
use std::time::{Duration, Instant};

/// How long a refused connection may take to send its first byte before it is given the line
/// reply. Long enough for a Redis client on a busy machine (it sends at once); a connection
/// that sends nothing holds a file descriptor this long, at most [`MAX_REFUSING`] of them.
pub const REFUSAL_WAIT: Duration = Duration::from_millis(100);

/// The most refused connections waiting for their first byte, and again the most queued for
/// the refusing thread: beyond them a refused connection gets the line reply at once.
pub const MAX_REFUSING: usize = 64;

/// How often the refusing thread looks at the connections it holds.
const POLL: Duration = Duration::from_millis(2);

/// The most bytes read (and dropped) from a refused connection before its reply, so the
/// close that follows is a clean one (a socket closed with unread input resets the
/// connection, and the reply may be lost with it).
const MAX_DRAIN: usize = 64 * 1024;

/// The refusal a line-protocol client reads.
pub const LINE_REFUSAL: &[u8] = b"ERR too many connections\r\n";

/// The refusal a Redis client reads: Redis's own.
pub const RESP_REFUSAL: &[u8] = b"-ERR max number of clients reached\r\n";

/// The refusal for a connection whose first byte is `first` (`None`: none came in time).
pub fn refusal(first: Option<u8>) -> &'static [u8] {
    if first == Some(b'*') {
        RESP_REFUSAL
    } else {
        LINE_REFUSAL
    }
}

/// The accept loop's end of the refusing thread.
pub struct Refuser {
    queue: SyncSender<TcpStream>,
}

impl Refuser {
    /// Starts the refusing thread.
    pub fn start() -> std::io::Result<Refuser> {
        let (queue, rx) = mpsc::sync_channel(MAX_REFUSING);
        thread::Builder::new().name("refuse".into()).spawn(move || run(rx))?;
        Ok(Refuser { queue })
    }

    /// Refuses `stream` without waiting: through the refusing thread, or with the line reply
    /// at once when that thread holds all it may.
    pub fn refuse(&self, stream: TcpStream) {
        if let Err(TrySendError::Full(stream) | TrySendError::Disconnected(stream)) =
            self.queue.try_send(stream)
        {
            let _ = (&stream).write_all(LINE_REFUSAL);
        }
    }
}

/// A refused connection waiting for its first byte.
struct Waiting {
    stream: TcpStream,
    deadline: Instant,
}

/// The refusing thread: takes connections from `rx` and answers each once its first byte
/// came or [`REFUSAL_WAIT`] passed.
fn run(rx: Receiver<TcpStream>) {
    let mut waiting: Vec<Waiting> = Vec::with_capacity(MAX_REFUSING);
    loop {
        // Block while there is nothing to watch; otherwise look again after POLL.
        let next = if waiting.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else if waiting.len() < MAX_REFUSING {
            rx.recv_timeout(POLL)
        } else {
            thread::sleep(POLL);
            Err(RecvTimeoutError::Timeout)
        };
        match next {
            Ok(stream) => hold(&mut waiting, stream),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) if waiting.is_empty() => return,
            Err(RecvTimeoutError::Disconnected) => thread::sleep(POLL),
        }
        while waiting.len() < MAX_REFUSING {
            match rx.try_recv() {
                Ok(stream) => hold(&mut waiting, stream),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let now = Instant::now();
        waiting.retain_mut(|w| !answered(w, now));
    }
}

fn hold(waiting: &mut Vec<Waiting>, stream: TcpStream) {
    // A connection that cannot be watched without blocking is told at once.
    if stream.set_nonblocking(true).is_err() {
        let _ = (&stream).write_all(LINE_REFUSAL);
        return;
    }
    waiting.push(Waiting { stream, deadline: Instant::now() + REFUSAL_WAIT });
}

/// Answers `w` if its first byte came, it closed, or its time is up; true when it is done.
fn answered(w: &mut Waiting, now: Instant) -> bool {
    let mut first = [0u8; 1];
    let first = match w.stream.peek(&mut first) {
        Ok(0) => return true,
        Ok(_) => Some(first[0]),
        Err(e) if e.kind() == ErrorKind::WouldBlock && now < w.deadline => return false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => None,
        Err(_) => return true,
    };
    let mut drained = 0;
    let mut chunk = [0u8; 4096];
    while drained < MAX_DRAIN {
        match w.stream.read(&mut chunk) {
            Ok(n) if n > 0 => drained += n,
            _ => break,
        }
    }
    // A few dozen bytes into an empty send buffer: written at once even without blocking.
    let _ = w.stream.write_all(refusal(first));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn the_first_byte_picks_the_framing() {
        assert_eq!(refusal(Some(b'*')), RESP_REFUSAL);
        for first in [Some(b'P'), Some(b'$'), Some(b'\r'), None] {
            assert_eq!(refusal(first), LINE_REFUSAL, "{first:?}");
        }
    }

    /// What a client that sends `request` (and then waits) is answered when refused.
    fn refused_with(refuser: &Refuser, listener: &TcpListener, request: &[u8]) -> Vec<u8> {
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        client.write_all(request).unwrap();
        refuser.refuse(listener.accept().unwrap().0);
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).unwrap();
        reply
    }

    #[test]
    fn a_redis_client_is_refused_in_resp_and_any_other_in_the_line_protocol() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let refuser = Refuser::start().unwrap();
        assert_eq!(refused_with(&refuser, &listener, b"*1\r\n$4\r\nPING\r\n"), RESP_REFUSAL);
        assert_eq!(refused_with(&refuser, &listener, b"PING\r\n"), LINE_REFUSAL);
        // A client that says nothing is told in the line protocol once REFUSAL_WAIT passed.
        let started = Instant::now();
        assert_eq!(refused_with(&refuser, &listener, b""), LINE_REFUSAL);
        assert!(started.elapsed() >= REFUSAL_WAIT);
    }
}
