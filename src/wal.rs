//! The write-ahead log. TEMPORARY minimal version so the master compiles; the full module
//! (group commit, torn-tail recovery, follower) replaces it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Set { key: String, value: Vec<u8> },
    Del { key: String },
    Member { id: String },
    Remove { id: String },
    Epoch { epoch: u64 },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    Always,
    Everysec,
    Never,
}

impl std::fmt::Display for Fsync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fsync::Always => "always",
            Fsync::Everysec => "everysec",
            Fsync::Never => "never",
        })
    }
}

pub fn encode(seq: u64, record: &Record, out: &mut Vec<u8>) {
    let _ = match record {
        Record::Set { key, value } => {
            let _ = write!(out, "{seq} SET {key} ");
            crate::escape::escape_into(value, out);
            Ok(())
        }
        Record::Del { key } => write!(out, "{seq} DEL {key}"),
        Record::Member { id } => write!(out, "{seq} MEMBER {id}"),
        Record::Remove { id } => write!(out, "{seq} REMOVE {id}"),
        Record::Epoch { epoch } => write!(out, "{seq} EPOCH {epoch}"),
    };
    out.push(b'\n');
}

pub fn decode(line: &[u8]) -> std::result::Result<(u64, Record), String> {
    let s = std::str::from_utf8(line).map_err(|_| "bad utf8")?;
    let mut it = s.splitn(3, ' ');
    let seq: u64 = it.next().and_then(|x| x.parse().ok()).ok_or("bad seq")?;
    let op = it.next().ok_or("no op")?;
    let rest = it.next().ok_or("no args")?;
    let rec = match op {
        "SET" => {
            let (k, v) = rest.split_once(' ').ok_or("no value")?;
            Record::Set { key: k.into(), value: crate::escape::unescape(v.as_bytes()).ok_or("esc")? }
        }
        "DEL" => Record::Del { key: rest.into() },
        "MEMBER" => Record::Member { id: rest.into() },
        "REMOVE" => Record::Remove { id: rest.into() },
        "EPOCH" => Record::Epoch { epoch: rest.parse().map_err(|_| "bad epoch")? },
        _ => return Err("bad op".into()),
    };
    Ok((seq, rec))
}

pub struct Wal {
    path: PathBuf,
    inner: Mutex<(File, u64, u64)>,
}

impl Wal {
    pub fn open(path: &Path, _fsync: Fsync, mut apply: impl FnMut(u64, Record) -> Result<()>) -> Result<Wal> {
        let mut last = 0;
        if let Ok(f) = File::open(path) {
            for line in BufReader::new(f).split(b'\n') {
                let (seq, rec) = decode(&line?).map_err(Error::Corrupt)?;
                last = seq;
                apply(seq, rec)?;
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Wal { path: path.to_path_buf(), inner: Mutex::new((file, last, len)) })
    }

    pub fn append(&self, record: &Record) -> Result<u64> {
        let mut g = self.inner.lock();
        let seq = g.1 + 1;
        let mut buf = Vec::new();
        encode(seq, record, &mut buf);
        g.0.write_all(&buf)?;
        g.1 = seq;
        g.2 += buf.len() as u64;
        Ok(seq)
    }

    pub fn last_seq(&self) -> u64 {
        self.inner.lock().1
    }

    pub fn advance_seq(&self, at_least: u64) {
        let mut g = self.inner.lock();
        g.1 = g.1.max(at_least);
    }

    pub fn bytes(&self) -> u64 {
        self.inner.lock().2
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
