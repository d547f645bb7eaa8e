//! Every size limit of dsm, in one place, so the limits of every hop agree.
//!
//! A write travels over several hops, and each has a limit on its line: the client's request
//! line, the slave message that carries it (its value escaped), a resync or `SCAN` line, the
//! log stream to the backup, and the log file. The client-facing limits ([`MAX_KEY`],
//! [`MAX_VALUE`]) are checked at the door, when a request is parsed; every other limit is
//! derived from them here, so anything the master accepts always fits every message that
//! carries it. The compile-time checks at the bottom of this file keep it that way.
//!
//! | limit | bytes | where |
//! |---|---|---|
//! | [`MAX_KEY`] | 250 | a key, everywhere |
//! | [`MAX_ID`] | 64 | a slave id |
//! | [`MAX_VALUE`] | 1,048,576 (1 MiB) | a value, as the client sends it (unescaped) |
//! | [`MAX_LINE`] | 1,049,600 (1 MiB + 1 KiB) | a line from a client, terminator excluded |
//! | [`MAX_PEER_LINE`] | 4,198,400 (4 MiB + 4 KiB) | a line between master, slaves and backup |

/// The longest key, in bytes (as memcached's).
pub const MAX_KEY: usize = 250;

/// The longest slave id, in bytes.
pub const MAX_ID: usize = 64;

/// The longest value, in bytes: 1 MiB. A longer value is refused at the door with
/// `ERR value too long (N bytes, max 1048576)`.
pub const MAX_VALUE: usize = 1 << 20;

/// The longest request line a client may send, terminator excluded: room for the longest
/// command word, the longest key and the longest value. A longer line is answered
/// `ERR line too long` and the connection is closed, because the rest of the stream can no
/// longer be trusted.
pub const MAX_LINE: usize = MAX_VALUE + 1024;

/// The longest line between servers (slave messages, `SCAN` items, the log stream), terminator
/// excluded. Escaping writes a byte as at most four (`\xHH`), so a message carrying the longest
/// value escaped, with its ids, stamps and key in front, always fits.
pub const MAX_PEER_LINE: usize = 4 * MAX_VALUE + 4096;

/// The most bytes one escaped byte takes (`\x01` is four).
pub const ESCAPE_GROWTH: usize = 4;

/// Room in a server line for everything but the value: four 20-digit numbers, a command word,
/// a key and the spaces between them.
const PEER_HEADER: usize = 4 * 21 + 16 + MAX_KEY + 8;

// The hops agree: a WRITE of the longest key and value fits a client line, and its escaped
// form with its header fits every server line.
const _: () = assert!(b"WRITE ".len() + MAX_KEY + 1 + MAX_VALUE <= MAX_LINE);
const _: () = assert!(PEER_HEADER + ESCAPE_GROWTH * MAX_VALUE <= MAX_PEER_LINE);
// A reply carrying the longest value (`VALUE <version> <value>`) fits the client's reader.
const _: () = assert!(b"VALUE ".len() + 20 + 1 + MAX_VALUE <= MAX_LINE);

/// The most elements in a RESP request: a command and 4,096 key-value pairs (an `MSET`), or
/// 8,192 keys (`MGET`, `DEL`, `EXISTS`). A longer array is answered `-ERR Protocol error` and
/// the connection closed (Redis allows more, and most clients never come near this).
pub const MAX_RESP_ARGS: usize = 1 + 2 * 4096;

/// The longest RESP bulk string: a value's limit, [`MAX_VALUE`] (Redis allows 512 MiB).
pub const MAX_RESP_BULK: usize = MAX_VALUE;

/// The most payload bytes in one RESP request, all its bulk strings together: bounds what one
/// connection makes the master hold before a single byte of it is executed.
pub const MAX_RESP_FRAME: usize = 8 * MAX_VALUE;

// A RESP bulk and its `\r\n` fit a client's reader.
const _: () = assert!(MAX_RESP_BULK + 2 <= MAX_LINE + 2);

/// The most bytes of values one RESP reply carries (an `MGET` of many big values): a longer
/// one is refused with `-ERR reply too large`, so one request cannot make the master build a
/// reply of gigabytes.
pub const MAX_RESP_REPLY: usize = 8 * MAX_VALUE;

/// Before `AUTH` succeeds (with `--requirepass`): the most elements in a RESP request, and the
/// longest bulk string, as Redis allows an unauthenticated client, so that connections
/// without the password cannot make the master hold much.
pub const MAX_UNAUTHENTICATED_ARGS: usize = 10;

/// See [`MAX_UNAUTHENTICATED_ARGS`].
pub const MAX_UNAUTHENTICATED_BULK: usize = 16 * 1024;
