//! The master's role and epoch, as one state machine.
//!
//! A master is `Standby` (not serving: `ERR NOTPRIMARY`), `Candidate` (taking over into a new
//! epoch: `ERR UNAVAILABLE`) or `Primary` (serving). Beside the role it keeps its epoch, the
//! newest epoch it has learnt exists elsewhere (`superseded`), and whether its state is its own
//! log's (`authoritative`) or a copy of the other master's. Every change goes through one of
//! the transitions below, each atomic with respect to the others (they share one lock); the
//! hot path only reads, without a lock.
//!
//! ```text
//!   Standby --begin_takeover(e)--> Candidate --complete_takeover(e)--> Primary
//!      ^                              |                                  |
//!      +---------- give_up -----------+                                  |
//!      +---------- step_down(newer) -----------------------------------+ (from either)
//!      +---------- hand_off -------------------------------------------+
//! ```
//!
//! A step-down that lands while a takeover is completing wins: `complete_takeover` succeeds
//! only for a candidate still in the epoch it began, so a master told of a newer epoch never
//! goes on to serve. The threads around it (the controllers in `replica` and `crate::backup`,
//! the slave readers) decide when to call a transition; this type only decides whether it
//! applies.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use parking_lot::Mutex;

/// Whether this master serves requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Serves reads and writes.
    Primary = 0,
    /// Answers `ERR NOTPRIMARY`.
    Standby = 1,
    /// Taking over: accepts slaves into a new epoch, answers clients `ERR UNAVAILABLE`.
    Candidate = 2,
}

impl Role {
    /// Every role, for a report that lists them all (the `dsm_role` metric).
    pub const ALL: [Role; 3] = [Role::Primary, Role::Standby, Role::Candidate];

    /// The name shown in `STATS`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Candidate => "candidate",
        }
    }

    fn from_u8(v: u8) -> Role {
        match v {
            0 => Role::Primary,
            2 => Role::Candidate,
            _ => Role::Standby,
        }
    }
}

/// Role, epoch, supersession and authority, changed only by the transitions below.
pub struct RoleState {
    role: AtomicU8,
    epoch: AtomicU64,
    /// The newest epoch known to exist elsewhere, 0 for none.
    superseded: AtomicU64,
    authoritative: AtomicBool,
    /// Held by every transition that reads before it writes.
    transitions: Mutex<()>,
}

impl RoleState {
    /// A master that has just replayed its own log, ending in `epoch`: standby, authoritative.
    pub fn new(epoch: u64) -> RoleState {
        RoleState {
            role: AtomicU8::new(Role::Standby as u8),
            epoch: AtomicU64::new(epoch),
            superseded: AtomicU64::new(0),
            authoritative: AtomicBool::new(true),
            transitions: Mutex::new(()),
        }
    }

    /// The current role.
    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Acquire))
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The newest epoch a slave or the other master has shown to exist elsewhere, if any since
    /// the last takeover began.
    pub fn superseded(&self) -> Option<u64> {
        Some(self.superseded.load(Ordering::Acquire)).filter(|&e| e != 0)
    }

    /// True while the state is this master's own log's (it served last, or replayed its own
    /// log), false while it is a copy of the other master's.
    pub fn is_authoritative(&self) -> bool {
        self.authoritative.load(Ordering::Acquire)
    }

    /// Starts a takeover into `epoch`: candidate, and what was known of other epochs is
    /// forgotten (the new epoch is above all of it).
    pub fn begin_takeover(&self, epoch: u64) {
        let _t = self.transitions.lock();
        self.superseded.store(0, Ordering::Release);
        self.epoch.store(epoch, Ordering::Release);
        self.role.store(Role::Candidate as u8, Ordering::Release);
    }

    /// Ends a takeover: primary, with its own state. Refused (false, nothing changes) unless
    /// this master is still a candidate in `epoch` and has not been superseded since.
    pub fn complete_takeover(&self, epoch: u64) -> bool {
        let _t = self.transitions.lock();
        if self.role() != Role::Candidate || self.epoch() != epoch || self.superseded().is_some() {
            return false;
        }
        self.authoritative.store(true, Ordering::Release);
        self.role.store(Role::Primary as u8, Ordering::Release);
        true
    }

    /// Gives a takeover up (or leaves whatever role for standby): the epoch stays, so a later
    /// takeover starts above it.
    pub fn give_up(&self) {
        let _t = self.transitions.lock();
        self.role.store(Role::Standby as u8, Ordering::Release);
    }

    /// Another master serves in `newer` (a slave's `FENCED`, a registration from a newer
    /// epoch): remembers it and stops serving. Returns the role left, `None` if it was standby
    /// already.
    pub fn step_down(&self, newer: u64) -> Option<Role> {
        let _t = self.transitions.lock();
        self.superseded.fetch_max(newer, Ordering::AcqRel);
        let was = self.role();
        self.role.store(Role::Standby as u8, Ordering::Release);
        (was != Role::Standby).then_some(was)
    }

    /// Remembers that `newer` exists elsewhere without changing the role; a candidate waiting
    /// for its majority sees it and gives up.
    pub fn note_superseded(&self, newer: u64) {
        self.superseded.fetch_max(newer, Ordering::AcqRel);
    }

    /// Stops serving because the other master asked to take back (`HANDOFF`); returns the
    /// role left.
    pub fn hand_off(&self) -> Role {
        let _t = self.transitions.lock();
        let was = self.role();
        self.role.store(Role::Standby as u8, Ordering::Release);
        was
    }

    /// A record of the other master's log was applied here: the state is a copy.
    pub fn mark_copy(&self) {
        self.authoritative.store(false, Ordering::Release);
    }

    /// The followed log entered `epoch`: this copy is in it too.
    pub fn follow_epoch(&self, epoch: u64) {
        let _t = self.transitions.lock();
        self.epoch.store(epoch, Ordering::Release);
        self.authoritative.store(false, Ordering::Release);
    }

    /// The followed copy was dropped (a fresh one follows from the start): epoch 0.
    pub fn reset_copy(&self) {
        self.follow_epoch(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_takeover_makes_a_primary_with_its_own_state() {
        let s = RoleState::new(3);
        assert_eq!(
            (s.role(), s.epoch(), s.superseded(), s.is_authoritative()),
            (Role::Standby, 3, None, true)
        );
        s.note_superseded(4);
        s.begin_takeover(5);
        assert_eq!((s.role(), s.epoch(), s.superseded()), (Role::Candidate, 5, None));
        assert!(s.complete_takeover(5));
        assert_eq!((s.role(), s.is_authoritative()), (Role::Primary, true));
        // Only once: a primary is not a candidate.
        assert!(!s.complete_takeover(5));
    }

    #[test]
    fn a_step_down_during_a_takeover_wins() {
        let s = RoleState::new(1);
        s.begin_takeover(3);
        assert_eq!(s.step_down(4), Some(Role::Candidate));
        assert!(!s.complete_takeover(3), "a superseded candidate must not serve");
        assert_eq!((s.role(), s.superseded()), (Role::Standby, Some(4)));
        // A newer epoch learnt without a role change stops a takeover from completing too.
        s.begin_takeover(5);
        s.note_superseded(6);
        assert!(!s.complete_takeover(5));
        assert_eq!(s.role(), Role::Candidate, "the controller gives up; the state only refuses");
        s.give_up();
        assert_eq!(s.role(), Role::Standby);
        // A takeover into another epoch than the one begun is refused.
        s.begin_takeover(7);
        assert!(!s.complete_takeover(9));
    }

    #[test]
    fn stepping_down_and_handing_off_leave_a_standby() {
        let s = RoleState::new(1);
        s.begin_takeover(1);
        assert!(s.complete_takeover(1));
        assert_eq!(s.step_down(2), Some(Role::Primary));
        assert_eq!(s.step_down(3), None, "already standby");
        assert_eq!(s.superseded(), Some(3));
        s.begin_takeover(5);
        assert!(s.complete_takeover(5));
        assert_eq!(s.hand_off(), Role::Primary);
        assert_eq!((s.role(), s.epoch()), (Role::Standby, 5), "the epoch stays for the next takeover");
    }

    #[test]
    fn following_makes_a_copy() {
        let s = RoleState::new(0);
        s.mark_copy();
        assert!(!s.is_authoritative());
        s.follow_epoch(4);
        assert_eq!((s.epoch(), s.is_authoritative()), (4, false));
        s.reset_copy();
        assert_eq!(s.epoch(), 0);
        s.begin_takeover(6);
        assert!(s.complete_takeover(6));
        assert!(s.is_authoritative(), "a primary's state is its own");
    }
}
