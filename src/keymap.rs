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
//! pieces spread over the last quarter of the keys before it, not done all at once. And the
//! tables hold only where each item is (8 bytes a key); the keys and values are stored apart,
//! in insertion order, and never move: a growing table moves 8 bytes per key, not the entry.
//!
//! Measured (2026-12-07, a test program inserting 4,000,000 new keys with the slave store's
//! entries, two runs): the worst 1,000 consecutive inserts took 2.2 / 1.9 ms against 531 /
//! 556 ms for one foldhash `HashMap`, the whole load 1.55 / 1.66 s against 2.53 / 2.56 s. In
//! the cluster (a 1,000,000-key load with a backup, five alternating runs against the version
//! whose tables held the entries themselves) it cut the CPU time of a load by a quarter and the
//! master's memory by a third (263 against 400 MB).
use std::hash::BuildHasher;

use compact_str::CompactString;
use hashbrown::hash_table::{self, HashTable};

/// Tables per map. An insert that grows one moves about `1/SHARDS` of the keys.
pub const SHARDS: usize = 64;

/// The earliest fill, in eighths of its capacity, at which a table grows; table `i` grows at
/// `GROW_FROM_EIGHTHS/8 + (7 - GROW_FROM_EIGHTHS)/8 * i/SHARDS` of its capacity. Lower spreads
/// the growth over more inserts, at the cost of emptier tables (more memory per key).
pub const GROW_FROM_EIGHTHS: usize = 5;

/// Tables smaller than this grow when they are full, as usual (their growth costs nothing).
const STAGGER_FROM_CAPACITY: usize = 1024;

/// Items per chunk of the item store. A chunk is allocated whole and never moved.
const CHUNK: usize = 4096;

/// One key and its value, in the item store. A key of up to 24 bytes (every key of the
/// benchmarks) is kept in the item itself, not on the heap: no allocation per new key, and a
/// lookup that finds the item compares its key there, without one more cache miss.
#[derive(Debug)]
struct Item<V> {
    key: CompactString,
    value: V,
}

/// What a table holds for a key: where its item is, and 32 bits of its hash (the table's
/// buckets and tags are taken from them, see [`Hashed`]), so a growing table moves 8 bytes per
/// key and reads no item.
#[derive(Debug, Clone, Copy)]
struct Slot {
    index: u32,
    hash: u32,
}

/// A key's hash, cut for the map: bits 32-37 of one foldhash hash pick the table, the low 32
/// bits place the key in it.
struct Hashed {
    shard: usize,
    short: u32,
}

impl Hashed {
    /// The hash the table sees: the 32 bits twice, so its buckets (the low bits) and its 7-bit
    /// tags (the top bits) come from different bits for any table below 2^25 buckets.
    fn table(&self) -> u64 {
        table_hash(self.short)
    }
}

fn table_hash(short: u32) -> u64 {
    u64::from(short) << 32 | u64::from(short)
}

/// The map. Hashed with foldhash, seeded at random per process: SipHash (std's default) was a
/// third of a slave's CPU time in a bulk load, and a random seed keeps client-chosen keys from
/// being picked to collide.
///
/// Keys and values are kept apart from the tables, in chunks of 4,096 items (`CHUNK`) filled in
/// insertion order (a key is never removed: deletes are kept as tombstones by the users of the
/// map); a table slot is the item's index and 32 bits of its hash. A new key is written where
/// the last one was (not at a random place in a big table), a table that grows moves 8 bytes
/// per key instead of the whole entry, and an iteration reads the items in order.
#[derive(Debug)]
pub struct KeyMap<V> {
    hasher: foldhash::fast::RandomState,
    tables: Vec<HashTable<Slot>>,
    items: Vec<Vec<Item<V>>>,
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
    entry: hash_table::VacantEntry<'a, Slot>,
    items: &'a mut Vec<Vec<Item<V>>>,
    hash: u32,
    key: &'a str,
}

impl<'a, V> Vacant<'a, V> {
    /// Stores `value` under the key (copying the key); returns the stored value.
    pub fn insert(self, value: V) -> &'a mut V {
        let index = push(self.items, Item { key: CompactString::new(self.key), value });
        self.entry.insert(Slot { index, hash: self.hash });
        &mut self.items.last_mut().and_then(|chunk| chunk.last_mut()).expect("just pushed").value
    }
}

/// Appends `item` to the item store; returns its index.
fn push<V>(items: &mut Vec<Vec<Item<V>>>, item: Item<V>) -> u32 {
    if items.last().is_none_or(|chunk| chunk.len() == CHUNK) {
        items.push(Vec::with_capacity(CHUNK));
    }
    let chunks = items.len();
    let chunk = items.last_mut().expect("a chunk with room");
    chunk.push(item);
    let index = (chunks - 1) * CHUNK + chunk.len() - 1;
    // 2^32 keys would take a terabyte of memory before this could fail.
    u32::try_from(index).expect("a KeyMap holds at most 2^32 keys")
}

fn item<V>(items: &[Vec<Item<V>>], index: u32) -> &Item<V> {
    let index = index as usize;
    &items[index / CHUNK][index % CHUNK]
}

fn item_mut<V>(items: &mut [Vec<Item<V>>], index: u32) -> &mut Item<V> {
    let index = index as usize;
    &mut items[index / CHUNK][index % CHUNK]
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap {
            hasher: Default::default(),
            tables: (0..SHARDS).map(|_| HashTable::new()).collect(),
            items: Vec::new(),
        }
    }
}

impl<V> KeyMap<V> {
    /// An empty map.
    pub fn new() -> KeyMap<V> {
        KeyMap::default()
    }

    fn hash(&self, key: &str) -> Hashed {
        let hash = self.hasher.hash_one(key);
        Hashed { shard: (hash >> 32) as usize % SHARDS, short: hash as u32 }
    }

    /// The index of `key`'s item.
    fn find(&self, key: &str) -> Option<u32> {
        let h = self.hash(key);
        let items = &self.items;
        let slot =
            self.tables[h.shard].find(h.table(), |s| s.hash == h.short && item(items, s.index).key == key)?;
        Some(slot.index)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.find(key).map(|index| &item(&self.items, index).value)
    }

    /// The value of `key`, to change in place.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.find(key).map(|index| &mut item_mut(&mut self.items, index).value)
    }

    /// Doubles table `shard` if it is at its own fill ([`grow_at`]) rather than when full,
    /// with all the others. Called before every insert, even of a key that turns out to be
    /// present: the table is at its fill either way, and grows once.
    fn grow_early(&mut self, shard: usize) {
        let table = &mut self.tables[shard];
        let capacity = table.capacity();
        if capacity >= STAGGER_FROM_CAPACITY && table.len() >= grow_at(shard, capacity) {
            table.reserve(capacity - table.len() + 1, |s| table_hash(s.hash));
        }
    }

    /// The value of `key`, or the place to insert it, with one lookup.
    pub fn entry<'a>(&'a mut self, key: &'a str) -> Entry<'a, V> {
        let h = self.hash(key);
        self.grow_early(h.shard);
        let KeyMap { tables, items, .. } = self;
        let found = {
            let items = &*items;
            tables[h.shard].entry(
                h.table(),
                |s| s.hash == h.short && item(items, s.index).key == key,
                |s| table_hash(s.hash),
            )
        };
        match found {
            hash_table::Entry::Occupied(e) => Entry::Occupied(&mut item_mut(items, e.get().index).value),
            hash_table::Entry::Vacant(entry) => Entry::Vacant(Vacant { entry, items, hash: h.short, key }),
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

    /// Every key and value, in the order the keys were first inserted.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.items.iter().flatten().map(|item| (item.key.as_str(), &item.value))
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.items.last().map_or(0, |chunk| (self.items.len() - 1) * CHUNK + chunk.len())
    }

    /// True when the map holds no key.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
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
        // Items of every chunk are found again through the tables.
        for i in (0..50_000u32).step_by(97) {
            assert_eq!(m.get(&format!("k{i}")), Some(&i));
        }
        assert_eq!(m.insert("k7", 70), Some(7));
        assert_eq!(m.insert("k50001", 1), None);
        assert_eq!((m.len(), m.get("k50001")), (50_001, Some(&1)));
        if let Entry::Vacant(slot) = m.entry("k50001x") {
            *slot.insert(4) += 1;
        }
        assert!(matches!(m.entry("k50001x"), Entry::Occupied(&mut 5)));
        *m.get_mut("k8").unwrap() += 1;
        assert_eq!((m.len(), m.get("k7"), m.get("k8"), m.get("k50000")), (50_002, Some(&70), Some(&9), None));
        let mut seen: Vec<(String, u32)> = m.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        assert_eq!(seen[..3], [("k0".into(), 0), ("k1".into(), 1), ("k2".into(), 2)], "insertion order");
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
            let shard = m.hash(&key).shard;
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
