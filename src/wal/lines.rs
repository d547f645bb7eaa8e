//! Reading a log file line by line in large chunks, for replay and for following.

use std::fs::File;
use std::io::{self, Read};

use super::READ_BUFFER;
use crate::Result;

/// What [`read_lines`] found.
pub(super) struct Scanned {
    /// Bytes in complete lines, `\n` included, from the starting offset.
    pub(super) complete: u64,
    /// Bytes after the last `\n`: a line still being written, or a torn one.
    pub(super) partial: u64,
}

/// Reads with `read` until it returns 0, in [`READ_BUFFER`]-sized chunks, and calls `on_line`
/// with each complete line (without its `\n`), its 1-based number counted from this call, and
/// its byte offset (counted from `offset`). Stops at the first error.
pub(super) fn read_lines(
    buf: &mut Vec<u8>,
    mut read: impl FnMut(&mut [u8]) -> Result<usize>,
    offset: u64,
    mut on_line: impl FnMut(&[u8], u64, u64) -> Result<()>,
) -> Result<Scanned> {
    if buf.len() < READ_BUFFER {
        buf.resize(READ_BUFFER, 0);
    }
    let mut line_start = offset;
    let mut number = 0u64;
    // Unparsed bytes are buf[start..end]; the search for the next '\n' resumes at `searched`
    // so a line longer than one read is scanned only once.
    let (mut start, mut end, mut searched) = (0usize, 0usize, 0usize);
    loop {
        while let Some(i) = buf[searched..end].iter().position(|&b| b == b'\n') {
            let line_end = searched + i;
            number += 1;
            on_line(&buf[start..line_end], number, line_start)?;
            line_start += (line_end + 1 - start) as u64;
            start = line_end + 1;
            searched = start;
        }
        searched = end;
        if start > 0 {
            buf.copy_within(start..end, 0);
            end -= start;
            searched -= start;
            start = 0;
        }
        if end == buf.len() {
            let doubled = buf.len() * 2;
            buf.resize(doubled, 0);
        }
        let n = read(&mut buf[end..])?;
        if n == 0 {
            return Ok(Scanned { complete: line_start - offset, partial: end as u64 });
        }
        end += n;
    }
}

/// `read` that retries when a signal interrupts it.
pub(super) fn read_retrying(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}
