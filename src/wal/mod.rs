//! The write-ahead log: every change the master makes, one text line each, in one file.
//!
//! The master appends a [`Record`] to its log with [`Wal::append`] before it answers the client,
//! and rebuilds its state at start-up by replaying the file with [`Wal::open`]. The backup
//! master reads the primary's file as it grows with a [`Follower`] and copies each record into
//! its own log with the same seq, in batches ([`Wal::append_copied`]), so the two logs agree record
//! for record.
//! [`Wal::compact`] replaces the file with a shorter one while appends go on. This module owns
//! the file and its format; what a record *means* is the caller's business (one function of
//! the master, `master::apply_record`, decides it for replay and following alike).
//!
//! Files: `format.rs` (records, encoding, decoding), `lines.rs` (reading lines in chunks),
//! `follow.rs` (the [`Follower`]), `compact.rs` (compaction and rewrite), this one (appends,
//! group commit, durability).
//!
//! # On-disk format
//!
//! The file is plain text, one record per line, so `tail -f`, `grep` and `less` work on it. It
//! has no header and no footer; an empty file is an empty log. Every line is one of:
//!
//! ```text
//! <seq> SET <key> <escaped-value>\n     a client wrote a value
//! <seq> DEL <key>\n                     a client deleted a key
//! <seq> MEMBER <slave-id>\n             a slave registered for the first time: it is a member
//! <seq> REMOVE <slave-id>\n             an operator removed a member for good
//! <seq> EPOCH <epoch>\n                 a master started a new epoch; later records belong to it
//! ```
//!
//! Byte by byte:
//!
//! - `<seq>` is 1 to 20 ASCII digits (`0x30`..=`0x39`): a decimal `u64` with no sign and no
//!   leading zero (`0` itself is written `0`). Sequence numbers strictly increase from line to
//!   line through the whole file; gaps are allowed (a failed append and [`Wal::advance_seq`]
//!   leave them).
//! - Fields are separated by exactly one space (`0x20`). Two spaces in a row are an empty field,
//!   which no field allows, so a line is never split two ways.
//! - The operation is one of the upper-case ASCII words `SET`, `DEL`, `MEMBER`, `REMOVE`,
//!   `EPOCH`.
//! - `<key>` is 1 to [`MAX_KEY`](crate::protocol::MAX_KEY) bytes of UTF-8 without whitespace or
//!   control bytes, exactly as [`parse_key`](crate::wire::parse_key) accepts it.
//! - `<slave-id>` is 1 to [`MAX_ID`](crate::peer::MAX_ID) bytes of ASCII letters, digits, `-`,
//!   `_`, `.` and `:`, exactly as [`parse_slave_id`](crate::wire::parse_slave_id) accepts it.
//! - `<epoch>` is written like `<seq>`.
//! - `<escaped-value>` is the value escaped by [`crate::escape`]: zero or more bytes, none of
//!   them below `0x20` or equal to `0x7f`. It is everything after the single space that follows
//!   the key, spaces included, so an empty value leaves the line ending in that space
//!   (`5 SET k \n`).
//! - Every line, the last one included, ends with one `\n` (`0x0a`); there is no `\r`.
//!
//! For example, a slave joining, then a write, an overwrite with an empty value (its line ends in a space), a delete, a new
//! epoch after a takeover (its first seq jumps past everything the new master knew) and a write
//! of `two words\n`:
//!
//! ```text
//! 1 MEMBER s1
//! 2 SET user:1 alice
//! 3 SET user:1
//! 4 DEL user:1
//! 5 EPOCH 2
//! 1000 SET greeting two words\n
//! ```
//!
//! A write's version is its stamp `(epoch, seq)`: `seq` is its line's, `epoch` is that of the
//! last `EPOCH` line before it (0 before any). Stamps are never written out and never change:
//! replaying a log, or a compacted copy of it, gives every key the stamp it had when it was
//! written, which is also the stamp the slaves hold.
//!
//! There is no checksum. The file is append-only with one writer, so the only damage a crash can
//! do is a torn last line, and that is detected by its missing `\n`. A bit flip inside a value is
//! not detected; a bit flip that breaks the syntax is. Readability by hand was worth that.
//!
//! # Replay and torn tails
//!
//! [`Wal::open`] reads the file in [`READ_BUFFER`]-sized chunks and parses each line in place
//! (no allocation per line beyond the record's own key and value), calling the caller's `apply`
//! for each record in file order. A last line without its `\n` is an append that a crash cut
//! short; it was never acknowledged (an append returns only after its whole line is written), so
//! it is dropped: the file is truncated to the end of the last complete line and a warning says
//! how many bytes went at which offset. This covers a tail of NUL bytes or garbage too, which a
//! file system can leave after a power loss. Anything else is damage in the middle of the log,
//! and replaying past it could resurrect deleted keys or lose writes, so a complete line that
//! does not decode, or a sequence number that does not increase, is [`Error::Corrupt`] naming the
//! line number and byte offset, and the file is left as it is for an operator to look at.
//!
//! # Appending: group commit
//!
//! Appends from all connection threads meet in one mutex. Under it, an append takes the next
//! sequence number and encodes its line into a shared pending buffer, so sequence order and
//! file order are the same thing. The first appender that finds no write in flight becomes the
//! leader: it takes the whole pending buffer, releases the mutex, writes the buffer with one
//! `write(2)` (and, with [`Fsync::Always`], one `fdatasync(2)`), then marks the batch done and
//! wakes everyone. An appender whose line was carried by someone else's batch returns without a
//! system call of its own. Under load, the appends that arrive while one batch is being written
//! all go out together in the next, so the syscall cost is shared instead of serialised.
//!
//! An I/O error is returned to every append of the failed batch (the master then answers its
//! clients with an error). A failed write is rolled back by truncating the file to its length
//! before the batch, so a half-written batch never sits in front of later records. If that
//! rollback fails, or an `fdatasync` fails (after which Linux may have dropped the dirty pages,
//! so nothing written since the last good sync is known to be on disk), the log refuses all
//! further appends until the process restarts and replays what is really in the file.
//!
//! # Durability: `--fsync always | everysec | never`
//!
//! Every append is in the kernel (`write(2)` has returned) before the master replies, so killing
//! the master process, even with `kill -9`, loses nothing whatever the setting. The setting
//! decides what an operating-system crash or power loss can take:
//!
//! - `always`: `fdatasync` before every reply (shared by a batch). Nothing acknowledged is lost,
//!   at the price of one disk flush per batch, typically 0.1 to 10 ms.
//! - `everysec` (the default, and what we recommend for the master): a background thread calls
//!   `fdatasync` at most once per [`FSYNC_INTERVAL`], and only when something was appended. An OS
//!   crash loses at most about the last second, and even that second is not gone from the system:
//!   every acknowledged write is also in the memory of a majority of the slaves, from which a
//!   restarted master can repair. Appends cost one `write(2)` and never wait for the disk.
//! - `never`: the kernel flushes when it likes (usually within 30 s). For tests and benchmarks.
//!
//! [`Wal::compact`] and the creation of a new log file sync regardless of the setting: a
//! renamed file whose contents were never flushed can come back empty after a crash, which
//! would lose the whole log rather than the last second.
//!
//! # Compaction
//!
//! [`Wal::compact`] replaces the log with a *subsequence* of it: every `SET` or `DEL` that is
//! still the newest write of its key, every `EPOCH` line, and the `MEMBER` line of every member
//! still in the cluster, each with its own seq, in seq order; then every line appended since
//! the snapshot was taken, byte for byte. Overwritten values, removed members and their
//! `REMOVE` lines go. Tombstones stay, so a slave resynced from a position before a delete
//! learns of it. Because the new file is a subsequence of the old, it replays to the same state
//! with the same stamps, and a reader positioned at any seq of the old file finds in the new
//! one exactly what it still has to apply above that seq.
//!
//! It runs in three steps. (1) Under the append lock, once no batch is in flight, it notes the
//! last seq `upto` and the file's length. (2) Without the lock, the caller builds the snapshot
//! as of `upto` (the master does it from memory, after every append up to `upto` has reached
//! its index) and it is written to `<log>.rewrite` beside the log and synced; appends go on in
//! the old file meanwhile. (3) Under the lock again, the bytes appended since step 1 are copied
//! to the new file, which is synced and renamed over the log, and the directory is synced.
//! Appends wait only for step 3, whose size is what was appended during step 2. A crash at any
//! step leaves either the whole old log or the whole new one (a stale `<log>.rewrite` is
//! removed by the next compaction); both replay to the same state.
//!
//! [`Wal::reset`] empties the log in place (a master about to copy the other master's whole
//! log); [`Wal::rewrite`] replaces it at once with given entries, the appends blocked.
//!
//! # Following
//!
//! A [`Follower`] remembers how many bytes of complete lines it has consumed and, on each
//! [`Follower::poll`], reads from there to the end of the file, applying each new complete line;
//! a partial last line is read again on the next poll, so it is never applied half-written and a
//! truncated torn tail is never glued to what follows it. A file *replaced* by a rename (its
//! device and inode changed) is a compaction: the follower reads the new file from its start and
//! applies only the records above the last one it applied. A file that shrank below what it
//! consumed, or no longer has a line end where the last consumed line ended (rewritten in place,
//! a best-effort check), holds another history: the follower tells the caller to clear its
//! state and re-applies the whole file.

mod compact;
mod follow;
mod format;
mod lines;

pub use compact::Compaction;
pub use follow::{Follower, Poll};
pub use format::{decode, encode, Record};

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::{Error, Result};
use compact::sync_dir;
use format::{check_line, validate};
use lines::{read_lines, read_retrying};

/// How many bytes replay and the follower ask for per `read(2)`. Big reads keep replay bound by
/// parsing rather than by system calls; a line longer than this grows the buffer instead of
/// failing, so the limit is on syscall size, not on line length.
pub const READ_BUFFER: usize = 1 << 20;

/// Most records a follower (of the file, or of the stream) copies in one batch: one append to
/// its own log and one hold of its state's locks.
pub const FOLLOW_BATCH: usize = 1024;

/// A follower's batch is applied once its lines hold this many bytes, even if it has fewer than
/// [`FOLLOW_BATCH`] records: what is held in memory between reading and applying stays bounded
/// with values of any size.
pub const FOLLOW_BATCH_BYTES: usize = 1 << 20;

/// Whether a follower's batch of `records` read from `bytes` of lines is to be applied now.
pub fn follow_batch_full(records: usize, bytes: usize) -> bool {
    records >= FOLLOW_BATCH || bytes >= FOLLOW_BATCH_BYTES
}

/// How often, at most, the `everysec` background thread calls `fdatasync`: the most an operating
/// system crash can lose. It syncs only if something was appended since the last sync.
pub const FSYNC_INTERVAL: Duration = Duration::from_secs(1);

/// How many bytes [`Wal::rewrite`] encodes before it writes them out. Bigger means fewer system
/// calls for a large compaction, at the cost of that much memory while it runs.
pub const REWRITE_BUFFER: usize = 1 << 20;

/// The largest append buffer kept for reuse once its batch is written. A bigger one, left by a
/// burst of large values, is freed so an idle log does not hold on to it.
const SPARE_BUFFER_LIMIT: usize = 1 << 20;

/// What [`Wal::rewrite`] appends to the log's file name for its temporary file, which lives in
/// the same directory so the final rename cannot cross file systems.
pub const REWRITE_SUFFIX: &str = ".rewrite";

/// When appends reach the disk; see the module documentation for what each choice can lose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Fsync {
    /// `fdatasync` before every append returns (one per group-committed batch).
    Always,
    /// `fdatasync` from a background thread at most once a second (`FSYNC_INTERVAL`).
    #[default]
    Everysec,
    /// Never `fdatasync`; the kernel writes back when it likes.
    Never,
}

impl std::str::FromStr for Fsync {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Fsync, String> {
        match s {
            "always" => Ok(Fsync::Always),
            "everysec" => Ok(Fsync::Everysec),
            "never" => Ok(Fsync::Never),
            other => Err(format!("'{other}' is not one of: always, everysec, never")),
        }
    }
}

impl fmt::Display for Fsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fsync::Always => "always",
            Fsync::Everysec => "everysec",
            Fsync::Never => "never",
        })
    }
}

/// Counters of a [`Wal`]'s work since it was opened, for `STATS` and for checking that group
/// commit shares system calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Appends accepted (each got a sequence number).
    pub appends: u64,
    /// Batches written with `write(2)`, failed ones included.
    pub writes: u64,
    /// `fdatasync(2)` calls that succeeded, from appends and from the background thread.
    pub syncs: u64,
}

/// An open write-ahead log. `Send + Sync`: share it between threads with an `Arc`.
pub struct Wal {
    shared: Arc<Shared>,
    /// The `everysec` background thread, joined on drop.
    syncer: Option<JoinHandle<()>>,
}

/// What the appenders and the background sync thread share.
struct Shared {
    path: PathBuf,
    fsync: Fsync,
    state: Mutex<State>,
    /// Signalled whenever a batch finishes, so its appenders (and a waiting rewrite) can go on.
    batch_done: Condvar,
    /// Signalled when the `Wal` is dropped, so the sync thread stops without waiting a second.
    stop: Condvar,
}

/// Everything behind the append lock.
struct State {
    /// The log file, open for appending. An `Arc` so a leader can write it without the lock, and
    /// so [`Wal::rewrite`] can swap in the new file.
    file: Arc<File>,
    /// The file's length: every byte written by completed batches.
    size: u64,
    /// The highest sequence number handed out or reserved with `advance_seq`.
    last_seq: u64,
    /// Encoded lines waiting for the next leader.
    pending: Vec<u8>,
    /// How many appends wrote into `pending`.
    pending_count: usize,
    /// An empty buffer kept to become the next `pending`, so steady appending does not allocate.
    spare: Vec<u8>,
    /// The batch number `pending` will be written as.
    next_batch: u64,
    /// The highest batch number whose write has finished, well or badly.
    done_batch: u64,
    /// Whether a leader is writing a batch right now.
    writing: bool,
    /// Failed batches whose appenders have not all collected their error yet.
    failures: Vec<Failure>,
    /// Set when the file can no longer be trusted; every later append fails with this reason.
    broken: Option<String>,
    /// Whether something was written since the last `fdatasync` (for `everysec`).
    dirty: bool,
    /// Set when the `Wal` is dropped, to stop the sync thread.
    stop: bool,
    stats: Stats,
    /// The seq of the last record written (not one merely reserved with `advance_seq`).
    last_record: u64,
    /// Seqs appended with [`Wal::append_tracked`] whose guard is still alive.
    unsettled: BTreeSet<u64>,
    /// The error of the last failed batch, until a batch is written again.
    last_error: Option<String>,
    /// A compaction is running (only one at a time).
    compacting: bool,
}

/// The error of a failed batch, kept until each of its waiting appenders has taken a copy.
struct Failure {
    batch: u64,
    kind: io::ErrorKind,
    message: String,
    waiters: usize,
}

impl Wal {
    /// Opens (creating if missing) and replays the log, calling `apply` for each record in order.
    ///
    /// A torn last line is dropped and the file truncated to its last complete line (with a
    /// warning); a damaged line anywhere else is [`Error::Corrupt`] and the file is left
    /// untouched. An error from `apply` stops the replay and is returned as it is.
    pub fn open(path: &Path, fsync: Fsync, mut apply: impl FnMut(u64, Record) -> Result<()>) -> Result<Wal> {
        let mut file = open_log(path, fsync)?;
        let mut buf = Vec::new();
        let mut prev = None;
        let scanned = read_lines(
            &mut buf,
            |chunk| read_retrying(&mut file, chunk).map_err(|e| io_error("cannot read", path, e)),
            0,
            |line, number, offset| {
                let (seq, record) = check_line(path, line, number, offset, &mut prev)?;
                apply(seq, record)
            },
        )?;
        if scanned.partial > 0 {
            log::warn!(
                "{}: dropped {} bytes of a torn last record at byte offset {} (an append cut \
                 short by a crash; it was never acknowledged)",
                path.display(),
                scanned.partial,
                scanned.complete
            );
            file.set_len(scanned.complete)
                .map_err(|e| io_error("cannot truncate the torn tail of", path, e))?;
            if fsync != Fsync::Never {
                file.sync_data().map_err(|e| io_error("cannot sync", path, e))?;
            }
        }
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            fsync,
            state: Mutex::new(State {
                file: Arc::new(file),
                size: scanned.complete,
                last_seq: prev.unwrap_or(0),
                pending: Vec::new(),
                pending_count: 0,
                spare: Vec::new(),
                next_batch: 1,
                done_batch: 0,
                writing: false,
                failures: Vec::new(),
                broken: None,
                dirty: false,
                stop: false,
                stats: Stats::default(),
                unsettled: BTreeSet::new(),
                last_record: prev.unwrap_or(0),
                last_error: None,
                compacting: false,
            }),
            batch_done: Condvar::new(),
            stop: Condvar::new(),
        });
        let syncer = if fsync == Fsync::Everysec {
            let shared = Arc::clone(&shared);
            let handle = thread::Builder::new()
                .name("dsm-wal-fsync".to_string())
                .spawn(move || run_syncer(&shared))
                .map_err(|e| io_error("cannot start the fsync thread for", path, e))?;
            Some(handle)
        } else {
            None
        };
        Ok(Wal { shared, syncer })
    }

    /// Appends one record with the next seq (> every seq so far); returns the seq. Thread-safe;
    /// file order == seq order. Returns only after the bytes are written to the file with write(2)
    /// (so kill -9 after return loses nothing) and, with Fsync::Always, after fdatasync.
    ///
    /// A key or slave id that could not be read back is refused with [`Error::Protocol`] before
    /// a seq is taken. An I/O error is returned to every append of the failed batch.
    pub fn append(&self, record: &Record) -> Result<u64> {
        self.append_inner(record, false)
    }

    /// Like [`append`](Wal::append), and the seq stays *unsettled* until the returned guard is
    /// dropped: [`settled_through`](Wal::settled_through) does not pass it before. A master
    /// holds the guard until it has handed the write to every slave link, so that a sync
    /// position it gives a slave never runs ahead of a write still on its way.
    pub fn append_tracked(&self, record: &Record) -> Result<Appended<'_>> {
        let seq = self.append_inner(record, true)?;
        Ok(Appended { wal: self, seq })
    }

    /// Appends client writes together (`value` `None`: a delete), the record of each what
    /// [`Record::store`] makes, with consecutive seqs, in one batch (one `write(2)`, or none of
    /// its own when another batch carries them); the seqs stay unsettled until the guard is
    /// dropped, as with [`append_tracked`](Wal::append_tracked). All or none are written.
    pub fn append_stores_tracked<'a, I>(&self, writes: I) -> Result<AppendedRun<'_>>
    where
        I: ExactSizeIterator<Item = (&'a str, Option<&'a [u8]>)> + Clone,
    {
        for (key, _) in writes.clone() {
            format::check_store(key)?;
        }
        let shared = &*self.shared;
        let mut st = shared.state.lock();
        if let Some(why) = &st.broken {
            return Err(broken_error(why));
        }
        let first = st.last_seq + 1;
        let last = st
            .last_seq
            .checked_add(writes.len() as u64)
            .ok_or_else(|| Error::Unavailable("the log's sequence numbers are exhausted".to_string()))?;
        for (seq, (key, value)) in (first..=last).zip(writes) {
            format::encode_store(seq, key, value, &mut st.pending);
            st.unsettled.insert(seq);
        }
        st.last_seq = last;
        st.pending_count += 1;
        st.stats.appends += last + 1 - first;
        let result = self.finish_batch(&mut st);
        match result {
            Ok(()) => {
                st.last_record = st.last_record.max(last);
                Ok(AppendedRun { wal: self, first, last })
            }
            Err(e) => {
                for seq in first..=last {
                    st.unsettled.remove(&seq);
                }
                Err(e)
            }
        }
    }

    /// Appends a record copied from another master's log with the seq it has there, which must
    /// be above every seq of this log ([`Error::Corrupt`] otherwise).
    pub fn append_at(&self, seq: u64, record: &Record) -> Result<()> {
        self.append_copied(std::iter::once((seq, record)))
    }

    /// Appends records copied from another master's log, with the seqs they have there
    /// (increasing, and above every seq of this log: [`Error::Corrupt`] otherwise), in one batch
    /// (one `write(2)`, as [`append_stores_tracked`](Wal::append_stores_tracked)): a backup
    /// copying a bulk load made one system call per record, 40% of its CPU time. All or none
    /// are written.
    pub fn append_copied<'a, I>(&self, records: I) -> Result<()>
    where
        I: Iterator<Item = (u64, &'a Record)> + Clone,
    {
        for (_, record) in records.clone() {
            validate(record)?;
        }
        let shared = &*self.shared;
        let mut st = shared.state.lock();
        if let Some(why) = &st.broken {
            return Err(broken_error(why));
        }
        let mut last = st.last_record;
        for (seq, _) in records.clone() {
            if seq <= last {
                return Err(Error::Corrupt(format!(
                    "a copied record's sequence number {seq} does not follow this log's {last}"
                )));
            }
            last = seq;
        }
        if last == st.last_record {
            return Ok(());
        }
        for (seq, record) in records {
            encode(seq, record, &mut st.pending);
            st.stats.appends += 1;
        }
        st.last_seq = st.last_seq.max(last);
        st.pending_count += 1;
        let result = self.finish_batch(&mut st);
        if result.is_ok() {
            st.last_record = st.last_record.max(last);
        }
        result
    }

    fn append_inner(&self, record: &Record, track: bool) -> Result<u64> {
        validate(record)?;
        let shared = &*self.shared;
        let mut st = shared.state.lock();
        if let Some(why) = &st.broken {
            return Err(broken_error(why));
        }
        let seq = st
            .last_seq
            .checked_add(1)
            .ok_or_else(|| Error::Unavailable("the log's sequence numbers are exhausted".to_string()))?;
        st.last_seq = seq;
        if track {
            st.unsettled.insert(seq);
        }
        encode(seq, record, &mut st.pending);
        st.pending_count += 1;
        st.stats.appends += 1;
        let result = self.finish_batch(&mut st);
        match &result {
            Ok(()) => st.last_record = st.last_record.max(seq),
            Err(_) if track => {
                st.unsettled.remove(&seq);
            }
            Err(_) => {}
        }
        result.map(|()| seq)
    }

    /// The highest seq at or below which every append is settled (see
    /// [`append_tracked`](Wal::append_tracked)).
    pub fn settled_through(&self) -> u64 {
        let st = self.shared.state.lock();
        st.unsettled.first().map_or(st.last_seq, |first| first - 1)
    }

    /// Why appends fail, if the last one did: the error of the last failed batch (cleared by the
    /// next batch that is written), or what made the log refuse appends for good.
    pub fn trouble(&self) -> Option<String> {
        let st = self.shared.state.lock();
        st.broken.clone().or_else(|| st.last_error.clone())
    }

    /// Empties the log in place (truncating the file, so that a follower sees it shrink and
    /// starts over) and forgets its sequence numbers: a copy of another master's log follows.
    pub fn reset(&self) -> Result<()> {
        let shared = &*self.shared;
        let mut st = shared.state.lock();
        while st.writing || !st.pending.is_empty() {
            shared.batch_done.wait(&mut st);
        }
        if let Some(why) = &st.broken {
            return Err(broken_error(why));
        }
        st.file.set_len(0).map_err(|e| io_error("cannot truncate", &shared.path, e))?;
        if shared.fsync != Fsync::Never {
            st.file.sync_data().map_err(|e| io_error("cannot sync", &shared.path, e))?;
        }
        st.size = 0;
        st.last_seq = 0;
        st.last_record = 0;
        st.unsettled.clear();
        Ok(())
    }

    /// Returns once the batch that will carry what was just added to `pending` is written:
    /// by this thread as the leader, or by another one.
    fn finish_batch(&self, st: &mut MutexGuard<'_, State>) -> Result<()> {
        let batch = st.next_batch;
        loop {
            if st.done_batch >= batch {
                // Someone else's write carried this line.
                return st.take_failure(batch);
            }
            if !st.writing {
                // Nobody took this line yet (a leader would have advanced `done_batch` or still
                // be `writing`), so it is still in `pending`: write the batch.
                return self.lead(st);
            }
            self.shared.batch_done.wait(st);
        }
    }

    /// Writes everything pending as one batch, as the leader, with the lock released during the
    /// system calls. Returns the leader's own result; the other appenders of the batch find
    /// theirs in `failures`.
    fn lead(&self, st: &mut MutexGuard<'_, State>) -> Result<()> {
        let shared = &*self.shared;
        let batch = st.next_batch;
        st.next_batch += 1;
        let followers = std::mem::take(&mut st.pending_count).saturating_sub(1);
        let spare = std::mem::take(&mut st.spare);
        let mut buf = std::mem::replace(&mut st.pending, spare);
        let file = Arc::clone(&st.file);
        let size = st.size;
        let sync = shared.fsync == Fsync::Always;
        let outcome = match st.broken.clone() {
            // These appends queued up behind the failure that broke the log; writing them after
            // a partial batch that could not be cut off would bury it in the middle of the file.
            Some(why) => Err(WriteFailure {
                error: io::Error::other(format!("it refuses appends since {why}")),
                written: false,
                broken: None,
            }),
            None => {
                st.writing = true;
                let outcome = MutexGuard::unlocked(st, || write_batch(&file, &buf, size, sync));
                st.writing = false;
                st.stats.writes += 1;
                outcome
            }
        };
        st.done_batch = batch;
        let result = match outcome {
            Ok(()) => {
                st.size += buf.len() as u64;
                st.last_error = None;
                if sync {
                    st.stats.syncs += 1;
                } else {
                    st.dirty = true;
                }
                Ok(())
            }
            Err(failure) => {
                let message = format!(
                    "cannot append to the write-ahead log {}: {}",
                    shared.path.display(),
                    failure.error
                );
                log::error!("{message}");
                st.last_error = Some(message.clone());
                if failure.written {
                    st.size += buf.len() as u64;
                }
                if let Some(why) = failure.broken {
                    st.broken = Some(why);
                }
                if followers > 0 {
                    st.failures.push(Failure {
                        batch,
                        kind: failure.error.kind(),
                        message: message.clone(),
                        waiters: followers,
                    });
                }
                Err(Error::Io(io::Error::new(failure.error.kind(), message)))
            }
        };
        buf.clear();
        if buf.capacity() <= SPARE_BUFFER_LIMIT {
            st.spare = buf;
        }
        shared.batch_done.notify_all();
        result
    }

    /// The highest seq handed out by [`append`](Wal::append), replayed, or reserved with
    /// [`advance_seq`](Wal::advance_seq); 0 for a new, empty log.
    pub fn last_seq(&self) -> u64 {
        self.shared.state.lock().last_seq
    }

    /// The seq of the last record in the log (0 if none): unlike [`last_seq`](Wal::last_seq),
    /// never one only reserved with [`advance_seq`](Wal::advance_seq).
    pub fn last_record(&self) -> u64 {
        self.shared.state.lock().last_record
    }

    /// Makes the next append get a seq greater than `at_least` (a new master starting above
    /// every seq it has seen anywhere). Never lowers it.
    pub fn advance_seq(&self, at_least: u64) {
        let mut st = self.shared.state.lock();
        st.last_seq = st.last_seq.max(at_least);
    }

    /// The file's size in bytes: everything written by completed appends.
    pub fn bytes(&self) -> u64 {
        self.shared.state.lock().size
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Counters since the log was opened.
    pub fn stats(&self) -> Stats {
        self.shared.state.lock().stats
    }
}

/// Appends whose seqs stay unsettled while this lives (see [`Wal::append_stores_tracked`]).
pub struct AppendedRun<'a> {
    wal: &'a Wal,
    /// The first record's seq.
    pub first: u64,
    /// The last record's seq (the others are in between, in order).
    pub last: u64,
}

impl Drop for AppendedRun<'_> {
    fn drop(&mut self) {
        let mut st = self.wal.shared.state.lock();
        for seq in self.first..=self.last {
            st.unsettled.remove(&seq);
        }
    }
}

/// An append whose seq stays unsettled while this lives (see [`Wal::append_tracked`]).
pub struct Appended<'a> {
    wal: &'a Wal,
    /// The seq the record was appended with.
    pub seq: u64,
}

impl Drop for Appended<'_> {
    fn drop(&mut self) {
        self.wal.shared.state.lock().unsettled.remove(&self.seq);
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Some(handle) = self.syncer.take() {
            self.shared.state.lock().stop = true;
            self.shared.stop.notify_all();
            if handle.join().is_err() {
                log::error!("the fsync thread of {} panicked", self.shared.path.display());
            }
        }
    }
}

impl State {
    /// The result of `batch` for one of its appenders other than the leader.
    fn take_failure(&mut self, batch: u64) -> Result<()> {
        let Some(i) = self.failures.iter().position(|f| f.batch == batch) else {
            return Ok(());
        };
        let failure = &mut self.failures[i];
        let error = Error::Io(io::Error::new(failure.kind, failure.message.clone()));
        failure.waiters -= 1;
        if failure.waiters == 0 {
            self.failures.swap_remove(i);
        }
        Err(error)
    }
}

/// Why a batch failed, and what that did to the file.
struct WriteFailure {
    error: io::Error,
    /// The batch is in the file (only its sync failed).
    written: bool,
    /// Set when the file can no longer be trusted: the reason.
    broken: Option<String>,
}

/// Writes one batch at the end of the log, syncs it if asked, and rolls a failed write back.
fn write_batch(
    file: &File,
    buf: &[u8],
    size_before: u64,
    sync: bool,
) -> std::result::Result<(), WriteFailure> {
    let mut writer = file;
    if let Err(error) = writer.write_all(buf) {
        // Part of the batch may be in the file. Cut it off, or the next batch would follow a
        // partial line and turn a failed append into a corrupt middle line.
        let broken = match file.set_len(size_before) {
            Ok(()) => None,
            Err(e) => Some(format!("a failed write ({error}) could not be rolled back ({e})")),
        };
        return Err(WriteFailure { error, written: false, broken });
    }
    if sync {
        if let Err(error) = file.sync_data() {
            let broken = Some(format!("fdatasync failed ({error})"));
            return Err(WriteFailure { error, written: true, broken });
        }
    }
    Ok(())
}

/// The error for an append to a log that an earlier failure made untrustworthy.
fn broken_error(why: &str) -> Error {
    Error::Io(io::Error::other(format!(
        "the write-ahead log refuses appends since {why}; restart the master to replay the file"
    )))
}

/// The `everysec` background thread: syncs at most once per interval while there are appends,
/// once more on the way out, and stops as soon as the `Wal` is dropped.
fn run_syncer(shared: &Shared) {
    let mut st = shared.state.lock();
    loop {
        let deadline = Instant::now() + FSYNC_INTERVAL;
        while !st.stop && Instant::now() < deadline {
            shared.stop.wait_until(&mut st, deadline);
        }
        let stopping = st.stop;
        if st.dirty && st.broken.is_none() {
            st.dirty = false;
            let file = Arc::clone(&st.file);
            match MutexGuard::unlocked(&mut st, || file.sync_data()) {
                Ok(()) => st.stats.syncs += 1,
                Err(e) => {
                    log::error!(
                        "cannot fdatasync the write-ahead log {}: {e}; refusing further appends",
                        shared.path.display()
                    );
                    st.broken = Some(format!("fdatasync failed ({e})"));
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// Opens the log for reading and appending, creating it (and syncing its directory, so the new
/// name survives a crash) if it is missing.
fn open_log(path: &Path, fsync: Fsync) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).append(true);
    match options.open(path) {
        Ok(file) => Ok(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let file = options.create(true).open(path).map_err(|e| io_error("cannot create", path, e))?;
            if fsync != Fsync::Never {
                sync_dir(path).map_err(|e| io_error("cannot sync the directory of", path, e))?;
            }
            Ok(file)
        }
        Err(e) => Err(io_error("cannot open", path, e)),
    }
}

/// An I/O error that names the file and what was being done to it.
fn io_error(what: &str, path: &Path, e: io::Error) -> Error {
    Error::Io(io::Error::new(e.kind(), format!("{what} {}: {e}", path.display())))
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::fs;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn set(key: &str, value: &[u8]) -> Record {
        Record::Set { key: key.to_string(), value: value.to_vec() }
    }

    fn line(seq: u64, record: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        encode(seq, record, &mut out);
        out
    }

    /// A mix of every record type, with awkward values.
    fn sample_records() -> Vec<Record> {
        vec![
            Record::Member { id: "s1".to_string() },
            set("k", b"v"),
            set("k", b""),
            set("wörld", b" spaced  value "),
            set("bin", &(0..=255u8).collect::<Vec<_>>()),
            Record::Del { key: "k".to_string() },
            Record::Epoch { epoch: 7 },
            Record::Remove { id: "s1".to_string() },
            set("x", b"\\n is not a newline"),
        ]
    }

    /// Replays `path` with a fresh `Wal` and returns its records.
    fn replay(path: &Path) -> Result<Vec<(u64, Record)>> {
        let mut records = Vec::new();
        let wal = Wal::open(path, Fsync::Never, |seq, record| {
            records.push((seq, record));
            Ok(())
        })?;
        drop(wal);
        Ok(records)
    }

    fn open_empty(path: &Path, fsync: Fsync) -> Wal {
        Wal::open(path, fsync, |_, _| Ok(())).expect("open")
    }

    fn expect_corrupt(result: Result<Vec<(u64, Record)>>, needles: &[&str]) {
        match result {
            Err(Error::Corrupt(message)) => {
                for needle in needles {
                    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
                }
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn wal_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Wal>();
        check::<Follower>();
    }

    #[test]
    fn encodes_the_documented_text() {
        assert_eq!(line(5, &set("k", b"")), b"5 SET k \n");
        assert_eq!(line(6, &set("k", b"a b\n")), b"6 SET k a b\\n\n");
        assert_eq!(line(0, &Record::Del { key: "k".to_string() }), b"0 DEL k\n");
        assert_eq!(line(9, &Record::Member { id: "s-1".to_string() }), b"9 MEMBER s-1\n");
        assert_eq!(line(10, &Record::Remove { id: "s-1".to_string() }), b"10 REMOVE s-1\n");
        assert_eq!(
            line(u64::MAX, &Record::Epoch { epoch: u64::MAX }),
            b"18446744073709551615 EPOCH 18446744073709551615\n"
        );
    }

    #[test]
    fn round_trips_every_record_type() {
        let mut records = sample_records();
        records.push(Record::Epoch { epoch: 0 });
        records.push(Record::Epoch { epoch: u64::MAX });
        records.push(set(&"k".repeat(crate::protocol::MAX_KEY), b"x"));
        records.push(Record::Member { id: "a".repeat(crate::peer::MAX_ID) });
        for (i, record) in records.iter().enumerate() {
            for seq in [0, i as u64 + 1, u64::MAX] {
                let encoded = line(seq, record);
                let (text, newline) = encoded.split_at(encoded.len() - 1);
                assert_eq!(newline, b"\n");
                assert!(!text.iter().any(|&b| b < 0x20 || b == 0x7f), "control byte in {text:?}");
                assert_eq!(decode(text), Ok((seq, record.clone())), "{record:?}");
            }
        }
    }

    #[test]
    fn decode_rejects_every_malformed_form() {
        let long_key = format!("1 DEL {}", "k".repeat(crate::protocol::MAX_KEY + 1));
        let cases: &[(&[u8], &str)] = &[
            (b"", "sequence number"),
            (b"SET k v", "sequence number"),
            (b"x SET k v", "sequence number"),
            (b"-1 SET k v", "sequence number"),
            (b"+1 SET k v", "sequence number"),
            (b"01 SET k v", "sequence number"),
            (b"18446744073709551616 SET k v", "too large"),
            (b" 1 SET k v", "sequence number"),
            (b"1", "missing operation"),
            (b"1 ", "unknown operation"),
            (b"1  SET k v", "unknown operation"),
            (b"1 FOO k v", "unknown operation"),
            (b"1 set k v", "unknown operation"),
            (b"1 SET", "SET needs a key"),
            (b"1 SET k", "SET needs a space and a value"),
            (b"1 SET  v", "empty key"),
            (b"1 SET k\x01 v", "control"),
            (b"1 SET \xff v", "UTF-8"),
            (b"1 SET k \\q", "escaped"),
            (b"1 SET k a\\", "escaped"),
            (b"1 SET k \\x4", "escaped"),
            (b"1 SET k a\x01b", "escaped"),
            (b"1 SET k v\r", "escaped"),
            (b"1 DEL", "DEL needs one argument"),
            (b"1 DEL ", "empty key"),
            (b"1 DEL  k", "more follow"),
            (b"1 DEL k ", "more follow"),
            (b"1 DEL k v", "more follow"),
            (long_key.as_bytes(), "too long"),
            (b"1 MEMBER", "MEMBER needs one argument"),
            (b"1 MEMBER s1 s2", "more follow"),
            (b"1 MEMBER s/1", "invalid slave id"),
            (b"1 MEMBER ", "slave id"),
            (b"1 REMOVE", "REMOVE needs one argument"),
            (b"1 REMOVE s1 ", "more follow"),
            (b"1 REMOVE s 1", "more follow"),
            (b"1 EPOCH", "EPOCH needs one argument"),
            (b"1 EPOCH x", "bad epoch"),
            (b"1 EPOCH 01", "bad epoch"),
            (b"1 EPOCH 1 2", "more follow"),
            (b"1 EPOCH 99999999999999999999", "too large"),
        ];
        for (text, needle) in cases {
            match decode(text) {
                Ok(parsed) => panic!("{:?} decoded to {parsed:?}", String::from_utf8_lossy(text)),
                Err(e) => assert!(
                    e.contains(needle),
                    "{:?}: error {e:?} lacks {needle:?}",
                    String::from_utf8_lossy(text)
                ),
            }
        }
    }

    #[test]
    fn replay_restores_records_in_order_and_seqs_continue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let records = sample_records();
        {
            let wal = open_empty(&path, Fsync::Never);
            assert_eq!(wal.path(), path);
            assert_eq!((wal.last_seq(), wal.bytes()), (0, 0));
            for (i, record) in records.iter().enumerate() {
                assert_eq!(wal.append(record).expect("append"), i as u64 + 1);
            }
            assert_eq!(wal.last_seq(), records.len() as u64);
            assert_eq!(wal.bytes(), fs::metadata(&path).expect("stat").len());
        }
        let replayed = replay(&path).expect("replay");
        let expected: Vec<_> = (1..).zip(records.iter().cloned()).collect();
        assert_eq!(replayed, expected);

        let wal = open_empty(&path, Fsync::Never);
        assert_eq!(wal.last_seq(), records.len() as u64);
        let next = wal.append(&set("after", b"reopen")).expect("append");
        assert_eq!(next, records.len() as u64 + 1);
        wal.advance_seq(100);
        wal.advance_seq(50); // never lowers
        assert_eq!(wal.last_seq(), 100);
        assert_eq!(wal.append(&set("a", b"b")).expect("append"), 101);
        drop(wal);
        let seqs: Vec<u64> = replay(&path).expect("replay").iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs[seqs.len() - 2..], [next, 101]);
    }

    #[test]
    fn apply_errors_stop_the_replay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        fs::write(&path, b"1 SET a b\n2 SET c d\n").expect("write");
        let mut seen = 0;
        let result = Wal::open(&path, Fsync::Never, |_, _| {
            seen += 1;
            Err(Error::Config("stop".to_string()))
        });
        assert!(matches!(result, Err(Error::Config(_))));
        assert_eq!(seen, 1);
    }

    #[test]
    fn append_refuses_records_it_could_not_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let wal = open_empty(&path, Fsync::Never);
        for bad in [
            set("a b", b"v"),
            set("", b"v"),
            Record::Del { key: "k\n".to_string() },
            Record::Member { id: "s 1".to_string() },
            Record::Remove { id: String::new() },
        ] {
            assert!(matches!(wal.append(&bad), Err(Error::Protocol(_))), "{bad:?}");
        }
        assert_eq!((wal.last_seq(), wal.bytes()), (0, 0));
    }

    #[test]
    fn survives_a_cut_at_every_byte_of_the_last_three_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let full_path = dir.path().join("full");
        let records = sample_records();
        let mut ends = Vec::new(); // end offset of each record's line
        let mut text = Vec::new();
        for (i, record) in records.iter().enumerate() {
            encode(i as u64 + 1, record, &mut text);
            ends.push(text.len());
        }
        fs::write(&full_path, &text).expect("write");
        assert_eq!(replay(&full_path).expect("replay").len(), records.len(), "the uncut log replays");
        let path = dir.path().join("cut");
        let first_cut = ends[records.len() - 4];
        for cut in first_cut..=text.len() {
            fs::write(&path, &text[..cut]).expect("write");
            let survivors = ends.iter().filter(|&&end| end <= cut).count();
            let clean_len = if survivors == 0 { 0 } else { ends[survivors - 1] };
            let mut replayed = Vec::new();
            let wal = Wal::open(&path, Fsync::Never, |seq, record| {
                replayed.push((seq, record));
                Ok(())
            })
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            let expected: Vec<_> = (1..).zip(records[..survivors].iter().cloned()).collect();
            assert_eq!(replayed, expected, "cut at {cut}");
            let on_disk = fs::read(&path).expect("read");
            assert_eq!(on_disk, text[..clean_len], "cut at {cut}: not a clean prefix");
            assert_eq!(wal.bytes(), clean_len as u64);
            let seq = wal.append(&set("new", b"after the cut")).expect("append");
            assert_eq!(seq, survivors as u64 + 1, "cut at {cut}");
            drop(wal);
            let again = replay(&path).unwrap_or_else(|e| panic!("cut at {cut}, reopen: {e}"));
            assert_eq!(again.len(), survivors + 1, "cut at {cut}");
            assert_eq!(again[survivors], (seq, set("new", b"after the cut")));
        }
    }

    #[test]
    fn a_torn_tail_of_nul_bytes_or_garbage_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        for tail in [&[0u8; 4096][..], b"\xff\xfe garbage", b"3 SET k v"] {
            let mut text = b"1 SET a b\n2 DEL a\n".to_vec();
            text.extend_from_slice(tail);
            fs::write(&path, &text).expect("write");
            assert_eq!(replay(&path).expect("replay").len(), 2);
            assert_eq!(fs::read(&path).expect("read"), b"1 SET a b\n2 DEL a\n");
        }
    }

    #[test]
    fn a_complete_bad_line_is_corrupt_wherever_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let cases: &[(&[u8], &[&str])] = &[
            // A damaged middle line, named by number and offset.
            (
                b"1 SET a b\n2 SET c d\n3 SXT e f\n4 DEL a\n",
                &["line 3", "byte offset 20", "unknown operation"],
            ),
            // A complete last line is not a torn one: it was written whole.
            (b"1 SET a b\n2 BAD\n", &["line 2", "byte offset 10"]),
            (b"1 SET a b\n\0\0\0\n", &["line 2"]),
            (b"1 SET a b\n\n2 SET a c\n", &["line 2"]),
            // Sequence numbers must strictly increase.
            (b"1 SET a b\n3 SET a c\n3 SET a d\n", &["line 3", "byte offset 20", "does not increase"]),
            (b"5 SET a b\n4 SET a c\n", &["line 2", "does not increase"]),
        ];
        for (text, needles) in cases {
            fs::write(&path, text).expect("write");
            expect_corrupt(replay(&path), needles);
            assert_eq!(fs::read(&path).expect("read"), *text, "a corrupt log must be left as it is");
        }
    }

    /// Appends `per_thread` records from each of `threads` threads at once and checks that the
    /// file holds every one exactly once, in seq order.
    fn hammer(fsync: Fsync, threads: usize, per_thread: usize) -> Stats {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let wal = Arc::new(open_empty(&path, fsync));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let wal = Arc::clone(&wal);
                thread::spawn(move || {
                    let mut seqs = Vec::new();
                    for i in 0..per_thread {
                        let record = set(&format!("t{t}"), format!("{i}").as_bytes());
                        seqs.push(wal.append(&record).expect("append"));
                    }
                    seqs
                })
            })
            .collect();
        let mut owner = std::collections::HashMap::new();
        for (t, handle) in handles.into_iter().enumerate() {
            let seqs = handle.join().expect("thread");
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "a thread's seqs go back");
            for (i, seq) in seqs.into_iter().enumerate() {
                assert!(owner.insert(seq, (t, i)).is_none(), "seq {seq} given twice");
            }
        }
        let stats = wal.stats();
        let total = threads * per_thread;
        assert_eq!(wal.last_seq(), total as u64);
        assert_eq!(wal.bytes(), fs::metadata(&path).expect("stat").len());
        drop(wal);
        // Replay checks that the file's seqs strictly increase; here check that each line is
        // the record its seq was returned for.
        let replayed = replay(&path).expect("replay");
        assert_eq!(replayed.len(), total);
        let unique: HashSet<u64> = replayed.iter().map(|(s, _)| *s).collect();
        assert_eq!(unique.len(), total);
        for (seq, record) in replayed {
            let (t, i) = owner[&seq];
            assert_eq!(record, set(&format!("t{t}"), format!("{i}").as_bytes()));
        }
        assert_eq!(stats.appends, total as u64);
        stats
    }

    #[test]
    fn group_commit_shares_writes_and_syncs() {
        let stats = hammer(Fsync::Always, 8, 500);
        assert!(
            stats.writes < stats.appends,
            "no batching: {stats:?} (8 threads waiting on fdatasync should share writes)"
        );
        assert_eq!(stats.syncs, stats.writes);
    }

    #[test]
    fn concurrent_appends_without_fsync_keep_file_order() {
        // `hammer` checks the order: every line in the file is the record its seq was given
        // for, and the file's seqs strictly increase.
        let stats = hammer(Fsync::Never, 8, 500);
        assert_eq!(stats.syncs, 0, "--fsync never syncs nothing");
    }

    #[test]
    fn a_failed_write_is_an_error_for_every_appender_never_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let wal = Arc::new(open_empty(&path, Fsync::Never));
        wal.append(&set("a", b"b")).expect("append");
        // Swap in a file on which write(2) fails with ENOSPC and truncation is impossible.
        match OpenOptions::new().append(true).open("/dev/full") {
            Ok(full) => wal.shared.state.lock().file = Arc::new(full),
            Err(_) => return, // no /dev/full here; nothing to test
        }
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let wal = Arc::clone(&wal);
                thread::spawn(move || {
                    (0..10)
                        .map(|_| wal.append(&set("k", b"v")))
                        .filter(|r| matches!(r, Err(Error::Io(_))))
                        .count()
                })
            })
            .collect();
        let failures: usize = handles.into_iter().map(|h| h.join().expect("no panic")).sum();
        assert_eq!(failures, 40);
        assert!(wal.shared.state.lock().failures.is_empty(), "errors leaked");
        // The failed batch could not be rolled back, so the log stays closed to appends.
        let Err(Error::Io(e)) = wal.append(&set("k", b"v")) else {
            panic!("append after a failed rollback succeeded");
        };
        assert!(e.to_string().contains("restart"), "{e}");
        assert!(wal.rewrite(&mut std::iter::empty()).is_err());
    }

    #[test]
    fn appends_queued_behind_a_breaking_failure_are_not_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let wal = Arc::new(open_empty(&path, Fsync::Never));
        wal.append(&set("a", b"b")).expect("append");
        let before = fs::read(&path).expect("read");
        // Pretend a leader took a batch and is writing it, so the appenders queue their lines
        // for the next batch and wait.
        let fake_batch = {
            let mut st = wal.shared.state.lock();
            st.writing = true;
            st.next_batch += 1;
            st.next_batch - 1
        };
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let wal = Arc::clone(&wal);
                thread::spawn(move || wal.append(&set("k", b"v")))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while wal.stats().appends < 4 {
            assert!(Instant::now() < deadline, "appenders did not queue");
            thread::yield_now();
        }
        // That leader's write fails and cannot be rolled back.
        {
            let mut st = wal.shared.state.lock();
            st.broken = Some("a test failure".to_string());
            st.writing = false;
            st.done_batch = fake_batch;
        }
        wal.shared.batch_done.notify_all();
        for handle in handles {
            let result = handle.join().expect("no panic");
            assert!(matches!(result, Err(Error::Io(_))), "{result:?}");
        }
        assert_eq!(fs::read(&path).expect("read"), before);
        assert!(wal.shared.state.lock().failures.is_empty(), "errors leaked");
    }

    #[test]
    fn fsync_names_match_the_command_line() {
        for fsync in [Fsync::Always, Fsync::Everysec, Fsync::Never] {
            assert_eq!(fsync.to_string().parse(), Ok(fsync));
        }
        assert_eq!(
            "sometimes".parse::<Fsync>(),
            Err("'sometimes' is not one of: always, everysec, never".into())
        );
        assert_eq!(Fsync::default(), Fsync::Everysec);
    }

    #[test]
    fn rewrite_replaces_the_log_atomically_and_seqs_continue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let wal = open_empty(&path, Fsync::Never);
        for i in 0..10 {
            wal.append(&set("old", format!("{i}").as_bytes())).expect("append");
        }
        let entries = vec![
            (3, set("a", b"x y")),
            (50, Record::Member { id: "s1".to_string() }),
            (60, Record::Epoch { epoch: 2 }),
        ];
        wal.rewrite(&mut entries.clone().into_iter()).expect("rewrite");
        let mut expected_text = Vec::new();
        for (seq, record) in &entries {
            encode(*seq, record, &mut expected_text);
        }
        assert_eq!(fs::read(&path).expect("read"), expected_text);
        assert_eq!(wal.bytes(), expected_text.len() as u64);
        assert_eq!(wal.last_seq(), 60);
        assert_eq!(wal.append(&set("b", b"c")).expect("append"), 61);

        // A rewrite with entries below last_seq keeps seqs going up.
        wal.rewrite(&mut vec![(5, set("a", b"z"))].into_iter()).expect("rewrite");
        assert_eq!(wal.last_seq(), 61);
        assert_eq!(wal.append(&set("b", b"d")).expect("append"), 62);
        drop(wal);
        assert_eq!(replay(&path).expect("replay"), vec![(5, set("a", b"z")), (62, set("b", b"d"))]);
        let leftovers: Vec<_> =
            fs::read_dir(dir.path()).expect("read_dir").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("wal")]);
    }

    #[test]
    fn a_failed_rewrite_leaves_the_old_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let wal = open_empty(&path, Fsync::Never);
        wal.append(&set("keep", b"me")).expect("append");
        let before = fs::read(&path).expect("read");
        let out_of_order = vec![(5, set("a", b"1")), (5, set("a", b"2"))];
        assert!(matches!(wal.rewrite(&mut out_of_order.into_iter()), Err(Error::Corrupt(_))));
        let unreadable = vec![(5, set("a b", b"1"))];
        assert!(matches!(wal.rewrite(&mut unreadable.into_iter()), Err(Error::Protocol(_))));
        assert_eq!(fs::read(&path).expect("read"), before);
        assert!(!dir.path().join("wal.rewrite").exists());
        assert_eq!(wal.append(&set("still", b"works")).expect("append"), 2);
        drop(wal);
        assert_eq!(replay(&path).expect("replay").len(), 2);
    }

    #[test]
    fn everysec_syncs_in_the_background_and_stops_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let wal = open_empty(&path, Fsync::Everysec);
        wal.append(&set("a", b"b")).expect("append");
        assert_eq!(wal.stats().syncs, 0, "everysec must not sync in append");
        let deadline = Instant::now() + FSYNC_INTERVAL * 3;
        while wal.stats().syncs == 0 {
            assert!(Instant::now() < deadline, "no background sync");
            thread::sleep(Duration::from_millis(20));
        }
        // Dropping wakes the thread at once instead of after the interval.
        let started = Instant::now();
        drop(wal);
        assert!(started.elapsed() < FSYNC_INTERVAL / 2);
    }

    /// A follower plus the records it applied and how many times it was reset.
    struct Watch {
        follower: Follower,
        records: Vec<(u64, Record)>,
        resets: usize,
        /// Sizes of the batches applied.
        batches: Vec<usize>,
        /// A batch holding this seq fails, and applies nothing.
        fail_at: Option<u64>,
    }

    impl Watch {
        fn new(path: &Path) -> Watch {
            Watch {
                follower: Follower::new(path),
                records: Vec::new(),
                resets: 0,
                batches: Vec::new(),
                fail_at: None,
            }
        }

        fn poll(&mut self) -> Result<Poll> {
            // Both callbacks touch the records, as a caller's reset and apply both touch its
            // state, so they share them through a RefCell.
            let records = std::cell::RefCell::new(std::mem::take(&mut self.records));
            let mut resets = 0;
            let result = self.follower.poll(
                &mut || {
                    resets += 1;
                    records.borrow_mut().clear();
                    Ok(())
                },
                &mut |batch| {
                    if batch.iter().any(|(seq, _)| Some(*seq) == self.fail_at) {
                        return Err(Error::Unavailable("apply failed".into()));
                    }
                    self.batches.push(batch.len());
                    records.borrow_mut().append(batch);
                    Ok(())
                },
            );
            self.records = records.into_inner();
            self.resets += resets;
            result
        }
    }

    fn append_bytes(path: &Path, bytes: &[u8]) {
        let mut file = OpenOptions::new().append(true).create(true).open(path).expect("open");
        file.write_all(bytes).expect("write");
    }

    #[test]
    fn follower_waits_for_a_partial_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let mut watch = Watch::new(&path);
        append_bytes(&path, b"1 SET a x\n2 SET b y");
        assert_eq!(watch.poll().expect("poll"), Poll::Applied(1));
        assert_eq!(watch.follower.last_seq(), 1);
        assert_eq!(watch.follower.lag_bytes(), 9);
        assert_eq!(watch.poll().expect("poll"), Poll::Applied(0));
        append_bytes(&path, b"y");
        assert_eq!(watch.poll().expect("poll"), Poll::Applied(0));
        append_bytes(&path, b"\n3 DEL a\n");
        assert_eq!(watch.poll().expect("poll"), Poll::Applied(2));
        assert_eq!(watch.follower.lag_bytes(), 0);
        assert_eq!(watch.follower.last_seq(), 3);
        assert_eq!(
            watch.records,
            vec![(1, set("a", b"x")), (2, set("b", b"yy")), (3, Record::Del { key: "a".to_string() })]
        );
        assert_eq!(watch.resets, 0);
    }

    #[test]
    fn follower_is_not_fooled_by_a_truncated_torn_tail() {
        // The primary crashes mid-append, restarts (truncating the torn line) and appends more:
        // the bytes seen before the restart must not be glued to the new line.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let mut watch = Watch::new(&path);
        append_bytes(&path, b"1 SET a x\n2 SET b tor");
        assert_eq!(watch.poll().expect("poll"), Poll::Applied(1));
        drop(open_empty(&path, Fsync::Never));
        let wal = open_empty(&path, Fsync::Never);
        wal.append(&set("c", b"z")).expect("append");
        assert_eq!(watch.poll().expect("poll"), Poll::Applied(1));
        assert_eq!(watch.records, vec![(1, set("a", b"x")), (2, set("c", b"z"))]);
    }

    #[test]
    fn follower_picks_up_many_concurrent_appends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let wal = Arc::new(open_empty(&path, Fsync::Never));
        let mut watch = Watch::new(&path);
        let done = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let wal = Arc::clone(&wal);
                thread::spawn(move || {
                    for i in 0..1000 {
                        let value = format!("value {i} of writer {t}");
                        wal.append(&set("k", value.as_bytes())).expect("append");
                    }
                })
            })
            .collect();
        let stopper = {
            let done = Arc::clone(&done);
            thread::spawn(move || {
                for w in writers {
                    w.join().expect("writer");
                }
                done.store(true, Ordering::SeqCst);
            })
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let finished = done.load(Ordering::SeqCst);
            assert!(matches!(watch.poll().expect("poll"), Poll::Applied(_)));
            if finished {
                break;
            }
            assert!(Instant::now() < deadline, "writers did not finish");
            thread::yield_now();
        }
        stopper.join().expect("stopper");
        assert_eq!(watch.records.len(), 2000);
        assert!(watch.records.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(watch.follower.last_seq(), 2000);
        assert_eq!(watch.follower.lag_bytes(), 0);
    }

    #[test]
    fn follower_goes_on_across_a_replaced_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let wal = open_empty(&path, Fsync::Never);
        for i in 0..3 {
            wal.append(&set("k", format!("{i}").as_bytes())).expect("append");
        }
        let mut watch = Watch::new(&path);
        assert_eq!(watch.poll().expect("poll"), Poll::Applied(3));

        // By hand: a compaction of the old file (only seq 3 kept) with two more records,
        // renamed over it. Only what is above the last record applied is applied.
        let other = dir.path().join("other");
        fs::write(&other, b"3 SET k 2\n7 SET x 1\n8 SET y 2\n").expect("write");
        fs::rename(&other, &path).expect("rename");
        assert_eq!(watch.poll().expect("poll"), Poll::Applied(2));
        assert_eq!(watch.resets, 0);
        assert_eq!(&watch.records[3..], &[(7, set("x", b"1")), (8, set("y", b"2"))]);
        assert_eq!(watch.follower.last_seq(), 8);
    }

    #[test]
    fn compaction_keeps_what_is_appended_while_it_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let wal = Arc::new(open_empty(&path, Fsync::Never));
        for i in 0..100 {
            wal.append(&set(&format!("k{}", i % 10), format!("{i}").as_bytes())).expect("append");
        }
        let mut watch = Watch::new(&path);
        assert_eq!(watch.poll().expect("poll"), Poll::Applied(100));
        let before = wal.bytes();
        let during = Arc::clone(&wal);
        let done = wal
            .compact(|upto| {
                assert_eq!(upto, 100);
                // Appends go on while the snapshot is built and written.
                during.append(&set("late", b"x")).expect("append during compaction");
                (91..=100u64)
                    .map(|seq| (seq, set(&format!("k{}", (seq - 1) % 10), format!("{}", seq - 1).as_bytes())))
                    .collect::<Vec<_>>()
                    .into_iter()
            })
            .expect("compact");
        assert_eq!(
            (done.upto, done.records, done.bytes_before),
            (100, 10, before + "101 SET late x\n".len() as u64)
        );
        assert!(done.bytes_after < done.bytes_before / 5, "{done:?}");
        assert_eq!(done.bytes_after, wal.bytes());
        // What replays is the snapshot and the record appended meanwhile.
        let mut replayed = Vec::new();
        drop(Wal::open(&path, Fsync::Never, |seq, r| {
            replayed.push((seq, r));
            Ok(())
        }));
        assert_eq!(replayed.len(), 11);
        assert_eq!(replayed[10], (101, set("late", b"x")));
        // A follower goes on from where it was, and later appends land in the new file.
        wal.append(&set("after", b"y")).expect("append after compaction");
        assert_eq!(watch.poll().expect("poll"), Poll::Applied(2));
        assert_eq!(watch.resets, 0);
        assert_eq!(watch.follower.last_seq(), 102);
    }

    #[test]
    fn tracked_appends_hold_the_settled_seq_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open_empty(&dir.path().join("wal"), Fsync::Never);
        let first = wal.append_tracked(&set("a", b"1")).expect("append");
        let second = wal.append_tracked(&set("b", b"2")).expect("append");
        wal.append(&set("c", b"3")).expect("append");
        assert_eq!(wal.settled_through(), 0);
        drop(first);
        assert_eq!(wal.settled_through(), 1);
        drop(second);
        assert_eq!(wal.settled_through(), 3);
        // A copied record keeps its seq, which must be above the log's.
        wal.append_at(10, &set("d", b"4")).expect("append_at");
        assert!(matches!(wal.append_at(10, &set("e", b"5")), Err(Error::Corrupt(_))));
        assert_eq!(wal.last_seq(), 10);
        let stores = [("g", Some(&b"7"[..])), ("h", None)];
        let run = wal.append_stores_tracked(stores.into_iter()).expect("append_stores");
        assert_eq!((run.first, run.last, wal.settled_through()), (11, 12, 10));
        drop(run);
        assert_eq!(wal.settled_through(), 12);
        // A key the log could not read back refuses the whole run, before a seq is taken.
        let bad = [("i", Some(&b"9"[..])), ("bad key", None)];
        assert!(matches!(wal.append_stores_tracked(bad.into_iter()), Err(Error::Protocol(_))));
        assert_eq!(wal.last_seq(), 12);
        // The records read back as they were written: a SET and a DEL.
        let text = std::fs::read_to_string(dir.path().join("wal")).expect("read");
        assert!(text.ends_with("11 SET g 7\n12 DEL h\n"), "{text}");
        wal.reset().expect("reset");
        assert_eq!((wal.last_seq(), wal.bytes()), (0, 0));
        wal.append_at(1, &set("f", b"6")).expect("append_at after reset");
    }

    #[test]
    fn copied_records_are_appended_in_one_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let wal = open_empty(&path, Fsync::Never);
        wal.append_at(3, &set("a", b"1")).expect("append_at");
        let writes = wal.stats().writes;
        let copied = [(5, set("b", b"2")), (9, Record::Del { key: "a".into() }), (10, set("c", b"3"))];
        wal.append_copied(copied.iter().map(|(seq, r)| (*seq, r))).expect("append_copied");
        assert_eq!((wal.stats().writes, wal.last_seq(), wal.last_record()), (writes + 1, 10, 10));
        // Not above the log, or not increasing within the batch: refused, nothing written.
        let bytes = wal.bytes();
        for bad in [vec![(10, set("d", b"4"))], vec![(11, set("d", b"4")), (11, set("e", b"5"))]] {
            let refused = wal.append_copied(bad.iter().map(|(seq, r)| (*seq, r)));
            assert!(matches!(refused, Err(Error::Corrupt(_))), "{bad:?}: {refused:?}");
        }
        // An unreadable key refuses the batch before anything is written.
        let unreadable = [(11, set("d", b"4")), (12, set("bad key", b"5"))];
        assert!(matches!(
            wal.append_copied(unreadable.iter().map(|(s, r)| (*s, r))),
            Err(Error::Protocol(_))
        ));
        wal.append_copied(std::iter::empty()).expect("nothing to copy");
        assert_eq!((wal.bytes(), wal.last_record()), (bytes, 10));
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "3 SET a 1\n5 SET b 2\n9 DEL a\n10 SET c 3\n");
    }

    #[test]
    fn follower_applies_in_batches_and_reads_a_failed_batch_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let n = FOLLOW_BATCH as u64 * 2 + 10;
        let text: String = (1..=n).map(|seq| format!("{seq} SET k{seq} {seq}\n")).collect();
        append_bytes(&path, text.as_bytes());
        let mut watch = Watch::new(&path);
        // The second batch fails: the first stays applied, the follower stops before the second.
        watch.fail_at = Some(FOLLOW_BATCH as u64 + 5);
        assert!(watch.poll().is_err());
        assert_eq!((watch.records.len(), watch.follower.last_seq()), (FOLLOW_BATCH, FOLLOW_BATCH as u64));
        assert_eq!(
            watch.follower.lag_bytes(),
            text.len() as u64 - text.lines().take(FOLLOW_BATCH).map(|l| l.len() as u64 + 1).sum::<u64>()
        );
        // The next poll reads the failed batch again (no "does not increase" on its first line).
        watch.fail_at = None;
        assert_eq!(watch.poll().expect("poll"), Poll::Applied(FOLLOW_BATCH + 10));
        assert_eq!(watch.batches, vec![FOLLOW_BATCH, FOLLOW_BATCH, 10]);
        let seqs: Vec<u64> = watch.records.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
        assert_eq!(watch.follower.lag_bytes(), 0);
        // A bad line: the records before it are applied, the poll stops in front of it.
        append_bytes(&path, format!("{} SET a 1\n{} SET b 2\nnot a record\n", n + 1, n + 2).as_bytes());
        assert!(matches!(watch.poll(), Err(Error::Corrupt(_))));
        assert_eq!(watch.follower.last_seq(), n + 2);
        assert_eq!(watch.follower.lag_bytes(), "not a record\n".len() as u64);
    }

    #[test]
    fn a_follower_batch_is_bounded_in_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let value = "v".repeat(FOLLOW_BATCH_BYTES * 3 / 5);
        let text: String = (1..=3).map(|seq| format!("{seq} SET k{seq} {value}\n")).collect();
        append_bytes(&path, text.as_bytes());
        let mut watch = Watch::new(&path);
        assert_eq!(watch.poll().expect("poll"), Poll::Applied(3));
        assert_eq!(watch.batches, vec![2, 1]);
    }

    #[test]
    fn follower_reloads_a_truncated_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        append_bytes(&path, b"1 SET a 1\n2 SET b 2\n3 SET c 3\n");
        let mut watch = Watch::new(&path);
        assert_eq!(watch.poll().expect("poll"), Poll::Applied(3));
        // Shorter than what was consumed.
        fs::write(&path, b"1 SET z 9\n").expect("write");
        assert_eq!(watch.poll().expect("poll"), Poll::Reloaded(1));
        assert_eq!(watch.records, vec![(1, set("z", b"9"))]);
        // Rewritten in place, longer, with no line end where the last consumed line ended.
        fs::write(&path, b"5 SET long-key long-value\n6 DEL long-key\n").expect("write");
        assert_eq!(watch.poll().expect("poll"), Poll::Reloaded(2));
        assert_eq!(watch.resets, 2);
        assert_eq!(watch.follower.last_seq(), 6);
    }

    #[test]
    fn follower_waits_for_a_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        let mut watch = Watch::new(&path);
        assert_eq!(watch.poll().expect("poll"), Poll::Applied(0));
        assert_eq!((watch.follower.last_seq(), watch.follower.lag_bytes()), (0, 0));
        let wal = open_empty(&path, Fsync::Never);
        assert_eq!(watch.poll().expect("poll"), Poll::Applied(0));
        wal.append(&set("a", b"b")).expect("append");
        assert_eq!(watch.poll().expect("poll"), Poll::Applied(1));
        assert_eq!(watch.resets, 0);
    }

    #[test]
    fn follower_reports_a_bad_line_and_stops_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal");
        append_bytes(&path, b"1 SET a 1\n2 SET b 2\n");
        let mut watch = Watch::new(&path);
        assert_eq!(watch.poll().expect("poll"), Poll::Applied(2));
        append_bytes(&path, b"3 SET c 3\n2 SET d 4\n5 SET e 5\n");
        for _ in 0..2 {
            match watch.poll() {
                Err(Error::Corrupt(m)) => {
                    assert!(m.contains("line 4") && m.contains("byte offset 30"), "{m}")
                }
                other => panic!("expected Corrupt, got {other:?}"),
            }
        }
        assert_eq!(watch.records.len(), 3);
        assert_eq!(watch.follower.last_seq(), 3);
        assert_eq!(watch.follower.lag_bytes(), 20);
    }
}
