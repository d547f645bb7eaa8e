//! A fault-injecting TCP proxy for tests: a link between two nodes that a test can slow down,
//! cut or silence while the nodes run.
//!
//! An integration test starts a [`Proxy`] on `127.0.0.1:0` in front of a node (a slave, the
//! primary) and hands the proxy's address to the peer instead of the node's own, so every byte
//! of that link passes through the proxy. [`Proxy::set_fault`] then changes what happens to the
//! bytes, on the connections already open and on new ones alike:
//!
//! - [`Fault::None`] forwards everything as it comes.
//! - [`Fault::Delay`] holds every chunk for a while before forwarding it. Chunks keep their
//!   order and are delayed from when the proxy read them, so the delay adds latency without
//!   cutting throughput.
//! - [`Fault::Throttle`] forwards at most so many bytes a second, like a slow link: a big
//!   message takes its time to get through, and whatever is sent after it waits behind it.
//! - [`Fault::Drop`] closes every connection and accepts-and-closes new ones: the peers see a
//!   crashed node, with an immediate end of stream.
//! - [`Fault::Blackhole`] keeps the connections open but reads and discards everything, like a
//!   pulled cable: the peers notice only by their own timeouts. Clearing the fault lets new
//!   bytes through on the same connections; the discarded ones are gone for good, so a
//!   line-based peer may see a torn line, which is what a real loss would do to it.
//!
//! [`Proxy::set_fault_directed`] sets the two directions apart, for one-way partitions:
//! upstream is client to target, downstream target to client. A `Drop` in either direction
//! closes whole connections, since a TCP connection cannot be half crashed.
//!
//! # Threads
//!
//! One accept thread, and per connection two pump threads, one per direction. Each pump owns
//! its read side and its write side and decides on its own what the current fault means for the
//! chunk it just read. Nothing blocks without bound: the listener is polled every
//! [`ACCEPT_POLL_INTERVAL`], a pump's reads time out every [`PUMP_POLL_INTERVAL`] so it sees
//! fault changes and the stop flag, and every socket is also registered so that `Drop` and a
//! `Fault::Drop` can `shutdown()` it, which wakes a pump blocked in a write to a peer that
//! stopped reading. Dropping the [`Proxy`] stops everything and joins every thread before it
//! returns.
//!
//! The client's connect always succeeds, even in a blackhole or with the target down, because
//! the kernel completes the handshake before the proxy accepts; the proxy then connects to the
//! target and, if that fails, closes the client's connection. An end of stream in one direction
//! is passed on as a half-close, so request/response peers that shut down their write side
//! still get their answer.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use dsm::{Error, Result};

/// How long the accept thread sleeps when no connection is waiting. It bounds how late a new
/// connection is noticed and how long [`Proxy`]'s `Drop` waits for the accept thread.
pub const ACCEPT_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The longest a pump waits in one read before it looks again at the fault, its delayed chunks
/// and the stop flag. It bounds how late a delayed chunk goes out and how long a pump outlives
/// its proxy.
pub const PUMP_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How long the proxy waits to connect to the target for a new client; past it the client's
/// connection is closed, as if the target had refused it. Connecting happens on the accept
/// thread, so an unreachable (not refusing) target can hold up new clients, and the proxy's
/// `Drop`, this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The most bytes a pump holds back under [`Fault::Delay`]. When that much is waiting, the pump
/// stops reading until some goes out, so a fast sender meets back-pressure instead of filling
/// memory.
pub const MAX_DELAYED_BYTES: usize = 4 << 20;

/// How many bytes a pump reads at once; each read is one chunk for [`Fault::Delay`].
const CHUNK_SIZE: usize = 16 * 1024;

/// The shortest read timeout a pump sets: the socket API refuses a zero timeout, and a delayed
/// chunk that is due in less than this goes out on the next round anyway.
const MIN_READ_WAIT: Duration = Duration::from_millis(1);

/// What the proxy does to the bytes of a direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Forward everything as it comes.
    #[default]
    None,
    /// Forward each chunk this long after it was read, keeping the order.
    Delay(Duration),
    /// Forward at most this many bytes a second (at least one).
    Throttle(u64),
    /// Close every connection, and accept and close new ones.
    Drop,
    /// Keep connections open but read and discard everything, so peers notice only by timeouts.
    Blackhole,
}

/// A running proxy. Dropping it closes every socket and joins every thread.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on `listen` (usually `127.0.0.1:0`) and forwards each connection to `target`.
    pub fn start(listen: SocketAddr, target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        // Polled, so the accept thread can notice the stop flag.
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            target,
            faults: Mutex::new(Faults::default()),
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            forwarded: Default::default(),
            discarded: Default::default(),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("proxy-{}", addr.port()))
                .spawn(move || accept_loop(listener, shared))
                .map_err(|e| Error::Unavailable(format!("cannot start the proxy thread: {e}")))?
        };
        log::debug!("proxy {addr} -> {target} started");
        Ok(Proxy { addr, shared, accept: Some(accept) })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Applies `fault` to both directions, on existing and new connections.
    pub fn set_fault(&self, fault: Fault) {
        self.set_fault_directed(fault, fault);
    }

    /// Applies `upstream` to client-to-target bytes and `downstream` to target-to-client bytes,
    /// on existing and new connections. A [`Fault::Drop`] in either closes whole connections.
    pub fn set_fault_directed(&self, upstream: Fault, downstream: Fault) {
        let faults = Faults { upstream, downstream };
        *self.shared.faults.lock() = faults;
        log::debug!("proxy {}: upstream {upstream:?}, downstream {downstream:?}", self.addr);
        if faults.closes() {
            // The pumps would notice within a poll interval; shutting the sockets down now
            // also wakes a pump stuck writing to a peer that does not read.
            self.shared.shutdown_all();
        }
    }

    /// How many connections are open (accepted, connected to the target, not yet closed).
    pub fn connections(&self) -> usize {
        self.shared.conns.lock().len()
    }

    /// Bytes forwarded so far: (upstream, downstream). Discarded bytes do not count.
    pub fn bytes_forwarded(&self) -> (u64, u64) {
        let [up, down] = &self.shared.forwarded;
        (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed))
    }

    /// Bytes a [`Fault::Blackhole`] swallowed so far: (upstream, downstream). A test can wait
    /// on this to know that bytes it sent were really lost, rather than merely late.
    pub fn bytes_discarded(&self) -> (u64, u64) {
        let [up, down] = &self.shared.discarded;
        (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The flag is set before the sweep, and the accept thread registers a connection only
        // under the registry lock after checking the flag, so no connection escapes the sweep.
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.shutdown_all();
        if let Some(accept) = self.accept.take() {
            if accept.join().is_err() {
                log::error!("proxy {}: the accept thread panicked", self.addr);
            }
        }
        log::debug!("proxy {} stopped", self.addr);
    }
}

/// The faults of both directions.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    upstream: Fault,
    downstream: Fault,
}

impl Faults {
    fn get(&self, direction: Direction) -> Fault {
        match direction {
            Direction::Upstream => self.upstream,
            Direction::Downstream => self.downstream,
        }
    }

    /// Whether connections must be closed and refused.
    fn closes(&self) -> bool {
        self.upstream == Fault::Drop || self.downstream == Fault::Drop
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to target.
    Upstream = 0,
    /// Target to client.
    Downstream = 1,
}

/// What the proxy's threads share.
struct Shared {
    target: SocketAddr,
    faults: Mutex<Faults>,
    stop: AtomicBool,
    /// Every open connection's two sockets, to shut them down from outside their pumps.
    conns: Mutex<HashMap<u64, [TcpStream; 2]>>,
    /// Bytes written to the other side, indexed by [`Direction`].
    forwarded: [AtomicU64; 2],
    /// Bytes swallowed by a blackhole, indexed by [`Direction`].
    discarded: [AtomicU64; 2],
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn fault(&self, direction: Direction) -> Fault {
        self.faults.lock().get(direction)
    }

    fn closes(&self) -> bool {
        self.faults.lock().closes()
    }

    fn count_forwarded(&self, direction: Direction, bytes: usize) {
        self.forwarded[direction as usize].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn count_discarded(&self, direction: Direction, bytes: usize) {
        self.discarded[direction as usize].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Shuts down every registered socket; their pumps then end, and unregister them.
    fn shutdown_all(&self) {
        for sockets in self.conns.lock().values() {
            for socket in sockets {
                // It may be closed already; that is what we want anyway.
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Accepts clients until the proxy stops, then joins every pump.
fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut pumps: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id = 0u64;
    while !shared.stopping() {
        match listener.accept() {
            Ok((client, peer)) => {
                log::debug!("proxy: connection from {peer}");
                pumps.extend(open(&shared, client, next_id));
                next_id += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL_INTERVAL),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of file descriptors, say: keep serving the connections we have.
                log::warn!("proxy: accept failed: {e}");
                thread::sleep(ACCEPT_POLL_INTERVAL);
            }
        }
        // Finished pumps need no join; dropping their handles frees them.
        pumps.retain(|pump| !pump.is_finished());
    }
    for pump in pumps {
        if pump.join().is_err() {
            log::error!("proxy: a pump thread panicked");
        }
    }
}

/// Connects a new client to the target and starts its two pumps; returns their handles.
fn open(shared: &Arc<Shared>, client: TcpStream, id: u64) -> Vec<JoinHandle<()>> {
    if shared.closes() {
        // Fault::Drop: accept and close at once.
        let _ = client.shutdown(Shutdown::Both);
        return Vec::new();
    }
    let target = match TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) {
        Ok(target) => target,
        Err(e) => {
            log::debug!("proxy: cannot connect to {}: {e}", shared.target);
            let _ = client.shutdown(Shutdown::Both);
            return Vec::new();
        }
    };
    match start_pumps(shared, client, target, id) {
        Ok(pumps) => pumps,
        Err(e) => {
            log::warn!("proxy: cannot start a connection's pumps: {e}");
            Vec::new()
        }
    }
}

/// Registers a connected pair and spawns its pumps. On an error, the sockets are shut down so
/// that any pump already started ends too.
fn start_pumps(
    shared: &Arc<Shared>,
    client: TcpStream,
    target: TcpStream,
    id: u64,
) -> io::Result<Vec<JoinHandle<()>>> {
    let shut = |client: &TcpStream, target: &TcpStream| {
        let _ = client.shutdown(Shutdown::Both);
        let _ = target.shutdown(Shutdown::Both);
    };
    let setup = || -> io::Result<[TcpStream; 4]> {
        // Accepted sockets may inherit the listener's non-blocking mode on some systems.
        client.set_nonblocking(false)?;
        // The proxy must not add latency of its own by batching small writes.
        client.set_nodelay(true)?;
        target.set_nodelay(true)?;
        Ok([client.try_clone()?, client.try_clone()?, target.try_clone()?, target.try_clone()?])
    };
    let [client_read, client_write, target_read, target_write] = match setup() {
        Ok(clones) => clones,
        Err(e) => {
            shut(&client, &target);
            return Err(e);
        }
    };
    {
        let mut conns = shared.conns.lock();
        if shared.stopping() || shared.closes() {
            shut(&client, &target);
            return Ok(Vec::new());
        }
        conns.insert(id, [client, target]);
    }
    let guard = Arc::new(Registration { id, shared: Arc::clone(shared) });
    let mut pumps = Vec::with_capacity(2);
    let directions = [
        (Direction::Upstream, client_read, target_write),
        (Direction::Downstream, target_read, client_write),
    ];
    for (direction, src, dst) in directions {
        let conn = Arc::clone(&guard);
        let spawned = thread::Builder::new()
            .name(format!("proxy-pump-{id}-{direction:?}"))
            .spawn(move || pump(src, dst, direction, conn));
        match spawned {
            Ok(handle) => pumps.push(handle),
            Err(e) => {
                guard.shutdown();
                return Err(e);
            }
        }
    }
    Ok(pumps)
}

/// A connection's entry in the registry; the last of its pumps to end removes it.
struct Registration {
    id: u64,
    shared: Arc<Shared>,
}

impl Registration {
    fn shutdown(&self) {
        if let Some(sockets) = self.shared.conns.lock().get(&self.id) {
            for socket in sockets {
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.conns.lock().remove(&self.id);
    }
}

/// Moves bytes from `src` to `dst` under the direction's fault until either side closes, the
/// fault drops the connection or the proxy stops.
fn pump(src: TcpStream, dst: TcpStream, direction: Direction, conn: Arc<Registration>) {
    match forward(src, dst, direction, &conn.shared) {
        Ok(()) => {}
        Err(e) => {
            log::debug!("proxy: connection {} {direction:?} ends: {e}", conn.id);
            // Take the other direction down too, so both peers see the connection die.
            conn.shutdown();
        }
    }
}

/// The pump's loop. `Ok` after passing on an end of stream; `Err` when the connection must die.
fn forward(mut src: TcpStream, mut dst: TcpStream, direction: Direction, shared: &Shared) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK_SIZE];
    // Chunks held back by Fault::Delay, with when each is due, in order.
    let mut delayed: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut delayed_bytes = 0usize;
    let mut src_ended = false;
    loop {
        if shared.stopping() {
            return Err(io::Error::other("the proxy stopped"));
        }
        if shared.closes() {
            return Err(io::Error::other("dropped by a fault"));
        }
        let now = Instant::now();
        while delayed.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, chunk)) = delayed.pop_front() else {
                break;
            };
            delayed_bytes -= chunk.len();
            if shared.fault(direction) == Fault::Blackhole {
                shared.count_discarded(direction, chunk.len());
            } else {
                dst.write_all(&chunk)?;
                shared.count_forwarded(direction, chunk.len());
            }
        }
        // Until the next delayed chunk is due, but never longer than a poll interval.
        let wait = delayed.front().map_or(PUMP_POLL_INTERVAL, |(due, _)| {
            due.saturating_duration_since(now).clamp(MIN_READ_WAIT, PUMP_POLL_INTERVAL)
        });
        if src_ended || delayed_bytes >= MAX_DELAYED_BYTES {
            if src_ended && delayed.is_empty() {
                // Pass the end of stream on; the other direction may still have an answer.
                dst.shutdown(Shutdown::Write)?;
                return Ok(());
            }
            thread::sleep(wait);
            continue;
        }
        src.set_read_timeout(Some(wait))?;
        let n = match src.read(&mut buf) {
            Ok(0) => {
                src_ended = true;
                continue;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        // The fault is read again now: it may have changed while the read was waiting, and
        // bytes sent after a fault was set must obey it.
        match shared.fault(direction) {
            Fault::Blackhole => shared.count_discarded(direction, n),
            Fault::Delay(delay) => {
                delayed.push_back((Instant::now() + delay, buf[..n].to_vec()));
                delayed_bytes += n;
            }
            // A Drop is acted on at the top of the loop.
            fault @ (Fault::None | Fault::Drop | Fault::Throttle(_)) => {
                if let Fault::Throttle(rate) = fault {
                    // These bytes go out (and the next are read) after the time they take at
                    // the rate.
                    thread::sleep(Duration::from_secs_f64(n as f64 / rate.max(1) as f64));
                }
                if delayed.is_empty() {
                    dst.write_all(&buf[..n])?;
                    shared.count_forwarded(direction, n);
                } else {
                    // Behind earlier delayed chunks, to keep the order.
                    delayed.push_back((Instant::now(), buf[..n].to_vec()));
                    delayed_bytes += n;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The most any test waits for something that should happen; reaching it is a failure.
    const DEADLINE: Duration = Duration::from_secs(10);

    /// How long a test listens for bytes that must not arrive.
    const SILENCE: Duration = Duration::from_millis(300);

    /// An echo server on 127.0.0.1:0 that stops and joins its threads on drop.
    struct EchoServer {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl EchoServer {
        fn start() -> EchoServer {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo server");
            let addr = listener.local_addr().expect("echo server address");
            listener.set_nonblocking(true).expect("non-blocking listener");
            let stop = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&stop);
            let thread = thread::spawn(move || {
                let mut conns = Vec::new();
                while !flag.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let flag = Arc::clone(&flag);
                            conns.push(thread::spawn(move || echo(stream, &flag)));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
                for conn in conns {
                    let _ = conn.join();
                }
            });
            EchoServer { addr, stop, thread: Some(thread) }
        }
    }

    fn echo(mut stream: TcpStream, stop: &AtomicBool) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::SeqCst) {
            match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
    }

    impl Drop for EchoServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    fn setup() -> (EchoServer, Proxy) {
        let echo = EchoServer::start();
        let proxy = Proxy::start(local(), echo.addr).expect("start the proxy");
        (echo, proxy)
    }

    fn local() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let stream = TcpStream::connect(addr).expect("connect to the proxy");
        stream.set_read_timeout(Some(DEADLINE)).expect("set a read timeout");
        stream
    }

    fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let start = Instant::now();
        while !condition() {
            assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `msg` and expects it back.
    fn round_trip(stream: &mut TcpStream, msg: &[u8]) {
        stream.write_all(msg).expect("send");
        let mut back = vec![0u8; msg.len()];
        stream.read_exact(&mut back).expect("the echo");
        assert_eq!(back, msg);
    }

    /// Expects the connection to be closed: end of stream or a reset, not a timeout.
    fn assert_closed(stream: &mut TcpStream) {
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("expected a closed connection, read {n} bytes"),
            Err(e) => assert!(
                !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
                "expected a closed connection, but it is still open: {e}"
            ),
        }
    }

    /// Expects nothing to arrive for a while, on a connection that stays open.
    fn assert_silent(stream: &mut TcpStream) {
        stream.set_read_timeout(Some(SILENCE)).expect("timeout");
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Ok(0) => panic!("the connection was closed"),
            Ok(n) => panic!("{n} bytes arrived: {:?}", &buf[..n]),
            Err(e) => assert!(
                matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
                "expected silence, got {e}"
            ),
        }
        stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    }

    #[test]
    fn passes_bytes_through_both_ways() {
        let (_echo, proxy) = setup();
        let mut client = connect(proxy.addr());
        round_trip(&mut client, b"hello");
        round_trip(&mut client, b"again");
        wait_until("both directions are counted", || proxy.bytes_forwarded() == (10, 10));
        assert_eq!(proxy.connections(), 1);
        drop(client);
        wait_until("the connection is gone", || proxy.connections() == 0);
    }

    #[test]
    fn half_close_is_passed_on() {
        let (_echo, proxy) = setup();
        let mut client = connect(proxy.addr());
        client.write_all(b"bye").expect("send");
        client.shutdown(Shutdown::Write).expect("half-close");
        let mut back = Vec::new();
        client.read_to_end(&mut back).expect("the echo, then the end");
        assert_eq!(back, b"bye");
    }

    #[test]
    fn delay_still_delivers_in_order() {
        let (_echo, proxy) = setup();
        let mut client = connect(proxy.addr());
        proxy.set_fault(Fault::Delay(Duration::from_millis(30)));
        round_trip(&mut client, b"slow");
        for part in [b"a", b"b", b"c"] {
            client.write_all(part).expect("send");
        }
        let mut back = [0u8; 3];
        client.read_exact(&mut back).expect("the echo");
        assert_eq!(&back, b"abc");
        proxy.set_fault(Fault::None);
        round_trip(&mut client, b"fast");
    }

    #[test]
    fn throttle_bounds_the_rate() {
        let (_echo, proxy) = setup();
        let mut client = connect(proxy.addr());
        // Requests slowed to 256 KiB a second, answers not: 64 KiB take at least 250 ms.
        proxy.set_fault_directed(Fault::Throttle(256 << 10), Fault::None);
        let started = Instant::now();
        round_trip(&mut client, &vec![7u8; 64 << 10]);
        assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
        proxy.set_fault(Fault::None);
        round_trip(&mut client, b"fast");
    }

    #[test]
    fn drop_closes_connections_and_refuses_new_ones() {
        let (_echo, proxy) = setup();
        let mut old = connect(proxy.addr());
        round_trip(&mut old, b"before");
        proxy.set_fault(Fault::Drop);
        assert_closed(&mut old);
        wait_until("no connection is open", || proxy.connections() == 0);

        let mut refused = connect(proxy.addr());
        assert_closed(&mut refused);
        assert_eq!(proxy.connections(), 0);

        proxy.set_fault(Fault::None);
        let mut new = connect(proxy.addr());
        round_trip(&mut new, b"after");
    }

    #[test]
    fn blackhole_swallows_bytes_until_cleared() {
        let (_echo, proxy) = setup();
        let mut client = connect(proxy.addr());
        round_trip(&mut client, b"before");
        proxy.set_fault(Fault::Blackhole);
        client.write_all(b"lost").expect("send into the blackhole");
        wait_until("the bytes are swallowed", || proxy.bytes_discarded() == (4, 0));
        assert_silent(&mut client);
        assert_eq!(proxy.connections(), 1, "a blackhole keeps connections open");

        proxy.set_fault(Fault::None);
        // Only the new bytes come back: the swallowed ones are gone.
        round_trip(&mut client, b"back");
    }

    #[test]
    fn one_way_faults() {
        let (_echo, proxy) = setup();
        let mut client = connect(proxy.addr());
        round_trip(&mut client, b"hi");

        // Requests get through, answers do not.
        proxy.set_fault_directed(Fault::None, Fault::Blackhole);
        client.write_all(b"ping").expect("send");
        wait_until("the answer is swallowed", || proxy.bytes_discarded() == (0, 4));
        assert_eq!(proxy.bytes_forwarded().0, 6, "the request went through");
        assert_silent(&mut client);

        // Requests do not get through, so there is no answer either.
        proxy.set_fault_directed(Fault::Blackhole, Fault::None);
        client.write_all(b"pong").expect("send");
        wait_until("the request is swallowed", || proxy.bytes_discarded() == (4, 4));
        assert_silent(&mut client);
        assert_eq!(proxy.bytes_forwarded(), (6, 2));

        proxy.set_fault(Fault::None);
        round_trip(&mut client, b"healed");
    }

    #[test]
    fn a_drop_in_one_direction_closes_the_connection() {
        let (_echo, proxy) = setup();
        let mut client = connect(proxy.addr());
        round_trip(&mut client, b"hi");
        proxy.set_fault_directed(Fault::None, Fault::Drop);
        assert_closed(&mut client);
    }

    #[test]
    fn unreachable_target_closes_the_client() {
        // Nothing can listen on port 0, so connecting there is always refused.
        let proxy = Proxy::start(local(), local()).expect("start the proxy");
        let mut client = connect(proxy.addr());
        assert_closed(&mut client);
        assert_eq!(proxy.connections(), 0);
    }

    #[test]
    fn dropping_the_proxy_closes_connections_and_joins_threads() {
        let (_echo, proxy) = setup();
        let mut first = connect(proxy.addr());
        let mut second = connect(proxy.addr());
        round_trip(&mut first, b"one");
        round_trip(&mut second, b"two");
        proxy.set_fault(Fault::Blackhole);
        // Drop returns only after joining every thread; the test ending proves it.
        drop(proxy);
        assert_closed(&mut first);
        assert_closed(&mut second);
    }

    #[test]
    fn start_reports_a_bad_listen_address() {
        let taken = TcpListener::bind(local()).expect("bind");
        let addr = taken.local_addr().expect("address");
        match Proxy::start(addr, addr) {
            Err(Error::Io(_)) => {}
            Err(e) => panic!("expected an I/O error, got {e}"),
            Ok(_) => panic!("bound an address already in use"),
        }
    }
}
