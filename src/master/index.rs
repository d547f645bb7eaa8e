//! The master's index: for every key, the newest logged write and the newest acknowledged
//! (committed) write, with their stamps and values.
//!
//! The master keeps the values too (they are in its log anyway): that is what lets it answer
//! reads itself, resync a slave that lost its memory, compact its log from memory, and check
//! that a slave's answer is the acknowledged version. Reads never return anything but the
//! committed write, so a write still in flight is invisible until it is acknowledged, and a
//! read can never see a value that a later read does not.

use std::sync::Arc;

use crate::keymap::{Entry, KeyMap};
use crate::peer::Stamp;

/// A value, or a tombstone (`None`).
pub type Value = Option<Arc<[u8]>>;

/// What the master knows of one key.
#[derive(Debug, Clone)]
pub struct KeyState {
    /// The newest write in the log (it may not be acknowledged yet).
    pub latest: (Stamp, Value),
    /// The newest acknowledged write; reads return this.
    pub committed: (Stamp, Value),
}

/// Key to state.
#[derive(Debug, Default)]
pub struct Index {
    /// Grows a little at a time (see [`KeyMap`]).
    map: KeyMap<KeyState>,
    /// Keys whose committed write is a value (not a tombstone, not never-committed).
    live: usize,
    /// Writes logged (or replayed) over an older write of the same key: the records a
    /// compaction of the log would drop, counted since start.
    superseded: u64,
}

impl Index {
    /// An empty index.
    pub fn new() -> Index {
        Index::default()
    }

    /// Applies a write read back from the log at start: it is the truth, so it is committed,
    /// but nobody is known to hold it yet.
    pub fn replay(&mut self, key: String, stamp: Stamp, value: Value) {
        self.live += usize::from(value.is_some());
        let entry = (stamp, value);
        // One lookup whether the key is known or new (a key of up to 24 bytes is stored
        // without an allocation either way).
        match self.map.entry(&key) {
            Entry::Occupied(s) => {
                self.live -= usize::from(s.committed.1.is_some());
                *s = KeyState { latest: entry.clone(), committed: entry };
                self.superseded += 1;
            }
            Entry::Vacant(slot) => {
                slot.insert(KeyState { latest: entry.clone(), committed: entry });
            }
        }
    }

    /// Records a write that was just logged.
    pub fn logged(&mut self, key: &str, stamp: Stamp, value: Value) {
        match self.map.entry(key) {
            Entry::Occupied(s) if s.latest.0 < stamp => {
                s.latest = (stamp, value);
                self.superseded += 1;
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(slot) => {
                let none = (Stamp::default(), None);
                slot.insert(KeyState { latest: (stamp, value), committed: none });
            }
        }
    }

    /// Records that a majority acknowledged `stamp`. Returns true if this made `stamp` the
    /// committed write (an older write acknowledged late never rolls a newer one back).
    pub fn commit(&mut self, key: &str, stamp: Stamp, value: Value) -> bool {
        let Index { map, live, .. } = self;
        match map.get_mut(key) {
            Some(s) if s.committed.0 < stamp => {
                *live = *live + usize::from(value.is_some()) - usize::from(s.committed.1.is_some());
                s.committed = (stamp, value);
                true
            }
            _ => false,
        }
    }

    /// The state of `key`.
    pub fn get(&self, key: &str) -> Option<&KeyState> {
        self.map.get(key)
    }

    /// Writes logged over an older write of the same key since start (see [`Index`]).
    pub fn superseded(&self) -> u64 {
        self.superseded
    }

    /// Number of keys with a committed value (tombstones and never-committed keys excluded).
    pub fn live_keys(&self) -> usize {
        self.live
    }

    /// Keys for which `pred` holds, with their state (for a resync).
    pub fn select(&self, mut pred: impl FnMut(&KeyState) -> bool) -> Vec<(String, KeyState)> {
        self.map.iter().filter(|(_, s)| pred(s)).map(|(k, s)| (k.to_string(), s.clone())).collect()
    }

    /// Whether a write stamped `stamp` is newer than everything logged for `key` (a write a
    /// new master recovers from the slaves).
    pub fn is_newer(&self, key: &str, stamp: Stamp) -> bool {
        self.map.get(key).is_none_or(|s| s.latest.0 < stamp)
    }

    /// Every key's newest write with a seq at most `upto`, sorted by seq: the records of a
    /// compacted log. A key whose newest write is above `upto` is left out; that write is in
    /// the part of the log the compaction keeps as it is.
    pub fn newest_upto(&self, upto: u64) -> Vec<(u64, String, Value)> {
        let mut all: Vec<(u64, String, Value)> = self
            .map
            .iter()
            .filter(|(_, s)| s.latest.0.seq <= upto)
            .map(|(k, s)| (s.latest.0.seq, k.to_string(), s.latest.1.clone()))
            .collect();
        all.sort_unstable_by_key(|e| e.0);
        all
    }

    /// Number of keys (including tombstones).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when the index is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Value {
        Some(Arc::from(s.as_bytes()))
    }

    #[test]
    fn reads_see_only_committed_writes_in_stamp_order() {
        let mut ix = Index::new();
        let (s1, s2) = (Stamp::new(1, 1), Stamp::new(1, 2));
        ix.logged("k", s1, v("a"));
        ix.logged("k", s2, v("b"));
        assert_eq!(ix.get("k").unwrap().committed.0, Stamp::default());
        // The later write is acknowledged first; the earlier one must not roll it back.
        assert!(ix.commit("k", s2, v("b")));
        assert!(!ix.commit("k", s1, v("a")));
        let s = ix.get("k").unwrap();
        assert_eq!(s.committed.0, s2);
        assert_eq!(s.committed.1.as_deref(), Some(&b"b"[..]));
    }

    #[test]
    fn a_compaction_snapshot_holds_each_key_once_up_to_its_seq() {
        let mut ix = Index::new();
        ix.replay("a".into(), Stamp::new(1, 3), v("a3"));
        ix.replay("b".into(), Stamp::new(1, 1), v("b1"));
        ix.replay("a".into(), Stamp::new(2, 7), v("a7"));
        ix.replay("c".into(), Stamp::new(2, 5), None);
        let snap = ix.newest_upto(6);
        let keys: Vec<(u64, &str)> = snap.iter().map(|e| (e.0, e.1.as_str())).collect();
        assert_eq!(keys, vec![(1, "b"), (5, "c")], "a's newest write (7) is above the snapshot");
        assert!(ix.is_newer("a", Stamp::new(2, 8)) && !ix.is_newer("a", Stamp::new(1, 9)));
        assert!(ix.is_newer("never", Stamp::new(0, 1)));
        assert_eq!(ix.live_keys(), 2, "a and b; c is a tombstone");
        ix.logged("d", Stamp::new(2, 8), v("d"));
        assert_eq!(ix.live_keys(), 2, "not committed yet");
        ix.commit("d", Stamp::new(2, 8), v("d"));
        ix.commit("a", Stamp::new(2, 9), None);
        assert_eq!(ix.live_keys(), 2, "d in, a deleted");
    }
}
