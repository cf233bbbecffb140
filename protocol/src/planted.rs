//! Planted bugs: classic two-phase-commit and recovery mistakes, switchable
//! at run time, that the deterministic simulator must catch.
//!
//! They exist to prove the simulator finds bugs (FoundationDB's "buggify"
//! in reverse). They are compiled in only with the `planted-bugs` feature of
//! this crate; without it [`active`] is a constant `false` and every hook
//! disappears from the binary. The switch is thread-local: the simulator
//! runs a whole cluster on one thread, and parallel tests do not interfere.

/// A bug that can be planted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bug {
    /// A participant votes YES before its prepared record is synced: a crash
    /// after the vote loses the reservation of a transaction that commits.
    VoteBeforeSync,
    /// The coordinator commits when all but one participant voted YES.
    CommitWithoutAllVotes,
    /// A new coordinator leader does not re-drive the decided transactions
    /// of the table, so their participants are never told and never acked.
    NoRedriveOnNewLeader,
    /// A participant restarting from its journal forgets the holds of its
    /// prepared transactions.
    DropHoldsOnRestart,
    /// The transaction table registers an idempotency key again when it was
    /// first used under an earlier leader (term): a resubmission after a
    /// leader change is applied twice.
    IdempotencyTwiceAfterLeaderChange,
    /// An in-doubt participant asking about a transaction the table does not
    /// know is told "commit" instead of "abort" (presumed commit).
    PresumeCommit,
    /// A `Begin` applied after a presumed abort of its id ignores the
    /// tombstone and registers the transaction anyway.
    TombstoneIgnored,
    /// The coordinator hands the results of a batched proposal to its
    /// proposers in reverse order: each transaction may act on another's.
    BatchResultsMisrouted,
    /// A participant's fsync round takes its ticket before the writes its
    /// mailbox drain staged are applied: the round covers too little, and a
    /// crash after its YES loses the prepared record it promised.
    SyncBeforeStagedApply,
    /// The orders shard closes a paid order too (only `CREATED` may
    /// close): the payment stays with the merchant, the order reads
    /// `CLOSED`.
    ClosePaidOrder,
    /// The channels shard has no refund bound: the refunds of a charge may
    /// add up to more than was charged. The bound is gone from the shard's
    /// own consistency check too (as in an adapter that never tracked it),
    /// so only the simulator's model can notice.
    ChannelRefundUnbounded,
    /// A replicated shard's leader votes YES on a prepare before its log
    /// entry is committed and applied: the vote promises a reservation the
    /// group may never make (the entry is lost with the leader, or applying
    /// it refuses).
    VoteBeforeReplicated,
    /// A replicated shard's followers apply a prepare without reserving
    /// anything (a vote computed from node-local facts, not the replicated
    /// state): after a failover the new leader holds no hold for what its
    /// predecessor promised.
    FollowerSkipsReservation,
    /// A node that starts on an empty data directory comes back under its
    /// old replica ids (incarnation 0) without asking its peers whether it
    /// ran before: Raft's amnesia, a replica that lost its votes and its
    /// acknowledged entries voting as if it had them.
    RebuildUnderOldIdentity,
    /// The coordinator counts a prepare its batch answered `Blocked` (it
    /// would have waited for a lock, and reserved nothing) as a YES: the
    /// transaction commits on a shard that holds nothing for it.
    BlockedCountedAsYes,
    /// The coordinator sends its decisions without its log time (`at_ms`
    /// 0): every commit-timed entry (a statement line) is filed under
    /// 1970, on no day that anyone asks for.
    DecisionWithoutTime,
}

impl Bug {
    pub const ALL: [Bug; 16] = [
        Bug::VoteBeforeSync,
        Bug::CommitWithoutAllVotes,
        Bug::NoRedriveOnNewLeader,
        Bug::DropHoldsOnRestart,
        Bug::IdempotencyTwiceAfterLeaderChange,
        Bug::PresumeCommit,
        Bug::TombstoneIgnored,
        Bug::BatchResultsMisrouted,
        Bug::SyncBeforeStagedApply,
        Bug::ClosePaidOrder,
        Bug::ChannelRefundUnbounded,
        Bug::VoteBeforeReplicated,
        Bug::FollowerSkipsReservation,
        Bug::RebuildUnderOldIdentity,
        Bug::BlockedCountedAsYes,
        Bug::DecisionWithoutTime,
    ];

    /// The name used on the command line (`--bug NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Bug::VoteBeforeSync => "vote-before-sync",
            Bug::CommitWithoutAllVotes => "commit-without-all-votes",
            Bug::NoRedriveOnNewLeader => "no-redrive-on-new-leader",
            Bug::DropHoldsOnRestart => "drop-holds-on-restart",
            Bug::IdempotencyTwiceAfterLeaderChange => "idempotency-twice-after-leader-change",
            Bug::PresumeCommit => "presume-commit",
            Bug::TombstoneIgnored => "tombstone-ignored",
            Bug::BatchResultsMisrouted => "batch-results-misrouted",
            Bug::SyncBeforeStagedApply => "sync-before-staged-apply",
            Bug::ClosePaidOrder => "close-paid-order",
            Bug::ChannelRefundUnbounded => "channel-refund-unbounded",
            Bug::VoteBeforeReplicated => "vote-before-replicated",
            Bug::FollowerSkipsReservation => "follower-skips-reservation",
            Bug::RebuildUnderOldIdentity => "rebuild-under-old-identity",
            Bug::BlockedCountedAsYes => "blocked-counted-as-yes",
            Bug::DecisionWithoutTime => "decision-without-time",
        }
    }

    /// The shard copies a run needs for this bug to be on its path: 3 for
    /// the replicated path's bugs, 1 for the single-copy participant's
    /// journal and fsync rounds, `None` when either runs it.
    pub fn shard_replicas(self) -> Option<u32> {
        match self {
            Bug::VoteBeforeReplicated | Bug::FollowerSkipsReservation | Bug::RebuildUnderOldIdentity => Some(3),
            Bug::VoteBeforeSync | Bug::SyncBeforeStagedApply | Bug::DropHoldsOnRestart => Some(1),
            _ => None,
        }
    }

    pub fn parse(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|bug| bug.name() == name)
    }
}

impl std::fmt::Display for Bug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `true` when this build can plant bugs.
pub const AVAILABLE: bool = cfg!(feature = "planted-bugs");

#[cfg(feature = "planted-bugs")]
thread_local! {
    static PLANTED: std::cell::Cell<Option<Bug>> = const { std::cell::Cell::new(None) };
}

/// Plants `bug` on this thread (`None` removes it). Returns `false`, and
/// plants nothing, in a build without the `planted-bugs` feature.
pub fn plant(bug: Option<Bug>) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        PLANTED.with(|planted| planted.set(bug));
        true
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = bug;
        false
    }
}

/// Whether `bug` is planted on this thread. Always `false` (a constant the
/// compiler removes) without the `planted-bugs` feature.
#[inline]
pub fn active(bug: Bug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        PLANTED.with(|planted| planted.get() == Some(bug))
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = bug;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for bug in Bug::ALL {
            assert_eq!(Bug::parse(bug.name()), Some(bug));
        }
        assert_eq!(Bug::parse("nope"), None);
    }

    #[test]
    fn planting_is_thread_local_and_compiled_out_without_the_feature() {
        let planted = plant(Some(Bug::PresumeCommit));
        assert_eq!(planted, AVAILABLE);
        assert_eq!(active(Bug::PresumeCommit), AVAILABLE);
        assert!(!active(Bug::VoteBeforeSync));
        std::thread::spawn(|| assert!(!active(Bug::PresumeCommit))).join().unwrap();
        plant(None);
        assert!(!active(Bug::PresumeCommit));
    }
}
