//! The client protocol: requests, replies, and their text form. No sockets here.
//!
//! A request is one line; the reply is one line ending in `\r\n` (or, for `STATS` and
//! `MEMBERS`, several lines closed by `END`). Command words are case-insensitive. The full
//! reference, with every reply, is `docs/PROTOCOL.md`.
//!
//! ```text
//! WRITE <key> <value>   -> OK <version>          (aliases SET, PUT)
//! READ <key>            -> VALUE <version> <value> | NOT_FOUND   (alias GET)
//! DELETE <key>          -> OK <version> | NOT_FOUND              (alias DEL)
//! PING                  -> PONG
//! STATS                 -> STAT <name> <value> ... END
//! MEMBERS               -> MEMBER <id> <up|syncing|down> ... END
//! REMOVE <slave-id>     -> OK <version>          (forget a dead slave for good)
//! COMPACT               -> OK                    (compact the log in the background)
//! QUIT                  -> BYE, then the server closes
//! AUTH <password>       -> OK | ERR invalid password   (with --requirepass; see crate::auth)
//! CLIENT                -> (the original handshake; accepted, no reply)
//! anything else         -> ERR <reason>
//! ```
//!
//! The value of `WRITE` is everything after the single space that follows the key, spaces
//! included; it may be empty. Keys are 1 to [`MAX_KEY`] bytes of UTF-8 without whitespace or
//! control bytes.

use std::fmt;

pub use crate::wire::{check_key, parse_key, truncate_for_display};
use crate::wire::{number, parse_slave_id, split_word};

pub use crate::limits::{MAX_KEY, MAX_VALUE};

/// A parsed client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `WRITE <key> <value>`: store a value.
    Write { key: String, value: Vec<u8> },
    /// `READ <key>`: the latest acknowledged value.
    Read { key: String },
    /// `DELETE <key>`: store a tombstone.
    Delete { key: String },
    /// `PING`: liveness check.
    Ping,
    /// `STATS`: counters and state.
    Stats,
    /// `MEMBERS`: the registered slaves and their liveness.
    Members,
    /// `COMPACT`: start a compaction of the log in the background (like Redis's
    /// `BGREWRITEAOF`); answered `OK` at once, progress in `STATS`.
    Compact,
    /// `REMOVE <slave-id>`: remove a member for good.
    Remove { id: String },
    /// `QUIT`: close the connection.
    Quit,
    /// `CLIENT`: the original system's handshake line, ignored.
    Hello,
    /// `AUTH <password>`: authenticate the connection (`--requirepass`). The password is
    /// everything after the single space, spaces included.
    Auth { password: Vec<u8> },
}

/// A reply to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `OK <version>`.
    Ok(u64),
    /// `OK` alone: done, and no version to tell (the answer to `AUTH`).
    Done,
    /// `VALUE <version> <value>`.
    Value { version: u64, value: Vec<u8> },
    /// `NOT_FOUND`.
    NotFound,
    /// `PONG`.
    Pong,
    /// `BYE` (the answer to `QUIT`).
    Bye,
    /// `STAT <name> <value>` lines (or `MEMBER` lines), then `END`.
    Table { tag: &'static str, rows: Vec<(String, String)> },
    /// `ERR <kind...>`.
    Err(ErrorReply),
}

/// The errors a server can answer with. The text after `ERR` is part of the protocol: the
/// first word of `NOTPRIMARY`, `UNAVAILABLE` and `TIMEOUT` errors is what clients match on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorReply {
    /// `ERR NOTPRIMARY <addr>`: this server does not serve requests; try `addr`.
    NotPrimary(String),
    /// `ERR UNAVAILABLE <why>`: no quorum could be formed; nothing was written.
    Unavailable(String),
    /// `ERR TIMEOUT <why>`: logged, but the quorum did not answer in time; outcome unknown.
    Timeout(String),
    /// `ERR <message>`: the request was invalid; nothing happened.
    Invalid(String),
}

impl ErrorReply {
    /// True when the request certainly had no effect, so a client may retry it elsewhere.
    pub fn had_no_effect(&self) -> bool {
        !matches!(self, ErrorReply::Timeout(_))
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorReply::NotPrimary(addr) => write!(f, "NOTPRIMARY {addr}"),
            ErrorReply::Unavailable(why) => write!(f, "UNAVAILABLE {why}"),
            ErrorReply::Timeout(why) => write!(f, "TIMEOUT {why}"),
            ErrorReply::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl Reply {
    /// An `ERR <message>` reply for an invalid request.
    pub fn invalid(msg: impl Into<String>) -> Reply {
        Reply::Err(ErrorReply::Invalid(msg.into()))
    }

    /// Appends the wire form of the reply, `\r\n` included, to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing into a Vec cannot fail.
        let _ = match self {
            Reply::Ok(v) => write!(out, "OK {v}\r\n"),
            Reply::Done => write!(out, "OK\r\n"),
            Reply::Value { version, value } => {
                let _ = write!(out, "VALUE {version} ");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
                Ok(())
            }
            Reply::NotFound => write!(out, "NOT_FOUND\r\n"),
            Reply::Pong => write!(out, "PONG\r\n"),
            Reply::Bye => write!(out, "BYE\r\n"),
            Reply::Table { tag, rows } => {
                for (name, value) in rows {
                    let _ = write!(out, "{tag} {name} {value}\r\n");
                }
                write!(out, "END\r\n")
            }
            Reply::Err(e) => write!(out, "ERR {e}\r\n"),
        };
    }

    /// The wire form of the reply.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Parses the first line of a reply (as a client reads it, terminator removed). A `STAT`
    /// or `MEMBER` line starts a table: the caller reads rows with [`parse_table_row`] until
    /// `END`; this returns an empty table for it.
    pub fn parse_line(line: &[u8]) -> Result<Reply, String> {
        let (word, rest) = split_word(line);
        let rest_opt = rest.unwrap_or(b"");
        match word {
            b"OK" if rest.is_none() => Ok(Reply::Done),
            b"OK" => Ok(Reply::Ok(number(rest_opt)?)),
            b"VALUE" => {
                let (version, value) = split_word(rest_opt);
                let version = number(version)?;
                let value = value.ok_or_else(|| format!("VALUE without a value: {}", lossy(line)))?;
                Ok(Reply::Value { version, value: value.to_vec() })
            }
            b"NOT_FOUND" => Ok(Reply::NotFound),
            b"PONG" => Ok(Reply::Pong),
            b"BYE" => Ok(Reply::Bye),
            b"END" => Ok(Reply::Table { tag: "STAT", rows: Vec::new() }),
            b"STAT" | b"MEMBER" => {
                let tag = if word == b"STAT" { "STAT" } else { "MEMBER" };
                let mut rows = Vec::new();
                if let Some(row) = parse_table_row(line) {
                    rows.push(row);
                }
                Ok(Reply::Table { tag, rows })
            }
            b"ERR" => {
                let text = String::from_utf8_lossy(rest_opt).into_owned();
                let (kind, detail) = match text.split_once(' ') {
                    Some((k, d)) => (k.to_string(), d.to_string()),
                    None => (text.clone(), String::new()),
                };
                Ok(Reply::Err(match kind.as_str() {
                    "NOTPRIMARY" => ErrorReply::NotPrimary(detail),
                    "UNAVAILABLE" => ErrorReply::Unavailable(detail),
                    "TIMEOUT" => ErrorReply::Timeout(detail),
                    _ => ErrorReply::Invalid(text),
                }))
            }
            _ => Err(format!("unexpected reply: {}", lossy(line))),
        }
    }
}

/// Parses a `STAT <name> <value>` or `MEMBER <id> <state>` row; `None` for anything else
/// (including `END`).
pub fn parse_table_row(line: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.splitn(3, ' ');
    match parts.next()? {
        "STAT" | "MEMBER" => {}
        _ => return None,
    }
    let name = parts.next()?.to_string();
    let value = parts.next().unwrap_or("").to_string();
    Some((name, value))
}

impl Request {
    /// Parses one request line (terminator already removed).
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        let (word, rest) = split_word(line);
        if word.is_empty() {
            return Err(if line.is_empty() {
                "empty command".to_string()
            } else {
                "line starts with a space; expected a command".to_string()
            });
        }
        let command = word.to_ascii_uppercase();
        let name = String::from_utf8_lossy(word).to_lowercase();
        let args = |n: usize| -> Result<Vec<&[u8]>, String> {
            let fields: Vec<&[u8]> = match rest {
                Some(r) => r.split(|b| b.is_ascii_whitespace()).filter(|f| !f.is_empty()).collect(),
                None => Vec::new(),
            };
            if fields.len() == n {
                Ok(fields)
            } else {
                Err(format!("wrong number of arguments for '{name}'"))
            }
        };
        match command.as_slice() {
            b"WRITE" | b"SET" | b"PUT" => {
                let rest = rest.ok_or_else(|| format!("wrong number of arguments for '{name}'"))?;
                let (key, value) = split_word(rest);
                let value = value.ok_or_else(|| format!("wrong number of arguments for '{name}'"))?;
                let key = parse_key(key)?;
                check_value(value)?;
                Ok(Request::Write { key, value: value.to_vec() })
            }
            b"READ" | b"GET" => Ok(Request::Read { key: parse_key(args(1)?[0])? }),
            b"DELETE" | b"DEL" => Ok(Request::Delete { key: parse_key(args(1)?[0])? }),
            b"REMOVE" => {
                let id = args(1)?[0];
                Ok(Request::Remove { id: parse_slave_id(id)? })
            }
            b"PING" => args(0).map(|_| Request::Ping),
            b"STATS" => args(0).map(|_| Request::Stats),
            b"MEMBERS" => args(0).map(|_| Request::Members),
            b"COMPACT" => args(0).map(|_| Request::Compact),
            b"QUIT" => args(0).map(|_| Request::Quit),
            b"CLIENT" => args(0).map(|_| Request::Hello),
            b"AUTH" => match rest {
                Some(password) if !password.is_empty() => Ok(Request::Auth { password: password.to_vec() }),
                _ => Err(format!("wrong number of arguments for '{name}'")),
            },
            _ => Err(format!("unknown command '{}'", truncate_for_display(word))),
        }
    }
}

impl Request {
    /// Appends the wire form of the request (what a user would type), `\n` included, after
    /// checking that one line can carry it and that the server will parse it back to exactly
    /// this request. A key the protocol cannot carry is refused with the server's own message
    /// (`key contains whitespace or control bytes`, ...), and so is a value with a line break
    /// in it, which would end the line early and send the rest as a second request.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), String> {
        self.validate()?;
        match self {
            Request::Write { key, value } => {
                out.extend_from_slice(b"WRITE ");
                out.extend_from_slice(key.as_bytes());
                out.push(b' ');
                out.extend_from_slice(value);
            }
            Request::Read { key } => {
                out.extend_from_slice(b"READ ");
                out.extend_from_slice(key.as_bytes());
            }
            Request::Delete { key } => {
                out.extend_from_slice(b"DELETE ");
                out.extend_from_slice(key.as_bytes());
            }
            Request::Remove { id } => {
                out.extend_from_slice(b"REMOVE ");
                out.extend_from_slice(id.as_bytes());
            }
            Request::Ping => out.extend_from_slice(b"PING"),
            Request::Stats => out.extend_from_slice(b"STATS"),
            Request::Members => out.extend_from_slice(b"MEMBERS"),
            Request::Compact => out.extend_from_slice(b"COMPACT"),
            Request::Quit => out.extend_from_slice(b"QUIT"),
            Request::Hello => out.extend_from_slice(b"CLIENT"),
            Request::Auth { password } => {
                out.extend_from_slice(b"AUTH ");
                out.extend_from_slice(password);
            }
        }
        out.push(b'\n');
        Ok(())
    }

    /// Checks what [`Request::parse`] would refuse, or parse differently, in this request.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Request::Write { key, value } => {
                check_key(key.as_bytes())?;
                check_line_value(value, "value")
            }
            Request::Read { key } | Request::Delete { key } => check_key(key.as_bytes()),
            Request::Remove { id } => parse_slave_id(id.as_bytes()).map(|_| ()),
            Request::Auth { password } if password.is_empty() => {
                Err("wrong number of arguments for 'auth'".to_string())
            }
            Request::Auth { password } => check_line_value(password, "password"),
            Request::Ping
            | Request::Stats
            | Request::Members
            | Request::Compact
            | Request::Quit
            | Request::Hello => Ok(()),
        }
    }
}

/// Checks the last field of a request line: no longer than a value may be, and without `\r`
/// or `\n` (a `\n` ends the line; a `\r` before it is taken as part of the line end).
pub fn check_line_value(value: &[u8], what: &str) -> Result<(), String> {
    check_value(value)?;
    if value.iter().any(|&b| b == b'\n' || b == b'\r') {
        return Err(format!("{what} contains a line break (\\r or \\n), which a request line cannot carry"));
    }
    Ok(())
}

/// Checks a value's length: at most [`MAX_VALUE`] bytes.
pub fn check_value(value: &[u8]) -> Result<(), String> {
    if value.len() > MAX_VALUE {
        return Err(format!("value too long ({} bytes, max {MAX_VALUE})", value.len()));
    }
    Ok(())
}

fn lossy(b: &[u8]) -> String {
    truncate_for_display(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Request {
        Request::parse(line.as_bytes()).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    fn err(line: &[u8]) -> String {
        Request::parse(line).expect_err(&String::from_utf8_lossy(line))
    }

    #[test]
    fn parses_every_command_and_alias() {
        let w = |k: &str, v: &str| Request::Write { key: k.into(), value: v.into() };
        assert_eq!(ok("WRITE k v"), w("k", "v"));
        assert_eq!(ok("set k hello world "), w("k", "hello world "));
        assert_eq!(ok("Put k "), w("k", ""));
        assert_eq!(ok("READ k"), Request::Read { key: "k".into() });
        assert_eq!(ok("get k"), Request::Read { key: "k".into() });
        assert_eq!(ok("read k "), Request::Read { key: "k".into() });
        assert_eq!(ok("DELETE k"), Request::Delete { key: "k".into() });
        assert_eq!(ok("del k"), Request::Delete { key: "k".into() });
        assert_eq!(ok("REMOVE s1"), Request::Remove { id: "s1".into() });
        assert_eq!(ok("ping"), Request::Ping);
        assert_eq!(ok("STATS"), Request::Stats);
        assert_eq!(ok("members"), Request::Members);
        assert_eq!(ok("COMPACT"), Request::Compact);
        assert_eq!(ok("QUIT"), Request::Quit);
        assert_eq!(ok("CLIENT"), Request::Hello);
        assert_eq!(ok("auth pass word"), Request::Auth { password: b"pass word".to_vec() });
    }

    #[test]
    fn rejects_every_malformed_request() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty command"),
            (b" READ k", "line starts with a space; expected a command"),
            (b"FROB k", "unknown command 'FROB'"),
            (b"WRITE", "wrong number of arguments for 'write'"),
            (b"WRITE k", "wrong number of arguments for 'write'"),
            (b"WRITE  v", "empty key"),
            (b"READ", "wrong number of arguments for 'read'"),
            (b"READ a b", "wrong number of arguments for 'read'"),
            (b"get a b", "wrong number of arguments for 'get'"),
            (b"DELETE", "wrong number of arguments for 'delete'"),
            (b"DELETE a b", "wrong number of arguments for 'delete'"),
            (b"PING x", "wrong number of arguments for 'ping'"),
            (b"STATS x", "wrong number of arguments for 'stats'"),
            (b"QUIT now", "wrong number of arguments for 'quit'"),
            (b"REMOVE", "wrong number of arguments for 'remove'"),
            (b"AUTH", "wrong number of arguments for 'auth'"),
            (b"AUTH ", "wrong number of arguments for 'auth'"),
            (b"READ a\x01b", "key contains whitespace or control bytes"),
            (b"WRITE a\tb v", "key contains whitespace or control bytes"),
            (b"READ \xff\xfe", "key is not valid UTF-8"),
            ("READ a\u{a0}b".as_bytes(), "key contains whitespace or control bytes"),
        ];
        for (line, want) in cases {
            assert_eq!(&err(line), want, "{:?}", String::from_utf8_lossy(line));
        }
        let mut long_value = b"WRITE k ".to_vec();
        long_value.resize(long_value.len() + MAX_VALUE + 1, b'v');
        assert_eq!(err(&long_value), format!("value too long ({} bytes, max {MAX_VALUE})", MAX_VALUE + 1));
        long_value.pop();
        assert!(Request::parse(&long_value).is_ok());
        let long = format!("READ {}", "k".repeat(MAX_KEY + 1));
        assert_eq!(err(long.as_bytes()), "key too long (251 bytes, max 250)");
        assert!(Request::parse(format!("READ {}", "k".repeat(MAX_KEY)).as_bytes()).is_ok());
    }

    #[test]
    fn replies_round_trip() {
        let replies = [
            Reply::Ok(7),
            Reply::Done,
            Reply::Value { version: 3, value: b"a b  c".to_vec() },
            Reply::Value { version: 3, value: Vec::new() },
            Reply::NotFound,
            Reply::Pong,
            Reply::Bye,
            Reply::Err(ErrorReply::NotPrimary("127.0.0.1:1".into())),
            Reply::Err(ErrorReply::Unavailable("1 of 3 slaves alive".into())),
            Reply::Err(ErrorReply::Timeout("no quorum in 500 ms".into())),
            Reply::invalid("unknown command 'x'"),
        ];
        for r in replies {
            let wire = r.encode();
            assert!(wire.ends_with(b"\r\n"));
            let line = &wire[..wire.len() - 2];
            assert_eq!(Reply::parse_line(line).unwrap(), r);
        }
    }

    #[test]
    fn encodes_tables() {
        let t = Reply::Table { tag: "STAT", rows: vec![("role".into(), "primary".into())] };
        assert_eq!(t.encode(), b"STAT role primary\r\nEND\r\n");
        assert_eq!(parse_table_row(b"STAT role primary"), Some(("role".into(), "primary".into())));
        assert_eq!(parse_table_row(b"END"), None);
    }

    #[test]
    fn rejects_unknown_replies() {
        assert!(Reply::parse_line(b"HELLO").is_err());
        assert!(Reply::parse_line(b"OK x").is_err());
        assert!(Reply::parse_line(b"VALUE 1").is_err());
    }
}
