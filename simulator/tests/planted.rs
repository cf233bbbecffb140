//! Planted bugs prove the simulator finds bugs: each one, planted, must make
//! a campaign fail within 200 seeds. Runs only in a build with the
//! `planted-bugs` feature (`cargo test -p paytx-simulator --features planted-bugs`).
#![cfg(feature = "planted-bugs")]

use paytx_protocol::planted::Bug;
use paytx_simulator::{run, SimConfig};

/// The first failing seed of a campaign over 0..200, if any.
fn first_failing_seed(bug: Bug) -> Option<u64> {
    (0..200u64).find(|seed| run(&config(bug, *seed)).failure.is_some())
}

/// A short run with `bug` planted, on the shard copies its path needs.
fn config(bug: Bug, seed: u64) -> SimConfig {
    let defaults = SimConfig::new(seed);
    let replicas = bug.shard_replicas().unwrap_or(defaults.replicas);
    SimConfig { operations: 100, bug: Some(bug), replicas, ..defaults }
}

/// The new checks must each catch their bug alone: the first failing run
/// breaks `invariant` and nothing else (without that check the bug passes).
fn assert_caught_only_by(bug: Bug, invariant: &str) {
    let failure = (0..200u64).find_map(|seed| run(&config(bug, seed)).failure.map(|f| (seed, f)));
    let Some((seed, failure)) = failure else { panic!("planted bug {bug} survived 200 seeds") };
    let names: Vec<&str> = failure.violations.iter().map(|v| v.invariant).collect();
    eprintln!("{bug}: first caught at seed {seed} by {names:?}");
    assert!(names.iter().all(|name| *name == invariant), "{bug} was caught by {names:?}, expected only {invariant}");
}

fn assert_caught(bug: Bug) {
    let seed = first_failing_seed(bug);
    assert!(seed.is_some(), "planted bug {bug} survived 200 seeds");
    eprintln!("{bug}: first caught at seed {seed:?}");
}

#[test]
fn commit_without_all_votes_is_caught() {
    assert_caught(Bug::CommitWithoutAllVotes);
}

#[test]
fn drop_holds_on_restart_is_caught() {
    assert_caught(Bug::DropHoldsOnRestart);
}

#[test]
fn vote_before_sync_is_caught() {
    assert_caught(Bug::VoteBeforeSync);
}

#[test]
fn no_redrive_on_new_leader_is_caught() {
    assert_caught(Bug::NoRedriveOnNewLeader);
}

#[test]
fn idempotency_twice_after_leader_change_is_caught() {
    assert_caught(Bug::IdempotencyTwiceAfterLeaderChange);
}

#[test]
fn presume_commit_is_caught() {
    assert_caught(Bug::PresumeCommit);
}

#[test]
fn blocked_counted_as_yes_is_caught() {
    assert_caught(Bug::BlockedCountedAsYes);
}

#[test]
fn batch_results_misrouted_is_caught() {
    assert_caught(Bug::BatchResultsMisrouted);
}

#[test]
fn sync_before_staged_apply_is_caught() {
    assert_caught(Bug::SyncBeforeStagedApply);
}

#[test]
fn close_paid_order_is_caught_only_by_the_close_rule() {
    assert_caught_only_by(Bug::ClosePaidOrder, "order-closed-only-when-created");
}

#[test]
fn decision_without_time_is_caught_only_by_the_commit_timed_entries() {
    assert_caught_only_by(Bug::DecisionWithoutTime, "commit-timed-entries");
}

#[test]
fn channel_refund_unbounded_is_caught_only_by_the_charge_bound() {
    assert_caught_only_by(Bug::ChannelRefundUnbounded, "channel-refund-within-charged");
}

#[test]
fn vote_before_replicated_is_caught() {
    assert_caught(Bug::VoteBeforeReplicated);
}

#[test]
fn follower_skips_reservation_is_caught() {
    assert_caught(Bug::FollowerSkipsReservation);
}

/// Amnesia is caught where it starts: the wiped node running under an
/// identity its lost disk had voted with (what that vote then breaks
/// depends on timing, and may also show).
#[test]
fn rebuild_under_old_identity_is_caught_by_the_identity_check() {
    let bug = Bug::RebuildUnderOldIdentity;
    let failure = (0..200u64).find_map(|seed| run(&config(bug, seed)).failure.map(|f| (seed, f)));
    let Some((seed, failure)) = failure else { panic!("planted bug {bug} survived 200 seeds") };
    let names: Vec<&str> = failure.violations.iter().map(|v| v.invariant).collect();
    eprintln!("{bug}: first caught at seed {seed} by {names:?}");
    assert!(names.contains(&"no-identity-reused-after-wipe"), "{bug} was caught by {names:?}");
}
