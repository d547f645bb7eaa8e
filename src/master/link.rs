//! One registered slave's connection, as the master sees it.
//!
//! A [`Link`] is shared by every thread that sends to the slave. Sends are combined: a sender
//! appends its encoded request to the link's outbox under a mutex, and if no other thread is
//! writing to the socket it becomes the writer and writes everything queued, again and again
//! until the outbox is empty; a sender that finds a writer at work just leaves its request for
//! it. Only one thread writes at a time and whole requests are appended, so messages never
//! interleave on the wire, and under load many requests share one `write(2)` (and the slave
//! reads them with one `read(2)` and answers them with one write). The outbox is bounded by
//! [`OUTBOX_LIMIT`]: past it, senders wait for the writer.
//!
//! Replies come back on the connection's own reader thread, which looks up the request id in
//! the link's pending table and forwards the outcome on the channel the requester is waiting
//! on. A write sent to several slaves counts their ACKs in a shared [`AckCount`] instead: an ACK
//! that does not complete the quorum only sets its slave's bit, and the writer is woken once,
//! by the ACK that does (or by any other outcome), not once per slave. The reader whose ACK
//! completes the quorum first runs the write's [`Finish`], if it has one: it commits the write
//! and answers the client, one thread hop sooner than the writer could. When the link dies,
//! every pending requester is told at once, so a write can replace the slave instead of
//! waiting for its timeout.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::{self, Thread};
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::escape::push_u64;
use crate::peer::{encode_body, Command, Outcome, Stamp};

/// A [`Link`]'s state: connected, being resynced (it takes writes but serves no reads).
const SYNCING: u8 = 0;
/// Connected and resynced: it holds every write the master logged.
const SYNCED: u8 = 1;
/// Closed or killed.
const DEAD: u8 = 2;

/// The most bytes of requests queued for one slave while another thread writes to its socket.
/// A sender that finds the outbox this full waits until the writer has taken it, so a slave that
/// stops reading holds up its senders (until it is marked down) instead of the master's memory.
pub const OUTBOX_LIMIT: usize = 4 << 20;

/// The largest outbox buffer kept for reuse after a write; a bigger one, left by a burst of
/// large values, is freed.
const OUTBOX_SPARE_LIMIT: usize = 256 << 10;

/// Requests waiting for the socket, and whether a thread is writing them.
#[derive(Default)]
struct Outbox {
    /// Encoded requests not yet taken by a writer.
    queued: Vec<u8>,
    /// A thread is writing to the socket, and will write `queued` before it stops.
    writing: bool,
    /// An empty buffer to swap in for `queued`, so taking a batch does not allocate.
    spare: Vec<u8>,
}

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

/// How a replication round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicated {
    /// A majority acknowledged.
    Majority,
    /// Fewer acknowledged (these bits) before the deadline or before candidates ran out.
    Short(u64),
    /// A member has accepted a newer epoch: we are no longer the primary.
    Fenced(u64),
}

/// What is done with a write once its round ended: commit it and answer its client, or answer
/// that it failed. Run by the slave reader whose ACK completes the quorum (with
/// [`Replicated::Majority`]), or else by the thread that waited for the round, with how it
/// ended — whichever takes it first ([`AckCount::take_finish`]).
pub type Finish = Box<dyn FnOnce(Replicated) + Send>;

/// The ACKs of one write, counted across the links it was sent on.
pub struct AckCount {
    /// Member slots that acknowledged, as a bit set.
    acked: AtomicU64,
    /// How many acknowledgements wake the writer.
    need: usize,
    /// Run by the first of the completing reader or the writer to take it (see [`AckCount::take_finish`]).
    finish: Mutex<Option<Finish>>,
    /// Set once a reader has run `finish`.
    finished: AtomicBool,
}

impl std::fmt::Debug for AckCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckCount").field("acked", &self.acked()).field("need", &self.need).finish()
    }
}

impl AckCount {
    /// A count that wakes its writer at the `need`th acknowledgement.
    pub fn new(need: usize) -> AckCount {
        AckCount::with_finish(need, None)
    }

    /// A count whose completing reader runs `finish` before it wakes the writer, so the client
    /// has its answer one thread hop sooner.
    pub fn with_finish(need: usize, finish: Option<Finish>) -> AckCount {
        AckCount {
            acked: AtomicU64::new(0),
            need,
            finish: Mutex::new(finish),
            finished: AtomicBool::new(false),
        }
    }

    /// How many acknowledgements make the quorum.
    pub fn need(&self) -> usize {
        self.need
    }

    /// The slots that have acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Counts `slot`'s acknowledgement; true if it completed the quorum (a later one does not:
    /// the writer, woken once, does not care) and the writer must be woken.
    fn count(&self, slot: usize) -> bool {
        let before = self.acked.fetch_or(1 << slot, Ordering::AcqRel);
        let after = before | 1 << slot;
        (before.count_ones() as usize) < self.need && after.count_ones() as usize >= self.need
    }

    /// Takes the finish, if nobody has: exactly one of the completing reader and the writer gets
    /// it, and whoever does commits the write and answers the client.
    pub fn take_finish(&self) -> Option<Finish> {
        self.finish.lock().take()
    }

    /// True once the acknowledgements make the quorum: the reader whose acknowledgement did
    /// runs the finish, unless the writer took it first.
    pub fn reached(&self) -> bool {
        self.acked().count_ones() as usize >= self.need
    }

    /// True once a reader has run the finish (the tests' view: nothing else waits for it).
    #[cfg(test)]
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Run by the reader whose ACK completed the quorum.
    fn complete(&self) {
        if let Some(finish) = self.take_finish() {
            finish(Replicated::Majority);
            self.finished.store(true, Ordering::Release);
        }
    }
}

/// Who waits for a reply.
struct Waiter {
    tx: Sender<Ack>,
    quorum: Option<Arc<AckCount>>,
    /// The requesting thread, unparked after every reply it is sent (see [`recv_parked`]).
    thread: Thread,
}

impl Waiter {
    fn new(tx: &Sender<Ack>, quorum: Option<&Arc<AckCount>>) -> Waiter {
        Waiter { tx: tx.clone(), quorum: quorum.map(Arc::clone), thread: thread::current() }
    }

    fn tell(&self, ack: Ack) {
        let _ = self.tx.send(ack);
        self.thread.unpark();
    }
}

/// Receives the next reply from `rx`, the channel of requests this thread sent, waiting until
/// `deadline` at most: `rx.recv_deadline(deadline)`, but waiting by parking the thread, which
/// every reply unparks.
///
/// A blocked crossbeam receiver first spins and calls `sched_yield` a dozen times before it
/// sleeps; on two cores shared by the master, the slaves and the clients, those yields were 15%
/// of the master's CPU time under a write load (`perf record`), and each one is a context
/// switch. Parking sleeps at once. Only the thread that sent the requests may call this.
pub fn recv_parked(rx: &Receiver<Ack>, deadline: Instant) -> Result<Ack, RecvTimeoutError> {
    loop {
        match rx.try_recv() {
            Ok(ack) => return Ok(ack),
            Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(RecvTimeoutError::Timeout);
        }
        // Returns at once if a reply unparked us since `try_recv`.
        thread::park_timeout(deadline - now);
    }
}

/// A live connection to one slave.
pub struct Link {
    /// The slave's member id.
    pub id: String,
    /// The slave's member slot (its bit in every key's holder set).
    pub slot: usize,
    /// The slave's address, for logs.
    pub peer: String,
    /// The write half; only the thread that set `Outbox::writing` writes to it.
    stream: TcpStream,
    outbox: Mutex<Outbox>,
    /// Signalled whenever a writer has taken a batch (room in the outbox) or the link died.
    drained: Condvar,
    pending: Mutex<HashMap<u64, Waiter>>,
    /// [`SYNCING`], [`SYNCED`] or [`DEAD`]: a link is born syncing, becomes synced once its
    /// resync is done, and dies once; it never goes back.
    state: AtomicU8,
    /// When the slave last sent anything, in microseconds since the master started.
    pub last_heard_us: AtomicU64,
    /// Until when (microseconds since start) the slave's read lease to us is known valid.
    pub lease_until_us: AtomicU64,
    /// Client reads and writes sent to this slave (the load-distribution measurement); not
    /// heartbeats, resync or repair. Counted by the read and write paths.
    pub requests: AtomicU64,
    /// What the slave said it held when it registered (see [`crate::peer::Registration::held`]).
    pub held: crate::peer::Stamp,
    /// The slave registered storing nothing (its highest seq 0): no key it holds can be newer
    /// than the log's, so its resync may send `MSET`s, whose one acknowledgement reports no
    /// key's stamp.
    pub stores_nothing: bool,
    /// The keys the slave said it holds in its last answer to a heartbeat.
    pub keys: AtomicU64,
    /// The last sync position this connection's heartbeats told the slave (`PING <seq>`): it
    /// holds every write of this log up to there. 0 before the first.
    pub synced_seq: AtomicU64,
    /// The keys sent to it by its resync (so far, while it runs).
    pub resync_keys: AtomicU64,
    /// Set by the first resync of this connection, so a slave that registers while a
    /// takeover completes is not resynced twice.
    resync_started: AtomicBool,
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
            stream,
            outbox: Mutex::new(Outbox::default()),
            drained: Condvar::new(),
            pending: Mutex::new(HashMap::new()),
            state: AtomicU8::new(SYNCING),
            last_heard_us: AtomicU64::new(now_us),
            lease_until_us: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            held: crate::peer::Stamp::default(),
            stores_nothing: false,
            keys: AtomicU64::new(0),
            resync_keys: AtomicU64::new(0),
            synced_seq: AtomicU64::new(0),
            resync_started: AtomicBool::new(false),
            last_ping: Mutex::new((0, 0)),
        }
    }

    /// The link of a slave that holds `held`, and stores nothing at all if `stores_nothing`.
    pub fn holding(mut self, held: crate::peer::Stamp, stores_nothing: bool) -> Link {
        self.held = held;
        self.stores_nothing = stores_nothing;
        self
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

    /// True for the first caller only: that one resyncs the slave.
    pub fn claim_resync(&self) -> bool {
        !self.resync_started.swap(true, Ordering::AcqRel)
    }

    /// True until the link is killed.
    pub fn is_alive(&self) -> bool {
        self.state.load(Ordering::Acquire) != DEAD
    }

    /// True once the slave has been caught up and may serve reads.
    pub fn is_synced(&self) -> bool {
        self.state.load(Ordering::Acquire) == SYNCED
    }

    /// Marks the resync done.
    pub fn set_synced(&self) {
        // A dead link stays dead.
        let _ = self.state.compare_exchange(SYNCING, SYNCED, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Sends a request. If `reply_to` is given, the reply (or the link's death) is delivered
    /// there. Returns false if the link is dead or the send failed (the link is then killed).
    pub fn send(&self, rid: u64, epoch: u64, command: &Command, reply_to: Option<&Sender<Ack>>) -> bool {
        let waiter = reply_to.map(|tx| Waiter::new(tx, None));
        self.enqueue(rid, waiter, |out| encode_body(epoch, command, out), None)
    }

    /// Sends a request whose body (everything after `<rid> `) is already encoded.
    pub fn send_body(&self, rid: u64, body: &[u8], reply_to: Option<&Sender<Ack>>) -> bool {
        let waiter = reply_to.map(|tx| Waiter::new(tx, None));
        self.enqueue(rid, waiter, |out| out.extend_from_slice(body), None)
    }

    /// Sends a write whose body is already encoded, counting its acknowledgement in `quorum`:
    /// an `OK` reaches `reply_to` only if it completes the quorum; any other outcome always
    /// does.
    ///
    /// With `nowait`, for a thread that must never wait for the slave's socket (a slave
    /// reader: waiting for one slave to read would stop it reading its own slave's
    /// acknowledgements, which another may wait for), it does not wait for room in the outbox,
    /// and as the writer it sends only what the socket takes at once: the rest is left to a
    /// thread started to send it.
    pub fn send_counted(
        self: &Arc<Self>,
        rid: u64,
        body: &[u8],
        reply_to: &Sender<Ack>,
        quorum: &Arc<AckCount>,
        nowait: bool,
    ) -> bool {
        let waiter = Waiter::new(reply_to, Some(quorum));
        self.enqueue(rid, Some(waiter), |out| out.extend_from_slice(body), nowait.then_some(self))
    }

    /// Sends stores (a resync's keys: `(rid, stamp, key, value)`, a `None` value being a
    /// deletion) with as few `write(2)`s as one request: each reply reaches `reply_to`. One
    /// system call per key bounded a resync's rate (85% of the master's resync thread).
    pub fn send_stores<'a, I>(&self, epoch: u64, stores: I, reply_to: &Sender<Ack>) -> bool
    where
        I: Iterator<Item = (u64, Stamp, &'a str, Option<&'a [u8]>)> + Clone,
    {
        let rids: Vec<u64> = stores.clone().map(|(rid, ..)| rid).collect();
        self.enqueue_all(
            &rids,
            || Some(Waiter::new(reply_to, None)),
            |out| {
                for (rid, stamp, key, value) in stores {
                    push_u64(out, rid);
                    out.push(b' ');
                    crate::peer::encode_store_body(epoch, stamp, key, value, out);
                }
            },
            None,
        )
    }

    /// Registers the requester, appends `<rid> ` and the body written by `encode` to the
    /// outbox, and writes the outbox out unless another thread is already doing so (never
    /// waiting for the socket with `nowait`, see [`Link::send_counted`]).
    fn enqueue(
        &self,
        rid: u64,
        waiter: Option<Waiter>,
        encode: impl FnOnce(&mut Vec<u8>),
        nowait: Option<&Arc<Link>>,
    ) -> bool {
        let rids: &[u64] = if waiter.is_some() { &[rid] } else { &[] };
        let mut waiter = waiter;
        self.enqueue_all(
            rids,
            || waiter.take(),
            |out| {
                push_u64(out, rid);
                out.push(b' ');
                encode(out);
            },
            nowait,
        )
    }

    /// Registers a waiter made by `waiter` for each of `rids`, appends the requests `encode`
    /// writes (each `<rid> <body>`) to the outbox, and writes the outbox out unless another
    /// thread is already doing so. With `nowait` (this link), it neither waits for room in the
    /// outbox nor for the socket (see [`Link::send_counted`]).
    fn enqueue_all(
        &self,
        rids: &[u64],
        mut waiter: impl FnMut() -> Option<Waiter>,
        encode: impl FnOnce(&mut Vec<u8>),
        nowait: Option<&Arc<Link>>,
    ) -> bool {
        if !self.is_alive() {
            return false;
        }
        if !rids.is_empty() {
            let mut pending = self.pending.lock();
            for &rid in rids {
                if let Some(w) = waiter() {
                    pending.insert(rid, w);
                }
            }
        }
        // A kill that ran between the check above and the inserts did not see these entries.
        if !rids.is_empty() && !self.is_alive() {
            let mut pending = self.pending.lock();
            for rid in rids {
                pending.remove(rid);
            }
            return false;
        }
        let mut outbox = self.outbox.lock();
        while nowait.is_none() && outbox.writing && outbox.queued.len() >= OUTBOX_LIMIT {
            if !self.is_alive() {
                return false;
            }
            self.drained.wait(&mut outbox);
        }
        encode(&mut outbox.queued);
        if outbox.writing {
            // The writer at work takes these requests with its next batch.
            return true;
        }
        outbox.writing = true;
        let written = match nowait {
            Some(this) => self.write_out_nowait(&mut outbox, this),
            None => self.write_out(&mut outbox),
        };
        match written {
            Ok(()) => true,
            Err(e) => {
                drop(outbox);
                self.kill(&format!("send failed: {e}"));
                false
            }
        }
    }

    /// As the writer: writes batches until the outbox is empty. The lock is released during each
    /// `write(2)`, so other senders keep queueing meanwhile.
    fn write_out(&self, outbox: &mut MutexGuard<'_, Outbox>) -> std::io::Result<()> {
        loop {
            let spare = std::mem::take(&mut outbox.spare);
            let mut batch = std::mem::replace(&mut outbox.queued, spare);
            let written = MutexGuard::unlocked(outbox, || (&self.stream).write_all(&batch));
            batch.clear();
            if batch.capacity() <= OUTBOX_SPARE_LIMIT {
                outbox.spare = batch;
            }
            self.drained.notify_all();
            if let Err(e) = written {
                // What was queued meanwhile can never be sent; the kill that follows tells its
                // requesters.
                outbox.queued.clear();
                outbox.writing = false;
                return Err(e);
            }
            if outbox.queued.is_empty() {
                outbox.writing = false;
                return Ok(());
            }
        }
    }

    /// How many requests sent to the slave wait for its answer.
    pub fn awaiting(&self) -> usize {
        self.pending.lock().len()
    }

    /// [`Link::write_out`] without waiting for the socket: when it takes only part of a batch,
    /// the rest is put back before what was queued meanwhile, and a thread started for it
    /// goes on writing (as the writer: `writing` stays set).
    fn write_out_nowait(&self, outbox: &mut MutexGuard<'_, Outbox>, this: &Arc<Link>) -> std::io::Result<()> {
        loop {
            let spare = std::mem::take(&mut outbox.spare);
            let mut batch = std::mem::replace(&mut outbox.queued, spare);
            let sent = MutexGuard::unlocked(outbox, || send_nowait(&self.stream, &batch));
            self.drained.notify_all();
            let sent = match sent {
                Ok(sent) => sent,
                Err(e) => {
                    outbox.queued.clear();
                    outbox.writing = false;
                    return Err(e);
                }
            };
            if sent < batch.len() {
                batch.drain(..sent);
                batch.extend_from_slice(&outbox.queued);
                outbox.queued = batch;
                let link = Arc::clone(this);
                let spawned = thread::Builder::new().name("dsm-link-send".into()).spawn(move || {
                    let mut outbox = link.outbox.lock();
                    if let Err(e) = link.write_out(&mut outbox) {
                        drop(outbox);
                        link.kill(&format!("send failed: {e}"));
                    }
                });
                return match spawned {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        // Half a request is on the wire: no other sender may write after it
                        // before the kill that follows marks the link dead.
                        let _ = self.stream.shutdown(Shutdown::Both);
                        outbox.queued.clear();
                        outbox.writing = false;
                        Err(e)
                    }
                };
            }
            batch.clear();
            if batch.capacity() <= OUTBOX_SPARE_LIMIT {
                outbox.spare = batch;
            }
            if outbox.queued.is_empty() {
                outbox.writing = false;
                return Ok(());
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
            if let Some(waiter) = self.pending.lock().get(&rid) {
                waiter.tell(Ack { slot: self.slot, rid, outcome });
            }
            return;
        }
        let Some(waiter) = self.pending.lock().remove(&rid) else {
            return;
        };
        if let (Some(quorum), Outcome::Ok(_) | Outcome::Applied(_)) = (&waiter.quorum, &outcome) {
            if !quorum.count(self.slot) {
                return;
            }
            quorum.complete();
        }
        waiter.tell(Ack { slot: self.slot, rid, outcome });
    }

    /// Marks the link dead, closes the socket (which ends the reader thread) and tells every
    /// pending requester. Idempotent.
    pub fn kill(&self, why: &str) {
        if self.state.swap(DEAD, Ordering::AcqRel) != DEAD {
            log::warn!("slave {} ({}) marked down: {why}", self.id, self.peer);
            let _ = self.stream.shutdown(Shutdown::Both);
            // Senders waiting for room in the outbox give up.
            let _guard = self.outbox.lock();
            self.drained.notify_all();
        }
        let pending: Vec<(u64, Waiter)> = self.pending.lock().drain().collect();
        for (rid, waiter) in pending {
            waiter.tell(Ack { slot: self.slot, rid, outcome: Outcome::Err(format!("slave down: {why}")) });
        }
    }
}

/// Sends what of `bytes` the socket takes without waiting; how much that was.
fn send_nowait(stream: &TcpStream, bytes: &[u8]) -> std::io::Result<usize> {
    let socket = socket2::SockRef::from(stream);
    let mut sent = 0;
    while sent < bytes.len() {
        match socket.send_with_flags(&bytes[sent..], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::LineReader;
    use crate::peer::Stamp;
    use crossbeam_channel::unbounded;
    use std::net::TcpListener;

    /// A finish that counts its runs and records the acknowledgements it was given.
    fn counting_finish(runs: &Arc<AtomicU64>) -> Option<Finish> {
        let runs = Arc::clone(runs);
        Some(Box::new(move |result| {
            runs.fetch_add(1, Ordering::SeqCst);
            assert_eq!(result, Replicated::Majority);
        }))
    }

    #[test]
    fn the_completing_ack_runs_the_finish_once() {
        let runs = Arc::new(AtomicU64::new(0));
        let quorum = AckCount::with_finish(2, counting_finish(&runs));
        assert!(!quorum.count(0));
        assert!(quorum.count(3));
        quorum.complete();
        assert!(quorum.finished());
        // A later ACK wakes nobody (every write now goes to every slave: the third of three
        // would wake the writer for nothing), and the writer finds the finish taken.
        assert!(!quorum.count(1));
        assert!(quorum.take_finish().is_none());
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_writer_that_takes_the_finish_first_keeps_a_late_ack_from_answering() {
        let runs = Arc::new(AtomicU64::new(0));
        let quorum = AckCount::with_finish(2, counting_finish(&runs));
        assert!(!quorum.count(0));
        // The writer gave up (its deadline passed) and answers itself.
        assert!(quorum.take_finish().is_some());
        assert!(quorum.count(1));
        quorum.complete();
        assert!(!quorum.finished());
        assert_eq!(runs.load(Ordering::SeqCst), 0);
    }

    /// A link over a loopback connection, and the slave's end of it.
    fn pair(slot: usize) -> (Arc<Link>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let master_end = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (slave_end, _) = listener.accept().unwrap();
        (Arc::new(Link::new(format!("s{slot}"), slot, master_end, 0)), slave_end)
    }

    #[test]
    fn concurrent_sends_arrive_whole_and_in_each_senders_order() {
        let (link, slave_end) = pair(0);
        let (threads, per_thread) = (8u64, 2000u64);
        let senders: Vec<_> = (0..threads)
            .map(|t| {
                let link = Arc::clone(&link);
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        let body = format!("{t} {i} {}\n", "x".repeat((i % 50) as usize));
                        assert!(link.send_body(t * per_thread + i, body.as_bytes(), None));
                    }
                })
            })
            .collect();
        let mut reader = LineReader::new(slave_end);
        let mut next = vec![0u64; threads as usize];
        for _ in 0..threads * per_thread {
            let line = String::from_utf8(reader.read_line().unwrap().unwrap().to_vec()).unwrap();
            let f: Vec<&str> = line.split(' ').collect();
            let (rid, t, i): (u64, u64, u64) =
                (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].parse().unwrap());
            assert_eq!(rid, t * per_thread + i, "{line}");
            assert_eq!(i, next[t as usize], "sender {t} out of order");
            assert_eq!(f[3].len() as u64, i % 50, "{line}");
            next[t as usize] += 1;
        }
        for s in senders {
            s.join().unwrap();
        }
        // Sends alone are not client requests (the read and write paths count those).
        assert_eq!(link.requests.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_quorum_wakes_its_writer_once_and_failures_always() {
        let (a, _a_end) = pair(0);
        let (b, _b_end) = pair(1);
        let (c, _c_end) = pair(2);
        let (tx, rx) = unbounded();
        let quorum = Arc::new(AckCount::new(2));
        for (rid, link) in [(1, &a), (2, &b), (3, &c)] {
            assert!(link.send_counted(rid, b"1 PING\n", &tx, &quorum, false));
        }
        let ok = Outcome::Ok(Stamp::new(1, 1));
        a.deliver(1, ok.clone());
        assert!(rx.try_recv().is_err(), "one ACK of two must not wake the writer");
        assert_eq!(quorum.acked(), 0b001);
        c.deliver(3, Outcome::Fenced(9));
        assert_eq!(rx.try_recv().unwrap().outcome, Outcome::Fenced(9));
        b.deliver(2, ok.clone());
        let ack = rx.try_recv().unwrap();
        assert_eq!((ack.rid, ack.slot, quorum.acked()), (2, 1, 0b011));
        // An answer nobody waits for any more is dropped.
        b.deliver(2, ok);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn kill_tells_every_pending_requester_and_refuses_new_sends() {
        let (link, _slave_end) = pair(3);
        let (tx, rx) = unbounded();
        for rid in 1..=3 {
            assert!(link.send_body(rid, b"1 PING\n", Some(&tx)));
        }
        link.forget(2);
        link.kill("test");
        let mut told: Vec<u64> = rx.try_iter().map(|a| a.rid).collect();
        told.sort();
        assert_eq!(told, [1, 3]);
        assert!(!link.send_body(4, b"1 PING\n", Some(&tx)));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn senders_blocked_by_a_slave_that_stopped_reading_are_released_by_kill() {
        let (link, _slave_end) = pair(4);
        let body = vec![b'x'; 1 << 20];
        let senders: Vec<_> = (0..3)
            .map(|t| {
                let (link, body) = (Arc::clone(&link), body.clone());
                std::thread::spawn(move || {
                    let mut sent = 0u64;
                    while link.send_body(t, &body, None) {
                        sent += 1;
                    }
                    sent
                })
            })
            .collect();
        // Wait until the socket buffers and the outbox are full: from then on every send
        // blocks, and only the kill can release the senders.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while link.outbox.lock().queued.len() < OUTBOX_LIMIT {
            assert!(std::time::Instant::now() < deadline, "the outbox never filled");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(senders.iter().all(|s| !s.is_finished()), "a sender returned before the kill");
        link.kill("test");
        for s in senders {
            s.join().unwrap();
        }
        assert!(link.outbox.lock().queued.len() <= OUTBOX_LIMIT + body.len());
    }

    #[test]
    fn a_nowait_sender_returns_at_once_and_a_started_thread_sends_the_rest_in_order() {
        let (link, slave_end) = pair(5);
        let (tx, _rx) = crossbeam_channel::unbounded();
        let quorum = Arc::new(AckCount::new(1));
        // Far more than the socket buffers take: a blocking send would not return before the
        // slave reads, and the slave reads only after every send returned.
        let mut big = vec![b'y'; 32 << 20];
        big.push(b'\n');
        assert!(link.send_counted(7, b"first\n", &tx, &quorum, true));
        assert!(link.send_counted(8, &big, &tx, &quorum, true));
        assert!(link.send_counted(9, b"last\n", &tx, &quorum, true));
        assert!(link.outbox.lock().writing, "the rest is left to a thread");
        let mut reader = LineReader::with_limit(slave_end, 64 << 20);
        assert_eq!(reader.read_line().unwrap().unwrap(), b"7 first");
        assert_eq!(reader.read_line().unwrap().unwrap().len(), "8 ".len() + big.len() - 1);
        assert_eq!(reader.read_line().unwrap().unwrap(), b"9 last");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while link.outbox.lock().writing {
            assert!(std::time::Instant::now() < deadline, "the sending thread never finished");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(link.is_alive());
    }
}
