//! Unit tests of the coordinator engine: events in, actions out, no I/O.

use super::*;
use paytx_protocol::{AccountId, Currency, EntityKey, Money};

const TERM: u64 = 3;

fn shard_map() -> ShardMap {
    ShardMap::one_shard_per_node(&[1, 2, 3])
}

fn engine() -> Engine {
    engine_with(EngineConfig::default())
}

fn engine_with(config: EngineConfig) -> Engine {
    let mut engine = Engine::new(1, shard_map(), config);
    assert!(engine.handle(Event::BecameLeader { term: TERM, live: Vec::new() }).is_empty());
    engine
}

/// Two accounts on different shards (found, not assumed).
fn accounts_on_two_shards() -> (AccountId, AccountId) {
    let map = shard_map();
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

/// Submits `key`; checks the actions are, in order, the Begin proposal, one
/// prepare per shard (in parallel with the Begin) and the prepare deadline.
/// Returns the txn id and its shards.
fn submit(engine: &mut Engine, ticket: u64, key: &str) -> (TxnId, Vec<ShardId>) {
    let request = transfer(key, 10);
    let split = shard_map().split(&request.ops);
    let actions = engine.handle(Event::Submit { ticket: Ticket(ticket), request });
    let Some(Action::Propose { txn, command: Command::Begin { txn: begun, .. }, .. }) = actions.first() else {
        panic!("expected the Begin proposal first, got {actions:?}")
    };
    let txn = *txn;
    assert_eq!(*begun, txn, "the Begin registers the proposed id");
    let mut expected = vec![actions[0].clone()];
    for (shard, ops) in &split {
        expected.push(Action::SendPrepare { txn, shard: *shard, ops: ops.clone() });
    }
    expected.push(Action::SetTimer {
        after_ms: EngineConfig::default().prepare_timeout_ms,
        event: Event::PrepareDeadline { txn, term: TERM },
    });
    assert_eq!(actions, expected, "Begin ∥ prepares, then the deadline");
    let shards: Vec<ShardId> = split.into_keys().collect();
    assert_eq!(shards.len(), 2, "the transfer spans two shards");
    (txn, shards)
}

/// Submits `key` and applies its Begin before any vote (nothing to do yet).
fn submit_and_begin(engine: &mut Engine, ticket: u64, key: &str) -> (TxnId, Vec<ShardId>) {
    let (txn, shards) = submit(engine, ticket, key);
    let actions = engine.handle(Event::BeginApplied { txn, result: CommandResult::Begun });
    assert!(actions.is_empty(), "no vote yet, nothing to decide: {actions:?}");
    (txn, shards)
}

/// The outcome of the single `Decide` proposal among `actions`.
fn decision_of(actions: &[Action]) -> Outcome {
    let decides: Vec<&Outcome> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Propose { command: Command::Decide { outcome, .. }, .. } => Some(outcome),
            _ => None,
        })
        .collect();
    match decides.as_slice() {
        [outcome] => (*outcome).clone(),
        _ => panic!("expected one Decide proposal, got {actions:?}"),
    }
}

/// `actions` are exactly one `Decide` proposal, and nothing else.
fn proposed_decision(actions: &[Action]) -> Outcome {
    match actions {
        [Action::Propose { command: Command::Decide { outcome, .. }, .. }] => outcome.clone(),
        other => panic!("expected one Decide proposal alone, got {other:?}"),
    }
}

fn replies(actions: &[Action]) -> Vec<(Ticket, Result<TxnReceipt, RequestError>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Reply { ticket, result } => Some((*ticket, result.clone())),
            _ => None,
        })
        .collect()
}

fn committed(txn: TxnId, replayed: bool) -> Result<TxnReceipt, RequestError> {
    Ok(TxnReceipt { txn, outcome: Outcome::Committed, replayed })
}

/// The shards `actions` send the decision of `txn` to (`commit` as given).
fn decides_to(actions: &[Action], txn: TxnId, commit: bool) -> Vec<ShardId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendDecide { txn: t, shard, commit: c } if *t == txn && *c == commit => Some(*shard),
            _ => None,
        })
        .collect()
}

fn yes_from(engine: &mut Engine, txn: TxnId, shard: ShardId) -> Vec<Action> {
    engine.handle(Event::VoteReceived { txn, shard, vote: Vote::Yes })
}

/// A table record of `key` (undecided when `decision` is `None`).
fn table_record(key: &str, decision: Option<Outcome>) -> TxnRecord {
    let request = transfer(key, 5);
    TxnRecord { key: request.key, ops: request.ops, prepare_timeout_ms: 50, decision }
}

#[test]
fn a_submission_proposes_the_begin_and_prepares_every_shard_at_once() {
    let mut engine = engine();
    let (txn, shards) = submit(&mut engine, 1, "k1");
    assert_eq!(txn.term, TERM);
    assert_eq!(shards.len(), 2);
    assert_eq!(engine.in_flight(), 1);
}

#[test]
fn all_yes_commits_replies_fans_out_and_forgets() {
    let mut engine = engine();
    let (txn, shards) = submit_and_begin(&mut engine, 1, "k1");
    assert!(yes_from(&mut engine, txn, shards[0]).is_empty());
    let actions = yes_from(&mut engine, txn, shards[1]);
    // Implicit commit: the client hears it together with the Decide proposal.
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert_eq!(decision_of(&actions), Outcome::Committed);
    assert_eq!(replies(&actions), vec![(Ticket(1), committed(txn, false))]);

    let actions = engine.handle(Event::DecisionApplied { txn, outcome: Outcome::Committed });
    assert!(replies(&actions).is_empty(), "the client was answered already: {actions:?}");
    assert_eq!(decides_to(&actions, txn, true), shards);
    assert_eq!(actions.len(), 2);

    assert!(engine.handle(Event::DecideAcked { txn, shard: shards[0] }).is_empty());
    assert!(engine.handle(Event::DecideAcked { txn, shard: shards[1] }).is_empty());
    assert_eq!(engine.in_flight(), 0);
    assert!(engine.tracks(&txn), "queued for Forget");
    assert_eq!(engine.handle(Event::Tick), vec![Action::ProposeForget { txns: vec![txn] }]);
    assert!(engine.handle(Event::Tick).is_empty(), "a batch is proposed once");
    assert!(!engine.tracks(&txn));
}

#[test]
fn a_no_vote_aborts_with_its_reason() {
    let mut engine = engine();
    let (txn, shards) = submit_and_begin(&mut engine, 1, "k1");
    let reason = AbortReason::UnknownAccount(AccountId(1));
    let actions = engine.handle(Event::VoteReceived { txn, shard: shards[0], vote: Vote::No(reason.clone()) });
    assert_eq!(proposed_decision(&actions), Outcome::Aborted(reason.clone()), "no reply before the abort applies");
    // A late YES from the other shard changes nothing.
    assert!(yes_from(&mut engine, txn, shards[1]).is_empty());
    let aborted = Outcome::Aborted(reason);
    let actions = engine.handle(Event::DecisionApplied { txn, outcome: aborted.clone() });
    assert_eq!(replies(&actions), vec![(Ticket(1), Ok(TxnReceipt { txn, outcome: aborted, replayed: false }))]);
    // The shard that said NO never prepared: the abort goes to the other only.
    assert_eq!(decides_to(&actions, txn, false), vec![shards[1]]);
    assert!(decides_to(&actions, txn, true).is_empty());
    // Presumed abort: the record may go before any acknowledgement.
    assert_eq!((engine.in_flight(), engine.finishing()), (0, 1));
    assert_eq!(engine.handle(Event::Tick), vec![Action::ProposeForget { txns: vec![txn] }]);
    assert!(engine.handle(Event::DecideAcked { txn, shard: shards[1] }).is_empty(), "not queued twice");
    assert!(engine.handle(Event::Tick).is_empty());
    assert!(!engine.tracks(&txn));
}

#[test]
fn a_replicated_shard_without_a_leader_is_asked_again_until_the_prepare_deadline() {
    let mut engine = Engine::new(1, shard_map().with_replicas(3), EngineConfig::default());
    assert!(engine.handle(Event::BecameLeader { term: TERM, live: Vec::new() }).is_empty());
    let (txn, shards) = submit_and_begin(&mut engine, 1, "k1");
    yes_from(&mut engine, txn, shards[0]);
    // The shard's leader died; its group has not elected another yet.
    let actions = engine.handle(Event::PrepareFailed { txn, shard: shards[1] });
    let retry = match actions.as_slice() {
        [Action::SetTimer { event: retry @ Event::RetryPrepare { shard, .. }, .. }] if *shard == shards[1] => {
            retry.clone()
        }
        other => panic!("expected a retry of the prepare, not an abort: {other:?}"),
    };
    let actions = engine.handle(retry);
    assert!(
        matches!(actions.as_slice(), [Action::SendPrepare { shard, .. }] if *shard == shards[1]),
        "the prepare is sent again: {actions:?}"
    );
    // The new leader votes YES: the payment commits, nothing was aborted.
    let actions = engine.handle(Event::VoteReceived { txn, shard: shards[1], vote: Vote::Yes });
    assert_eq!(decision_of(&actions), Outcome::Committed);
}

#[test]
fn an_abort_waits_for_no_shard_and_a_dead_shard_is_retried_with_a_growing_back_off() {
    let mut engine = engine();
    let (txn, shards) = submit_and_begin(&mut engine, 1, "k1");
    // The second shard is down: unreachable at prepare, so it may or may not
    // hold a prepare. The abort goes to both (the first holds a YES).
    yes_from(&mut engine, txn, shards[0]);
    let actions = engine.handle(Event::PrepareFailed { txn, shard: shards[1] });
    let aborted = Outcome::Aborted(AbortReason::ShardUnavailable { shard: shards[1] });
    assert_eq!(proposed_decision(&actions), aborted);
    let actions = engine.handle(Event::DecisionApplied { txn, outcome: aborted });
    assert_eq!(decides_to(&actions, txn, false), shards);
    assert_eq!(engine.handle(Event::Tick), vec![Action::ProposeForget { txns: vec![txn] }], "forgotten unacked");
    assert!(engine.handle(Event::DecideAcked { txn, shard: shards[0] }).is_empty());
    let delays: Vec<u64> = (0..7)
        .map(|_| match engine.handle(Event::DecideFailed { txn, shard: shards[1] }).as_slice() {
            [Action::SetTimer { after_ms, event: Event::RetryDecide { .. } }] => *after_ms,
            other => panic!("expected one retry timer, got {other:?}"),
        })
        .collect();
    assert_eq!(delays, vec![200, 400, 800, 1_600, 3_200, 5_000, 5_000], "doubling, capped at max_decide_retry_ms");
    // Waiting for the dead shard does not count against new work.
    assert_eq!((engine.in_flight(), engine.finishing()), (0, 1));
}

#[test]
fn decided_transactions_waiting_for_acks_do_not_block_new_work_and_are_bounded() {
    let config = EngineConfig { max_in_flight_txns: 1, max_finishing_txns: 2, ..EngineConfig::default() };
    let mut engine = engine_with(config);
    let mut committed_txns = Vec::new();
    for n in 0..3u64 {
        // Accepted although the earlier ones still wait for an ack.
        let (txn, shards) = submit_and_begin(&mut engine, n, &format!("k{n}"));
        yes_from(&mut engine, txn, shards[0]);
        yes_from(&mut engine, txn, shards[1]);
        let actions = engine.handle(Event::DecisionApplied { txn, outcome: Outcome::Committed });
        assert_eq!(decides_to(&actions, txn, true), shards);
        engine.handle(Event::DecideAcked { txn, shard: shards[0] });
        committed_txns.push((txn, shards));
    }
    assert_eq!((engine.in_flight(), engine.finishing()), (0, 2), "the bound holds");
    let (oldest, shards) = committed_txns[0].clone();
    assert!(!engine.tracks(&oldest), "the oldest is left to the table");
    assert!(engine.tracks(&committed_txns[2].0));
    // A commit is never forgotten unacknowledged: the dropped one is not
    // queued for Forget, and adopting it while the bound is full waits.
    assert!(engine.handle(Event::Tick).is_empty(), "nothing acked by every shard: nothing to forget");
    let record = table_record("k0", Some(Outcome::Committed));
    assert!(engine.handle(Event::Adopt { txn: oldest, record: record.clone() }).is_empty(), "no room yet");
    // Room again: adopted, its decision re-sent to every shard.
    let (second, second_shards) = committed_txns[1].clone();
    engine.handle(Event::DecideAcked { txn: second, shard: second_shards[1] });
    let actions = engine.handle(Event::Adopt { txn: oldest, record });
    assert_eq!(decides_to(&actions, oldest, true), shards);
    assert!(engine.tracks(&oldest));
}

#[test]
fn missing_votes_abort_at_the_deadline_and_unreachable_shards_abort_at_once() {
    let mut engine = engine();
    let (txn, shards) = submit_and_begin(&mut engine, 1, "k1");
    assert!(yes_from(&mut engine, txn, shards[0]).is_empty());
    let actions = engine.handle(Event::PrepareDeadline { txn, term: TERM });
    assert_eq!(proposed_decision(&actions), Outcome::Aborted(AbortReason::PrepareTimeout { shard: shards[1] }));

    let (txn, shards) = submit_and_begin(&mut engine, 2, "k2");
    let actions = engine.handle(Event::PrepareFailed { txn, shard: shards[1] });
    assert_eq!(proposed_decision(&actions), Outcome::Aborted(AbortReason::ShardUnavailable { shard: shards[1] }));
    // Nothing more once deciding: neither the deadline nor a late YES.
    assert!(engine.handle(Event::PrepareDeadline { txn, term: TERM }).is_empty());
    assert!(yes_from(&mut engine, txn, shards[0]).is_empty());
}

#[test]
fn the_applied_decision_wins_over_the_proposed_one() {
    let mut engine = engine();
    let (txn, shards) = submit_and_begin(&mut engine, 1, "k1");
    let reason = AbortReason::UnknownAccount(AccountId(1));
    let actions = engine.handle(Event::VoteReceived { txn, shard: shards[0], vote: Vote::No(reason.clone()) });
    assert_eq!(proposed_decision(&actions), Outcome::Aborted(reason));
    // Another decision got into the log first: the engine acts on it.
    let actions = engine.handle(Event::DecisionApplied { txn, outcome: Outcome::Committed });
    assert_eq!(replies(&actions), vec![(Ticket(1), committed(txn, false))]);
    assert_eq!(decides_to(&actions, txn, true), shards);
    assert!(decides_to(&actions, txn, false).is_empty());
}

#[test]
fn stale_timers_from_an_earlier_term_are_ignored() {
    let mut engine = engine();
    let (txn, shards) = submit(&mut engine, 1, "k1");
    // Before and after the Begin applies: an old term's timers do nothing.
    assert!(engine.handle(Event::PrepareDeadline { txn, term: TERM - 1 }).is_empty());
    assert!(engine.handle(Event::BeginApplied { txn, result: CommandResult::Begun }).is_empty());
    assert!(engine.handle(Event::PrepareDeadline { txn, term: TERM - 1 }).is_empty());
    assert!(engine.handle(Event::RetryPrepare { txn, shard: shards[0], term: TERM - 1 }).is_empty());
    assert!(yes_from(&mut engine, txn, shards[0]).is_empty());
    let actions = yes_from(&mut engine, txn, shards[1]);
    assert_eq!(decision_of(&actions), Outcome::Committed, "the stale deadline aborted nothing");
    engine.handle(Event::DecisionApplied { txn, outcome: Outcome::Committed });
    assert!(engine.handle(Event::RetryDecide { txn, shard: shards[0], term: TERM - 1 }).is_empty());
}

#[test]
fn followers_and_bad_requests_get_typed_errors() {
    let mut follower = Engine::new(2, shard_map(), EngineConfig::default());
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
fn a_too_large_transaction_is_refused_with_too_large() {
    // The Begin the engine proposes for this request, and its size.
    let mut probe = engine();
    let actions = probe.handle(Event::Submit { ticket: Ticket(1), request: transfer("big", 10) });
    let Some(Action::Propose { command, .. }) = actions.first() else { panic!("{actions:?}") };
    let len_bytes = paytx_protocol::encoded_len(command);
    assert!(len_bytes > 1);

    // Exactly the limit fits.
    let mut engine = engine_with(EngineConfig { max_command_bytes: len_bytes, ..EngineConfig::default() });
    let actions = engine.handle(Event::Submit { ticket: Ticket(1), request: transfer("big", 10) });
    assert!(matches!(actions.first(), Some(Action::Propose { command: Command::Begin { .. }, .. })), "{actions:?}");

    // One byte less: refused, nothing proposed or prepared, no id used.
    let max_bytes = len_bytes - 1;
    let mut engine = engine_with(EngineConfig { max_command_bytes: max_bytes, ..EngineConfig::default() });
    let actions = engine.handle(Event::Submit { ticket: Ticket(2), request: transfer("big", 10) });
    assert_eq!(
        actions,
        vec![Action::Reply {
            ticket: Ticket(2),
            result: Err(RequestError::Invalid(InvalidRequest::TooLarge { len_bytes, max_bytes }))
        }]
    );
    assert_eq!(engine.in_flight(), 0);
}

#[test]
fn idempotent_resubmissions_replay_or_conflict() {
    let mut engine = engine();
    let (txn, shards) = submit(&mut engine, 1, "k");
    let original = TxnId { term: 1, node: 9, seq: 4 };
    let state = TxnState::Decided(Outcome::Committed);
    let actions = engine.handle(Event::BeginApplied { txn, result: CommandResult::Existing { txn: original, state } });
    assert_eq!(replies(&actions), vec![(Ticket(1), committed(original, true))]);
    // Its own prepares went out in parallel: they are released (aborted).
    assert_eq!(decides_to(&actions, txn, false), shards);
    assert_eq!(actions.len(), 3, "no proposal for a refused Begin: {actions:?}");

    let (dup, shards) = submit(&mut engine, 2, "k");
    let actions = engine.handle(Event::BeginApplied { txn: dup, result: CommandResult::KeyConflict });
    let answers = replies(&actions);
    assert!(matches!(answers.as_slice(), [(Ticket(2), Err(RequestError::IdempotencyConflict { .. }))]), "{actions:?}");
    assert_eq!(decides_to(&actions, dup, false), shards);
    assert_eq!(actions.len(), 3, "{actions:?}");

    // Released once acked; neither has a table record to forget.
    for shard in &shards {
        assert!(engine.handle(Event::DecideAcked { txn, shard: *shard }).is_empty());
        assert!(engine.handle(Event::DecideAcked { txn: dup, shard: *shard }).is_empty());
    }
    assert_eq!(engine.in_flight(), 0);
    assert!(engine.handle(Event::Tick).is_empty(), "nothing to forget");
}

#[test]
fn a_concurrent_duplicate_waits_for_the_original() {
    let mut engine = engine();
    let (txn, shards) = submit_and_begin(&mut engine, 1, "k");
    let (dup, dup_shards) = submit(&mut engine, 2, "k");
    let existing = CommandResult::Existing { txn, state: TxnState::InProgress };
    let actions = engine.handle(Event::BeginApplied { txn: dup, result: existing });
    assert!(replies(&actions).is_empty(), "the duplicate waits for the original: {actions:?}");
    assert_eq!(decides_to(&actions, dup, false), dup_shards, "the duplicate's own prepares are released");
    assert_eq!(actions.len(), 2);

    assert!(yes_from(&mut engine, txn, shards[0]).is_empty());
    let actions = yes_from(&mut engine, txn, shards[1]);
    assert_eq!(decision_of(&actions), Outcome::Committed);
    let mut answers = replies(&actions);
    answers.sort_by_key(|(ticket, _)| *ticket);
    assert_eq!(
        answers,
        vec![(Ticket(1), committed(txn, false)), (Ticket(2), committed(txn, true))],
        "both are answered at the implicit commit"
    );
    let actions = engine.handle(Event::DecisionApplied { txn, outcome: Outcome::Committed });
    assert!(replies(&actions).is_empty(), "and only once: {actions:?}");
}

#[test]
fn a_new_leader_redrives_decided_and_undecided_transactions() {
    let mut engine = Engine::new(2, shard_map(), EngineConfig::default());
    let decided = TxnId { term: 1, node: 1, seq: 1 };
    let undecided = TxnId { term: 1, node: 1, seq: 2 };
    let actions = engine.handle(Event::BecameLeader {
        term: 2,
        live: vec![(decided, table_record("k", Some(Outcome::Committed))), (undecided, table_record("k2", None))],
    });
    let decides =
        actions.iter().filter(|a| matches!(a, Action::SendDecide { txn, commit: true, .. } if *txn == decided)).count();
    let prepares = actions.iter().filter(|a| matches!(a, Action::SendPrepare { txn, .. } if *txn == undecided)).count();
    assert_eq!((decides, prepares), (2, 2));
    assert_eq!(actions.len(), 4, "no deadline for a re-driven transaction: {actions:?}");
    assert!(!actions.iter().any(|a| matches!(a, Action::SetTimer { .. } | Action::Reply { .. })));

    // A failed decide is retried after a delay, until acked.
    let shard = shard_map().split(&transfer("k", 5).ops).into_keys().next().expect("two shards");
    let actions = engine.handle(Event::DecideFailed { txn: decided, shard });
    assert_eq!(
        actions,
        vec![Action::SetTimer { after_ms: 200, event: Event::RetryDecide { txn: decided, shard, term: 2 } }]
    );
    assert_eq!(
        engine.handle(Event::RetryDecide { txn: decided, shard, term: 2 }),
        vec![Action::SendDecide { txn: decided, shard, commit: true }]
    );
    engine.handle(Event::DecideAcked { txn: decided, shard });
    assert!(engine.handle(Event::RetryDecide { txn: decided, shard, term: 2 }).is_empty(), "acked: not re-sent");

    // Losing leadership answers waiting clients with a retryable error.
    let actions = engine.handle(Event::SteppedDown { leader_hint: Some(3) });
    assert!(actions.is_empty(), "no clients were waiting on re-driven transactions");
    assert_eq!(engine.in_flight(), 0);
}

#[test]
fn a_redriven_transaction_retries_unreachable_shards_and_never_times_out() {
    let mut engine = Engine::new(2, shard_map(), EngineConfig::default());
    let txn = TxnId { term: 1, node: 1, seq: 2 };
    let record = table_record("k", None);
    let split = shard_map().split(&record.ops);
    let shards: Vec<ShardId> = split.keys().copied().collect();
    engine.handle(Event::BecameLeader { term: 2, live: vec![(txn, record)] });

    // Unreachable: asked again later, never aborted (it may hold a YES).
    let actions = engine.handle(Event::PrepareFailed { txn, shard: shards[0] });
    assert_eq!(
        actions,
        vec![Action::SetTimer { after_ms: 200, event: Event::RetryPrepare { txn, shard: shards[0], term: 2 } }]
    );
    assert!(engine.handle(Event::PrepareDeadline { txn, term: 2 }).is_empty(), "no timeout abort");
    assert_eq!(
        engine.handle(Event::RetryPrepare { txn, shard: shards[0], term: 2 }),
        vec![Action::SendPrepare { txn, shard: shards[0], ops: split[&shards[0]].clone() }]
    );
    assert!(engine.handle(Event::RetryPrepare { txn, shard: shards[0], term: 1 }).is_empty(), "stale term");

    // A shard that voted YES is not asked again.
    assert!(yes_from(&mut engine, txn, shards[1]).is_empty());
    let actions = engine.handle(Event::PrepareFailed { txn, shard: shards[1] });
    assert!(matches!(actions.as_slice(), [Action::SetTimer { event: Event::RetryPrepare { .. }, .. }]));
    assert!(engine.handle(Event::RetryPrepare { txn, shard: shards[1], term: 2 }).is_empty());

    // Every YES in: commit (nobody to answer).
    let actions = yes_from(&mut engine, txn, shards[0]);
    assert_eq!(proposed_decision(&actions), Outcome::Committed);
    let actions = engine.handle(Event::DecisionApplied { txn, outcome: Outcome::Committed });
    assert_eq!(decides_to(&actions, txn, true), shards);
}

#[test]
fn a_redriven_transaction_aborts_on_a_no() {
    let mut engine = engine();
    let txn = TxnId { term: TERM - 1, node: 2, seq: 5 };
    let actions = engine.handle(Event::Adopt { txn, record: table_record("k", None) });
    let shards: Vec<ShardId> = actions
        .iter()
        .filter_map(|a| match a {
            Action::SendPrepare { shard, .. } => Some(*shard),
            _ => None,
        })
        .collect();
    assert_eq!(shards.len(), 2);
    let actions = engine.handle(Event::PrepareFailed { txn, shard: shards[0] });
    assert!(matches!(actions.as_slice(), [Action::SetTimer { event: Event::RetryPrepare { .. }, .. }]));
    // A NO: that shard never prepared, so no implicit commit can exist.
    let reason = AbortReason::UnknownAccount(AccountId(1));
    let actions = engine.handle(Event::VoteReceived { txn, shard: shards[1], vote: Vote::No(reason.clone()) });
    assert_eq!(proposed_decision(&actions), Outcome::Aborted(reason));
    assert!(engine.handle(Event::RetryPrepare { txn, shard: shards[0], term: TERM }).is_empty(), "deciding");
}

#[test]
fn votes_before_the_begin_is_applied_wait_for_it_then_commit_at_once() {
    let mut engine = engine();
    let (txn, shards) = submit(&mut engine, 1, "k1");
    assert!(yes_from(&mut engine, txn, shards[0]).is_empty());
    assert!(yes_from(&mut engine, txn, shards[1]).is_empty(), "no decision before the Begin applies");
    let actions = engine.handle(Event::BeginApplied { txn, result: CommandResult::Begun });
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert_eq!(decision_of(&actions), Outcome::Committed);
    assert_eq!(replies(&actions), vec![(Ticket(1), committed(txn, false))]);
    // A repeated Begin result changes nothing.
    assert!(engine.handle(Event::BeginApplied { txn, result: CommandResult::Begun }).is_empty());
    let actions = engine.handle(Event::DecisionApplied { txn, outcome: Outcome::Committed });
    assert!(replies(&actions).is_empty());
    assert_eq!(decides_to(&actions, txn, true), shards);
}

#[test]
fn a_no_before_the_begin_is_applied_aborts_only_once_begun() {
    let mut engine = engine();
    let (txn, shards) = submit(&mut engine, 1, "k1");
    let reason = AbortReason::UnknownAccount(AccountId(1));
    let no = engine.handle(Event::VoteReceived { txn, shard: shards[0], vote: Vote::No(reason.clone()) });
    assert!(no.is_empty(), "nothing decided before the Begin applies: {no:?}");
    assert!(yes_from(&mut engine, txn, shards[1]).is_empty());
    let actions = engine.handle(Event::BeginApplied { txn, result: CommandResult::Begun });
    assert_eq!(proposed_decision(&actions), Outcome::Aborted(reason.clone()), "no reply, no commit");
    let actions = engine.handle(Event::DecisionApplied { txn, outcome: Outcome::Aborted(reason.clone()) });
    assert_eq!(
        replies(&actions),
        vec![(Ticket(1), Ok(TxnReceipt { txn, outcome: Outcome::Aborted(reason), replayed: false }))]
    );
    assert_eq!(decides_to(&actions, txn, false), vec![shards[1]], "not to the shard that said NO");
}

#[test]
fn an_unreachable_shard_or_the_deadline_before_the_begin_is_applied_aborts_once_begun() {
    let mut engine = engine();
    // Unreachable first, then a NO: the first reason is kept.
    let (txn, shards) = submit(&mut engine, 1, "k1");
    assert!(engine.handle(Event::PrepareFailed { txn, shard: shards[1] }).is_empty());
    let reason = AbortReason::UnknownAccount(AccountId(1));
    assert!(engine.handle(Event::VoteReceived { txn, shard: shards[0], vote: Vote::No(reason) }).is_empty());
    let actions = engine.handle(Event::BeginApplied { txn, result: CommandResult::Begun });
    assert_eq!(proposed_decision(&actions), Outcome::Aborted(AbortReason::ShardUnavailable { shard: shards[1] }));

    // The deadline passed with a vote missing.
    let (txn, shards) = submit(&mut engine, 2, "k2");
    assert!(yes_from(&mut engine, txn, shards[0]).is_empty());
    assert!(engine.handle(Event::PrepareDeadline { txn, term: TERM }).is_empty());
    assert!(yes_from(&mut engine, txn, shards[1]).is_empty(), "too late: the deadline is remembered");
    let actions = engine.handle(Event::BeginApplied { txn, result: CommandResult::Begun });
    assert_eq!(proposed_decision(&actions), Outcome::Aborted(AbortReason::PrepareTimeout { shard: shards[1] }));

    // Every vote in but the Begin not applied by the deadline: abort.
    let (txn, shards) = submit(&mut engine, 3, "k3");
    assert!(yes_from(&mut engine, txn, shards[0]).is_empty());
    assert!(yes_from(&mut engine, txn, shards[1]).is_empty());
    assert!(engine.handle(Event::PrepareDeadline { txn, term: TERM }).is_empty());
    let actions = engine.handle(Event::BeginApplied { txn, result: CommandResult::Begun });
    assert!(matches!(proposed_decision(&actions), Outcome::Aborted(AbortReason::PrepareTimeout { .. })));
}

#[test]
fn the_implicit_commit_replies_before_the_decision_applies_and_never_again() {
    let mut engine = engine();
    let (txn, shards) = submit_and_begin(&mut engine, 1, "k1");
    yes_from(&mut engine, txn, shards[0]);
    let actions = yes_from(&mut engine, txn, shards[1]);
    assert_eq!(replies(&actions), vec![(Ticket(1), committed(txn, false))], "before DecisionApplied");
    let mut later = engine.handle(Event::DecisionApplied { txn, outcome: Outcome::Committed });
    later.extend(engine.handle(Event::DecideFailed { txn, shard: shards[0] }));
    later.extend(engine.handle(Event::RetryDecide { txn, shard: shards[0], term: TERM }));
    later.extend(engine.handle(Event::DecideAcked { txn, shard: shards[0] }));
    later.extend(engine.handle(Event::DecideAcked { txn, shard: shards[1] }));
    assert!(replies(&later).is_empty(), "answered exactly once: {later:?}");
    assert_eq!(engine.in_flight(), 0);

    // Losing leadership before the decision applies: no second answer either.
    let (txn, shards) = submit_and_begin(&mut engine, 2, "k2");
    yes_from(&mut engine, txn, shards[0]);
    assert_eq!(replies(&yes_from(&mut engine, txn, shards[1])), vec![(Ticket(2), committed(txn, false))]);
    assert!(engine.handle(Event::SteppedDown { leader_hint: Some(2) }).is_empty());
}

#[test]
fn a_failed_proposal_answers_the_waiting_clients_once() {
    let mut engine = engine();
    let error = RequestError::NoLeader { leader_hint: Some(2) };

    // The Begin failed: the client hears the error, the transaction is dropped.
    let (txn, shards) = submit(&mut engine, 1, "k1");
    yes_from(&mut engine, txn, shards[0]);
    let actions = engine.handle(Event::ProposalFailed { txn, error: error.clone() });
    assert_eq!(actions, vec![Action::Reply { ticket: Ticket(1), result: Err(error.clone()) }]);
    assert!(!engine.tracks(&txn));
    assert!(yes_from(&mut engine, txn, shards[1]).is_empty());

    // Begun and waiting for votes, no proposal outstanding: a failure is stale.
    let (txn, shards) = submit_and_begin(&mut engine, 2, "k2");
    assert!(engine.handle(Event::ProposalFailed { txn, error: error.clone() }).is_empty());
    assert!(engine.tracks(&txn));

    // The abort proposal failed: the client hears the error.
    let actions = engine.handle(Event::PrepareFailed { txn, shard: shards[0] });
    assert!(matches!(decision_of(&actions), Outcome::Aborted(_)));
    let actions = engine.handle(Event::ProposalFailed { txn, error: error.clone() });
    assert_eq!(actions, vec![Action::Reply { ticket: Ticket(2), result: Err(error.clone()) }]);
    assert!(!engine.tracks(&txn));

    // The commit proposal after the implicit commit failed: already answered.
    let (txn, shards) = submit_and_begin(&mut engine, 3, "k3");
    yes_from(&mut engine, txn, shards[0]);
    assert_eq!(replies(&yes_from(&mut engine, txn, shards[1])), vec![(Ticket(3), committed(txn, false))]);
    assert!(engine.handle(Event::ProposalFailed { txn, error }).is_empty(), "not answered twice");
    assert!(!engine.tracks(&txn));
}

#[test]
fn a_tombstoned_begin_answers_the_abort_and_releases_every_shard_without_forgetting() {
    let mut engine = engine();
    let (txn, shards) = submit(&mut engine, 1, "k1");
    // The prepares succeeded in parallel, but a presumed abort won the race.
    yes_from(&mut engine, txn, shards[0]);
    yes_from(&mut engine, txn, shards[1]);
    let aborted = Outcome::Aborted(AbortReason::PresumedAbort);
    let actions =
        engine.handle(Event::BeginApplied { txn, result: CommandResult::Tombstoned { outcome: aborted.clone() } });
    assert_eq!(replies(&actions), vec![(Ticket(1), Ok(TxnReceipt { txn, outcome: aborted, replayed: false }))]);
    assert_eq!(decides_to(&actions, txn, false), shards);
    assert_eq!(actions.len(), 3, "nothing proposed, nothing committed: {actions:?}");

    // Retried like any decision until acked.
    let actions = engine.handle(Event::DecideFailed { txn, shard: shards[0] });
    assert_eq!(
        actions,
        vec![Action::SetTimer { after_ms: 200, event: Event::RetryDecide { txn, shard: shards[0], term: TERM } }]
    );
    assert_eq!(
        engine.handle(Event::RetryDecide { txn, shard: shards[0], term: TERM }),
        vec![Action::SendDecide { txn, shard: shards[0], commit: false }]
    );
    assert!(engine.handle(Event::PrepareDeadline { txn, term: TERM }).is_empty());
    assert!(engine.handle(Event::DecideAcked { txn, shard: shards[0] }).is_empty());
    assert!(engine.handle(Event::DecideAcked { txn, shard: shards[1] }).is_empty());
    assert_eq!(engine.in_flight(), 0);
    assert!(!engine.tracks(&txn), "no table record to forget");
    assert!(engine.handle(Event::Tick).is_empty(), "no ProposeForget");
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
        assert_eq!(proposed_decision(&late_no), Outcome::Aborted(reason), "and tells nobody before the abort applies");
        return;
    }
    assert_eq!(decision_of(&first_yes), Outcome::Committed, "committed on one YES of two");
    assert_eq!(replies(&first_yes), vec![(Ticket(1), committed(txn, false))], "and announced");
    assert!(late_no.is_empty(), "the NO of the shard that was not waited for changes nothing");
}

#[test]
fn planted_no_redrive_on_new_leader_sends_no_decides_but_still_reprepares() {
    use paytx_protocol::planted::{plant, Bug};
    let mut engine = Engine::new(2, shard_map(), EngineConfig::default());
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
        assert_eq!((decides, prepares, engine.in_flight(), engine.finishing()), (2, 2, 1, 1));
        return;
    }
    assert_eq!((decides, prepares), (0, 2), "the decided txn is not re-sent, the undecided one is re-prepared");
    assert_eq!(engine.in_flight(), 1, "the decided txn is not tracked");
    // Nothing will ever retry it: its participants are never told, never ack.
    let shard = shard_map().split(&request.ops).into_keys().next().expect("two shards");
    assert!(engine.handle(Event::DecideFailed { txn: decided, shard }).is_empty());
    assert!(engine.handle(Event::RetryDecide { txn: decided, shard, term: 2 }).is_empty());
}

#[test]
fn leadership_of_the_same_term_reported_again_keeps_transactions_in_flight() {
    let mut engine = engine();
    let (txn, shards) = submit(&mut engine, 1, "k1");
    assert!(engine.handle(Event::BecameLeader { term: TERM, live: Vec::new() }).is_empty());
    assert_eq!(engine.in_flight(), 1, "the transaction is still driven");
    assert!(engine.handle(Event::BeginApplied { txn, result: CommandResult::Begun }).is_empty());
    yes_from(&mut engine, txn, shards[0]);
    let actions = yes_from(&mut engine, txn, shards[1]);
    assert_eq!(decision_of(&actions), Outcome::Committed);
    assert_eq!(replies(&actions), vec![(Ticket(1), committed(txn, false))]);
    // Ids keep growing: the next transaction gets a new one.
    let (next, _) = submit(&mut engine, 2, "k2");
    assert!(next.seq > txn.seq);
}

#[test]
fn an_adopted_orphan_is_prepared_and_an_already_tracked_one_is_ignored() {
    let mut engine = engine();
    let record = table_record("orphan", None);
    let split = shard_map().split(&record.ops);
    let orphan = TxnId { term: TERM, node: 1, seq: 999 };
    let actions = engine.handle(Event::Adopt { txn: orphan, record: record.clone() });
    let expected: Vec<Action> =
        split.iter().map(|(shard, ops)| Action::SendPrepare { txn: orphan, shard: *shard, ops: ops.clone() }).collect();
    assert_eq!(actions, expected, "prepared again, no deadline");
    assert!(engine.tracks(&orphan));
    assert!(engine.handle(Event::Adopt { txn: orphan, record }).is_empty(), "adopted once");

    // A follower adopts nothing.
    let mut follower = Engine::new(2, shard_map(), EngineConfig::default());
    assert!(follower.handle(Event::Adopt { txn: orphan, record: table_record("orphan", None) }).is_empty());
    assert!(!follower.tracks(&orphan));
}

#[test]
fn a_duplicate_attached_after_the_decision_is_answered_at_once() {
    let mut engine = engine();
    let (txn, shards) = submit_and_begin(&mut engine, 1, "k");
    for shard in &shards {
        yes_from(&mut engine, txn, *shard);
    }
    engine.handle(Event::DecisionApplied { txn, outcome: Outcome::Committed });
    // A duplicate whose Begin result is handled only now (out of order).
    let (dup, dup_shards) = submit(&mut engine, 2, "k");
    let actions = engine
        .handle(Event::BeginApplied { txn: dup, result: CommandResult::Existing { txn, state: TxnState::InProgress } });
    assert_eq!(replies(&actions), vec![(Ticket(2), committed(txn, true))]);
    assert_eq!(decides_to(&actions, dup, false), dup_shards, "the duplicate's prepares are released");
    assert_eq!(actions.len(), 3, "{actions:?}");
}

#[test]
fn a_duplicate_attached_after_the_implicit_commit_is_answered_at_once() {
    let mut engine = engine();
    let (txn, shards) = submit_and_begin(&mut engine, 1, "k");
    yes_from(&mut engine, txn, shards[0]);
    assert_eq!(replies(&yes_from(&mut engine, txn, shards[1])), vec![(Ticket(1), committed(txn, false))]);
    // Announced, but the decision has not applied yet.
    let (dup, dup_shards) = submit(&mut engine, 2, "k");
    let actions = engine
        .handle(Event::BeginApplied { txn: dup, result: CommandResult::Existing { txn, state: TxnState::InProgress } });
    assert_eq!(replies(&actions), vec![(Ticket(2), committed(txn, true))], "answered at once");
    assert_eq!(decides_to(&actions, dup, false), dup_shards);
    let actions = engine.handle(Event::DecisionApplied { txn, outcome: Outcome::Committed });
    assert!(replies(&actions).is_empty(), "nobody is answered twice: {actions:?}");
    assert_eq!(decides_to(&actions, txn, true), shards);
}

#[test]
fn the_ids_of_an_epoch_never_spill_into_the_next() {
    let config = EngineConfig { seq_base: (1 << 32) + u64::from(u32::MAX) - 1, ..EngineConfig::default() };
    let mut engine = Engine::new(1, shard_map(), config);
    engine.handle(Event::BecameLeader { term: TERM, live: Vec::new() });
    let actions = engine.handle(Event::Submit { ticket: Ticket(1), request: transfer("last", 1) });
    assert!(
        matches!(actions.first(), Some(Action::Propose { command: Command::Begin { .. }, .. })),
        "the last id of the epoch is used: {actions:?}"
    );
    let actions = engine.handle(Event::Submit { ticket: Ticket(2), request: transfer("over", 1) });
    assert!(
        matches!(actions.as_slice(), [Action::Reply { result: Err(RequestError::Overloaded { .. }), .. }]),
        "{actions:?}"
    );
}

#[test]
fn a_late_proposal_failure_does_not_drop_a_transaction_driven_again() {
    let mut engine = engine();
    let txn = TxnId { term: TERM, node: 1, seq: 77 };
    engine.handle(Event::Adopt { txn, record: table_record("readopted", None) });
    let error = RequestError::NoLeader { leader_hint: None };
    assert!(engine.handle(Event::ProposalFailed { txn, error }).is_empty());
    assert!(engine.tracks(&txn), "still driven");
}
