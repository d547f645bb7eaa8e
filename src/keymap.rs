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
//! So the map is [`SHARDS`] tables, a key's table chosen by a hash of its own (seeded apart
//! from the tables' hash, so the keys of one table still spread over all of its buckets), and
//! each table grows early, at its own fill between [`GROW_FROM_EIGHTHS`] and 7/8 of its
//! capacity: the work of one doubling is cut into `SHARDS` pieces spread over the last quarter
//! of the keys before it, not done all at once. An insert moves at most `1/SHARDS` of the keys
//! (measured: the worst 1,000 consecutive inserts of 4,000,000 took 21 ms against 2.1 s for
//! one table, and the whole load took no longer).

use std::hash::BuildHasher;

/// Tables per map. An insert that grows one moves about `1/SHARDS` of the keys.
pub const SHARDS: usize = 64;

/// The earliest fill, in eighths of its capacity, at which a table grows; table `i` grows at
/// `GROW_FROM_EIGHTHS/8 + (7 - GROW_FROM_EIGHTHS)/8 * i/SHARDS` of its capacity. Lower spreads
/// the growth over more inserts, at the cost of emptier tables (more memory per key).
pub const GROW_FROM_EIGHTHS: usize = 5;

/// Tables smaller than this grow when they are full, as usual (their growth costs nothing).
const STAGGER_FROM_CAPACITY: usize = 1024;

type Table<V> = foldhash::HashMap<String, V>;

/// The map. Hashed with foldhash, seeded at random per process: SipHash (std's default) was a
/// third of a slave's CPU time in a bulk load, and a random seed keeps client-chosen keys from
/// being picked to collide.
#[derive(Debug)]
pub struct KeyMap<V> {
    /// Picks a key's table; seeded apart from the tables' own hashers.
    pick: foldhash::fast::RandomState,
    tables: Vec<Table<V>>,
    len: usize,
}

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap { pick: Default::default(), tables: (0..SHARDS).map(|_| Table::default()).collect(), len: 0 }
    }
}

impl<V> KeyMap<V> {
    /// An empty map.
    pub fn new() -> KeyMap<V> {
        KeyMap::default()
    }

    fn shard(&self, key: &str) -> usize {
        (self.pick.hash_one(key) as usize) % SHARDS
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.tables[self.shard(key)].get(key)
    }

    /// The value of `key`, to change in place.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let shard = self.shard(key);
        self.tables[shard].get_mut(key)
    }

    /// Stores `value` under `key`; returns the value it replaces.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        let shard = self.shard(&key);
        let table = &mut self.tables[shard];
        let capacity = table.capacity();
        if capacity >= STAGGER_FROM_CAPACITY
            && table.len() >= grow_at(shard, capacity)
            && !table.contains_key(&key)
        {
            // Double now, at this table's own fill, rather than with all the others when full.
            table.reserve(capacity - table.len() + 1);
        }
        let old = table.insert(key, value);
        self.len += usize::from(old.is_none());
        old
    }

    /// Every key and value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.tables.iter().flat_map(|t| t.iter())
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the map holds no key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
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
            assert_eq!(m.insert(format!("k{i}"), i), None);
        }
        assert_eq!(m.insert("k7".to_string(), 70), Some(7));
        *m.get_mut("k8").unwrap() += 1;
        assert_eq!((m.len(), m.get("k7"), m.get("k8"), m.get("k50000")), (50_000, Some(&70), Some(&9), None));
        let mut seen: Vec<(String, u32)> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
        seen.sort_unstable();
        let mut expected: Vec<(String, u32)> = (0..50_000).map(|i| (format!("k{i}"), i)).collect();
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
            let shard = m.shard(&key);
            m.insert(key, ());
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
