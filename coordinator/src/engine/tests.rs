//! Unit tests of the coordinator engine: events in, actions out, no I/O.

use super::*;
use paytx_protocol::{AccountId, Currency, EntityKey, Money};

const TERM: u64 = 3;

fn engine() -> Engine {
    let mut engine = Engine::new(1, ShardMap::one_shard_per_node(&[1, 2, 3]), EngineConfig::default());
    assert!(engine.handle(Event::BecameLeader { term: TERM, live: Vec::new() }).is_empty());
    engine
}

/// Two accounts on different shards (found, not assumed).
fn accounts_on_two_shards() -> (AccountId, AccountId) {
    let map = ShardMap::one_shard_per_node(&[1, 2, 3]);
    let a = AccountId(1);
    let b = (2..1000)
        .map(AccountId)
        .find(|b| map.shard_of(EntityKey::Account(*b)) != map.shard_of(EntityKey::Account(a)))
        .expect("some account lands on another shard");
    (a, b)
}

fn transfer(key: &str, amount_minor: i64) -> TxnRequest {
    let (a, b) = accounts_on_two_shards();
    TxnRequest::new(
        key,
        vec![
            Operation::Debit { account: a, amount: Money::new(amount_minor, Currency::CNY) },
            Operation::Credit { account: b, amount: Money::new(amount_minor, Currency::CNY) },
        ],
    )
}

/// Submits and applies Begin; returns the txn id and the prepared shards.
fn submit_and_begin(engine: &mut Engine, ticket: u64, key: &str) -> (TxnId, Vec<ShardId>) {
    let actions = engine.handle(Event::Submit { ticket: Ticket(ticket), request: transfer(key, 10) });
    let [Action::Propose { txn, command: Command::Begin { .. } }] = actions.as_slice() else {
        panic!("expected one Begin proposal, got {actions:?}")
    };
    let txn = *txn;
    let actions = engine.handle(Event::BeginApplied { txn, result: CommandResult::Begun });
    let shards: Vec<ShardId> = actions
        .iter()
        .filter_map(|a| match a {
            Action::SendPrepare { shard, .. } => Some(*shard),
            _ => None,
        })
        .collect();
    assert_eq!(shards.len(), 2, "one prepare per shard: {actions:?}");
    assert!(actions.iter().any(|a| matches!(a, Action::SetTimer { event: Event::PrepareDeadline { .. }, .. })));
    (txn, shards)
}

fn proposed_decision(actions: &[Action]) -> Outcome {
    match actions {
        [Action::Propose { command: Command::Decide { outcome, .. }, .. }] => outcome.clone(),
        other => panic!("expected one Decide proposal, got {other:?}"),
    }
}

#[test]
fn all_yes_commits_replies_fans_out_and_forgets() {
    let mut engine = engine();
    let (txn, shards) = submit_and_begin(&mut engine, 1, "k1");
    assert!(engine.handle(Event::VoteReceived { txn, shard: shards[0], vote: Vote::Yes }).is_empty());
    let actions = engine.handle(Event::VoteReceived { txn, shard: shards[1], vote: Vote::Yes });
    assert_eq!(proposed_decision(&actions), Outcome::Committed);

    let actions = engine.handle(Event::DecisionApplied { txn, outcome: Outcome::Committed });
    assert!(actions.contains(&Action::Reply {
        ticket: Ticket(1),
        result: Ok(TxnReceipt { txn, outcome: Outcome::Committed, replayed: false })
    }));
    assert_eq!(actions.iter().filter(|a| matches!(a, Action::SendDecide { commit: true, .. })).count(), 2);

    assert!(engine.handle(Event::DecideAcked { txn, shard: shards[0] }).is_empty());
    assert!(engine.handle(Event::DecideAcked { txn, shard: shards[1] }).is_empty());
    assert_eq!(engine.in_flight(), 0);
    assert_eq!(engine.handle(Event::Tick), vec![Action::ProposeForget { txns: vec![txn] }]);
    assert!(engine.handle(Event::Tick).is_empty(), "a batch is proposed once");
}

#[test]
fn a_no_vote_aborts_with_its_reason() {
    let mut engine = engine();
    let (txn, shards) = submit_and_begin(&mut engine, 1, "k1");
    let reason = AbortReason::UnknownAccount(AccountId(1));
    let actions = engine.handle(Event::VoteReceived { txn, shard: shards[0], vote: Vote::No(reason.clone()) });
    assert_eq!(proposed_decision(&actions), Outcome::Aborted(reason.clone()));
    // A late YES from the other shard changes nothing.
    assert!(engine.handle(Event::VoteReceived { txn, shard: shards[1], vote: Vote::Yes }).is_empty());
    let actions = engine.handle(Event::DecisionApplied { txn, outcome: Outcome::Aborted(reason.clone()) });
    assert!(actions.iter().all(|a| !matches!(a, Action::SendDecide { commit: true, .. })));
}

#[test]
fn missing_votes_abort_at_the_deadline_and_unreachable_shards_abort_at_once() {
    let mut engine = engine();
    let (txn, shards) = submit_and_begin(&mut engine, 1, "k1");
    engine.handle(Event::VoteReceived { txn, shard: shards[0], vote: Vote::Yes });
    let actions = engine.handle(Event::PrepareDeadline { txn, term: TERM });
    assert_eq!(proposed_decision(&actions), Outcome::Aborted(AbortReason::PrepareTimeout { shard: shards[1] }));

    let (txn, shards) = submit_and_begin(&mut engine, 2, "k2");
    let actions = engine.handle(Event::PrepareFailed { txn, shard: shards[1] });
    assert_eq!(proposed_decision(&actions), Outcome::Aborted(AbortReason::ShardUnavailable { shard: shards[1] }));
}

#[test]
fn the_applied_decision_wins_over_the_proposed_one() {
    let mut engine = engine();
    let (txn, shards) = submit_and_begin(&mut engine, 1, "k1");
    engine.handle(Event::VoteReceived { txn, shard: shards[0], vote: Vote::Yes });
    engine.handle(Event::VoteReceived { txn, shard: shards[1], vote: Vote::Yes });
    // Another leader's abort got into the log first.
    let applied = Outcome::Aborted(AbortReason::PresumedAbort);
    let actions = engine.handle(Event::DecisionApplied { txn, outcome: applied.clone() });
    assert!(actions.contains(&Action::Reply {
        ticket: Ticket(1),
        result: Ok(TxnReceipt { txn, outcome: applied, replayed: false })
    }));
    assert!(actions.iter().all(|a| !matches!(a, Action::SendDecide { commit: true, .. })));
}

#[test]
fn stale_timers_from_an_earlier_term_are_ignored() {
    let mut engine = engine();
    let (txn, _) = submit_and_begin(&mut engine, 1, "k1");
    assert!(engine.handle(Event::PrepareDeadline { txn, term: TERM - 1 }).is_empty());
}

#[test]
fn followers_and_bad_requests_get_typed_errors() {
    let mut follower = Engine::new(2, ShardMap::one_shard_per_node(&[1, 2, 3]), EngineConfig::default());
    follower.handle(Event::SteppedDown { leader_hint: Some(1) });
    let actions = follower.handle(Event::Submit { ticket: Ticket(1), request: transfer("k", 1) });
    assert_eq!(
        actions,
        vec![Action::Reply { ticket: Ticket(1), result: Err(RequestError::NoLeader { leader_hint: Some(1) }) }]
    );

    let mut engine = engine();
    let actions = engine.handle(Event::Submit { ticket: Ticket(2), request: transfer("k", -5) });
    assert!(matches!(actions.as_slice(), [Action::Reply { result: Err(RequestError::Invalid(_)), .. }]));
    assert_eq!(engine.in_flight(), 0, "nothing started for an invalid request");
}

#[test]
fn idempotent_resubmissions_replay_or_conflict() {
    let mut engine = engine();
    let actions = engine.handle(Event::Submit { ticket: Ticket(1), request: transfer("k", 10) });
    let [Action::Propose { txn, .. }] = actions.as_slice() else { panic!("{actions:?}") };
    let original = TxnId { term: 1, node: 9, seq: 4 };
    let state = TxnState::Decided(Outcome::Committed);
    let actions =
        engine.handle(Event::BeginApplied { txn: *txn, result: CommandResult::Existing { txn: original, state } });
    assert_eq!(
        actions,
        vec![Action::Reply {
            ticket: Ticket(1),
            result: Ok(TxnReceipt { txn: original, outcome: Outcome::Committed, replayed: true })
        }]
    );

    let actions = engine.handle(Event::Submit { ticket: Ticket(2), request: transfer("k", 11) });
    let [Action::Propose { txn, .. }] = actions.as_slice() else { panic!("{actions:?}") };
    let actions = engine.handle(Event::BeginApplied { txn: *txn, result: CommandResult::KeyConflict });
    assert!(matches!(
        actions.as_slice(),
        [Action::Reply { result: Err(RequestError::IdempotencyConflict { .. }), .. }]
    ));
}

#[test]
fn a_concurrent_duplicate_waits_for_the_original() {
    let mut engine = engine();
    let (txn, shards) = submit_and_begin(&mut engine, 1, "k");
    let actions = engine.handle(Event::Submit { ticket: Ticket(2), request: transfer("k", 10) });
    let [Action::Propose { txn: dup, .. }] = actions.as_slice() else { panic!("{actions:?}") };
    let existing = CommandResult::Existing { txn, state: TxnState::InProgress };
    assert!(engine.handle(Event::BeginApplied { txn: *dup, result: existing }).is_empty());
    for shard in shards {
        engine.handle(Event::VoteReceived { txn, shard, vote: Vote::Yes });
    }
    let actions = engine.handle(Event::DecisionApplied { txn, outcome: Outcome::Committed });
    let replies: Vec<_> = actions.iter().filter(|a| matches!(a, Action::Reply { .. })).collect();
    assert_eq!(replies.len(), 2, "both the original and the duplicate are answered once");
    assert!(actions.contains(&Action::Reply {
        ticket: Ticket(2),
        result: Ok(TxnReceipt { txn, outcome: Outcome::Committed, replayed: true })
    }));
}

#[test]
fn a_new_leader_redrives_decided_and_undecided_transactions() {
    let mut engine = Engine::new(2, ShardMap::one_shard_per_node(&[1, 2, 3]), EngineConfig::default());
    let request = transfer("k", 5);
    let decided = TxnId { term: 1, node: 1, seq: 1 };
    let undecided = TxnId { term: 1, node: 1, seq: 2 };
    let record =
        |decision| TxnRecord { key: request.key.clone(), ops: request.ops.clone(), prepare_timeout_ms: 50, decision };
    let actions = engine.handle(Event::BecameLeader {
        term: 2,
        live: vec![(decided, record(Some(Outcome::Committed))), (undecided, record(None))],
    });
    let decides =
        actions.iter().filter(|a| matches!(a, Action::SendDecide { txn, commit: true, .. } if *txn == decided)).count();
    let prepares = actions.iter().filter(|a| matches!(a, Action::SendPrepare { txn, .. } if *txn == undecided)).count();
    assert_eq!((decides, prepares), (2, 2));
    assert!(
        actions.contains(&Action::SetTimer { after_ms: 50, event: Event::PrepareDeadline { txn: undecided, term: 2 } })
    );

    // A failed decide is retried after a delay, until acked.
    let shard = ShardMap::one_shard_per_node(&[1, 2, 3]).split(&request.ops).into_keys().next().expect("two shards");
    let actions = engine.handle(Event::DecideFailed { txn: decided, shard });
    assert_eq!(
        actions,
        vec![Action::SetTimer { after_ms: 200, event: Event::RetryDecide { txn: decided, shard, term: 2 } }]
    );
    assert_eq!(
        engine.handle(Event::RetryDecide { txn: decided, shard, term: 2 }),
        vec![Action::SendDecide { txn: decided, shard, commit: true }]
    );

    // Losing leadership answers waiting clients with a retryable error.
    let actions = engine.handle(Event::SteppedDown { leader_hint: Some(3) });
    assert!(actions.is_empty(), "no clients were waiting on re-driven transactions");
    assert_eq!(engine.in_flight(), 0);
}

// Planted bugs (`paytx_protocol::planted`): each test plants its bug, shows
// the wrong behaviour, and unplants it. Built without
// `paytx-protocol/planted-bugs`, planting is refused and the test checks the
// correct behaviour instead (the hooks are inert).

#[test]
fn planted_commit_without_all_votes_commits_with_a_vote_missing_and_ignores_a_later_no() {
    use paytx_protocol::planted::{plant, Bug};
    let mut engine = engine();
    let (txn, shards) = submit_and_begin(&mut engine, 1, "k1");
    let planted = plant(Some(Bug::CommitWithoutAllVotes));
    let first_yes = engine.handle(Event::VoteReceived { txn, shard: shards[0], vote: Vote::Yes });
    let reason = AbortReason::UnknownAccount(AccountId(1));
    let late_no = engine.handle(Event::VoteReceived { txn, shard: shards[1], vote: Vote::No(reason.clone()) });
    plant(None);
    if !planted {
        assert!(first_yes.is_empty(), "waits for every vote");
        assert_eq!(proposed_decision(&late_no), Outcome::Aborted(reason));
        return;
    }
    assert_eq!(proposed_decision(&first_yes), Outcome::Committed, "committed on one YES of two");
    assert!(late_no.is_empty(), "the NO of the shard that was not waited for changes nothing");
}

#[test]
fn planted_no_redrive_on_new_leader_sends_no_decides_but_still_reprepares() {
    use paytx_protocol::planted::{plant, Bug};
    let mut engine = Engine::new(2, ShardMap::one_shard_per_node(&[1, 2, 3]), EngineConfig::default());
    let request = transfer("k", 5);
    let decided = TxnId { term: 1, node: 1, seq: 1 };
    let undecided = TxnId { term: 1, node: 1, seq: 2 };
    let record =
        |decision| TxnRecord { key: request.key.clone(), ops: request.ops.clone(), prepare_timeout_ms: 50, decision };
    let planted = plant(Some(Bug::NoRedriveOnNewLeader));
    let actions = engine.handle(Event::BecameLeader {
        term: 2,
        live: vec![(decided, record(Some(Outcome::Committed))), (undecided, record(None))],
    });
    plant(None);
    let decides = actions.iter().filter(|a| matches!(a, Action::SendDecide { .. })).count();
    let prepares = actions.iter().filter(|a| matches!(a, Action::SendPrepare { txn, .. } if *txn == undecided)).count();
    if !planted {
        assert_eq!((decides, prepares, engine.in_flight()), (2, 2, 2));
        return;
    }
    assert_eq!((decides, prepares), (0, 2), "the decided txn is not re-sent, the undecided one is re-prepared");
    assert_eq!(engine.in_flight(), 1, "the decided txn is not tracked");
    // Nothing will ever retry it: its participants are never told, never ack.
    let shard = ShardMap::one_shard_per_node(&[1, 2, 3]).split(&request.ops).into_keys().next().expect("two shards");
    assert!(engine.handle(Event::DecideFailed { txn: decided, shard }).is_empty());
    assert!(engine.handle(Event::RetryDecide { txn: decided, shard, term: 2 }).is_empty());
}

#[test]
fn leadership_of_the_same_term_reported_again_keeps_transactions_in_flight() {
    let mut engine = engine();
    let (txn, shards) = submit_and_begin(&mut engine, 1, "k1");
    assert!(engine.handle(Event::BecameLeader { term: TERM, live: Vec::new() }).is_empty());
    assert_eq!(engine.in_flight(), 1, "the transaction is still driven");
    engine.handle(Event::VoteReceived { txn, shard: shards[0], vote: Vote::Yes });
    let actions = engine.handle(Event::VoteReceived { txn, shard: shards[1], vote: Vote::Yes });
    assert_eq!(proposed_decision(&actions), Outcome::Committed);
    // Ids keep growing: the next transaction gets a new one.
    let actions = engine.handle(Event::Submit { ticket: Ticket(2), request: transfer("k2", 1) });
    let [Action::Propose { txn: next, .. }] = actions.as_slice() else { panic!("{actions:?}") };
    assert!(next.seq > txn.seq);
}

#[test]
fn an_adopted_orphan_is_prepared_and_an_already_tracked_one_is_ignored() {
    let mut engine = engine();
    let request = transfer("orphan", 5);
    let orphan = TxnId { term: TERM, node: 1, seq: 999 };
    let record =
        TxnRecord { key: request.key.clone(), ops: request.ops.clone(), prepare_timeout_ms: 70, decision: None };
    let actions = engine.handle(Event::Adopt { txn: orphan, record: record.clone() });
    assert_eq!(actions.iter().filter(|a| matches!(a, Action::SendPrepare { .. })).count(), 2);
    assert!(
        actions.contains(&Action::SetTimer { after_ms: 70, event: Event::PrepareDeadline { txn: orphan, term: TERM } })
    );
    assert!(engine.tracks(&orphan));
    assert!(engine.handle(Event::Adopt { txn: orphan, record }).is_empty(), "adopted once");
}

#[test]
fn a_duplicate_attached_after_the_decision_is_answered_at_once() {
    let mut engine = engine();
    let (txn, shards) = submit_and_begin(&mut engine, 1, "k");
    for shard in &shards {
        engine.handle(Event::VoteReceived { txn, shard: *shard, vote: Vote::Yes });
    }
    engine.handle(Event::DecisionApplied { txn, outcome: Outcome::Committed });
    // A duplicate whose Begin result is handled only now (out of order).
    let actions = engine.handle(Event::Submit { ticket: Ticket(2), request: transfer("k", 10) });
    let [Action::Propose { txn: dup, .. }] = actions.as_slice() else { panic!("{actions:?}") };
    let actions = engine.handle(Event::BeginApplied {
        txn: *dup,
        result: CommandResult::Existing { txn, state: TxnState::InProgress },
    });
    assert_eq!(
        actions,
        vec![Action::Reply {
            ticket: Ticket(2),
            result: Ok(TxnReceipt { txn, outcome: Outcome::Committed, replayed: true })
        }]
    );
}

#[test]
fn the_ids_of_an_epoch_never_spill_into_the_next() {
    let config = EngineConfig { seq_base: (1 << 32) + u64::from(u32::MAX) - 1, ..EngineConfig::default() };
    let mut engine = Engine::new(1, ShardMap::one_shard_per_node(&[1, 2, 3]), config);
    engine.handle(Event::BecameLeader { term: TERM, live: Vec::new() });
    let actions = engine.handle(Event::Submit { ticket: Ticket(1), request: transfer("last", 1) });
    assert!(matches!(actions.as_slice(), [Action::Propose { .. }]), "the last id of the epoch is used");
    let actions = engine.handle(Event::Submit { ticket: Ticket(2), request: transfer("over", 1) });
    assert!(
        matches!(actions.as_slice(), [Action::Reply { result: Err(RequestError::Overloaded { .. }), .. }]),
        "{actions:?}"
    );
}

#[test]
fn a_late_proposal_failure_does_not_drop_a_transaction_driven_again() {
    let mut engine = engine();
    let request = transfer("readopted", 5);
    let txn = TxnId { term: TERM, node: 1, seq: 77 };
    let record =
        TxnRecord { key: request.key.clone(), ops: request.ops.clone(), prepare_timeout_ms: 50, decision: None };
    engine.handle(Event::Adopt { txn, record });
    let error = RequestError::NoLeader { leader_hint: None };
    assert!(engine.handle(Event::ProposalFailed { txn, error }).is_empty());
    assert!(engine.tracks(&txn), "still driven");
}
