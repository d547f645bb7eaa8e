//! The master's index: for every key, the newest logged write, the newest acknowledged
//! (committed) write, and which member slots hold the committed copy.
//!
//! The master keeps the values too (they are in its log anyway): that is what lets it repair a
//! slave that lost its memory, re-replicate a key whose copies died, and check that a slave's
//! answer is the acknowledged version. Reads never return anything but the committed write, so
//! a write still in flight is invisible until it is acknowledged, and a read can never see a
//! value that a later read does not.

use std::collections::HashMap;
use std::sync::Arc;

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
    /// Member slots known to hold `committed` (or a newer write), as a bit set.
    pub holders: u64,
}

/// Key to state.
#[derive(Debug, Default)]
pub struct Index {
    map: HashMap<String, KeyState>,
}

impl Index {
    /// An empty index.
    pub fn new() -> Index {
        Index::default()
    }

    /// Applies a write read back from the log at start: it is the truth, so it is committed,
    /// but nobody is known to hold it yet.
    pub fn replay(&mut self, key: String, stamp: Stamp, value: Value) {
        let entry = (stamp, value);
        match self.map.get_mut(&key) {
            // Most records of a long log overwrite a key already known: no allocation then.
            Some(s) => *s = KeyState { latest: entry.clone(), committed: entry, holders: 0 },
            None => {
                self.map.insert(key, KeyState { latest: entry.clone(), committed: entry, holders: 0 });
            }
        }
    }

    /// Records a write that was just logged.
    pub fn logged(&mut self, key: &str, stamp: Stamp, value: Value) {
        match self.map.get_mut(key) {
            Some(s) if s.latest.0 < stamp => s.latest = (stamp, value),
            Some(_) => {}
            None => {
                let none = (Stamp::default(), None);
                self.map.insert(
                    key.to_string(),
                    KeyState { latest: (stamp, value), committed: none, holders: 0 },
                );
            }
        }
    }

    /// Records that the members in `acked` acknowledged `stamp` (a majority, for a write).
    /// Returns true if this made `stamp` the committed write.
    pub fn commit(&mut self, key: &str, stamp: Stamp, value: Value, acked: u64) -> bool {
        let Some(s) = self.map.get_mut(key) else {
            return false;
        };
        if s.committed.0 < stamp {
            s.committed = (stamp, value);
            s.holders = acked;
            true
        } else {
            if s.committed.0 == stamp {
                s.holders |= acked;
            }
            false
        }
    }

    /// Adds holders of exactly `stamp` (a repair or catch-up that was acknowledged).
    pub fn add_holders(&mut self, key: &str, stamp: Stamp, slots: u64) {
        if let Some(s) = self.map.get_mut(key) {
            if s.committed.0 == stamp {
                s.holders |= slots;
            }
        }
    }

    /// Removes holders (a slave answered with an older copy, or re-registered).
    pub fn drop_holder(&mut self, key: &str, slot: usize) {
        if let Some(s) = self.map.get_mut(key) {
            s.holders &= !(1u64 << slot);
        }
    }

    /// Forgets `slot` for every key: the slave re-registered (it may have lost its memory) or
    /// was removed.
    pub fn forget_slot(&mut self, slot: usize) {
        let mask = !(1u64 << slot);
        for s in self.map.values_mut() {
            s.holders &= mask;
        }
    }

    /// The state of `key`.
    pub fn get(&self, key: &str) -> Option<&KeyState> {
        self.map.get(key)
    }

    /// Number of keys with a committed value (tombstones and never-committed keys excluded).
    pub fn live_keys(&self) -> usize {
        self.map.values().filter(|s| s.committed.1.is_some()).count()
    }

    /// How many keys with a value each slot holds (for STATS; tombstones excluded, as in
    /// [`Index::live_keys`]).
    pub fn keys_per_slot(&self) -> [u64; 64] {
        let mut counts = [0u64; 64];
        for s in self.map.values().filter(|s| s.committed.1.is_some()) {
            let mut h = s.holders;
            while h != 0 {
                let slot = h.trailing_zeros() as usize;
                counts[slot] += 1;
                h &= h - 1;
            }
        }
        counts
    }

    /// Keys for which `pred` holds, with their state (for repair scans and catch-up).
    pub fn select(&self, mut pred: impl FnMut(&KeyState) -> bool) -> Vec<(String, KeyState)> {
        self.map.iter().filter(|(_, s)| pred(s)).map(|(k, s)| (k.clone(), s.clone())).collect()
    }

    /// Moves every entry to `epoch`, keeping its seq, and forgets all holders: a master that
    /// starts an epoch re-sends its whole state stamped with it, so any write a deposed master
    /// left on a minority of slaves (an older epoch) loses to what the log says.
    pub fn restamp(&mut self, epoch: u64) {
        for s in self.map.values_mut() {
            s.latest.0.epoch = epoch;
            s.committed.0.epoch = epoch;
            s.holders = 0;
        }
    }

    /// Takes a write recovered from a slave if its stamp is newer than what the index has.
    /// Returns true if it was taken.
    pub fn recover(&mut self, key: &str, stamp: Stamp, value: Value) -> bool {
        match self.map.get(key) {
            Some(s) if s.latest.0 >= stamp => false,
            _ => {
                self.replay(key.to_string(), stamp, value);
                true
            }
        }
    }

    /// Every key's newest write as `(seq, key, value)`, sorted by seq: the state to write into
    /// a fresh log, whose seqs must strictly increase. Two keys can carry the same seq only when
    /// writes recovered from slaves came from two masters' logs that diverged; the second one
    /// is given a fresh seq above `floor` and every other seq (here and in the snapshot).
    pub fn snapshot(&mut self, floor: u64) -> Vec<(u64, String, Value)> {
        let mut all: Vec<(u64, String, Value)> =
            self.map.iter().map(|(k, s)| (s.latest.0.seq, k.clone(), s.latest.1.clone())).collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        let mut next = all.last().map_or(0, |e| e.0).max(floor);
        let mut duplicates = Vec::new();
        for i in 1..all.len() {
            if all[i].0 == all[i - 1].0 {
                next += 1;
                duplicates.push((i, next));
            }
        }
        for &(i, seq) in &duplicates {
            all[i].0 = seq;
            if let Some(s) = self.map.get_mut(&all[i].1) {
                s.latest.0.seq = seq;
                s.committed.0.seq = seq;
            }
        }
        if !duplicates.is_empty() {
            all.sort_unstable_by_key(|e| e.0);
        }
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
        assert!(ix.commit("k", s2, v("b"), 0b011));
        assert!(!ix.commit("k", s1, v("a"), 0b100));
        let s = ix.get("k").unwrap();
        assert_eq!((s.committed.0, s.holders), (s2, 0b011));
        assert_eq!(s.committed.1.as_deref(), Some(&b"b"[..]));
    }

    #[test]
    fn snapshot_seqs_strictly_increase_even_after_a_divergent_recovery() {
        let mut ix = Index::new();
        ix.replay("a".into(), Stamp::new(5, 10), v("from the primary"));
        ix.replay("b".into(), Stamp::new(5, 11), v("b"));
        // A write recovered from a slave, logged by the other master under the same seq.
        assert!(ix.recover("c", Stamp::new(6, 10), v("from the backup")));
        let snap = ix.snapshot(11);
        let seqs: Vec<u64> = snap.iter().map(|e| e.0).collect();
        assert_eq!(seqs, vec![10, 11, 12]);
        let moved = &snap[2].1;
        assert_eq!(ix.get(moved).unwrap().latest.0.seq, 12);
    }

    #[test]
    fn holders_follow_the_committed_stamp() {
        let mut ix = Index::new();
        ix.replay("k".to_string(), Stamp::new(1, 5), v("x"));
        assert_eq!(ix.get("k").unwrap().holders, 0);
        ix.add_holders("k", Stamp::new(1, 5), 0b101);
        ix.add_holders("k", Stamp::new(1, 4), 0b010);
        assert_eq!(ix.get("k").unwrap().holders, 0b101);
        ix.drop_holder("k", 0);
        assert_eq!(ix.get("k").unwrap().holders, 0b100);
        ix.forget_slot(2);
        assert_eq!(ix.get("k").unwrap().holders, 0);
        assert_eq!(ix.keys_per_slot()[2], 0);
    }
}
