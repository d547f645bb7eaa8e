//! Line framing: splitting a byte stream into lines, with a bound on their length.
//!
//! Every dsm connection (client, slave, backup) speaks lines. A line ends with `\n`; one `\r`
//! before it is dropped too, so `nc` and `telnet` both work. [`LineReader`] owns a buffer and
//! hands out whole lines only; it never returns a partial line, and a line longer than its limit
//! is an error (the caller replies `ERR line too long` and closes), so a peer cannot make a
//! server buffer without bound.

use std::io::{self, Read};

pub use crate::limits::{MAX_LINE, MAX_PEER_LINE};

/// How many bytes of a line that was too long [`LineReader::skip_long_line`] keeps, so the
/// caller can tell what it was (a slave reads the request id from them).
pub const LONG_LINE_PREFIX: usize = 64;

/// How many bytes are read from the socket at once. Bigger reads let a pipelining peer deliver
/// many requests per system call.
const READ_CHUNK: usize = 64 * 1024;

/// What can go wrong while reading a line.
#[derive(Debug)]
pub enum LineError {
    /// The line grew past the reader's limit before its `\n` arrived.
    TooLong,
    /// The socket failed (including a read timeout).
    Io(io::Error),
}

impl From<io::Error> for LineError {
    fn from(e: io::Error) -> Self {
        LineError::Io(e)
    }
}

/// Reads `\n`-terminated lines from `R`.
pub struct LineReader<R> {
    inner: R,
    /// Always fully initialised: bytes `start..end` are read and not yet returned, the rest is
    /// room for the next read. Reads go straight into it, so nothing is zeroed per read.
    buf: Vec<u8>,
    /// Start of the unread part of `buf`.
    start: usize,
    /// End of the bytes read into `buf`.
    end: usize,
    /// Where the search for `\n` resumes, so a long line is scanned only once.
    scanned: usize,
    limit: usize,
    /// After [`LineError::TooLong`]: the first bytes of the long line, and whether its `\n`
    /// is still to come.
    long_line: Option<(Vec<u8>, bool)>,
}

impl<R: Read> LineReader<R> {
    /// A reader with the default limit, [`MAX_LINE`].
    pub fn new(inner: R) -> Self {
        Self::with_limit(inner, MAX_LINE)
    }

    /// A reader that refuses lines longer than `limit` bytes.
    pub fn with_limit(inner: R, limit: usize) -> Self {
        LineReader { inner, buf: vec![0; READ_CHUNK], start: 0, end: 0, scanned: 0, limit, long_line: None }
    }

    /// The same reader, with what it has buffered, over `f(inner)`: for a connection whose
    /// first line showed what it is.
    pub fn map_inner<S: Read>(self, f: impl FnOnce(R) -> S) -> LineReader<S> {
        let LineReader { inner, buf, start, end, scanned, limit, long_line } = self;
        LineReader { inner: f(inner), buf, start, end, scanned, limit, long_line }
    }

    /// The source read from.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Changes the limit, for a connection whose first line showed it is a server peer.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// The next line without its terminator, or `None` at a clean end of stream. A final line
    /// without `\n` (the peer hung up mid-line) is dropped: a half request is never acted on.
    pub fn read_line(&mut self) -> Result<Option<&[u8]>, LineError> {
        loop {
            if let Some(pos) = self.buf[self.scanned..self.end].iter().position(|&b| b == b'\n') {
                let end = self.scanned + pos;
                let line_start = self.start;
                self.start = end + 1;
                self.scanned = self.start;
                let mut line_end = end;
                if line_end > line_start && self.buf[line_end - 1] == b'\r' {
                    line_end -= 1;
                }
                if line_end - line_start > self.limit {
                    self.note_long_line(line_start, line_end, false);
                    return Err(LineError::TooLong);
                }
                return Ok(Some(&self.buf[line_start..line_end]));
            }
            self.scanned = self.end;
            // Too long already, unless all that is over the limit is a `\r` whose `\n` is
            // still to come.
            let pending = self.end - self.start;
            let cr_last = pending > 0 && self.buf[self.end - 1] == b'\r';
            if pending > self.limit + 1 || (pending == self.limit + 1 && !cr_last) {
                self.note_long_line(self.start, self.end, true);
                return Err(LineError::TooLong);
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// True when a whole line is already buffered, so a server can keep serving pipelined
    /// requests and flush its replies only when it would otherwise block.
    pub fn has_buffered_line(&self) -> bool {
        self.buf[self.scanned.max(self.start)..self.end].contains(&b'\n')
    }

    /// The next `n` bytes, whatever they are (a RESP bulk string's payload and its `\r\n`,
    /// which may hold line breaks); `None` at end of stream before they all came.
    /// [`LineError::TooLong`] when `n` is over the reader's limit: nothing is buffered for it.
    pub fn read_exact(&mut self, n: usize) -> Result<Option<&[u8]>, LineError> {
        if n > self.limit + 2 {
            return Err(LineError::TooLong);
        }
        while self.end - self.start < n {
            if self.buf.len() - self.start < n {
                // Make room for the whole payload at once rather than a chunk at a time.
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.buf.len() < n {
                    self.buf.resize(n + READ_CHUNK, 0);
                }
            }
            self.scanned = self.start;
            if !self.fill()? {
                return Ok(None);
            }
        }
        let at = self.start;
        self.start += n;
        self.scanned = self.start;
        Ok(Some(&self.buf[at..at + n]))
    }

    /// After [`LineError::TooLong`], discards the rest of the long line (reading up to its `\n`
    /// without buffering it), so the next [`LineReader::read_line`] returns the line after it.
    /// Returns the long line's first [`LONG_LINE_PREFIX`] bytes. A peer that must stay
    /// connected after a message it cannot take (a slave) uses this; a server answering a
    /// client closes the connection instead, so an endless line cannot keep it reading.
    pub fn skip_long_line(&mut self) -> io::Result<Vec<u8>> {
        let Some((prefix, mut pending)) = self.long_line.take() else {
            return Ok(Vec::new());
        };
        while pending {
            if let Some(pos) = self.buf[self.scanned..self.end].iter().position(|&b| b == b'\n') {
                self.start = self.scanned + pos + 1;
                self.scanned = self.start;
                pending = false;
            } else {
                self.start = self.end;
                self.scanned = self.end;
                if !self.fill()? {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed inside a long line"));
                }
            }
        }
        Ok(prefix)
    }

    fn note_long_line(&mut self, line_start: usize, line_end: usize, pending: bool) {
        let shown = (line_end - line_start).min(LONG_LINE_PREFIX);
        self.long_line = Some((self.buf[line_start..line_start + shown].to_vec(), pending));
    }

    /// Reads more bytes; false at end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            self.scanned = 0;
        } else if self.start > 0 {
            // Move the partial line to the front, so the room after it is as large as it gets.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.scanned -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < READ_CHUNK / 2 {
            // A long line: grow (the limit check in `read_line` bounds this).
            self.buf.resize(self.end + READ_CHUNK, 0);
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n > 0);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that returns its input a few bytes at a time, like a slow socket.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(self.0.len()).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn lines(input: &[u8], chunk: usize, limit: usize) -> Vec<Result<Vec<u8>, String>> {
        let mut r = LineReader::with_limit(Trickle(input, chunk), limit);
        let mut out = Vec::new();
        loop {
            match r.read_line() {
                Ok(Some(l)) => out.push(Ok(l.to_vec())),
                Ok(None) => return out,
                Err(LineError::TooLong) => {
                    out.push(Err("too long".into()));
                    return out;
                }
                Err(LineError::Io(e)) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn splits_lf_and_crlf_in_any_chunking() {
        for chunk in [1, 2, 3, 7, 1000] {
            let got = lines(b"a b\r\n\r\nc\nd\r\r\n", chunk, 100);
            let want: Vec<Result<Vec<u8>, String>> =
                vec![Ok(b"a b".to_vec()), Ok(vec![]), Ok(b"c".to_vec()), Ok(b"d\r".to_vec())];
            assert_eq!(got, want, "chunk {chunk}");
        }
    }

    #[test]
    fn drops_a_half_line_at_end_of_stream() {
        assert_eq!(lines(b"one\ntwo", 3, 100), vec![Ok(b"one".to_vec())]);
    }

    #[test]
    fn refuses_lines_over_the_limit() {
        assert_eq!(lines(b"12345\n", 2, 5), vec![Ok(b"12345".to_vec())]);
        assert_eq!(lines(b"123456\n", 2, 5), vec![Err("too long".into())]);
        // Without any newline at all, the reader gives up instead of buffering forever.
        let endless = vec![b'x'; 100];
        assert_eq!(lines(&endless, 7, 10), vec![Err("too long".into())]);
    }

    #[test]
    fn the_limit_excludes_the_terminator() {
        assert_eq!(lines(b"12345\r\n", 1, 5), vec![Ok(b"12345".to_vec())]);
        assert_eq!(lines(b"12345\r\n", 100, 5), vec![Ok(b"12345".to_vec())]);
        assert_eq!(lines(b"123456\r\n", 1, 5), vec![Err("too long".into())]);
        // Refused as soon as the line is over the limit, before its terminator comes.
        assert_eq!(lines(b"123456", 1, 5), vec![Err("too long".into())]);
    }

    #[test]
    fn a_long_line_can_be_skipped_and_reading_goes_on() {
        for chunk in [1, 3, 8, 1000] {
            let mut input = b"ok\n77 ".to_vec();
            input.extend(std::iter::repeat_n(b'x', 100));
            input.extend_from_slice(b"\nnext\n");
            let mut r = LineReader::with_limit(Trickle(&input, chunk), 10);
            assert_eq!(r.read_line().unwrap(), Some(&b"ok"[..]));
            assert!(matches!(r.read_line(), Err(LineError::TooLong)), "chunk {chunk}");
            let prefix = r.skip_long_line().unwrap();
            assert!(prefix.starts_with(b"77 x"), "chunk {chunk}: {prefix:?}");
            assert!(prefix.len() <= LONG_LINE_PREFIX, "chunk {chunk}: {prefix:?}");
            assert_eq!(r.read_line().unwrap(), Some(&b"next"[..]), "chunk {chunk}");
            assert_eq!(r.read_line().unwrap(), None);
        }
        // A stream that ends inside the long line is an error, not a hang.
        let mut r = LineReader::with_limit(Trickle(&[b'y'; 50], 4), 10);
        assert!(matches!(r.read_line(), Err(LineError::TooLong)));
        assert!(r.skip_long_line().is_err());
    }

    #[test]
    fn reports_buffered_lines() {
        let mut r = LineReader::new(&b"a\nb\nc"[..]);
        assert_eq!(r.read_line().unwrap(), Some(&b"a"[..]));
        assert!(r.has_buffered_line());
        assert_eq!(r.read_line().unwrap(), Some(&b"b"[..]));
        assert!(!r.has_buffered_line());
    }

    #[test]
    fn long_lines_grow_the_buffer_across_many_reads() {
        let mut input = Vec::new();
        for len in [10, READ_CHUNK * 3 + 5, 1, READ_CHUNK - 1, READ_CHUNK, 0, 7] {
            input.extend(std::iter::repeat_n(b'x', len));
            input.push(b'\n');
        }
        for chunk in [1000, 4096, READ_CHUNK, usize::MAX] {
            let got = lines(&input, chunk, MAX_LINE);
            let lens: Vec<usize> = got.iter().map(|l| l.as_ref().unwrap().len()).collect();
            assert_eq!(lens, [10, READ_CHUNK * 3 + 5, 1, READ_CHUNK - 1, READ_CHUNK, 0, 7], "chunk {chunk}");
        }
    }
}
