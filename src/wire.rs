//! The one tokenizer and number parser of every dsm text format: the client protocol, the slave
//! protocol, the master-to-master stream and the write-ahead log. Bytes only, no sockets.
//!
//! Every format separates its fields with single spaces and ends its last field at the end of
//! the line, so that field may hold spaces (a value, a password). Numbers are written one way
//! only, by [`crate::escape::push_u64`], and read back one way only, by [`number`]: decimal
//! digits, no sign, no leading zero, no overflow. The checks of the two names every format
//! carries, keys and slave ids, live here too, so no protocol module needs another.

use crate::limits::{MAX_ID, MAX_KEY};

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

/// Checks a key: 1..=MAX_KEY bytes of UTF-8, no whitespace or control bytes.
pub fn parse_key(key: &[u8]) -> Result<String, String> {
    check_key(key)?;
    // check_key has seen valid UTF-8; this checks again, without the lossy path's iterator.
    String::from_utf8(key.to_vec()).map_err(|_| "the key is not UTF-8".to_string())
}

/// [`parse_key`] without making a `String` of the key.
pub fn check_key(key: &[u8]) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty key".to_string());
    }
    if key.len() > MAX_KEY {
        return Err(format!("key too long ({} bytes, max {MAX_KEY})", key.len()));
    }
    if key.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err("key contains whitespace or control bytes".to_string());
    }
    // Printable ASCII, the usual key: nothing more to check.
    if key.is_ascii() {
        return Ok(());
    }
    match std::str::from_utf8(key) {
        Ok(k) if k.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            Err("key contains whitespace or control bytes".to_string())
        }
        Ok(_) => Ok(()),
        Err(_) => Err("key is not valid UTF-8".to_string()),
    }
}

/// Checks a slave id: 1..=MAX_ID bytes of letters, digits, `-`, `_`, `.`, `:`.
pub fn parse_slave_id(id: &[u8]) -> Result<String, String> {
    if id.is_empty() || id.len() > MAX_ID {
        return Err(format!("slave id must be 1 to {MAX_ID} bytes"));
    }
    if !id.iter().all(|&b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) {
        return Err(format!(
            "invalid slave id '{}': use letters, digits, '-', '_', '.', ':'",
            truncate_for_display(id)
        ));
    }
    Ok(String::from_utf8_lossy(id).into_owned())
}

/// A short, printable rendering of untrusted bytes for error messages and logs.
pub fn truncate_for_display(b: &[u8]) -> String {
    const SHOWN: usize = 40;
    let shown = &b[..b.len().min(SHOWN)];
    let mut s: String =
        String::from_utf8_lossy(shown).chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    if b.len() > SHOWN {
        s.push_str("...");
    }
    s
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
