//! Byte escaping for values written on one line: the write-ahead log and the slave protocol.
//!
//! Values are arbitrary bytes except `\n` (a client line cannot carry one), but a log line and a
//! slave message must stay one line and must stay readable with `tail -f`. The escaping is:
//!
//! ```text
//! \      ->  \\
//! LF     ->  \n
//! CR     ->  \r
//! TAB    ->  \t
//! other bytes below 0x20, and 0x7f  ->  \xHH (two lower-case hex digits)
//! everything else (including bytes >= 0x80) is copied as is
//! ```
//!
//! An escaped value therefore never contains a control byte, so it can end a line safely, and
//! spaces inside it are kept literally (the value is always the last field of its line).

/// Appends the escaped form of `value` to `out`. Runs of bytes that need no escape (all of a
/// typical value) are copied whole.
pub fn escape_into(value: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(value.len());
    let mut plain = 0;
    for (i, &b) in value.iter().enumerate() {
        if b >= 0x20 && b != 0x7f && b != b'\\' {
            continue;
        }
        if i > plain {
            out.extend_from_slice(&value[plain..i]);
        }
        plain = i + 1;
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                out.extend_from_slice(b"\\x");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
        }
    }
    out.extend_from_slice(&value[plain..]);
}

/// Appends `n` in decimal: what `write!(out, "{n}")` does, without the formatting machinery
/// (log lines and slave messages are mostly numbers, on the hot path).
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Returns the escaped form of `value`.
pub fn escape(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    escape_into(value, &mut out);
    out
}

/// Reverses [`escape`]. Returns `None` for a malformed escape or a raw control byte, so a
/// damaged line is reported instead of being decoded into a wrong value.
pub fn unescape(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        // A run of bytes that stand for themselves (all of a typical value) is copied whole. An
        // index loop rather than an iterator adapter: a debug build (the tests) runs it at a
        // speed close to the byte-by-byte loop it replaces, not several times slower.
        let plain = i;
        while i < text.len() && text[i] >= 0x20 && text[i] != 0x7f && text[i] != b'\\' {
            i += 1;
        }
        if i > plain {
            out.extend_from_slice(&text[plain..i]);
        }
        if i == text.len() {
            break;
        }
        if text[i] != b'\\' {
            // A raw control byte.
            return None;
        }
        match *text.get(i + 1)? {
            b'\\' => out.push(b'\\'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'x' => {
                let hi = hex_digit(*text.get(i + 2)?)?;
                let lo = hex_digit(*text.get(i + 3)?)?;
                out.push(hi << 4 | lo);
                i += 2;
            }
            _ => return None,
        }
        i += 2;
    }
    Some(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_byte() {
        let all: Vec<u8> = (0..=255u8).collect();
        let escaped = escape(&all);
        assert!(!escaped.iter().any(|&b| b < 0x20 || b == 0x7f));
        assert_eq!(unescape(&escaped).unwrap(), all);
    }

    #[test]
    fn round_trips_mixed_runs() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        // Plain runs of every length between escapes, escapes first and last.
        let pick = [b'a', b' ', 0xc3, b'\\', b'\n', b'\r', b'\t', 0x00, 0x1f, 0x7f, b'x', b'0'];
        for _ in 0..2_000 {
            let len = rng.gen_range(0..40);
            let value: Vec<u8> = (0..len).map(|_| pick[rng.gen_range(0..pick.len())]).collect();
            assert_eq!(unescape(&escape(&value)).as_deref(), Some(&value[..]), "{value:?}");
        }
    }

    #[test]
    fn keeps_spaces_and_utf8_readable() {
        assert_eq!(escape("héllo wörld".as_bytes()), "héllo wörld".as_bytes());
        assert_eq!(escape(b"a\\b\nc"), b"a\\\\b\\nc");
    }

    #[test]
    fn rejects_malformed_escapes() {
        for bad in [&b"\\"[..], b"\\q", b"\\x1", b"\\xzz", b"a\nb", b"\x01", b"ab\\", b"ab\x7f", b"ab\\xa"] {
            assert_eq!(unescape(bad), None, "{bad:?}");
        }
    }
}
