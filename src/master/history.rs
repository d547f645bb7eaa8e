//! The epochs of a master's log: where each began. Two questions depend on them and nothing
//! else, so they are answered here without sockets:
//!
//! - what a new master must ask the slaves for (the writes its copy of the log may lack), and
//! - how much of this log a reconnecting slave already holds (so it is sent only the rest).
//!
//! Every master appends an `EPOCH` record when it starts serving, above every seq it has seen,
//! and a follower copies the other master's log record by record with the same seqs. So two
//! logs that hold the same `EPOCH e` record agree on everything before it, and on epoch `e`'s
//! records as far as both have them.

use crate::peer::Stamp;

/// Where one epoch began in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochStart {
    /// The epoch.
    pub epoch: u64,
    /// The seq of its `EPOCH` record.
    pub seq: u64,
    /// The seq of the record before it (0 if none): the end of what older epochs wrote here.
    pub before: u64,
}

/// The epochs of one log, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    epochs: Vec<EpochStart>,
    /// The seq of the last record applied or appended.
    last: u64,
}

/// What a [`crate::peer::Command::Scan`] asks for: see [`crate::peer::scan_wants`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanBounds {
    /// The log's last epoch.
    pub epoch: u64,
    /// The last seq of the log.
    pub seq: u64,
    /// The last seq older epochs wrote in the log.
    pub older_seq: u64,
}

impl History {
    /// An empty log's.
    pub fn new() -> History {
        History::default()
    }

    /// Notes a record at `seq` (in increasing order), an `EPOCH` record if `epoch` is given:
    /// what replay and a follower do for every record.
    pub fn note(&mut self, seq: u64, epoch: Option<u64>) {
        if let Some(epoch) = epoch {
            self.epochs.push(EpochStart { epoch, seq, before: self.last });
        }
        self.last = self.last.max(seq);
    }

    /// Notes the `EPOCH` record of a takeover by this master, whose log ended at `before` when
    /// the takeover began (records it appended since, its members', are not older epochs'
    /// writes). A master does not note its other appends: `log_last` is passed where needed.
    pub fn begin(&mut self, epoch: u64, seq: u64, before: u64) {
        self.epochs.push(EpochStart { epoch, seq, before });
        self.last = self.last.max(seq);
    }

    /// The epoch of the newest `EPOCH` record (0 before any): the epoch of the records that
    /// follow it.
    pub fn epoch(&self) -> u64 {
        self.epochs.last().map_or(0, |e| e.epoch)
    }

    /// Every epoch, oldest first.
    pub fn epochs(&self) -> &[EpochStart] {
        &self.epochs
    }

    /// What a master whose state is this log must ask the slaves for when it takes over: every
    /// entry of a newer epoch, of its last epoch above its last record, and of an older epoch
    /// above what older epochs wrote here. The last catches the writes the last epoch's master
    /// recovered from slaves when it took over: they are re-logged after its `EPOCH` record,
    /// and a copy of its log may end before them.
    ///
    /// `log_last` is the seq of the log's last record (not a seq merely reserved: a write of
    /// the last epoch between the two could be missing here).
    pub fn scan_bounds(&self, log_last: u64) -> ScanBounds {
        match self.epochs.last() {
            Some(e) => ScanBounds { epoch: e.epoch, seq: log_last, older_seq: e.before },
            None => ScanBounds { epoch: 0, seq: log_last, older_seq: 0 },
        }
    }

    /// The seq above which a slave that holds `held` (every write of epoch `held.epoch`'s log
    /// up to `held.seq`) must be sent this log's newest records: it holds the same records up
    /// to there. 0 (send everything) when the epoch is not in this log's history. `log_last`:
    /// the seq of the log's last record.
    pub fn resync_from(&self, held: Stamp, log_last: u64) -> u64 {
        let Some(i) = self.epochs.iter().position(|e| e.epoch == held.epoch) else {
            return 0;
        };
        // Epoch `held.epoch` ends here where the next one began; its master may have logged
        // more that this log never had, and the slave may hold that, which is no help.
        let end = self.epochs.get(i + 1).map_or(log_last, |next| next.before);
        held.seq.min(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of epoch 1 (records 1..=10), then epoch 2 taken over by this master at seq 15
    /// (above seqs it saw on the slaves), then records up to 30.
    fn history() -> History {
        let mut h = History::new();
        h.note(1, Some(1));
        for seq in 2..=10 {
            h.note(seq, None);
        }
        h.begin(2, 15, 10);
        h
    }

    #[test]
    fn a_takeover_asks_only_for_what_the_log_may_lack() {
        let h = history();
        assert_eq!(h.epoch(), 2);
        assert_eq!(h.scan_bounds(30), ScanBounds { epoch: 2, seq: 30, older_seq: 10 });
        assert_eq!(History::new().scan_bounds(0), ScanBounds { epoch: 0, seq: 0, older_seq: 0 });
        // A follower's copy notes every record, and the epoch's start the same way.
        let mut copy = History::new();
        for seq in 1..=10 {
            copy.note(seq, (seq == 1).then_some(1));
        }
        copy.note(15, Some(2));
        assert_eq!(copy.epochs(), h.epochs());
    }

    #[test]
    fn a_slave_in_sync_with_this_log_is_sent_only_what_is_newer() {
        let h = history();
        assert_eq!(h.resync_from(Stamp::new(2, 25), 30), 25, "this log's own epoch");
        assert_eq!(h.resync_from(Stamp::new(2, 99), 30), 30, "beyond this log: only what it has");
        assert_eq!(h.resync_from(Stamp::new(1, 7), 30), 7, "an older epoch of this log");
        // Epoch 1's master may have logged 11..14 that this log never had.
        assert_eq!(h.resync_from(Stamp::new(1, 14), 30), 10);
    }

    #[test]
    fn a_slave_of_an_unknown_lineage_is_sent_everything() {
        let h = history();
        assert_eq!(h.resync_from(Stamp::new(3, 40), 30), 0, "an epoch this log never saw");
        assert_eq!(h.resync_from(Stamp::default(), 30), 0, "a fresh slave");
    }
}
