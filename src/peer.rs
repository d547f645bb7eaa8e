//! The slave protocol: messages between a master and its slaves. No sockets here.
//!
//! A slave opens a TCP connection to the master and registers with one line; after that the
//! master sends requests and the slave answers each one, in any order, tagged with the
//! request's id (`rid`). Replies are matched by id, never by order or timing. Every request
//! carries the master's **epoch**; a slave refuses requests from an epoch older than the newest
//! it has accepted (fencing). Values are escaped with [`crate::escape`] so a message is always
//! one line.
//!
//! ```text
//! slave  -> master   SLAVE <id> <accepted-epoch> <max-seq> <held-epoch> <held-seq>
//!                                                    (registration; see [`Registration::held`])
//! master -> slave    WELCOME <epoch>  |  ERR <reason>
//!
//! master -> slave    <rid> <epoch> SET <data-epoch> <seq> <key> <escaped-value>
//!                    <rid> <epoch> DEL <data-epoch> <seq> <key>
//!                    <rid> <epoch> MSET <n> (<data-epoch> <seq> <key> <len> <escaped-value>
//!                                        | <data-epoch> <seq> <key> T){n}
//!                                        (a pipelined run: n SETs and DELs in one message,
//!                                         each value <len> bytes as escaped, T a tombstone)
//!                    <rid> <epoch> GET <key>
//!                    <rid> <epoch> PING [<seq>]          (heartbeat; renews the read lease; with
//!                                                        a seq: every write of this log up to
//!                                                        it was sent to you before this PING)
//!                    <rid> <epoch> SCAN <log-epoch> <log-seq> <older-seq>
//!                                        (list entries a log ending there may lack; see
//!                                         [`Command::Scan`])
//!
//! slave  -> master   <rid> OK <data-epoch> <seq>          (applied; or the newer stamp kept)
//!                    <rid> VALUE <data-epoch> <seq> <escaped-value>
//!                    <rid> TOMB <data-epoch> <seq>        (deleted at that stamp)
//!                    <rid> NONE                           (never had the key)
//!                    <rid> PONG <keys>                    (keys held, tombstones excluded)
//!                    <rid> FENCED <accepted-epoch>        (request from an older epoch)
//!                    <rid> WAIT <ms>                      (another master's lease is live)
//!                    <rid> ERR <reason>
//!                    <rid> ITEM <data-epoch> <seq> <key> V <escaped-value>   (one per entry,
//!                    <rid> ITEM <data-epoch> <seq> <key> T                    then END)
//!                    <rid> END <count>
//!                    <rid> APPLIED <count>                (an MSET: every write applied, or
//!                                                          a newer one kept)
//! ```
//!
//! Every stored value carries a [`Stamp`] `(epoch, seq)`, ordered by epoch first. Within an
//! epoch the sequence numbers come from one master's log; a new epoch's master starts above
//! every sequence number it knows, and any write from an older epoch loses to any write from a
//! newer one. The client-visible version is the `seq` part.

use std::fmt;

use crate::escape;
use crate::escape::push_u64;
use crate::wire::{fields, number, parse_key, split_word, truncate_for_display};

/// The largest sequence number a peer may report: a quarter of the `u64` range, more than any
/// log reaches (a million writes a second for 146,000 years), so the rest can never run out.
pub const MAX_SEQ: u64 = u64::MAX / 4;

pub use crate::limits::MAX_ID;
pub use crate::wire::parse_slave_id;

/// How long a slave's answer to a master's `PING` promises not to accept a newer epoch: the
/// master's read lease. A slave that has given a lease to one master waits for it to run out
/// before it joins a new epoch, so a master holding leases from a majority knows that no other
/// master can have written anything, and may serve reads.
pub const LEASE: std::time::Duration = std::time::Duration::from_millis(1000);

/// The part of [`LEASE`] a master relies on, in percent, measured from when it *sent* the
/// `PING`. The rest is a margin for clock-rate differences between the two processes.
pub const LEASE_TRUSTED_PERCENT: u64 = 80;

/// The order of writes: epoch first, then sequence number within the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Stamp {
    /// The epoch of the master that assigned `seq`.
    pub epoch: u64,
    /// The log sequence number; the version clients see.
    pub seq: u64,
}

impl Stamp {
    /// A stamp.
    pub fn new(epoch: u64, seq: u64) -> Stamp {
        Stamp { epoch, seq }
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.epoch, self.seq)
    }
}

/// A slave's registration line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The slave's member id.
    pub id: String,
    /// The newest epoch the slave has accepted.
    pub epoch: u64,
    /// The highest sequence number the slave stores.
    pub max_seq: u64,
    /// How much of a master's log the slave is known to hold: every write of the log of the
    /// master of epoch `held.epoch` up to seq `held.seq` (the last `PING <seq>` it got while in
    /// sync). [`Stamp::default()`] for nothing (a fresh slave): a master sends it everything.
    pub held: Stamp,
}

/// One write of a [`Command::Batch`]: stamp, key, and value (`None`: a tombstone).
pub type BatchWrite = (Stamp, String, Option<Vec<u8>>);

/// What a master asks of a slave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Store `value` under `key` unless a newer stamp is stored.
    Set { stamp: Stamp, key: String, value: Vec<u8> },
    /// Store a tombstone under `key` unless a newer stamp is stored.
    Del { stamp: Stamp, key: String },
    /// Store several writes (each a value or, for `None`, a tombstone), each unless a newer
    /// stamp is stored: a pipelined run, in one message and one acknowledgement.
    Batch(Vec<BatchWrite>),
    /// Return what is stored under `key`.
    Get { key: String },
    /// Heartbeat; renews the master's read lease. `synced`: every write of the master's log
    /// up to this seq was sent to the slave before this message (only to a slave in sync).
    Ping { synced: Option<u64> },
    /// List every entry a log may lack whose last epoch is `epoch`, which holds that epoch's
    /// writes up to `seq` and older epochs' up to `older_seq`: entries of a newer epoch, of
    /// that epoch above `seq`, and of an older one above `older_seq` (a new master recovering
    /// the writes that were in flight).
    Scan { epoch: u64, seq: u64, older_seq: u64 },
}

impl Command {
    /// A heartbeat that carries no sync position.
    pub const PING: Command = Command::Ping { synced: None };
}

/// Whether an entry stamped `entry` may be missing from a log described by a
/// [`Command::Scan`]'s three numbers.
pub fn scan_wants(entry: Stamp, epoch: u64, seq: u64, older_seq: u64) -> bool {
    use std::cmp::Ordering::*;
    match entry.epoch.cmp(&epoch) {
        Greater => true,
        Equal => entry.seq > seq,
        Less => entry.seq > older_seq,
    }
}

impl Command {
    /// The command that stores `value` under `key` at `stamp`: a `SET`, or for no value (a
    /// deletion) a `DEL`.
    pub fn store(stamp: Stamp, key: &str, value: Option<&[u8]>) -> Command {
        match value {
            Some(v) => Command::Set { stamp, key: key.to_string(), value: v.to_vec() },
            None => Command::Del { stamp, key: key.to_string() },
        }
    }
}

/// A request from a master: id, epoch, command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Chosen by the master; echoed in the reply.
    pub rid: u64,
    /// The sending master's epoch.
    pub epoch: u64,
    /// What to do.
    pub command: Command,
}

/// What a slave answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The write was applied, or a newer one was already stored; the stamp is what is stored.
    Ok(Stamp),
    /// The stored value.
    Value(Stamp, Vec<u8>),
    /// The key was deleted at this stamp.
    Tomb(Stamp),
    /// The key was never stored.
    None,
    /// The answer to `PING`, with the number of keys the slave holds (tombstones excluded).
    Pong(u64),
    /// The request's epoch is older than the accepted one (given).
    Fenced(u64),
    /// A lease of the current epoch's master is live for this many milliseconds more, so the
    /// request (of a newer epoch) was not applied. A master takes it as this slave's refusal:
    /// a write goes on with the other slaves, a takeover waits for the slave to join (which
    /// it does, through registration, once the lease is over).
    Wait(u64),
    /// The request was malformed.
    Err(String),
    /// One entry of a `SCAN`: more follow, then [`Outcome::End`].
    Item { stamp: Stamp, key: String, value: Option<Vec<u8>> },
    /// The end of a `SCAN`, with the number of items sent.
    End(u64),
    /// Every write of an `MSET` was applied (or a newer one kept); how many.
    Applied(u64),
}

/// A reply from a slave: the request's id and the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The id of the request answered.
    pub rid: u64,
    /// The answer.
    pub outcome: Outcome,
}

/// The request id at the start of a message, if it has one: what a reply to a message that
/// could not be parsed (or was too long to read) is tagged with.
pub fn leading_rid(line: &[u8]) -> Option<u64> {
    let (rid, rest) = split_word(line);
    rest?;
    number(rid).ok()
}

impl Registration {
    /// The registration line, without terminator.
    pub fn encode(&self) -> String {
        format!("SLAVE {} {} {} {}", self.id, self.epoch, self.max_seq, self.held)
    }

    /// Parses a registration line.
    pub fn parse(line: &[u8]) -> Result<Registration, String> {
        let fields = fields(line);
        match fields.as_slice() {
            [word, id, epoch, max_seq, rest @ ..] if word.eq_ignore_ascii_case(b"SLAVE") => {
                let held = match rest {
                    [] => Stamp::default(),
                    [e, s] => stamp(e, s)?,
                    _ => {
                        return Err("expected: SLAVE <id> <epoch> <max-seq> [<held-epoch> <held-seq>]".into())
                    }
                };
                Ok(Registration {
                    id: parse_slave_id(id)?,
                    epoch: number(epoch)?,
                    max_seq: seq_number(max_seq)?,
                    held,
                })
            }
            _ => Err("expected: SLAVE <id> <epoch> <max-seq> [<held-epoch> <held-seq>]".to_string()),
        }
    }
}

impl Message {
    /// Appends the request line, `\n` included.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        push_u64(out, self.rid);
        out.push(b' ');
        encode_body(self.epoch, &self.command, out);
    }
    /// Parses a request line (terminator removed).
    pub fn parse(line: &[u8]) -> Result<Message, String> {
        let (rid, rest) = split_word(line);
        let rid = number(rid)?;
        let (epoch, rest) = split_word(rest.ok_or("missing epoch")?);
        let epoch = number(epoch)?;
        let (verb, rest) = split_word(rest.ok_or("missing command")?);
        let command = match verb {
            b"SET" => {
                let rest = rest.ok_or("SET needs a stamp, a key and a value")?;
                let (data_epoch, rest) = split_word(rest);
                let (seq, rest) = split_word(rest.ok_or("SET needs a seq")?);
                let (key, value) = split_word(rest.ok_or("SET needs a key")?);
                let value = escape::unescape(value.ok_or("SET needs a value")?)
                    .ok_or("SET value is not validly escaped")?;
                Command::Set { stamp: stamp(data_epoch, seq)?, key: parse_key(key)?, value }
            }
            b"DEL" => match fields(rest.unwrap_or(b"")).as_slice() {
                [e, s, key] => Command::Del { stamp: stamp(e, s)?, key: parse_key(key)? },
                _ => return Err("expected: DEL <epoch> <seq> <key>".into()),
            },
            b"MSET" => Command::Batch(parse_batch(rest.unwrap_or(b""))?),
            b"GET" => match fields(rest.unwrap_or(b"")).as_slice() {
                [key] => Command::Get { key: parse_key(key)? },
                _ => return Err("expected: GET <key>".into()),
            },
            b"PING" => match rest {
                None => Command::PING,
                Some(seq) => Command::Ping { synced: Some(seq_number(seq)?) },
            },
            b"SCAN" => match fields(rest.unwrap_or(b"")).as_slice() {
                [e, s, o] => {
                    Command::Scan { epoch: number(e)?, seq: seq_number(s)?, older_seq: seq_number(o)? }
                }
                _ => return Err("expected: SCAN <log-epoch> <log-seq> <older-seq>".into()),
            },
            _ => return Err(format!("unknown slave command '{}'", truncate_for_display(verb))),
        };
        Ok(Message { rid, epoch, command })
    }
}

/// The most writes one `MSET` carries; a longer run is sent as several.
pub const MAX_BATCH: usize = 4096;

/// The most bytes of writes (as [`batch_item_bound`] counts them) one `MSET` carries when it
/// carries more than one: half a peer line. A single write always fits a line on its own.
pub const MAX_BATCH_BYTES: usize = crate::limits::MAX_PEER_LINE / 2;

/// At most how many bytes a write of `key` and `value` takes in an `MSET`: its value escaped
/// (at most 4 bytes a byte), its key, and its numbers and spaces.
pub fn batch_item_bound(key: &str, value: Option<&[u8]>) -> usize {
    4 * value.map_or(0, <[u8]>::len) + key.len() + 64
}

const _: () = assert!(
    b"18446744073709551615 18446744073709551615 MSET 1 ".len()
        + 4 * crate::limits::MAX_VALUE
        + crate::limits::MAX_KEY
        + 64
        <= crate::limits::MAX_PEER_LINE
);

/// Appends the `MSET` of `writes` after `<rid> `, `\n` included.
pub fn encode_batch_body<'a>(
    epoch: u64,
    writes: impl ExactSizeIterator<Item = (Stamp, &'a str, Option<&'a [u8]>)>,
    out: &mut Vec<u8>,
) {
    push_u64(out, epoch);
    out.extend_from_slice(b" MSET ");
    push_u64(out, writes.len() as u64);
    let mut escaped = Vec::new();
    for (stamp, key, value) in writes {
        out.push(b' ');
        push_stamp(out, stamp);
        out.push(b' ');
        out.extend_from_slice(key.as_bytes());
        match value {
            Some(v) => {
                escaped.clear();
                escape::escape_into(v, &mut escaped);
                out.push(b' ');
                push_u64(out, escaped.len() as u64);
                out.push(b' ');
                out.extend_from_slice(&escaped);
            }
            None => out.extend_from_slice(b" T"),
        }
    }
    out.push(b'\n');
}

/// Parses what follows `MSET `: the count, then each write; the count must match.
fn parse_batch(rest: &[u8]) -> Result<Vec<BatchWrite>, String> {
    let (count, mut rest) = split_word(rest);
    let count = number(count)?;
    if count as usize > MAX_BATCH {
        return Err(format!("MSET of {count} writes; at most {MAX_BATCH}"));
    }
    let mut writes = Vec::with_capacity(count as usize);
    for i in 0..count {
        let missing = || format!("MSET write {i} of {count} is missing or cut short");
        let (e, r) = split_word(rest.ok_or_else(missing)?);
        let (s, r) = split_word(r.ok_or_else(missing)?);
        let (key, r) = split_word(r.ok_or_else(missing)?);
        let (len, r) = split_word(r.ok_or_else(missing)?);
        let stamp = stamp(e, s)?;
        let key = parse_key(key)?;
        if len == b"T" {
            writes.push((stamp, key, None));
            rest = r;
            continue;
        }
        let len = number(len)? as usize;
        let r = r.ok_or_else(missing)?;
        if r.len() < len {
            return Err(missing());
        }
        let value = escape::unescape(&r[..len]).ok_or("MSET value is not validly escaped")?;
        writes.push((stamp, key, Some(value)));
        rest = match &r[len..] {
            [] => None,
            [b' ', more @ ..] => Some(more),
            _ => return Err(format!("MSET write {i}: its value is not {len} bytes")),
        };
    }
    if rest.is_some() {
        return Err("MSET: more follows its last write".into());
    }
    Ok(writes)
}

/// What [`encode_body`] writes for [`Command::store`]`(stamp, key, value)`, without building
/// the command (the write path has the key and value already, and need not copy them).
pub fn encode_store_body(epoch: u64, stamp: Stamp, key: &str, value: Option<&[u8]>, out: &mut Vec<u8>) {
    push_u64(out, epoch);
    out.extend_from_slice(if value.is_some() { b" SET " } else { b" DEL " });
    push_stamp(out, stamp);
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    if let Some(value) = value {
        out.push(b' ');
        escape::escape_into(value, out);
    }
    out.push(b'\n');
}

/// Appends everything of a request line after `<rid> `, `\n` included: a master encodes a
/// write once and sends it to several slaves, each with its own id in front.
pub fn encode_body(epoch: u64, command: &Command, out: &mut Vec<u8>) {
    match command {
        Command::Set { stamp, key, value } => return encode_store_body(epoch, *stamp, key, Some(value), out),
        Command::Del { stamp, key } => return encode_store_body(epoch, *stamp, key, None, out),
        Command::Batch(writes) => {
            let items = writes.iter().map(|(s, k, v)| (*s, k.as_str(), v.as_deref()));
            return encode_batch_body(epoch, items, out);
        }
        _ => push_u64(out, epoch),
    }
    match command {
        Command::Set { .. } | Command::Del { .. } | Command::Batch(_) => {}
        Command::Get { key } => {
            out.extend_from_slice(b" GET ");
            out.extend_from_slice(key.as_bytes());
        }
        Command::Ping { synced } => {
            out.extend_from_slice(b" PING");
            if let Some(seq) = synced {
                out.push(b' ');
                push_u64(out, *seq);
            }
        }
        Command::Scan { epoch, seq, older_seq } => {
            out.extend_from_slice(b" SCAN ");
            push_u64(out, *epoch);
            out.push(b' ');
            push_u64(out, *seq);
            out.push(b' ');
            push_u64(out, *older_seq);
        }
    }
    out.push(b'\n');
}

impl Response {
    /// Appends the reply line, `\n` included.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        push_u64(out, self.rid);
        match &self.outcome {
            Outcome::Ok(s) => {
                out.extend_from_slice(b" OK ");
                push_stamp(out, *s);
            }
            Outcome::Value(s, value) => {
                out.extend_from_slice(b" VALUE ");
                push_stamp(out, *s);
                out.push(b' ');
                escape::escape_into(value, out);
            }
            Outcome::Tomb(s) => {
                out.extend_from_slice(b" TOMB ");
                push_stamp(out, *s);
            }
            Outcome::None => out.extend_from_slice(b" NONE"),
            Outcome::Pong(keys) => {
                out.extend_from_slice(b" PONG ");
                push_u64(out, *keys);
            }
            Outcome::Fenced(e) => {
                out.extend_from_slice(b" FENCED ");
                push_u64(out, *e);
            }
            Outcome::Wait(ms) => {
                out.extend_from_slice(b" WAIT ");
                push_u64(out, *ms);
            }
            Outcome::Err(m) => {
                out.extend_from_slice(b" ERR ");
                escape::escape_into(m.as_bytes(), out);
            }
            Outcome::Item { stamp, key, value } => {
                out.extend_from_slice(b" ITEM ");
                push_stamp(out, *stamp);
                out.push(b' ');
                out.extend_from_slice(key.as_bytes());
                match value {
                    Some(v) => {
                        out.extend_from_slice(b" V ");
                        escape::escape_into(v, out);
                    }
                    None => out.extend_from_slice(b" T"),
                }
            }
            Outcome::End(n) => {
                out.extend_from_slice(b" END ");
                push_u64(out, *n);
            }
            Outcome::Applied(n) => {
                out.extend_from_slice(b" APPLIED ");
                push_u64(out, *n);
            }
        }
        out.push(b'\n');
    }

    /// Parses a reply line (terminator removed).
    pub fn parse(line: &[u8]) -> Result<Response, String> {
        let (rid, rest) = split_word(line);
        let rid = number(rid)?;
        let (verb, rest) = split_word(rest.ok_or("missing outcome")?);
        let stamp_fields = |f: &[&[u8]]| -> Result<Stamp, String> {
            match f {
                [e, s] => stamp(e, s),
                _ => Err("expected <epoch> <seq>".into()),
            }
        };
        let outcome = match verb {
            b"OK" => Outcome::Ok(stamp_fields(&fields(rest.unwrap_or(b"")))?),
            b"VALUE" => {
                let rest = rest.ok_or("VALUE needs a stamp and a value")?;
                let (e, rest) = split_word(rest);
                let (s, value) = split_word(rest.ok_or("VALUE needs a seq")?);
                let value = escape::unescape(value.ok_or("VALUE needs a value")?)
                    .ok_or("VALUE is not validly escaped")?;
                Outcome::Value(stamp(e, s)?, value)
            }
            b"TOMB" => Outcome::Tomb(stamp_fields(&fields(rest.unwrap_or(b"")))?),
            b"NONE" if rest.is_none() => Outcome::None,
            b"PONG" => Outcome::Pong(match rest {
                None => 0,
                Some(keys) => number(keys)?,
            }),
            b"FENCED" => Outcome::Fenced(number(rest.unwrap_or(b""))?),
            b"WAIT" => Outcome::Wait(number(rest.unwrap_or(b""))?),
            b"ITEM" => {
                let rest = rest.ok_or("ITEM needs a stamp, a key and a value")?;
                let (e, rest) = split_word(rest);
                let (s, rest) = split_word(rest.ok_or("ITEM needs a seq")?);
                let (key, rest) = split_word(rest.ok_or("ITEM needs a key")?);
                let value = match split_word(rest.ok_or("ITEM needs V or T")?) {
                    (b"V", Some(v)) => Some(escape::unescape(v).ok_or("ITEM value is not validly escaped")?),
                    (b"T", None) => None,
                    _ => return Err("ITEM needs V <value> or T".into()),
                };
                Outcome::Item { stamp: stamp(e, s)?, key: parse_key(key)?, value }
            }
            b"END" => Outcome::End(number(rest.unwrap_or(b""))?),
            b"APPLIED" => Outcome::Applied(number(rest.unwrap_or(b""))?),
            b"ERR" => Outcome::Err(
                String::from_utf8_lossy(&escape::unescape(rest.unwrap_or(b"")).unwrap_or_default())
                    .into_owned(),
            ),
            _ => return Err(format!("unknown slave reply '{}'", truncate_for_display(verb))),
        };
        Ok(Response { rid, outcome })
    }
}

/// Appends a stamp as `<epoch> <seq>`, like its `Display`.
fn push_stamp(out: &mut Vec<u8>, stamp: Stamp) {
    push_u64(out, stamp.epoch);
    out.push(b' ');
    push_u64(out, stamp.seq);
}

/// Parses a stamp's two fields; the seq must be one a master could have handed out.
fn stamp(epoch: &[u8], seq: &[u8]) -> Result<Stamp, String> {
    Ok(Stamp::new(number(epoch)?, seq_number(seq)?))
}

/// A sequence number from a peer: at most [`MAX_SEQ`], so that a peer cannot push a master's
/// log to the end of the sequence space (a master never uses a seq below one a slave holds).
fn seq_number(field: &[u8]) -> Result<u64, String> {
    let seq = number(field)?;
    if seq > MAX_SEQ {
        return Err(format!("sequence number {seq} is beyond the largest a master hands out ({MAX_SEQ})"));
    }
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip_request(r: Message) {
        let mut wire = Vec::new();
        r.encode_into(&mut wire);
        assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(Message::parse(&wire[..wire.len() - 1]).unwrap(), r);
    }

    fn round_trip_reply(r: Response) {
        let mut wire = Vec::new();
        r.encode_into(&mut wire);
        assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(Response::parse(&wire[..wire.len() - 1]).unwrap(), r);
    }

    #[test]
    fn requests_round_trip() {
        let s = Stamp::new(2, 41);
        for command in [
            Command::Set { stamp: s, key: "k".into(), value: b"a b\nc\\\x00".to_vec() },
            Command::Set { stamp: s, key: "k".into(), value: Vec::new() },
            Command::Del { stamp: s, key: "k".into() },
            Command::Get { key: "k".into() },
            Command::PING,
            Command::Ping { synced: Some(77) },
            Command::Scan { epoch: 4, seq: 12, older_seq: 9 },
            Command::Batch(vec![
                (s, "k".into(), Some(b"a b\nc 3 x".to_vec())),
                (s, "j".into(), None),
                (s, "e".into(), Some(Vec::new())),
                (s, "T".into(), Some(b"T".to_vec())),
            ]),
            Command::Batch(Vec::new()),
        ] {
            round_trip_request(Message { rid: 9, epoch: 3, command });
        }
    }

    #[test]
    fn replies_round_trip() {
        let s = Stamp::new(1, 5);
        for outcome in [
            Outcome::Ok(s),
            Outcome::Value(s, b"x y\r\n".to_vec()),
            Outcome::Value(s, Vec::new()),
            Outcome::Tomb(s),
            Outcome::None,
            Outcome::Pong(12),
            Outcome::Fenced(4),
            Outcome::Wait(250),
            Outcome::Err("bad\nthing".into()),
            Outcome::Item { stamp: s, key: "k".into(), value: Some(b"a b".to_vec()) },
            Outcome::Item { stamp: s, key: "k".into(), value: Some(Vec::new()) },
            Outcome::Item { stamp: s, key: "k".into(), value: None },
            Outcome::End(3),
            Outcome::Applied(100),
        ] {
            round_trip_reply(Response { rid: u64::MAX, outcome });
        }
    }

    #[test]
    fn rejects_malformed_messages() {
        for bad in [
            &b""[..],
            b"x 1 PING",
            b"1 PING",
            b"1 1 PING extra",
            b"1 1 SCAN 1 2",
            b"1 1 MSET 2 1 1 k 1 a",
            b"1 1 MSET 1 1 1 k 5 a",
            b"1 1 MSET 1 1 1 k 1 ab",
            b"1 1 MSET 0 x",
            b"1 1 MSET 99999 1 1 k T",
            b"1 1 SET 1 2 k",
            b"1 1 SET 1 2 k bad\\q",
            b"1 1 DEL 1 k",
            b"1 1 GET",
            b"1 1 GET a b",
            b"1 1 FROB",
        ] {
            assert!(Message::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        for bad in [&b"1"[..], b"1 OK 1", b"1 VALUE 1 2", b"1 FENCED x", b"1 NOPE"] {
            assert!(Response::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn hello_round_trips_and_checks_ids() {
        let h = Registration { id: "s-1.a:b_c".into(), epoch: 3, max_seq: 10, held: Stamp::new(3, 9) };
        assert_eq!(Registration::parse(h.encode().as_bytes()).unwrap(), h);
        // A slave that holds nothing may leave the position out.
        assert_eq!(Registration::parse(b"SLAVE a 1 2").unwrap().held, Stamp::default());
        assert!(Registration::parse(b"SLAVE a 1 2 3").is_err());
        assert!(Registration::parse(b"SLAVE bad/id 1 1").is_err());
        assert!(Registration::parse(b"SLAVE a 1").is_err());
        assert!(parse_slave_id(&[b'a'; MAX_ID + 1]).is_err());
    }

    #[test]
    fn sequence_numbers_beyond_the_master_range_are_refused() {
        let at_max = format!("SLAVE s1 1 {MAX_SEQ}");
        assert_eq!(Registration::parse(at_max.as_bytes()).unwrap().max_seq, MAX_SEQ);
        let over = format!("SLAVE s1 1 {}", u64::MAX);
        let why = Registration::parse(over.as_bytes()).unwrap_err();
        assert!(why.contains("beyond the largest a master hands out"), "{why}");
        for line in [format!("1 OK 1 {}", u64::MAX), format!("1 ITEM 1 {} k T", MAX_SEQ + 1)] {
            assert!(Response::parse(line.as_bytes()).is_err(), "{line}");
        }
        assert!(Message::parse(format!("1 1 SET 1 {} k v", u64::MAX).as_bytes()).is_err());
    }

    #[test]
    fn push_u64_writes_decimal() {
        for n in [0, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            let mut out = b"x".to_vec();
            push_u64(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn encodes_the_documented_lines() {
        let s = Stamp::new(2, 41);
        let mut out = Vec::new();
        Message {
            rid: 7,
            epoch: 3,
            command: Command::Set { stamp: s, key: "k".into(), value: b"a b".to_vec() },
        }
        .encode_into(&mut out);
        Message { rid: 8, epoch: 3, command: Command::Del { stamp: s, key: "k".into() } }
            .encode_into(&mut out);
        Message { rid: 9, epoch: 3, command: Command::Get { key: "k".into() } }.encode_into(&mut out);
        Message { rid: 10, epoch: 3, command: Command::PING }.encode_into(&mut out);
        Response { rid: 7, outcome: Outcome::Ok(s) }.encode_into(&mut out);
        Response { rid: 9, outcome: Outcome::Value(s, b"a b".to_vec()) }.encode_into(&mut out);
        Response { rid: 9, outcome: Outcome::Fenced(4) }.encode_into(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "7 3 SET 2 41 k a b\n8 3 DEL 2 41 k\n9 3 GET k\n10 3 PING\n7 OK 2 41\n9 VALUE 2 41 a b\n9 FENCED 4\n"
        );
    }

    #[test]
    fn a_scan_asks_for_what_a_log_ending_there_may_lack() {
        // A log whose last epoch 4 holds that epoch up to seq 100 and older ones up to 60.
        let wants = |e, s| scan_wants(Stamp::new(e, s), 4, 100, 60);
        assert!(wants(5, 1), "a newer epoch, whatever its seq");
        assert!(wants(4, 101) && !wants(4, 100), "that epoch, above what the log holds");
        assert!(wants(3, 61) && !wants(3, 60), "an older epoch, above the older part");
        assert!(!wants(1, 5));
    }

    #[test]
    fn stamps_order_by_epoch_first() {
        assert!(Stamp::new(2, 1) > Stamp::new(1, 100));
        assert!(Stamp::new(1, 2) > Stamp::new(1, 1));
    }
}
