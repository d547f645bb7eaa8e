//! One registered slave's connection, as the master sees it.
//!
//! A [`Link`] is shared by every thread that sends to the slave. Sending is serialised by a
//! mutex around the socket's write half, so messages never interleave on the wire. Replies
//! come back on the connection's own reader thread, which looks up the request id in the
//! link's pending table and forwards the outcome on the channel the requester is waiting on.
//! When the link dies, every pending requester is told at once, so a write can replace the
//! slave instead of waiting for its timeout.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use crate::peer::{encode_body, Command, Outcome};

/// What a requester receives for each slave reply.
#[derive(Debug, Clone)]
pub struct Ack {
    /// The member slot of the slave that answered.
    pub slot: usize,
    /// The request id answered.
    pub rid: u64,
    /// The answer.
    pub outcome: Outcome,
}

/// A live connection to one slave.
pub struct Link {
    /// The slave's member id.
    pub id: String,
    /// The slave's member slot (its bit in every key's holder set).
    pub slot: usize,
    /// The slave's address, for logs.
    pub peer: String,
    writer: Mutex<TcpStream>,
    pending: Mutex<HashMap<u64, Sender<Ack>>>,
    alive: AtomicBool,
    synced: AtomicBool,
    /// When the slave last sent anything, in microseconds since the master started.
    pub last_heard_us: AtomicU64,
    /// Until when (microseconds since start) the slave's read lease to us is known valid.
    pub lease_until_us: AtomicU64,
    /// Requests sent to this slave (for the load-distribution measurement).
    pub requests: AtomicU64,
    /// The newest heartbeat: its request id and when it was sent (microseconds since start).
    last_ping: Mutex<(u64, u64)>,
}

impl Link {
    /// A link over `stream` (its write half is used; the caller reads from a clone).
    pub fn new(id: String, slot: usize, stream: TcpStream, now_us: u64) -> Link {
        let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        Link {
            id,
            slot,
            peer,
            writer: Mutex::new(stream),
            pending: Mutex::new(HashMap::new()),
            alive: AtomicBool::new(true),
            synced: AtomicBool::new(false),
            last_heard_us: AtomicU64::new(now_us),
            lease_until_us: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            last_ping: Mutex::new((0, 0)),
        }
    }

    /// Records a heartbeat sent now.
    pub fn record_ping(&self, rid: u64, sent_us: u64) {
        *self.last_ping.lock() = (rid, sent_us);
    }

    /// Handles the answer to a heartbeat: the slave promised a lease from when it answered,
    /// which is after we sent, so counting from the send time is safe.
    pub fn on_pong(&self, rid: u64) {
        let (ping_rid, sent_us) = *self.last_ping.lock();
        if rid == ping_rid {
            let trusted = crate::peer::LEASE.as_micros() as u64 * crate::peer::LEASE_TRUSTED_PERCENT / 100;
            self.lease_until_us.fetch_max(sent_us + trusted, Ordering::AcqRel);
        }
    }

    /// True until the link is killed.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// True once the slave has been caught up and may serve reads.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire) && self.is_alive()
    }

    /// Marks the catch-up done.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// Sends a request. If `reply_to` is given, the reply (or the link's death) is delivered
    /// there. Returns false if the link is dead or the send failed (the link is then killed).
    pub fn send(&self, rid: u64, epoch: u64, command: &Command, reply_to: Option<&Sender<Ack>>) -> bool {
        let mut body = Vec::with_capacity(64);
        encode_body(epoch, command, &mut body);
        self.send_body(rid, &body, reply_to)
    }

    /// Sends a request whose body (everything after `<rid> `) is already encoded.
    pub fn send_body(&self, rid: u64, body: &[u8], reply_to: Option<&Sender<Ack>>) -> bool {
        if !self.is_alive() {
            return false;
        }
        if let Some(tx) = reply_to {
            self.pending.lock().insert(rid, tx.clone());
        }
        let mut buf = Vec::with_capacity(body.len() + 24);
        let _ = write!(buf, "{rid} ");
        buf.extend_from_slice(body);
        let written = self.writer.lock().write_all(&buf);
        self.requests.fetch_add(1, Ordering::Relaxed);
        match written {
            Ok(()) => true,
            Err(e) => {
                self.kill(&format!("send failed: {e}"));
                false
            }
        }
    }

    /// Forgets a request whose answer is no longer wanted.
    pub fn forget(&self, rid: u64) {
        self.pending.lock().remove(&rid);
    }

    /// Delivers a reply read from the socket to whoever waits for it.
    pub fn deliver(&self, rid: u64, outcome: Outcome) {
        if matches!(outcome, Outcome::Item { .. }) {
            // A SCAN answers with many items before its END: keep waiting for more.
            if let Some(tx) = self.pending.lock().get(&rid) {
                let _ = tx.send(Ack { slot: self.slot, rid, outcome });
            }
            return;
        }
        if let Some(tx) = self.pending.lock().remove(&rid) {
            let _ = tx.send(Ack { slot: self.slot, rid, outcome });
        }
    }

    /// Marks the link dead, closes the socket (which ends the reader thread) and tells every
    /// pending requester. Idempotent.
    pub fn kill(&self, why: &str) {
        if self.alive.swap(false, Ordering::AcqRel) {
            log::warn!("slave {} ({}) marked down: {why}", self.id, self.peer);
            let _ = self.writer.lock().shutdown(Shutdown::Both);
        }
        let pending: Vec<(u64, Sender<Ack>)> = self.pending.lock().drain().collect();
        for (rid, tx) in pending {
            let _ =
                tx.send(Ack { slot: self.slot, rid, outcome: Outcome::Err(format!("slave down: {why}")) });
        }
    }
}
