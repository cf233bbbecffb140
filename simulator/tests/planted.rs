//! Planted bugs prove the simulator finds bugs: each one, planted, must make
//! a campaign fail within 200 seeds. Runs only in a build with the
//! `planted-bugs` feature (`cargo test -p paytx-simulator --features planted-bugs`).
#![cfg(feature = "planted-bugs")]

use paytx_protocol::planted::Bug;
use paytx_simulator::{run, SimConfig};

/// The first failing seed of a campaign over 0..200, if any.
fn first_failing_seed(bug: Bug) -> Option<u64> {
    (0..200u64)
        .find(|seed| run(&SimConfig { operations: 100, bug: Some(bug), ..SimConfig::new(*seed) }).failure.is_some())
}

fn assert_caught(bug: Bug) {
    let seed = first_failing_seed(bug);
    assert!(seed.is_some(), "planted bug {bug} survived 200 seeds");
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
fn batch_results_misrouted_is_caught() {
    assert_caught(Bug::BatchResultsMisrouted);
}

#[test]
fn sync_before_staged_apply_is_caught() {
    assert_caught(Bug::SyncBeforeStagedApply);
}
