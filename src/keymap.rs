//! A string-keyed hash map that grows a little at a time: the master's index and the slave's
//! store.
//!
//! A hash table grows by moving every entry into a table twice its size, in one call. At a
//! million keys that one insert took 150-220 ms here, at 3.7 million keys 2.1 s; and since the
//! master and every slave hold the same keys, they all grew on the same write. During a bulk
//! load of 4,000,000 keys the three slaves fell silent past the ACK timeout together at
//! 1,835,008 keys (7/8 of 2^21, where the tables grow), were marked down, and 1.6 million writes
//! failed before they were back.
//!
//! So the map is [`SHARDS`] tables, a key's table chosen by bits of its hash that the table
//! itself does not use (see [`KeyMap`]), and each table grows early, at its own fill between
//! [`GROW_FROM_EIGHTHS`] and 7/8 of its capacity: the work of one doubling is cut into `SHARDS`
//! pieces spread over the last quarter of the keys before it, not done all at once. An insert
//! moves at most `1/SHARDS` of the keys. Measured (2026-12-07, a test program inserting
//! 4,000,000 new keys with the slave store's entries, two runs): the worst 1,000 consecutive
//! inserts took 44 / 65 ms against 1.19 / 1.96 s for one foldhash `HashMap`, and the whole load
//! 6.3 / 5.3 s against 4.8 / 6.6 s.
use std::hash::BuildHasher;

use hashbrown::hash_table::{self, HashTable};

/// Tables per map. An insert that grows one moves about `1/SHARDS` of the keys.
pub const SHARDS: usize = 64;

/// The earliest fill, in eighths of its capacity, at which a table grows; table `i` grows at
/// `GROW_FROM_EIGHTHS/8 + (7 - GROW_FROM_EIGHTHS)/8 * i/SHARDS` of its capacity. Lower spreads
/// the growth over more inserts, at the cost of emptier tables (more memory per key).
pub const GROW_FROM_EIGHTHS: usize = 5;

/// Tables smaller than this grow when they are full, as usual (their growth costs nothing).
const STAGGER_FROM_CAPACITY: usize = 1024;

/// One key and its value, with the key's hash: a growing table moves entries by the stored
/// hash, without reading each key from wherever it is on the heap.
#[derive(Debug)]
struct Item<V> {
    hash: u64,
    key: String,
    value: V,
}

/// The map. Hashed with foldhash, seeded at random per process: SipHash (std's default) was a
/// third of a slave's CPU time in a bulk load, and a random seed keeps client-chosen keys from
/// being picked to collide. One hash per lookup: bits 32-37 pick the table, which itself uses
/// the low bits (its buckets) and the top 7 (its tags), so a table's keys still spread over
/// all of its buckets.
#[derive(Debug)]
pub struct KeyMap<V> {
    hasher: foldhash::fast::RandomState,
    tables: Vec<HashTable<Item<V>>>,
}

/// A key's place in a [`KeyMap`], found with one lookup: [`KeyMap::entry`].
pub enum Entry<'a, V> {
    /// The key is present; its value.
    Occupied(&'a mut V),
    /// The key is absent.
    Vacant(Vacant<'a, V>),
}

/// Where an absent key goes.
pub struct Vacant<'a, V> {
    entry: hash_table::VacantEntry<'a, Item<V>>,
    hash: u64,
    key: &'a str,
}

impl<'a, V> Vacant<'a, V> {
    /// Stores `value` under the key (copying the key); returns the stored value.
    pub fn insert(self, value: V) -> &'a mut V {
        let item = Item { hash: self.hash, key: self.key.to_string(), value };
        &mut self.entry.insert(item).into_mut().value
    }
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap { hasher: Default::default(), tables: (0..SHARDS).map(|_| HashTable::new()).collect() }
    }
}

impl<V> KeyMap<V> {
    /// An empty map.
    pub fn new() -> KeyMap<V> {
        KeyMap::default()
    }

    fn hash(&self, key: &str) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        (hash, (hash >> 32) as usize % SHARDS)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        let (hash, shard) = self.hash(key);
        self.tables[shard].find(hash, |item| item.key == key).map(|item| &item.value)
    }

    /// The value of `key`, to change in place.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let (hash, shard) = self.hash(key);
        self.tables[shard].find_mut(hash, |item| item.key == key).map(|item| &mut item.value)
    }

    /// Doubles table `shard` if it is at its own fill ([`grow_at`]) rather than when full,
    /// with all the others. Called before every insert, even of a key that turns out to be
    /// present: the table is at its fill either way, and grows once.
    fn grow_early(&mut self, shard: usize) {
        let table = &mut self.tables[shard];
        let capacity = table.capacity();
        if capacity >= STAGGER_FROM_CAPACITY && table.len() >= grow_at(shard, capacity) {
            table.reserve(capacity - table.len() + 1, |item| item.hash);
        }
    }

    /// The value of `key`, or the place to insert it, with one lookup.
    pub fn entry<'a>(&'a mut self, key: &'a str) -> Entry<'a, V> {
        let (hash, shard) = self.hash(key);
        self.grow_early(shard);
        match self.tables[shard].entry(hash, |item| item.key == key, |item| item.hash) {
            hash_table::Entry::Occupied(e) => Entry::Occupied(&mut e.into_mut().value),
            hash_table::Entry::Vacant(entry) => Entry::Vacant(Vacant { entry, hash, key }),
        }
    }

    /// Stores `value` under `key`; returns the value it replaces.
    pub fn insert(&mut self, key: &str, value: V) -> Option<V> {
        match self.entry(key) {
            Entry::Occupied(old) => Some(std::mem::replace(old, value)),
            Entry::Vacant(slot) => {
                slot.insert(value);
                None
            }
        }
    }

    /// Stores `value` under `key`, which must be absent (checked in debug builds only): an
    /// insert that takes the key's `String` instead of copying it.
    pub fn insert_new(&mut self, key: String, value: V) {
        let (hash, shard) = self.hash(&key);
        self.grow_early(shard);
        debug_assert!(self.tables[shard].find(hash, |item| item.key == key).is_none(), "{key} is present");
        self.tables[shard].insert_unique(hash, Item { hash, key, value }, |item| item.hash);
    }

    /// Every key and value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.tables.iter().flat_map(|t| t.iter()).map(|item| (&item.key, &item.value))
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.tables.iter().map(HashTable::len).sum()
    }

    /// True when the map holds no key.
    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(HashTable::is_empty)
    }
}

/// The number of keys at which table `shard`, holding up to `capacity`, grows.
fn grow_at(shard: usize, capacity: usize) -> usize {
    let (from, span) = (GROW_FROM_EIGHTHS, 7 - GROW_FROM_EIGHTHS);
    capacity * from / 8 + capacity * span / 8 * shard / SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map() {
        let mut m = KeyMap::new();
        assert!(m.is_empty());
        for i in 0..50_000u32 {
            assert_eq!(m.insert(&format!("k{i}"), i), None);
        }
        assert_eq!(m.insert("k7", 70), Some(7));
        m.insert_new("k50001".to_string(), 1);
        assert_eq!((m.len(), m.get("k50001")), (50_001, Some(&1)));
        if let Entry::Vacant(slot) = m.entry("k50001x") {
            *slot.insert(4) += 1;
        }
        assert!(matches!(m.entry("k50001x"), Entry::Occupied(&mut 5)));
        *m.get_mut("k8").unwrap() += 1;
        assert_eq!((m.len(), m.get("k7"), m.get("k8"), m.get("k50000")), (50_002, Some(&70), Some(&9), None));
        let mut seen: Vec<(String, u32)> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
        seen.sort_unstable();
        let mut expected: Vec<(String, u32)> = (0..50_000).map(|i| (format!("k{i}"), i)).collect();
        expected.extend([("k50001".to_string(), 1), ("k50001x".to_string(), 5)]);
        expected.sort_unstable();
        expected
            .iter_mut()
            .filter(|(k, _)| k == "k7" || k == "k8")
            .for_each(|(k, v)| *v = if k == "k7" { 70 } else { 9 });
        assert_eq!(seen, expected);
    }

    /// The point of the map: the tables double at different moments, each a small part of the
    /// keys, instead of all on one insert.
    #[test]
    fn tables_grow_at_different_moments() {
        let mut m = KeyMap::new();
        // For each table, the map's size at each of its growths from a staggered capacity.
        let mut growths: Vec<Vec<usize>> = vec![Vec::new(); SHARDS];
        let mut caps: Vec<usize> = m.tables.iter().map(|t| t.capacity()).collect();
        for i in 0..200_000u32 {
            let key = format!("key:{i}");
            let shard = m.hash(&key).1;
            m.insert(&key, ());
            let cap = m.tables[shard].capacity();
            if cap != caps[shard] {
                if caps[shard] >= STAGGER_FROM_CAPACITY {
                    growths[shard].push(m.len());
                }
                caps[shard] = cap;
            }
        }
        // Every table doubled from the same capacity; the first and the last did so far apart.
        let first: Vec<usize> = growths.iter().map(|g| g[0]).collect();
        let (lo, hi) = (*first.iter().min().unwrap(), *first.iter().max().unwrap());
        assert!(hi - lo > lo / 5, "tables grew between {lo} and {hi} keys: not spread out");
        // None grew while far from full: a table is never emptier than half its earliest fill.
        for (shard, t) in m.tables.iter().enumerate() {
            assert!(
                t.len() * 8 >= t.capacity() * GROW_FROM_EIGHTHS / 2,
                "table {shard}: {} of {}",
                t.len(),
                t.capacity()
            );
        }
    }
}
