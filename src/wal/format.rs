//! The log's line format: [`Record`]s, their encoding and decoding, and the checks a line
//! must pass to be replayed. The format is described byte by byte in [`crate::wal`].

use crate::escape;
use crate::escape::push_u64;
use crate::peer::parse_slave_id;
use crate::protocol::{parse_key, truncate_for_display};
use crate::wire::{check_key, number, split_word};
use crate::{Error, Result};
use std::path::Path;

/// One change recorded in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A client wrote `value` under `key`.
    Set {
        /// The key, as [`parse_key`] accepts it.
        key: String,
        /// The value: any bytes.
        value: Vec<u8>,
    },
    /// A client deleted `key`.
    Del {
        /// The key, as [`parse_key`] accepts it.
        key: String,
    },
    /// A slave registered for the first time and became a member.
    Member {
        /// The slave id, as [`parse_slave_id`] accepts it.
        id: String,
    },
    /// An operator removed a member for good.
    Remove {
        /// The slave id, as [`parse_slave_id`] accepts it.
        id: String,
    },
    /// A master started a new epoch; the records after this one belong to it.
    Epoch {
        /// The new epoch.
        epoch: u64,
    },
}

impl Record {
    /// The record of a client's write: a `SET` of `value`, or for no value (a delete) a `DEL`.
    pub fn store(key: &str, value: Option<&[u8]>) -> Record {
        match value {
            Some(v) => Record::Set { key: key.to_string(), value: v.to_vec() },
            None => Record::Del { key: key.to_string() },
        }
    }
}

/// Appends the log line for `record` with sequence number `seq`, `\n` included, to `out`.
///
/// The key or id is written as it is; [`Wal::append`](super::Wal::append) checks it first, so the log never holds a
/// line it could not read back.
pub fn encode(seq: u64, record: &Record, out: &mut Vec<u8>) {
    let (op, field) = match record {
        Record::Set { key, value } => return encode_store(seq, key, Some(value), out),
        Record::Del { key } => return encode_store(seq, key, None, out),
        Record::Member { id } => (" MEMBER ", id.as_bytes()),
        Record::Remove { id } => (" REMOVE ", id.as_bytes()),
        Record::Epoch { epoch } => {
            push_u64(out, seq);
            out.extend_from_slice(b" EPOCH ");
            push_u64(out, *epoch);
            out.push(b'\n');
            return;
        }
    };
    push_u64(out, seq);
    out.extend_from_slice(op.as_bytes());
    out.extend_from_slice(field);
    out.push(b'\n');
}

/// Appends the log line of [`Record::store`]`(key, value)` with sequence number `seq`, without
/// making the record (on the path of every write).
pub fn encode_store(seq: u64, key: &str, value: Option<&[u8]>, out: &mut Vec<u8>) {
    push_u64(out, seq);
    match value {
        Some(value) => {
            out.extend_from_slice(b" SET ");
            out.extend_from_slice(key.as_bytes());
            out.push(b' ');
            escape::escape_into(value, out);
        }
        None => {
            out.extend_from_slice(b" DEL ");
            out.extend_from_slice(key.as_bytes());
        }
    }
    out.push(b'\n');
}

/// Parses one log line, `\n` removed. The error says what is wrong with the line.
pub fn decode(line: &[u8]) -> std::result::Result<(u64, Record), String> {
    let (seq, rest) = split_word(line);
    let seq = number(seq).map_err(|e| format!("bad sequence number: {e}"))?;
    let rest = rest.ok_or("missing operation after the sequence number")?;
    let (op, rest) = split_word(rest);
    let record = match op {
        b"SET" => {
            let (key, value) = split_word(rest.ok_or("SET needs a key and a value")?);
            let key = parse_key(key).map_err(|e| format!("SET: {e}"))?;
            let value = value.ok_or("SET needs a space and a value after the key")?;
            let value = escape::unescape(value).ok_or("SET value is not validly escaped")?;
            Record::Set { key, value }
        }
        b"DEL" => Record::Del { key: parse_key(only_field("DEL", rest)?).map_err(|e| format!("DEL: {e}"))? },
        b"MEMBER" => Record::Member {
            id: parse_slave_id(only_field("MEMBER", rest)?).map_err(|e| format!("MEMBER: {e}"))?,
        },
        b"REMOVE" => Record::Remove {
            id: parse_slave_id(only_field("REMOVE", rest)?).map_err(|e| format!("REMOVE: {e}"))?,
        },
        b"EPOCH" => Record::Epoch {
            epoch: number(only_field("EPOCH", rest)?).map_err(|e| format!("bad epoch: {e}"))?,
        },
        _ => return Err(format!("unknown operation '{}'", truncate_for_display(op))),
    };
    Ok((seq, record))
}

/// Decodes one complete line and checks that its seq increases.
pub(super) fn check_line(
    path: &Path,
    line: &[u8],
    number: u64,
    offset: u64,
    prev: &mut Option<u64>,
) -> Result<(u64, Record)> {
    let corrupt = |why: String| {
        Error::Corrupt(format!(
            "{} line {number} (byte offset {offset}): {why}; the log is damaged before its end, \
             so it is not replayed past this line: repair or remove the line by hand, or \
             restore the file from a good copy",
            path.display()
        ))
    };
    let (seq, record) = decode(line).map_err(corrupt)?;
    if let Some(p) = prev.filter(|&p| seq <= p) {
        return Err(corrupt(format!("sequence number {seq} does not increase (the line before has {p})")));
    }
    *prev = Some(seq);
    Ok((seq, record))
}

/// Refuses a write whose key could not be read back from its line.
pub(super) fn check_store(key: &str) -> Result<()> {
    check_key(key.as_bytes()).map_err(|e| Error::Protocol(format!("not logging an unreadable record: {e}")))
}

/// Refuses a record whose line could not be decoded again.
pub(super) fn validate(record: &Record) -> Result<()> {
    let checked = match record {
        Record::Set { key, .. } | Record::Del { key } => check_key(key.as_bytes()),
        Record::Member { id } | Record::Remove { id } => parse_slave_id(id.as_bytes()).map(drop),
        Record::Epoch { .. } => Ok(()),
    };
    checked.map_err(|e| Error::Protocol(format!("not logging an unreadable record: {e}")))
}

/// The single argument after `op`, with nothing after it.
fn only_field<'a>(op: &str, rest: Option<&'a [u8]>) -> std::result::Result<&'a [u8], String> {
    match rest {
        None => Err(format!("{op} needs one argument")),
        Some(field) if field.contains(&b' ') => Err(format!("{op} takes one argument, but more follow it")),
        Some(field) => Ok(field),
    }
}
