//! The one tokenizer and number parser of every dsm text format: the client protocol, the slave
//! protocol, the master-to-master stream and the write-ahead log. Bytes only, no sockets.
//!
//! Every format separates its fields with single spaces and ends its last field at the end of
//! the line, so that field may hold spaces (a value, a password). Numbers are written one way
//! only, by [`crate::escape::push_u64`], and read back one way only, by [`number`]: decimal
//! digits, no sign, no leading zero, no overflow.

use crate::protocol::truncate_for_display;

/// Splits at the first space: the word before it, and everything after that single space
/// (`None` when there is no space).
pub fn split_word(line: &[u8]) -> (&[u8], Option<&[u8]>) {
    match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    }
}

/// The space-separated fields of `line`, empty ones skipped.
pub fn fields(line: &[u8]) -> Vec<&[u8]> {
    line.split(|&b| b == b' ').filter(|f| !f.is_empty()).collect()
}

/// Parses a decimal `u64` as dsm writes one: digits only, no sign, no leading zero (`0` itself
/// is `0`), at most `u64::MAX`.
pub fn number(field: &[u8]) -> Result<u64, String> {
    let bad = || {
        format!(
            "expected a decimal number without sign or leading zeros, got '{}'",
            truncate_for_display(field)
        )
    };
    if field.is_empty() || (field.len() > 1 && field[0] == b'0') {
        return Err(bad());
    }
    let mut n = 0u64;
    for &b in field {
        if !b.is_ascii_digit() {
            return Err(bad());
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or_else(|| format!("number too large: '{}'", truncate_for_display(field)))?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_only_as_they_are_written() {
        for n in [0, 1, 9, 10, 12345, u64::MAX] {
            let mut text = Vec::new();
            crate::escape::push_u64(&mut text, n);
            assert_eq!(number(&text), Ok(n));
        }
        for bad in [
            &b""[..],
            b"+5",
            b"-1",
            b"05",
            b"00",
            b" 5",
            b"5 ",
            b"1e3",
            b"0x10",
            b"\xff",
            b"18446744073709551616",
        ] {
            assert!(number(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn words_and_fields() {
        assert_eq!(split_word(b"SET k a b "), (&b"SET"[..], Some(&b"k a b "[..])));
        assert_eq!(split_word(b"PING"), (&b"PING"[..], None));
        assert_eq!(split_word(b"AUTH "), (&b"AUTH"[..], Some(&b""[..])));
        assert_eq!(fields(b" a  b c "), [&b"a"[..], b"b", b"c"]);
        assert!(fields(b"").is_empty());
    }
}
