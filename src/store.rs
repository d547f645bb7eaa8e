//! The slave's store: versioned values in memory.
//!
//! Every entry carries the [`Stamp`] of the write that produced it; a write with an older or
//! equal stamp never replaces a newer one, so re-sent, re-ordered or repaired writes are
//! harmless. Deletes are stored as tombstones with their stamp, so an old copy can never come
//! back through repair.

use crate::keymap::{self, KeyMap};
use crate::peer::Stamp;

/// One stored entry: a value, or a tombstone (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stamp of the write that produced the entry.
    pub stamp: Stamp,
    /// The value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
}

/// The versioned map.
#[derive(Debug, Default)]
pub struct Store {
    /// Grows a little at a time (see [`KeyMap`]).
    map: KeyMap<Entry>,
    max_seq: u64,
    /// Entries holding a value (not tombstones).
    live: usize,
}

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store::default()
    }

    /// Applies a write (a value or a tombstone) unless a newer or equal stamp is stored.
    /// Returns the stamp stored afterwards.
    pub fn apply(&mut self, key: &str, stamp: Stamp, value: Option<Vec<u8>>) -> Stamp {
        self.max_seq = self.max_seq.max(stamp.seq);
        match self.map.entry(key) {
            keymap::Entry::Occupied(e) if e.stamp >= stamp => e.stamp,
            keymap::Entry::Occupied(e) => {
                self.live = self.live + usize::from(value.is_some()) - usize::from(e.value.is_some());
                *e = Entry { stamp, value };
                stamp
            }
            keymap::Entry::Vacant(slot) => {
                self.live += usize::from(value.is_some());
                slot.insert(Entry { stamp, value });
                stamp
            }
        }
    }

    /// The entry stored under `key`.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.map.get(key)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.map.iter()
    }

    /// The number of keys holding a value (tombstones excluded).
    pub fn live(&self) -> usize {
        self.live
    }

    /// The highest sequence number ever applied.
    pub fn max_seq(&self) -> u64 {
        self.max_seq
    }

    /// The number of keys (tombstones included).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_lets_an_older_write_win() {
        let mut s = Store::new();
        let (s1, s2, s3) = (Stamp::new(1, 1), Stamp::new(1, 2), Stamp::new(2, 1));
        assert_eq!(s.apply("k", s2, Some(b"two".to_vec())), s2);
        assert_eq!(s.apply("k", s1, Some(b"one".to_vec())), s2);
        assert_eq!(s.get("k").unwrap().value.as_deref(), Some(&b"two"[..]));
        // A newer epoch wins even with a lower sequence number.
        assert_eq!(s.apply("k", s3, None), s3);
        assert_eq!(s.apply("k", s2, Some(b"two".to_vec())), s3);
        assert_eq!(s.get("k").unwrap().value, None);
        assert_eq!(s.max_seq(), 2);
        assert_eq!((s.len(), s.live()), (1, 0), "a tombstone is kept but is not a live key");
    }

    #[test]
    fn equal_stamps_are_idempotent() {
        let mut s = Store::new();
        let st = Stamp::new(1, 7);
        s.apply("k", st, Some(b"v".to_vec()));
        assert_eq!(s.apply("k", st, Some(b"other".to_vec())), st);
        assert_eq!(s.get("k").unwrap().value.as_deref(), Some(&b"v"[..]));
    }
}
