//! Membership: which slaves are members of the cluster, and which of them are connected.
//!
//! A member is a slave id that has registered once (recorded in the log as `MEMBER <id>`) and
//! has not been removed by an operator (`REMOVE <id>`). Quorums are majorities of members, not
//! of connected slaves. Each member owns a slot, its bit in a write's ACK set; slots are
//! reused after a removal.

use std::sync::Arc;

use super::link::Link;

/// The most members a cluster may have (one bit each in a `u64` holder set).
pub const MAX_MEMBERS: usize = 64;

/// One member.
#[derive(Clone)]
pub struct Member {
    /// The slave's id.
    pub id: String,
    /// The seq of its `MEMBER` record (kept by a compaction).
    pub seq: u64,
    /// Its live connection, if any.
    pub link: Option<Arc<Link>>,
}

/// All members, by slot.
#[derive(Default)]
pub struct Members {
    slots: Vec<Option<Member>>,
}

impl Members {
    /// No members.
    pub fn new() -> Members {
        Members::default()
    }

    /// The number of members.
    pub fn count(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// The slot of `id`, if it is a member.
    pub fn slot_of(&self, id: &str) -> Option<usize> {
        self.slots.iter().position(|m| m.as_ref().is_some_and(|m| m.id == id))
    }

    /// Whether one more member fits.
    pub fn has_room(&self) -> bool {
        self.count() < MAX_MEMBERS
    }

    /// Adds a member whose `MEMBER` record has `seq` and returns its slot; `None` if the
    /// cluster is full.
    pub fn add(&mut self, id: &str, seq: u64) -> Option<usize> {
        if let Some(slot) = self.slot_of(id) {
            return Some(slot);
        }
        let member = Member { id: id.to_string(), seq, link: None };
        if let Some(slot) = self.slots.iter().position(Option::is_none) {
            self.slots[slot] = Some(member);
            return Some(slot);
        }
        if self.slots.len() >= MAX_MEMBERS {
            return None;
        }
        self.slots.push(Some(member));
        Some(self.slots.len() - 1)
    }

    /// Removes a member; returns its slot.
    pub fn remove(&mut self, id: &str) -> Option<usize> {
        let slot = self.slot_of(id)?;
        self.slots[slot] = None;
        Some(slot)
    }

    /// The member's live connection, if any.
    pub fn link(&self, slot: usize) -> Option<&Arc<Link>> {
        self.slots.get(slot)?.as_ref()?.link.as_ref()
    }

    /// Attaches a live connection to a member; returns the one it replaces.
    pub fn attach(&mut self, slot: usize, link: Arc<Link>) -> Option<Arc<Link>> {
        self.slots.get_mut(slot)?.as_mut()?.link.replace(link)
    }

    /// Detaches `link` if it is still the member's current connection.
    pub fn detach(&mut self, link: &Arc<Link>) {
        if let Some(Some(m)) = self.slots.get_mut(link.slot) {
            if m.link.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) {
                m.link = None;
            }
        }
    }

    /// Connected links, alive ones only.
    pub fn live_links(&self) -> Vec<Arc<Link>> {
        self.live().cloned().collect()
    }

    /// [`Members::live_links`] without collecting them (nor touching their reference counts).
    pub fn live(&self) -> impl Iterator<Item = &Arc<Link>> {
        self.slots.iter().flatten().filter_map(|m| m.link.as_ref()).filter(|l| l.is_alive())
    }

    /// Every member with its slot, sorted by id.
    pub fn all(&self) -> Vec<(usize, Member)> {
        let mut all: Vec<(usize, Member)> =
            self.slots.iter().enumerate().filter_map(|(i, m)| m.clone().map(|m| (i, m))).collect();
        all.sort_by(|a, b| a.1.id.cmp(&b.1.id));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_stable_and_reused_after_removal() {
        let mut m = Members::new();
        assert_eq!(m.add("a", 1), Some(0));
        assert_eq!(m.add("b", 1), Some(1));
        assert_eq!(m.add("a", 1), Some(0));
        assert_eq!(m.count(), 2);
        assert_eq!(m.remove("a"), Some(0));
        assert_eq!(m.remove("a"), None);
        assert_eq!(m.count(), 1);
        assert_eq!(m.add("c", 1), Some(0));
        assert_eq!(m.slot_of("b"), Some(1));
    }

    #[test]
    fn refuses_more_than_max_members() {
        let mut m = Members::new();
        for i in 0..MAX_MEMBERS {
            assert!(m.add(&format!("s{i}"), i as u64).is_some());
        }
        assert_eq!(m.add("one-too-many", 1), None);
    }
}
