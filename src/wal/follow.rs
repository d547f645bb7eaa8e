//! Following a log file that another process writes: the backup polls the primary's log, and
//! a master streams its own log to the other one.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::format::check_line;
use super::lines::read_lines;
use super::{follow_batch_full, io_error, Record};
use crate::Result;

/// Follows a log file written by another process (the backup master polls the primary's file).
pub struct Follower {
    path: PathBuf,
    /// The file being followed and its identity, once it has been seen.
    file: Option<(File, FileId)>,
    /// Bytes of complete lines applied: where the next poll starts reading.
    consumed: u64,
    /// Complete lines applied.
    lines: u64,
    /// The seq of the last line read from the current file, for the increasing-seq check.
    prev_seq: Option<u64>,
    /// The seq of the last record applied.
    applied_seq: u64,
    /// After the file was replaced by a compaction: records at or below this seq are already
    /// applied and are skipped.
    skip_through: u64,
    /// The file's length as of the last poll.
    len: u64,
    buf: Vec<u8>,
}

/// Applies a batch of records (seq, record), in order, leaving the vector empty.
pub type ApplyBatch<'a> = dyn FnMut(&mut Vec<(u64, Record)>) -> Result<()> + 'a;

/// How far a follower has read, or applied: the positions a failed batch rolls back to.
#[derive(Debug, Clone, Copy)]
struct Applied {
    consumed: u64,
    lines: u64,
    seq: u64,
    prev: Option<u64>,
}

/// What one [`Follower::poll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// New records applied, maybe 0.
    Applied(usize),
    /// The file shrank or was rewritten in place (len < offset, or no line end where the last
    /// line applied ended): the caller's state was cleared via the reset callback, then the
    /// whole file re-applied (this many records). A file *replaced* by a rename is a compaction
    /// and is not reloaded: the follower goes on from the first record above the last it
    /// applied.
    Reloaded(usize),
}

/// Which file a path names: replacing it by rename changes this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(meta: &fs::Metadata) -> FileId {
        FileId { dev: meta.dev(), ino: meta.ino() }
    }
}

impl Follower {
    /// A follower of the log at `path`, which need not exist yet. Nothing is read until
    /// [`poll`](Follower::poll).
    pub fn new(path: &Path) -> Follower {
        Follower {
            path: path.to_path_buf(),
            file: None,
            consumed: 0,
            lines: 0,
            prev_seq: None,
            applied_seq: 0,
            skip_through: 0,
            len: 0,
            buf: Vec::new(),
        }
    }

    /// A follower that applies only the records above `seq`: for a reader that already holds
    /// this log up to there.
    pub fn after(path: &Path, seq: u64) -> Follower {
        Follower { applied_seq: seq, skip_through: seq, ..Follower::new(path) }
    }

    /// Applies each new COMPLETE line; a partial last line waits until its '\n' arrives; a bad
    /// complete line is Error::Corrupt (never mis-parsed).
    ///
    /// If the file was replaced, shrank, or was rewritten in place, `reset` is called first and
    /// the whole file is applied again ([`Poll::Reloaded`]). A missing file applies nothing. After
    /// a `Corrupt` error the records before the bad line stay applied and the next poll stops at
    /// the same line again.
    pub fn poll(
        &mut self,
        reset: &mut dyn FnMut() -> Result<()>,
        apply: &mut ApplyBatch<'_>,
    ) -> Result<Poll> {
        let meta = match fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Poll::Applied(0)),
            Err(e) => return Err(io_error("cannot stat", &self.path, e)),
        };
        let reload = match &self.file {
            Some((file, id)) if *id == FileId::of(&meta) => {
                meta.len() < self.consumed || !self.line_ends_at_consumed(file)?
            }
            known => {
                let replaced = known.is_some();
                let file = match File::open(&self.path) {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Poll::Applied(0)),
                    Err(e) => return Err(io_error("cannot open", &self.path, e)),
                };
                // The identity of what was opened, not of what was stat-ed a moment ago.
                let id = FileId::of(&file.metadata().map_err(|e| io_error("cannot stat", &self.path, e))?);
                self.file = Some((file, id));
                if replaced {
                    // A compaction renamed a subsequence of the old log over it: what is above
                    // the last record applied is exactly what is still to apply.
                    self.skip_through = self.applied_seq;
                    self.consumed = 0;
                    self.lines = 0;
                    self.prev_seq = None;
                }
                false
            }
        };
        if reload {
            reset()?;
            self.consumed = 0;
            self.lines = 0;
            self.prev_seq = None;
            self.applied_seq = 0;
            self.skip_through = 0;
        }
        let applied = self.read_new(meta.len(), apply)?;
        Ok(if reload { Poll::Reloaded(applied) } else { Poll::Applied(applied) })
    }

    /// Whether the byte before `consumed` is still the `\n` of the last line applied. If not,
    /// the file was rewritten in place and what was applied no longer describes it.
    fn line_ends_at_consumed(&self, file: &File) -> Result<bool> {
        if self.consumed == 0 {
            return Ok(true);
        }
        let mut byte = [0u8; 1];
        loop {
            match file.read_at(&mut byte, self.consumed - 1) {
                Ok(n) => return Ok(n == 1 && byte[0] == b'\n'),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error("cannot read", &self.path, e)),
            }
        }
    }

    /// Reads from `consumed` to the end of the file and applies the complete lines, in batches
    /// ([`follow_batch_full`]). `consumed`, `lines` and `applied_seq` move past a batch only
    /// once it is applied; a batch that fails is read again by the next poll.
    fn read_new(&mut self, len: u64, apply: &mut ApplyBatch<'_>) -> Result<usize> {
        let Follower { path, file, consumed, lines, prev_seq, applied_seq, skip_through, len: seen_len, buf } =
            self;
        let Some((file, _)) = file.as_ref() else {
            return Ok(0);
        };
        let mut pos = *consumed;
        let mut applied = 0;
        let lines_before = *lines;
        // Read but not applied: the records, and where their last line ends.
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        let mut read = Applied { consumed: *consumed, lines: *lines, seq: *applied_seq, prev: *prev_seq };
        let mut done = read;
        let mut failed = false;
        let result = read_lines(
            buf,
            |chunk| loop {
                match file.read_at(chunk, pos) {
                    Ok(n) => {
                        pos += n as u64;
                        return Ok(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io_error("cannot read", path, e)),
                }
            },
            *consumed,
            |line, number, offset| {
                let number = lines_before + number;
                let (seq, record) = check_line(path, line, number, offset, &mut read.prev)?;
                if seq > *skip_through {
                    batch.push((seq, record));
                    batch_bytes += line.len();
                    read.seq = seq;
                }
                read.consumed = offset + line.len() as u64 + 1;
                read.lines = number;
                if follow_batch_full(batch.len(), batch_bytes) {
                    let n = batch.len();
                    let result = apply(&mut batch);
                    batch.clear();
                    batch_bytes = 0;
                    failed = result.is_err();
                    result?;
                    applied += n;
                    done = read;
                }
                Ok(())
            },
        );
        // What was read before the end, or before a bad line, is applied too.
        let mut flushed = Ok(());
        if !failed {
            let n = batch.len();
            if n > 0 {
                flushed = apply(&mut batch);
            }
            if flushed.is_ok() {
                applied += n;
                done = read;
            }
        }
        Applied { consumed: *consumed, lines: *lines, seq: *applied_seq, prev: *prev_seq } = done;
        *seen_len = len.max(pos);
        result.and(flushed).map(|_| applied)
    }

    /// The seq of the last record applied; 0 before any.
    pub fn last_seq(&self) -> u64 {
        self.applied_seq
    }

    /// File length minus bytes consumed (as of the last poll): the partial last line, or what a
    /// `Corrupt` error stopped in front of.
    pub fn lag_bytes(&self) -> u64 {
        self.len.saturating_sub(self.consumed)
    }
}
