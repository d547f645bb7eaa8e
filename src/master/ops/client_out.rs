//! A client connection's write half, shared with the slave readers (see [`ClientOut`]).

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::master::session::{resp_error_text, Dialect};
use crate::master::Shared;
use crate::metrics::{CommandKind, Outcome, Protocol};
use crate::protocol::Reply;

/// A client connection's write half, shared with the slave readers so that the one whose ACK
/// completes a write's quorum can answer the client itself (one thread hop sooner than waking
/// the connection's thread to do it).
pub struct ClientOut {
    stream: TcpStream,
    /// The part of an answer a slave reader could not send without blocking; the connection's
    /// thread sends it. A reader never blocks on a client's socket: a client that does not read
    /// its answers must not hold up a slave's link.
    unsent: Mutex<Vec<u8>>,
    /// The framing of the request being served, for an answer a reader sends.
    resp: AtomicBool,
}

impl ClientOut {
    /// Wraps a client connection's socket.
    pub fn new(stream: TcpStream) -> ClientOut {
        ClientOut { stream, unsent: Mutex::new(Vec::new()), resp: AtomicBool::new(false) }
    }

    /// The connection's socket, for the connection's own thread.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The socket back, when nothing else shares it (a peer connection, told apart by its first
    /// line before any request could have shared it).
    pub fn into_stream(this: Arc<ClientOut>) -> Option<TcpStream> {
        Arc::into_inner(this).map(|out| out.stream)
    }

    /// Sets the framing of the request being served: a write's answer sent by a reader
    /// ([`ClientOut::encode_ok`]) is in it.
    pub fn set_dialect(&self, dialect: Dialect) {
        self.resp.store(dialect == Dialect::Resp, Ordering::Relaxed);
    }

    /// Sends the answer to a write that a connection did not wait for (see
    /// [`super::PendingWrite`]), in its request's framing, without blocking (see
    /// [`ClientOut::send_or_keep`]); counts it in the statistics and metrics as the
    /// connection would have. `answered` runs under the lock of what is kept unsent, just
    /// before the answer leaves: the connection's thread, once it sees the write answered,
    /// takes that lock to send what was kept ([`ClientOut::flush_unsent`]), so it never sends a
    /// later answer first; and it sees the write answered before its client can have the
    /// answer and send its next request.
    pub(super) fn answer_write(
        &self,
        shared: &Shared,
        kind: CommandKind,
        reply: &Reply,
        started: Instant,
        answered: impl FnOnce(),
    ) {
        let resp = self.resp.load(Ordering::Relaxed);
        let mut answer = Vec::with_capacity(32);
        match reply {
            Reply::Ok(_) if resp => answer.extend_from_slice(b"+OK\r\n"),
            Reply::Err(e) if resp => crate::resp::push_error(&mut answer, &resp_error_text(e)),
            other => other.encode_into(&mut answer),
        }
        let elapsed = started.elapsed();
        // The answer first, the counting after: the client need not wait for it.
        self.send_or_keep(&answer, answered);
        if matches!(reply, Reply::Err(_)) {
            shared.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        let protocol = if resp { Protocol::Resp } else { Protocol::Line };
        shared.metrics.observe(kind, protocol, Outcome::of(reply), elapsed);
    }

    /// Sends `bytes` without blocking; what the socket does not take is kept in `unsent`
    /// (behind anything kept before, so answers stay in order). `first` runs under the lock
    /// of `unsent`, before the bytes go.
    fn send_or_keep(&self, bytes: &[u8], first: impl FnOnce()) {
        let mut unsent = self.unsent.lock();
        first();
        if !unsent.is_empty() {
            unsent.extend_from_slice(bytes);
            return;
        }
        // Non-blocking for this one call only (the connection's own thread blocks on the same
        // socket), through socket2's safe wrapper of send(2).
        let sent = socket2::SockRef::from(&self.stream)
            .send_with_flags(bytes, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            .unwrap_or(0);
        if sent < bytes.len() {
            unsent.extend_from_slice(&bytes[sent..]);
        }
    }

    /// Sends, blocking, whatever a reader left unsent.
    pub(super) fn flush_unsent(&self) {
        let unsent = std::mem::take(&mut *self.unsent.lock());
        if !unsent.is_empty() {
            // A failed write closes the connection at its next read.
            let _ = (&self.stream).write_all(&unsent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_reader_never_blocks_on_a_client_that_does_not_read() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let out = ClientOut::new(server_side);
        // Far more than the socket buffers hold: a blocking send would never return, since the
        // client never reads.
        let answer = vec![b'x'; 64 << 20];
        out.send_or_keep(&answer, || {});
        let kept = out.unsent.lock().len();
        assert!(kept > 0 && kept < answer.len(), "kept {kept} of {} bytes", answer.len());
        // Nothing overtakes what was kept: the connection's thread sends it all later, in order.
        out.send_or_keep(b"more", || {});
        assert_eq!(out.unsent.lock().len(), kept + 4);
        assert!(out.unsent.lock().ends_with(b"xmore"));
    }
}
