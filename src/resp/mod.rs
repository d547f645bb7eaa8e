//! RESP2, the Redis serialization protocol, beside the line protocol on the same port: frames
//! (reading a request, writing a reply) here, the command table in [`command`]. No sockets.
//!
//! A client request is an array of bulk strings; the first is the command name:
//!
//! ```text
//! *3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n     SET k hello
//! ```
//!
//! The master tells the framings apart by the first byte of each request, as Redis does: `*`
//! starts a RESP array, anything else is a line of the line protocol. So `nc` users and Redis
//! clients share the port, and a connection may even mix them (each reply uses the framing of
//! its request).
//!
//! Replies are RESP2 values: `+simple`, `-ERR error`, `:integer`, `$len\r\nbulk`, `$-1` (null)
//! and `*len` arrays. RESP3 is not spoken: `HELLO 3` is refused with `-NOPROTO`, which makes
//! RESP3-first clients fall back to RESP2.
//!
//! Limits ([`crate::limits`]): at most [`MAX_RESP_ARGS`] elements in a request, each bulk at
//! most [`MAX_RESP_BULK`] bytes, all of them at most [`MAX_RESP_FRAME`] bytes together. A
//! request over a limit, or one that is not well formed, is answered `-ERR Protocol error: ...`
//! and the connection is closed, as Redis does: once the framing is lost, nothing after it can
//! be trusted.

pub mod command;

use std::io::Read;

use crate::framing::{LineError, LineReader};
pub use crate::limits::{
    MAX_RESP_ARGS, MAX_RESP_BULK, MAX_RESP_FRAME, MAX_RESP_REPLY, MAX_UNAUTHENTICATED_ARGS,
    MAX_UNAUTHENTICATED_BULK,
};
use crate::wire::{number, truncate_for_display};

/// Why a RESP request could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The request is malformed or over a limit: answer `-ERR Protocol error: <why>` and close.
    Protocol(String),
    /// The stream ended inside the request, or the socket failed: close without answering.
    Closed,
}

impl From<LineError> for FrameError {
    fn from(e: LineError) -> Self {
        match e {
            LineError::TooLong => FrameError::Protocol("too big inline request".into()),
            LineError::Io(_) => FrameError::Closed,
        }
    }
}

/// The element count of a request whose first line, `header` (terminator removed), starts
/// with `*`. An empty request (`*0`, or the null array `*-1`) counts 0: Redis skips it without
/// a reply. `authenticated`: false before `AUTH` under `--requirepass`, which allows only
/// [`MAX_UNAUTHENTICATED_ARGS`] elements.
pub fn request_len(header: &[u8], authenticated: bool) -> Result<u64, FrameError> {
    let count = match header.get(1..).unwrap_or_default() {
        b"-1" => 0,
        digits => number(digits).map_err(|_| FrameError::Protocol("invalid multibulk length".into()))?,
    };
    if !authenticated && count > MAX_UNAUTHENTICATED_ARGS as u64 {
        return Err(FrameError::Protocol("unauthenticated multibulk length".into()));
    }
    if count > MAX_RESP_ARGS as u64 {
        return Err(FrameError::Protocol(format!(
            "too many arguments in a request ({count}, max {MAX_RESP_ARGS})"
        )));
    }
    Ok(count)
}

/// Reads a request's `count` bulk strings (its header was read by [`request_len`]); before
/// `AUTH` (`authenticated` false) each at most [`MAX_UNAUTHENTICATED_BULK`] bytes.
pub fn read_args<R: Read>(
    count: u64,
    reader: &mut LineReader<R>,
    authenticated: bool,
) -> Result<Vec<Vec<u8>>, FrameError> {
    let mut args = Vec::with_capacity(count as usize);
    let mut total = 0usize;
    for _ in 0..count {
        let line = reader.read_line()?.ok_or(FrameError::Closed)?;
        let Some(digits) = line.strip_prefix(b"$") else {
            return Err(FrameError::Protocol(format!(
                "expected '$', got '{}'",
                truncate_for_display(&line[..line.len().min(1)])
            )));
        };
        let len = number(digits).map_err(|_| FrameError::Protocol("invalid bulk length".into()))?;
        if !authenticated && len > MAX_UNAUTHENTICATED_BULK as u64 {
            return Err(FrameError::Protocol("unauthenticated bulk length".into()));
        }
        if len > MAX_RESP_BULK as u64 {
            return Err(FrameError::Protocol(format!(
                "invalid bulk length ({len} bytes, max {MAX_RESP_BULK})"
            )));
        }
        let len = len as usize;
        total += len;
        if total > MAX_RESP_FRAME {
            return Err(FrameError::Protocol(format!("request too large (max {MAX_RESP_FRAME} bytes)")));
        }
        let bulk = reader.read_exact(len + 2)?.ok_or(FrameError::Closed)?;
        if &bulk[len..] != b"\r\n" {
            return Err(FrameError::Protocol(
                "a bulk string is not followed by \\r\\n (is its length right?)".into(),
            ));
        }
        args.push(bulk[..len].to_vec());
    }
    Ok(args)
}

/// Appends a simple string: `+text\r\n`. Line breaks in `text` become spaces.
pub fn push_simple(out: &mut Vec<u8>, text: &str) {
    out.push(b'+');
    push_line_text(out, text.as_bytes());
}

/// Appends an error: `-CODE message\r\n`. `text` starts with the code (`ERR`, `READONLY`, ...).
pub fn push_error(out: &mut Vec<u8>, text: &str) {
    out.push(b'-');
    push_line_text(out, text.as_bytes());
}

/// Appends an integer: `:n\r\n`.
pub fn push_int(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    push_i64(out, n);
    out.extend_from_slice(b"\r\n");
}

/// Appends a bulk string: `$len\r\nbytes\r\n`.
pub fn push_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'$');
    push_i64(out, bytes.len() as i64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// Appends the null bulk string, `$-1\r\n` (a missing key).
pub fn push_null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

/// Appends an array header, `*len\r\n`; the caller appends its `len` elements.
pub fn push_array(out: &mut Vec<u8>, len: usize) {
    out.push(b'*');
    push_i64(out, len as i64);
    out.extend_from_slice(b"\r\n");
}

fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    crate::escape::push_u64(out, n.unsigned_abs());
}

fn push_line_text(out: &mut Vec<u8>, text: &[u8]) {
    out.extend(text.iter().map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

/// Encodes a request as a RESP array of bulk strings (what a Redis client sends).
pub fn encode_request(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    push_array(&mut out, args.len());
    for arg in args {
        push_bulk(&mut out, arg);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that returns its input a few bytes at a time, like a slow socket.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(self.0.len()).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// Every request in `input`, read as the master does (a line, then the array's rest).
    fn requests(input: &[u8], chunk: usize) -> Vec<Result<Option<Vec<Vec<u8>>>, String>> {
        let mut reader = LineReader::new(Trickle(input, chunk));
        let mut out = Vec::new();
        loop {
            let header = match reader.read_line() {
                Ok(Some(line)) => line.to_vec(),
                Ok(None) => return out,
                Err(e) => panic!("{e:?}"),
            };
            match request_len(&header, true).and_then(|n| read_args(n, &mut reader, true)) {
                Ok(r) => out.push(Ok((!r.is_empty()).then_some(r))),
                Err(FrameError::Protocol(why)) => {
                    out.push(Err(why));
                    return out;
                }
                Err(FrameError::Closed) => {
                    out.push(Err("closed".into()));
                    return out;
                }
            }
        }
    }

    fn args(list: &[&str]) -> Option<Vec<Vec<u8>>> {
        Some(list.iter().map(|a| a.as_bytes().to_vec()).collect())
    }

    #[test]
    fn reads_requests_in_any_chunking_with_binary_payloads() {
        let mut input = encode_request(&[b"SET", b"k", b"a\r\nb\nc"]);
        input.extend(encode_request(&[b"GET", b"k"]));
        input.extend_from_slice(b"*0\r\n*-1\r\n");
        input.extend(encode_request(&[b"SET", b"e", b""]));
        for chunk in [1, 2, 5, 1000] {
            assert_eq!(
                requests(&input, chunk),
                vec![
                    Ok(args(&["SET", "k", "a\r\nb\nc"])),
                    Ok(args(&["GET", "k"])),
                    Ok(None),
                    Ok(None),
                    Ok(args(&["SET", "e", ""])),
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn malformed_requests_are_protocol_errors_or_a_close() {
        let bad = |input: &[u8]| requests(input, 3).pop().unwrap().unwrap_err();
        assert_eq!(bad(b"*x\r\n"), "invalid multibulk length");
        assert_eq!(bad(b"*-2\r\n"), "invalid multibulk length");
        assert!(bad(b"*1000000\r\n").starts_with("too many arguments"));
        assert_eq!(bad(b"*1\r\n:5\r\n"), "expected '$', got ':'");
        assert_eq!(bad(b"*1\r\n$-1\r\n"), "invalid bulk length");
        assert!(bad(b"*1\r\n$2000000\r\n").starts_with("invalid bulk length"));
        // A length shorter or longer than the payload.
        assert!(bad(b"*1\r\n$2\r\nabc\r\n").contains("not followed by"));
        assert!(bad(b"*1\r\n$4\r\nabc\r\nxx").contains("not followed by"));
        // Cut in the middle: the stream ends, nothing is executed.
        assert_eq!(bad(b"*2\r\n$3\r\nGET\r\n$1\r"), "closed");
        assert_eq!(bad(b"*2\r\n$3\r\nGET\r\n"), "closed");
        // Many big bulks: refused when their sum passes the frame limit.
        let mut big = b"*9\r\n".to_vec();
        for _ in 0..9 {
            big.extend_from_slice(format!("${MAX_RESP_BULK}\r\n").as_bytes());
            big.extend(std::iter::repeat_n(b'x', MAX_RESP_BULK));
            big.extend_from_slice(b"\r\n");
        }
        assert!(bad(&big).starts_with("request too large"));
    }

    #[test]
    fn before_auth_only_small_requests_are_read() {
        let mut reader = LineReader::new(&b"$3\r\nGET\r\n"[..]);
        assert!(request_len(b"*10", false).is_ok());
        assert!(
            matches!(request_len(b"*11", false), Err(FrameError::Protocol(w)) if w == "unauthenticated multibulk length")
        );
        assert_eq!(read_args(1, &mut reader, false).unwrap(), [b"GET".to_vec()]);
        let big = format!("${}\r\n", MAX_UNAUTHENTICATED_BULK + 1);
        let mut reader = LineReader::new(big.as_bytes());
        assert!(
            matches!(read_args(1, &mut reader, false), Err(FrameError::Protocol(w)) if w == "unauthenticated bulk length")
        );
    }

    #[test]
    fn replies_are_resp2() {
        let mut out = Vec::new();
        push_simple(&mut out, "OK");
        push_error(&mut out, "ERR bad\r\nthing");
        push_int(&mut out, -3);
        push_bulk(&mut out, b"a\r\nb");
        push_null(&mut out);
        push_array(&mut out, 2);
        assert_eq!(out, b"+OK\r\n-ERR bad  thing\r\n:-3\r\n$4\r\na\r\nb\r\n$-1\r\n*2\r\n");
    }
}
