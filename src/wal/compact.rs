//! Replacing the whole log at once: [`Wal::rewrite`] (a state transfer) and
//! [`Wal::compact`] (online compaction while appends go on).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{encode, validate};
use super::{broken_error, io_error, Record, Wal, REWRITE_BUFFER, REWRITE_SUFFIX};
use crate::{Error, Result};

impl Wal {
    /// Atomically replaces the whole log with these entries (temp file in the same dir, fsync,
    /// rename, fsync dir); used for failback state transfer and compaction. Seqs must increase;
    /// afterwards last_seq() >= the last entry's seq.
    ///
    /// Appends block while it runs, so `entries` must not call back into this `Wal`. Entries whose seqs do not increase are [`Error::Corrupt`],
    /// an invalid key or id is [`Error::Protocol`]; on any error before the rename the old log
    /// is left as it was. If only the final directory sync fails, the new log is already in
    /// place (and in use) and the error says so.
    pub fn rewrite(&self, entries: &mut dyn Iterator<Item = (u64, Record)>) -> Result<()> {
        let shared = &*self.shared;
        let mut st = shared.state.lock();
        // Let the appends already in flight finish into the old file; the new entries replace
        // them with everything else.
        while st.writing || !st.pending.is_empty() {
            shared.batch_done.wait(&mut st);
        }
        if st.compacting {
            return Err(Error::Unavailable("the log is being compacted; try again".into()));
        }
        if let Some(why) = &st.broken {
            return Err(broken_error(why));
        }
        let path = &shared.path;
        let temp = temp_path(path);
        let (file, size, last) = match write_new_log(&temp, entries) {
            Ok(written) => written,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
        };
        if let Err(e) = fs::rename(&temp, path) {
            let _ = fs::remove_file(&temp);
            return Err(io_error("cannot rename the rewritten log over", path, e));
        }
        st.file = Arc::new(file);
        st.size = size;
        st.dirty = false;
        if let Some(last) = last {
            st.last_seq = st.last_seq.max(last);
        }
        sync_dir(path).map_err(|e| {
            Error::Io(io::Error::new(
                e.kind(),
                format!(
                    "the rewritten log {} is in place, but syncing its directory failed, so a \
                     crash could still bring back the old one: {e}",
                    path.display()
                ),
            ))
        })
    }
}

/// Writes `entries` to a fresh file at `temp` and syncs it. Returns the file (open for
/// appending), its size and the last seq written.
fn write_new_log(
    temp: &Path,
    entries: &mut dyn Iterator<Item = (u64, Record)>,
) -> Result<(File, u64, Option<u64>)> {
    match fs::remove_file(temp) {
        Ok(()) => log::info!("removed {}, left by an interrupted rewrite", temp.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("cannot remove", temp, e)),
    }
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(temp)
        .map_err(|e| io_error("cannot create", temp, e))?;
    let mut writer = &file;
    let mut buf = Vec::with_capacity(REWRITE_BUFFER);
    let mut size = 0u64;
    let mut prev: Option<u64> = None;
    for (seq, record) in entries {
        if let Some(prev) = prev.filter(|&p| seq <= p) {
            return Err(Error::Corrupt(format!(
                "rewrite: sequence number {seq} follows {prev}; entries must have increasing \
                 sequence numbers"
            )));
        }
        validate(&record)?;
        prev = Some(seq);
        encode(seq, &record, &mut buf);
        if buf.len() >= REWRITE_BUFFER {
            writer.write_all(&buf).map_err(|e| io_error("cannot write", temp, e))?;
            size += buf.len() as u64;
            buf.clear();
        }
    }
    writer.write_all(&buf).map_err(|e| io_error("cannot write", temp, e))?;
    size += buf.len() as u64;
    file.sync_all().map_err(|e| io_error("cannot sync", temp, e))?;
    Ok((file, size, prev))
}

/// Syncs the directory holding `path`, which makes a create or rename in it durable.
pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// What one [`Wal::compact`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// The snapshot holds the state as of this seq; later records were copied after it.
    pub upto: u64,
    /// The log's size before.
    pub bytes_before: u64,
    /// The log's size after.
    pub bytes_after: u64,
    /// Records in the snapshot.
    pub records: usize,
    /// Bytes of records appended while the snapshot was written, copied after it.
    pub tail_bytes: u64,
}

impl Wal {
    /// Replaces the log with a snapshot plus everything appended since, while appends go on.
    ///
    /// 1. Under the append lock, once no batch is in flight: note the last seq `upto` and the
    ///    file's length (everything up to `upto` is in the file before that offset).
    /// 2. Without the lock: `build(upto)` returns the records of the state as of `upto`, each
    ///    with the seq it has in the log (a subsequence of the log: every record that is still
    ///    the newest of its key, and what the caller keeps of the rest), and they are written to
    ///    `<log>.rewrite` and synced. Appends go on meanwhile.
    /// 3. Under the lock again: the bytes appended since step 1 are copied to the new file,
    ///    which is synced and renamed over the log. Appends wait only for this copy.
    ///
    /// A crash at any step leaves either the whole old log or the whole new one, both of which
    /// replay to the same state. Because the new log is a subsequence of the old, a follower
    /// positioned at some seq can go on from the first record above it (see [`super::Follower`]).
    pub fn compact<I: Iterator<Item = (u64, Record)>>(
        &self,
        build: impl FnOnce(u64) -> I,
    ) -> Result<Compaction> {
        let shared = &*self.shared;
        let (upto, offset, file) = {
            let mut st = shared.state.lock();
            if st.compacting {
                return Err(Error::Unavailable("a compaction is already running".into()));
            }
            while st.writing || !st.pending.is_empty() {
                shared.batch_done.wait(&mut st);
            }
            if let Some(why) = &st.broken {
                return Err(broken_error(why));
            }
            st.compacting = true;
            (st.last_seq, st.size, Arc::clone(&st.file))
        };
        let result = self.compact_from(upto, offset, &file, &mut build(upto));
        shared.state.lock().compacting = false;
        result
    }

    fn compact_from(
        &self,
        upto: u64,
        offset: u64,
        old: &Arc<File>,
        entries: &mut dyn Iterator<Item = (u64, Record)>,
    ) -> Result<Compaction> {
        let shared = &*self.shared;
        let path = &shared.path;
        let temp = temp_path(path);
        let mut records = 0;
        let mut beyond = None;
        let mut entries = entries.inspect(|(seq, _)| {
            records += 1;
            if *seq > upto {
                beyond = Some(*seq);
            }
        });
        crate::failpoint::failpoint("compact-before-snapshot");
        let written = write_new_log(&temp, &mut entries);
        if let Some(seq) = beyond {
            let _ = fs::remove_file(&temp);
            return Err(Error::Corrupt(format!(
                "compaction: record {seq} is beyond the snapshot's seq {upto}"
            )));
        }
        let (new, snapshot_size, _) = match written {
            Ok(written) => written,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
        };
        crate::failpoint::failpoint("compact-after-snapshot");
        let mut st = shared.state.lock();
        while st.writing || !st.pending.is_empty() {
            shared.batch_done.wait(&mut st);
        }
        let fail = |e: Error| {
            let _ = fs::remove_file(&temp);
            Err(e)
        };
        if !Arc::ptr_eq(&st.file, old) {
            return fail(Error::Unavailable("the log was replaced while it was being compacted".into()));
        }
        if let Some(why) = &st.broken {
            return fail(broken_error(why));
        }
        let bytes_before = st.size;
        let tail_bytes = bytes_before - offset;
        if let Err(e) = copy_range(old, offset, tail_bytes, &new).and_then(|()| new.sync_all()) {
            return fail(io_error("cannot copy the log's tail into", &temp, e));
        }
        if let Err(e) = fs::rename(&temp, path) {
            return fail(io_error("cannot rename the compacted log over", path, e));
        }
        crate::failpoint::failpoint("compact-after-rename");
        st.file = Arc::new(new);
        st.size = snapshot_size + tail_bytes;
        st.dirty = false;
        let bytes_after = st.size;
        drop(st);
        sync_dir(path).map_err(|e| io_error("cannot sync the directory of", path, e))?;
        Ok(Compaction { upto, bytes_before, bytes_after, records, tail_bytes })
    }
}

/// `<log>.rewrite`, beside the log.
fn temp_path(path: &Path) -> PathBuf {
    let mut temp = path.as_os_str().to_owned();
    temp.push(REWRITE_SUFFIX);
    PathBuf::from(temp)
}

/// Appends `len` bytes of `from` starting at `offset` to `to`.
fn copy_range(from: &File, offset: u64, len: u64, to: &File) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; REWRITE_BUFFER.min(len as usize).max(1)];
    let mut done = 0u64;
    let mut writer = to;
    while done < len {
        let want = buf.len().min((len - done) as usize);
        let n = from.read_at(&mut buf[..want], offset + done)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the log is shorter than it was"));
        }
        writer.write_all(&buf[..n])?;
        done += n as u64;
    }
    Ok(())
}
