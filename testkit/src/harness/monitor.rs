//! What the harness learns from the master's `STATS` once per second: how many slaves are
//! registered and how many requests each slave has served. No sockets here: the run loop reads
//! the rows, this module turns them into per-second columns and per-run totals.
//!
//! The master reports `STAT slaves <n>` and, per member, `STAT slave.<id>.requests <n>` and
//! `STAT slave.<id>.keys <n>`. The request counters are cumulative, so the requests a slave
//! served in a second are the difference of two readings; a counter that went down was reset
//! (a backup took over with counters of its own) and [`counter_delta`] handles it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::metrics::counter_delta;

/// One reading of the master's `STATS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `STAT slaves`: live registered slaves.
    pub slaves: Option<u64>,
    /// `STAT role`.
    pub role: Option<String>,
    /// Per slave id: (`slave.<id>.requests`, `slave.<id>.keys`), either missing if not reported.
    pub per_slave: BTreeMap<SlaveId, (Option<u64>, Option<u64>)>,
}

/// A slave id that sorts naturally (`s2` before `s10`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlaveId(pub String);

impl SlaveId {
    fn key(&self) -> (&str, u64, usize, &str) {
        let s = self.0.as_str();
        let digits_at = s.rfind(|c: char| !c.is_ascii_digit()).map_or(0, |i| i + 1);
        let (prefix, digits) = s.split_at(digits_at);
        (prefix, digits.parse().unwrap_or(0), digits.len(), s)
    }
}

impl Ord for SlaveId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for SlaveId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SlaveId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Snapshot {
    /// Reads the rows of a `STATS` reply; rows it does not know are ignored.
    pub fn from_rows(rows: &[(String, String)]) -> Snapshot {
        let mut s = Snapshot::default();
        for (name, value) in rows {
            let number = value.trim().parse::<u64>().ok();
            if name == "slaves" {
                s.slaves = number;
            } else if name == "role" {
                s.role = Some(value.trim().to_string());
            } else if let Some(rest) = name.strip_prefix("slave.") {
                if let Some(id) = rest.strip_suffix(".requests") {
                    s.per_slave.entry(SlaveId(id.to_string())).or_default().0 = number;
                } else if let Some(id) = rest.strip_suffix(".keys") {
                    s.per_slave.entry(SlaveId(id.to_string())).or_default().1 = number;
                }
            }
        }
        s
    }

    fn requests(&self, id: &SlaveId) -> Option<u64> {
        self.per_slave.get(id).and_then(|(r, _)| *r)
    }
}

/// The measured load of one slave over a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaveLoad {
    /// Its id.
    pub id: SlaveId,
    /// Requests it served in the measured window.
    pub requests: u64,
    /// Keys it held at the end (the last reading that had them).
    pub keys: Option<u64>,
}

/// The snapshots of a run, indexed by second boundary: `snapshots[k]` was read at `k` seconds
/// after the load started (`None` when the master could not be asked).
#[derive(Debug, Clone, Default)]
pub struct Snapshots(pub Vec<Option<Snapshot>>);

impl Snapshots {
    /// Stores the reading at boundary `k`.
    pub fn set(&mut self, k: usize, s: Option<Snapshot>) {
        if self.0.len() <= k {
            self.0.resize(k + 1, None);
        }
        self.0[k] = s;
    }

    fn at(&self, k: u64) -> Option<&Snapshot> {
        usize::try_from(k).ok().and_then(|k| self.0.get(k)).and_then(Option::as_ref)
    }

    /// The slave ids reported in the window `from..=to` (boundaries), sorted.
    pub fn slave_ids(&self, from: u64, to: u64) -> Vec<SlaveId> {
        let mut ids = BTreeSet::new();
        for k in from..=to {
            if let Some(s) = self.at(k) {
                ids.extend(s.per_slave.iter().filter(|(_, (r, _))| r.is_some()).map(|(id, _)| id.clone()));
            }
        }
        ids.into_iter().collect()
    }

    /// Live registered slaves at the end of `second` (the reading at boundary `second + 1`).
    pub fn slave_count(&self, second: u64) -> Option<u64> {
        self.at(second + 1).and_then(|s| s.slaves)
    }

    /// Requests each slave in `ids` served during `second`, when both readings around it
    /// have that slave's counter.
    pub fn requests_in(&self, second: u64, ids: &[SlaveId]) -> Vec<(String, Option<u64>)> {
        let (a, b) = (self.at(second), self.at(second + 1));
        ids.iter()
            .map(|id| {
                let d = match (a.and_then(|s| s.requests(id)), b.and_then(|s| s.requests(id))) {
                    (Some(x), Some(y)) => Some(counter_delta(x, y)),
                    _ => None,
                };
                (id.0.clone(), d)
            })
            .collect()
    }

    /// Each slave's requests over the window from boundary `from` to boundary `to`: the sum of
    /// the differences between consecutive readings that have its counter (a reading that is
    /// missing just joins its neighbours), and its keys at the last reading that has them.
    pub fn totals(&self, from: u64, to: u64) -> Vec<SlaveLoad> {
        self.slave_ids(from, to)
            .into_iter()
            .map(|id| {
                let mut prev: Option<u64> = None;
                let mut requests = 0;
                let mut keys = None;
                for k in from..=to {
                    let Some(s) = self.at(k) else { continue };
                    if let Some(r) = s.requests(&id) {
                        if let Some(p) = prev {
                            requests += counter_delta(p, r);
                        }
                        prev = Some(r);
                    }
                    if let Some(n) = s.per_slave.get(&id).and_then(|(_, k)| *k) {
                        keys = Some(n);
                    }
                }
                SlaveLoad { id, requests, keys }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn snap(slaves: u64, reqs: &[(&str, u64)]) -> Option<Snapshot> {
        let mut r = vec![("slaves".to_string(), slaves.to_string())];
        for (id, n) in reqs {
            r.push((format!("slave.{id}.requests"), n.to_string()));
            r.push((format!("slave.{id}.keys"), (n / 10).to_string()));
        }
        Some(Snapshot::from_rows(&r))
    }

    #[test]
    fn parses_stats_rows() {
        let s = Snapshot::from_rows(&rows(&[
            ("role", "primary"),
            ("slaves", "3"),
            ("slave.s1.requests", "10"),
            ("slave.s1.keys", "4"),
            ("slave.a.b.requests", "7"),
            ("slave.s2.keys", "x"),
            ("seq", "99"),
        ]));
        assert_eq!(s.slaves, Some(3));
        assert_eq!(s.role.as_deref(), Some("primary"));
        assert_eq!(s.per_slave.get(&SlaveId("s1".into())), Some(&(Some(10), Some(4))));
        assert_eq!(s.per_slave.get(&SlaveId("a.b".into())), Some(&(Some(7), None)));
        assert_eq!(s.per_slave.get(&SlaveId("s2".into())), Some(&(None, None)));
    }

    #[test]
    fn ids_sort_naturally() {
        let mut ids: Vec<SlaveId> =
            ["s10", "s2", "s1", "b", "a3"].iter().map(|s| SlaveId(s.to_string())).collect();
        ids.sort();
        let names: Vec<&str> = ids.iter().map(|i| i.0.as_str()).collect();
        assert_eq!(names, vec!["a3", "b", "s1", "s2", "s10"]);
    }

    #[test]
    fn per_second_deltas_and_totals_exclude_warmup() {
        let mut s = Snapshots::default();
        // Boundaries 0..=4; warm-up is seconds 0..2, measured 2..4.
        s.set(0, snap(3, &[("s1", 0), ("s2", 0)]));
        s.set(1, snap(3, &[("s1", 100), ("s2", 50)]));
        s.set(2, snap(3, &[("s1", 200), ("s2", 100)]));
        s.set(3, snap(2, &[("s1", 250), ("s2", 100)]));
        s.set(4, snap(2, &[("s1", 300), ("s2", 100)]));
        let ids = s.slave_ids(2, 4);
        assert_eq!(s.requests_in(2, &ids), vec![("s1".into(), Some(50)), ("s2".into(), Some(0))]);
        assert_eq!(s.slave_count(2), Some(2));
        let t = s.totals(2, 4);
        assert_eq!(t[0].requests, 100, "300 - 200: warm-up excluded");
        assert_eq!(t[0].keys, Some(30));
        assert_eq!(t[1].requests, 0);
    }

    #[test]
    fn missing_readings_and_resets() {
        let mut s = Snapshots::default();
        s.set(0, snap(1, &[("s1", 10)]));
        s.set(1, None);
        s.set(2, snap(1, &[("s1", 30)]));
        s.set(3, snap(1, &[("s1", 5)])); // a new primary's counter
        let ids = s.slave_ids(0, 3);
        assert_eq!(s.requests_in(0, &ids), vec![("s1".into(), None)]);
        assert_eq!(s.slave_count(0), None);
        assert_eq!(s.requests_in(2, &ids), vec![("s1".into(), Some(5))]);
        assert_eq!(s.totals(0, 3)[0].requests, 20 + 5);
    }

    #[test]
    fn a_master_without_per_slave_counters_has_no_slave_columns() {
        let mut s = Snapshots::default();
        s.set(0, snap(3, &[]));
        s.set(1, snap(3, &[]));
        assert!(s.slave_ids(0, 1).is_empty());
        assert!(s.totals(0, 1).is_empty());
        assert_eq!(s.slave_count(0), Some(3));
    }
}
