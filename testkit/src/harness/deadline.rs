//! Request deadlines that hold even when a request does not return.
//!
//! A client thread blocks in its request. The client library bounds each socket operation,
//! but one request may involve several (connect to the primary, then to the backup, follow
//! `ERR NOTPRIMARY`), so it can return well after the harness's deadline. To keep the
//! per-second figures honest, every client thread publishes its request in flight in an
//! [`InFlight`] slot; the run loop scans the slots a few times a second and records a
//! `deadline` error, in the second the deadline passed, for each request past its deadline.
//! Whoever clears the slot first (the client thread with its reply, or the run loop at the
//! deadline) records the request; the other does not, so it is counted exactly once.

use std::sync::atomic::{AtomicU64, Ordering};

use super::metrics::Op;

/// One client thread's request in flight: 0 when idle, else `(start_us + 1) << 1 | op`, where
/// `start_us` is when it was sent, in microseconds since the load started, and `op` is 1 for a
/// write.
#[derive(Debug, Default)]
pub struct InFlight(AtomicU64);

impl InFlight {
    /// An idle slot.
    pub fn new() -> InFlight {
        InFlight(AtomicU64::new(0))
    }

    /// The client thread is sending `op` at `start_us`.
    pub fn begin(&self, start_us: u64, op: Op) {
        let bit = u64::from(op == Op::Write);
        self.0.store(((start_us.min(u64::MAX >> 2) + 1) << 1) | bit, Ordering::SeqCst);
    }

    /// The client thread has its reply: true when it should record the request, false when
    /// the run loop already recorded it as past its deadline.
    pub fn finish(&self) -> bool {
        self.0.swap(0, Ordering::SeqCst) != 0
    }

    /// Called by the run loop at `now_us`: if the request in flight was sent more than
    /// `deadline_us` ago, claims it and returns its kind, for the caller to record as a
    /// deadline error.
    pub fn expire(&self, now_us: u64, deadline_us: u64) -> Option<Op> {
        let v = self.0.load(Ordering::SeqCst);
        if v == 0 {
            return None;
        }
        let start_us = (v >> 1) - 1;
        if now_us.saturating_sub(start_us) <= deadline_us {
            return None;
        }
        self.0.compare_exchange(v, 0, Ordering::SeqCst, Ordering::SeqCst).ok().map(|_| {
            if v & 1 == 1 {
                Op::Write
            } else {
                Op::Read
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_in_time_is_the_clients_to_record() {
        let s = InFlight::new();
        s.begin(1_000, Op::Read);
        assert_eq!(s.expire(2_000, 5_000), None, "not yet past its deadline");
        assert!(s.finish());
        assert_eq!(s.expire(100_000, 5_000), None, "idle");
    }

    #[test]
    fn a_late_request_is_counted_once_at_its_deadline() {
        let s = InFlight::new();
        s.begin(0, Op::Write);
        assert_eq!(s.expire(5_001, 5_000), Some(Op::Write));
        assert_eq!(s.expire(9_000, 5_000), None, "claimed once");
        assert!(!s.finish(), "the late reply is not recorded again");
        s.begin(10_000, Op::Read);
        assert_eq!(s.expire(20_000, 5_000), Some(Op::Read));
    }
}
