//! The participant actor on `MemDisk`: durability of votes and commits,
//! crash recovery, in-doubt resolution, the channel model. Only the public
//! API is used.

use actix::{Actor, Addr};
use paytx_participants::{
    ChannelConfig, ChannelKind, Decide, DecisionSource, GetStatus, ListInDoubt, ParticipantActor, ParticipantConfig,
    ParticipantError, Prepare, ReadAccount, ReadCharge, ReadRecord, Shutdown,
};
use paytx_protocol::{
    AbortReason, AccountId, BoxFuture, ChannelId, Currency, EntityKind, Money, Operation, OrderId, ShardId, TxnId, Vote,
};
use paytx_storage::{Batch, Disk, DiskError, MemDisk, SharedDisk};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ACCOUNTS: ShardId = ShardId { kind: EntityKind::Account, index: 0 };
const CHANNELS: ShardId = ShardId { kind: EntityKind::Channel, index: 0 };
const RECORDS: ShardId = ShardId { kind: EntityKind::Record, index: 0 };

fn txn(seq: u64) -> TxnId {
    TxnId { term: 1, node: 1, seq }
}

fn cny(minor: i64) -> Money {
    Money::new(minor, Currency::CNY)
}

fn transfer(minor: i64) -> Vec<Operation> {
    vec![
        Operation::Debit { account: AccountId(1), amount: cny(minor) },
        Operation::Credit { account: AccountId(2), amount: cny(minor) },
    ]
}

/// Answers every query with one fixed decision, counting queries.
struct Fixed {
    commit: bool,
    queries: Arc<AtomicUsize>,
}

/// The log time a [`Fixed`] answer carries.
const FIXED_AT_MS: u64 = 1_764_633_600_250;

impl DecisionSource for Fixed {
    fn query(&self, txn: TxnId) -> BoxFuture<Result<Decide, String>> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        let commit = self.commit;
        Box::pin(async move { Ok(Decide { txn, commit, at_ms: FIXED_AT_MS }) })
    }
}

/// Never answers (a coordinator group without a leader), counting queries.
struct Silent {
    queries: Arc<AtomicUsize>,
}

impl DecisionSource for Silent {
    fn query(&self, _txn: TxnId) -> BoxFuture<Result<Decide, String>> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::pending())
    }
}

fn silent() -> Arc<dyn DecisionSource> {
    Arc::new(Silent { queries: Arc::new(AtomicUsize::new(0)) })
}

/// Prepares and reads do not wait for prepared transactions here (the
/// tests below that test waiting turn it on).
fn config(shard: ShardId) -> ParticipantConfig {
    ParticipantConfig { in_doubt_after_ms: 60_000, lock_wait_ms: 0, ..ParticipantConfig::new(shard) }
}

fn waiting(shard: ShardId, lock_wait_ms: u64) -> ParticipantConfig {
    ParticipantConfig { lock_wait_ms, ..config(shard) }
}

fn start(config: ParticipantConfig, disk: SharedDisk, decisions: Arc<dyn DecisionSource>) -> Addr<ParticipantActor> {
    ParticipantActor::open(config, disk, decisions).expect("journal replays").start()
}

async fn prepare(addr: &Addr<ParticipantActor>, seq: u64, ops: Vec<Operation>) -> Result<Vote, ParticipantError> {
    addr.send(Prepare { txn: txn(seq), ops, disk_low: None }).await.expect("actor alive")
}

async fn decide(addr: &Addr<ParticipantActor>, seq: u64, commit: bool) {
    addr.send(Decide { txn: txn(seq), commit, at_ms: 0 }).await.expect("actor alive").expect("decision applied");
}

async fn balance(addr: &Addr<ParticipantActor>, id: u64) -> (i64, i64) {
    let view = addr.send(ReadAccount(AccountId(id))).await.unwrap().expect("account exists");
    (view.balance_minor, view.held_minor)
}

/// Accounts 1 (100) and 2 (0), committed and synced.
async fn funded(disk: &MemDisk, decisions: Arc<dyn DecisionSource>) -> Addr<ParticipantActor> {
    funded_with(config(ACCOUNTS), disk, decisions).await
}

async fn funded_with(
    config: ParticipantConfig,
    disk: &MemDisk,
    decisions: Arc<dyn DecisionSource>,
) -> Addr<ParticipantActor> {
    let addr = start(config, Arc::new(disk.clone()), decisions);
    let open =
        |id, initial_minor| Operation::OpenAccount { account: AccountId(id), currency: Currency::CNY, initial_minor };
    assert_eq!(prepare(&addr, 0, vec![open(1, 100), open(2, 0)]).await, Ok(Vote::Yes));
    decide(&addr, 0, true).await;
    addr
}

/// Polls `$condition` (which may `.await`) until it holds, for up to 2 s.
macro_rules! eventually {
    ($what:expr, $condition:expr) => {{
        let mut held = false;
        for _ in 0..400 {
            if $condition {
                held = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(held, "timed out waiting for {}", $what);
    }};
}

#[actix_rt::test]
async fn a_prepared_transaction_survives_a_crash_in_doubt_and_commits_after_reopen() {
    let disk = MemDisk::new();
    let addr = funded(&disk, silent()).await;
    assert_eq!(prepare(&addr, 1, transfer(70)).await, Ok(Vote::Yes));
    addr.send(Shutdown).await.unwrap();
    disk.crash();

    let addr = start(config(ACCOUNTS), Arc::new(disk.clone()), silent());
    assert_eq!(balance(&addr, 1).await, (100, 70), "the hold is back");
    assert_eq!(addr.send(ListInDoubt).await.unwrap(), vec![txn(1)]);
    assert_eq!(addr.send(GetStatus).await.unwrap().in_doubt, 1);
    // The hold still protects the money.
    assert!(matches!(prepare(&addr, 2, transfer(31)).await, Ok(Vote::No(AbortReason::InsufficientFunds { .. }))));

    decide(&addr, 1, true).await;
    assert_eq!(balance(&addr, 1).await, (30, 0));
    // The acknowledged commit is durable.
    addr.send(Shutdown).await.unwrap();
    disk.crash();
    let addr = start(config(ACCOUNTS), Arc::new(disk.clone()), silent());
    assert_eq!(balance(&addr, 1).await, (30, 0));
    assert_eq!(balance(&addr, 2).await, (70, 0));
    assert_eq!(addr.send(GetStatus).await.unwrap().in_doubt, 0);
}

#[actix_rt::test]
async fn a_failed_fsync_is_an_error_never_a_yes_and_stops_the_shard() {
    let disk = MemDisk::new();
    let addr = funded(&disk, silent()).await;
    disk.fail_syncs(true);
    let vote = prepare(&addr, 1, transfer(10)).await;
    assert!(matches!(vote, Err(ParticipantError::Disk { source: DiskError::SyncFailed { .. }, .. })), "{vote:?}");
    // Fail-stop: the shard answers nothing any more.
    let after = addr.send(Prepare { txn: txn(2), ops: transfer(10), disk_low: None }).await;
    assert!(!matches!(after, Ok(Ok(Vote::Yes))), "{after:?}");
    // Restarted from the journal, the unsynced prepare is gone entirely.
    disk.crash();
    disk.fail_syncs(false);
    let addr = start(config(ACCOUNTS), Arc::new(disk.clone()), silent());
    assert_eq!(balance(&addr, 1).await, (100, 0));
}

/// A `MemDisk` that counts what reaches it (batches applied, the writes
/// they carry, fsyncs started) and whose fsyncs wait until the test opens
/// the gate.
#[derive(Clone)]
struct ProbeDisk {
    inner: MemDisk,
    gate: tokio::sync::watch::Sender<bool>,
    applies: Arc<AtomicUsize>,
    writes: Arc<AtomicUsize>,
    syncs_started: Arc<AtomicUsize>,
}

impl ProbeDisk {
    fn new(inner: MemDisk, gate_open: bool) -> Self {
        let (gate, _) = tokio::sync::watch::channel(gate_open);
        let counter = || Arc::new(AtomicUsize::new(0));
        ProbeDisk { inner, gate, applies: counter(), writes: counter(), syncs_started: counter() }
    }
}

impl Disk for ProbeDisk {
    fn get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, DiskError> {
        self.inner.get(space, key)
    }

    fn apply(&self, space: &str, batch: Batch) -> Result<(), DiskError> {
        self.applies.fetch_add(1, Ordering::SeqCst);
        self.writes.fetch_add(batch.writes.len(), Ordering::SeqCst);
        self.inner.apply(space, batch)
    }

    fn range(&self, space: &str, start: &[u8], end: Option<&[u8]>) -> Result<Vec<(Vec<u8>, Vec<u8>)>, DiskError> {
        self.inner.range(space, start, end)
    }

    fn last(&self, space: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>, DiskError> {
        self.inner.last(space)
    }

    fn run_bulk(&self, job: paytx_storage::BulkJob) -> BoxFuture<Result<(), DiskError>> {
        self.inner.run_bulk(job)
    }

    fn sync(&self) -> BoxFuture<Result<(), DiskError>> {
        self.syncs_started.fetch_add(1, Ordering::SeqCst);
        let mut gate = self.gate.subscribe();
        let inner = self.inner.clone();
        Box::pin(async move {
            gate.wait_for(|open| *open).await.map_err(|e| DiskError::SyncFailed { reason: e.to_string() })?;
            inner.sync().await
        })
    }
}

#[actix_rt::test]
async fn votes_and_commit_acks_wait_for_the_fsync_while_the_actor_keeps_working() {
    let disk = MemDisk::new();
    let _ = funded(&disk, silent()).await;
    let gated = ProbeDisk::new(disk.clone(), false);
    let addr = start(config(ACCOUNTS), Arc::new(gated.clone()), silent());

    let first = tokio::spawn(addr.send(Prepare { txn: txn(1), ops: transfer(10), disk_low: None }));
    let second = tokio::spawn(addr.send(Prepare { txn: txn(2), ops: transfer(20), disk_low: None }));
    // Both prepares were taken (reserved and journaled) while the first
    // fsync is still pending: the actor is not blocked by it.
    eventually!("both prepares reserved", addr.send(GetStatus).await.unwrap().in_doubt == 2);
    assert_eq!(balance(&addr, 1).await, (100, 30));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!first.is_finished() && !second.is_finished(), "no YES before the fsync");
    // One round per mailbox drain: the two prepares share one if they were
    // queued together, else the second starts the second round.
    let rounds = gated.syncs_started.load(Ordering::SeqCst);
    assert!((1..=2).contains(&rounds), "{rounds} fsync rounds for two prepares");

    gated.gate.send_replace(true);
    assert_eq!(first.await.unwrap().unwrap(), Ok(Vote::Yes));
    assert_eq!(second.await.unwrap().unwrap(), Ok(Vote::Yes));

    // A commit acknowledgement waits for its fsync too.
    gated.gate.send_replace(false);
    let ack = tokio::spawn(addr.send(Decide { txn: txn(1), commit: true, at_ms: 0 }));
    eventually!("the commit applied", balance(&addr, 1).await == (90, 20));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!ack.is_finished(), "no commit ack before the fsync");
    // A repeated commit (the first still syncing) also waits.
    let repeat = tokio::spawn(addr.send(Decide { txn: txn(1), commit: true, at_ms: 0 }));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!repeat.is_finished(), "a repeated commit ack also waits for the fsync");
    // An abort is acknowledged at once (see `decide`).
    addr.send(Decide { txn: txn(2), commit: false, at_ms: 0 }).await.unwrap().unwrap();
    gated.gate.send_replace(true);
    ack.await.unwrap().unwrap().unwrap();
    repeat.await.unwrap().unwrap().unwrap();
    assert_eq!(balance(&addr, 1).await, (90, 0));
}

#[actix_rt::test]
async fn the_steps_of_one_mailbox_drain_share_one_journal_write_and_one_fsync() {
    let disk = MemDisk::new();
    let counting = ProbeDisk::new(disk.clone(), true);
    let addr = start(config(ACCOUNTS), Arc::new(counting.clone()), silent());
    let open =
        |id, initial_minor| Operation::OpenAccount { account: AccountId(id), currency: Currency::CNY, initial_minor };
    assert_eq!(prepare(&addr, 0, vec![open(1, 100), open(2, 0)]).await, Ok(Vote::Yes));
    decide(&addr, 0, true).await;
    let before = (counting.applies.load(Ordering::SeqCst), counting.syncs_started.load(Ordering::SeqCst));

    // Five prepares queued at once (join_all sends them all before the
    // actor runs): one batch, one fsync round, five YES.
    let prepares = (1..=5).map(|seq| addr.send(Prepare { txn: txn(seq), ops: transfer(seq as i64), disk_low: None }));
    for vote in futures::future::join_all(prepares).await {
        assert_eq!(vote.unwrap(), Ok(Vote::Yes));
    }
    assert_eq!(counting.applies.load(Ordering::SeqCst) - before.0, 1, "one journal write for five prepares");
    assert_eq!(counting.syncs_started.load(Ordering::SeqCst) - before.1, 1, "one fsync for five prepares");

    // Their five commits: one batch again, and accounts 1 and 2 are each
    // written once in it although all five transactions touched them.
    let writes_before = counting.writes.load(Ordering::SeqCst);
    let decides = (1..=5).map(|seq| addr.send(Decide { txn: txn(seq), commit: true, at_ms: 0 }));
    for ack in futures::future::join_all(decides).await {
        ack.unwrap().unwrap();
    }
    assert_eq!(counting.applies.load(Ordering::SeqCst) - before.0, 2, "one journal write for five commits");
    let written = counting.writes.load(Ordering::SeqCst) - writes_before;
    // Per commit: delete p/<txn>, put c/<txn> (10 in all), plus the two
    // accounts once each and whatever older commit ids fell out of memory.
    assert!(written <= 2 + 10 + 5 + 1, "{written} writes: the accounts were not coalesced");
    assert_eq!(balance(&addr, 1).await, (100 - 15, 0));

    // What was written is whole: a crash now (everything was synced) and a
    // reopen give the same balances.
    addr.send(Shutdown).await.unwrap();
    disk.crash();
    let reopened = start(config(ACCOUNTS), Arc::new(disk.clone()), silent());
    assert_eq!(balance(&reopened, 1).await, (85, 0));
    assert_eq!(balance(&reopened, 2).await, (15, 0));
}

#[actix_rt::test]
async fn in_doubt_transactions_are_resolved_by_asking_once_at_a_time() {
    let disk = MemDisk::new();
    let queries = Arc::new(AtomicUsize::new(0));
    let commit: Arc<dyn DecisionSource> = Arc::new(Fixed { commit: true, queries: queries.clone() });
    let fast = ParticipantConfig { in_doubt_after_ms: 50, in_doubt_check_interval_ms: 10, ..config(ACCOUNTS) };
    let addr = start(fast.clone(), Arc::new(disk.clone()), commit);
    let open =
        |id, initial_minor| Operation::OpenAccount { account: AccountId(id), currency: Currency::CNY, initial_minor };
    assert_eq!(prepare(&addr, 0, vec![open(1, 100), open(2, 0)]).await, Ok(Vote::Yes));
    decide(&addr, 0, true).await;

    assert_eq!(prepare(&addr, 1, transfer(25)).await, Ok(Vote::Yes));
    assert_eq!(balance(&addr, 1).await, (100, 25));
    // No decision arrives; after `in_doubt_after_ms` the shard asks, and the
    // answer (commit) turns the hold into a debit.
    eventually!("the in-doubt commit", balance(&addr, 1).await == (75, 0));
    assert_eq!(balance(&addr, 2).await, (25, 0));
    assert_eq!(queries.load(Ordering::SeqCst), 1);
    assert_eq!(addr.send(ListInDoubt).await.unwrap(), Vec::<TxnId>::new());

    // A query without an answer is not repeated while outstanding.
    addr.send(Shutdown).await.unwrap();
    let queries = Arc::new(AtomicUsize::new(0));
    let addr = start(fast, Arc::new(disk.clone()), Arc::new(Silent { queries: queries.clone() }));
    assert_eq!(prepare(&addr, 2, transfer(5)).await, Ok(Vote::Yes));
    eventually!("the first query", queries.load(Ordering::SeqCst) == 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(queries.load(Ordering::SeqCst), 1);
    assert_eq!(addr.send(GetStatus).await.unwrap().in_doubt, 1);
}

#[actix_rt::test]
async fn an_in_doubt_commit_stores_a_commit_timed_entry_under_the_time_the_answer_carries() {
    use paytx_protocol::ids::{sort_key, FIRST_ORDERED_NS};
    let disk = MemDisk::new();
    let queries = Arc::new(AtomicUsize::new(0));
    let commit: Arc<dyn DecisionSource> = Arc::new(Fixed { commit: true, queries: queries.clone() });
    let fast = ParticipantConfig { in_doubt_after_ms: 50, in_doubt_check_interval_ms: 10, ..config(RECORDS) };
    let addr = start(fast, Arc::new(disk.clone()), commit);
    let lines = paytx_protocol::Partition::new(FIRST_ORDERED_NS + 6, b"mch_1").unwrap();
    let entry = Operation::PutRecordAtCommit { partition: lines, number: 3, value: b"line".to_vec() };
    assert_eq!(prepare(&addr, 1, vec![entry]).await, Ok(Vote::Yes));
    let stored = lines.key(sort_key(FIXED_AT_MS, 3));
    eventually!("the in-doubt commit", addr.send(ReadRecord(stored)).await.unwrap().is_some());
    assert_eq!(addr.send(ReadRecord(stored)).await.unwrap().map(|view| view.value), Some(b"line".to_vec()));
    assert_eq!(queries.load(Ordering::SeqCst), 1);
}

#[actix_rt::test]
async fn recovered_transactions_are_in_doubt_at_once_and_an_abort_releases_them() {
    let disk = MemDisk::new();
    let addr = funded(&disk, silent()).await;
    assert_eq!(prepare(&addr, 1, transfer(60)).await, Ok(Vote::Yes));
    addr.send(Shutdown).await.unwrap();
    disk.crash();

    let queries = Arc::new(AtomicUsize::new(0));
    // An hour of "in doubt after": recovered transactions count as old.
    let slow = ParticipantConfig { in_doubt_after_ms: 3_600_000, in_doubt_check_interval_ms: 10, ..config(ACCOUNTS) };
    let addr = start(slow, Arc::new(disk.clone()), Arc::new(Fixed { commit: false, queries: queries.clone() }));
    eventually!("the abort", balance(&addr, 1).await == (100, 0));
    assert_eq!(queries.load(Ordering::SeqCst), 1);
    assert_eq!(balance(&addr, 2).await, (0, 0));
}

#[actix_rt::test]
async fn a_late_duplicate_prepare_after_commit_is_not_applied_twice() {
    let disk = MemDisk::new();
    let addr = funded(&disk, silent()).await;
    assert_eq!(prepare(&addr, 1, transfer(10)).await, Ok(Vote::Yes));
    decide(&addr, 1, true).await;
    // The network delivers old copies of the prepare and the commit.
    assert_eq!(prepare(&addr, 1, transfer(10)).await, Ok(Vote::Yes));
    decide(&addr, 1, true).await;
    assert_eq!(balance(&addr, 1).await, (90, 0));
    assert_eq!(addr.send(GetStatus).await.unwrap().in_doubt, 0);
    // Also after a restart.
    addr.send(Shutdown).await.unwrap();
    let addr = start(config(ACCOUNTS), Arc::new(disk.clone()), silent());
    assert_eq!(prepare(&addr, 1, transfer(10)).await, Ok(Vote::Yes));
    decide(&addr, 1, true).await;
    assert_eq!(balance(&addr, 1).await, (90, 0));
}

#[actix_rt::test]
async fn the_prepared_table_is_bounded() {
    let disk = MemDisk::new();
    let _ = funded(&disk, silent()).await;
    let small = ParticipantConfig { max_prepared: 1, ..config(ACCOUNTS) };
    let addr = start(small, Arc::new(disk.clone()), silent());
    assert_eq!(prepare(&addr, 1, transfer(1)).await, Ok(Vote::Yes));
    assert!(matches!(prepare(&addr, 2, transfer(1)).await, Ok(Vote::No(AbortReason::Conflict { .. }))));
    // A re-sent prepare of the admitted one is still a YES.
    assert_eq!(prepare(&addr, 1, transfer(1)).await, Ok(Vote::Yes));
}

#[actix_rt::test]
async fn corruption_makes_open_fail_naming_the_key() {
    let disk = MemDisk::new();
    let addr = funded(&disk, silent()).await;
    assert_eq!(prepare(&addr, 7, transfer(1)).await, Ok(Vote::Yes));
    addr.send(Shutdown).await.unwrap();
    let space = "shard-accounts-0";
    // The newest transaction key: txn 7's prepared record (txn 0's commit
    // marker sorts before it).
    let (key, mut value) = disk.range(space, b"t/", Some(b"t0")).unwrap().pop().unwrap();
    value[6] ^= 0xff;
    let mut batch = Batch::new();
    batch.put(key, value);
    disk.apply(space, batch).unwrap();

    let err = ParticipantActor::open(config(ACCOUNTS), Arc::new(disk.clone()), silent()).unwrap_err();
    assert!(matches!(err, ParticipantError::CorruptJournal { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("shard-accounts-0") && message.contains("t/txn-1.1.7"), "{message}");
}

fn channel(decline_per_million: u32, authorize_latency_ms: u64) -> ChannelConfig {
    ChannelConfig {
        id: ChannelId(1),
        kind: ChannelKind::BankCard,
        name: "test_card".to_string(),
        decline_per_million,
        authorize_latency_ms,
    }
}

fn charge(order: u64) -> Vec<Operation> {
    vec![Operation::Charge { channel: ChannelId(1), order: OrderId(order), amount: cny(10) }]
}

#[actix_rt::test]
async fn a_charge_waits_for_the_channel_without_blocking_the_shard() {
    let channels = ParticipantConfig { channels: vec![channel(0, 100)], ..config(CHANNELS) };
    let addr = start(channels, Arc::new(MemDisk::new()), silent());
    let started = tokio::time::Instant::now();
    let vote = tokio::spawn(addr.send(Prepare { txn: txn(1), ops: charge(5), disk_low: None }));
    // While the channel authorizes, the shard answers and holds nothing.
    assert_eq!(addr.send(GetStatus).await.unwrap().in_doubt, 0);
    assert!(!vote.is_finished());
    assert_eq!(vote.await.unwrap().unwrap(), Ok(Vote::Yes));
    assert!(started.elapsed() >= Duration::from_millis(100));
    // A re-sent prepare is not authorized again: YES without the wait.
    let again = tokio::time::Instant::now();
    assert_eq!(prepare(&addr, 1, charge(5)).await, Ok(Vote::Yes));
    assert!(again.elapsed() < Duration::from_millis(100));
    decide(&addr, 1, true).await;
    let view = addr.send(ReadCharge { channel: ChannelId(1), order: OrderId(5) }).await.unwrap().unwrap();
    assert_eq!(view.charged, cny(10));
    assert!(matches!(prepare(&addr, 2, charge(5)).await, Ok(Vote::No(AbortReason::AlreadyCharged { .. }))));
}

#[actix_rt::test]
async fn declines_are_seeded_and_reserve_nothing() {
    async fn votes(seed: u64) -> Vec<bool> {
        let shard = ParticipantConfig { channels: vec![channel(500_000, 0)], rng_seed: seed, ..config(CHANNELS) };
        let addr = start(shard, Arc::new(MemDisk::new()), silent());
        let mut yes = Vec::new();
        for seq in 0..40 {
            match prepare(&addr, seq, charge(seq)).await {
                Ok(Vote::Yes) => yes.push(true),
                Ok(Vote::No(AbortReason::ChannelDeclined { channel })) => {
                    assert_eq!(channel, ChannelId(1));
                    yes.push(false);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let in_doubt = addr.send(GetStatus).await.unwrap().in_doubt;
        assert_eq!(in_doubt, yes.iter().filter(|y| **y).count() as u64, "a decline reserves nothing");
        yes
    }
    let first = votes(7).await;
    assert_eq!(first, votes(7).await, "same seed, same declines");
    assert!(first.contains(&true) && first.contains(&false), "{first:?}");
}

#[actix_rt::test]
async fn an_abort_that_overtakes_a_slow_authorization_leaves_nothing_held() {
    let channels = ParticipantConfig { channels: vec![channel(0, 50)], ..config(CHANNELS) };
    let addr = start(channels, Arc::new(MemDisk::new()), silent());
    let vote = tokio::spawn(addr.send(Prepare { txn: txn(1), ops: charge(5), disk_low: None }));
    // The coordinator timed out and aborted while the channel was thinking.
    decide(&addr, 1, false).await;
    assert!(matches!(vote.await.unwrap().unwrap(), Ok(Vote::No(AbortReason::PrepareTimeout { .. }))));
    assert_eq!(addr.send(GetStatus).await.unwrap().in_doubt, 0);
    // The order can be charged by a new transaction right away.
    assert_eq!(prepare(&addr, 2, charge(5)).await, Ok(Vote::Yes));
}

/// Below the disk's free-space minimum a shard refuses new work, but a
/// re-sent prepare of a transaction it already holds a YES for still says
/// YES: that YES was promised (and may have implicitly committed it).
#[actix_rt::test]
async fn a_full_disk_refuses_new_prepares_but_keeps_its_yes() {
    let disk = MemDisk::new();
    let addr = funded(&disk, silent()).await;
    assert_eq!(prepare(&addr, 1, transfer(10)).await, Ok(Vote::Yes));
    let low = |seq| Prepare { txn: txn(seq), ops: transfer(10), disk_low: Some(123) };
    let resent = addr.send(low(1)).await.expect("actor alive");
    assert_eq!(resent, Ok(Vote::Yes), "a re-sent prepare keeps its YES");
    let fresh = addr.send(low(2)).await.expect("actor alive");
    assert_eq!(fresh, Ok(Vote::No(AbortReason::DiskFull { shard: ACCOUNTS, free_bytes: 123 })));
    assert_eq!(balance(&addr, 1).await, (100, 10), "only the first transaction holds money");
}

/// A prepare refused while a prepared transaction touches its account (the
/// pending credit it needs) waits for that one's decision and is tried
/// again: the next transaction of a client told "committed" must not fail
/// on the commit that has not reached this shard yet.
#[actix_rt::test]
async fn a_refused_prepare_waits_for_the_prepared_transaction_on_its_entity() {
    let disk = MemDisk::new();
    let addr = funded_with(waiting(ACCOUNTS, 5_000), &disk, silent()).await;
    // T1 credits account 2; T2 spends that credit before T1's commit lands.
    assert_eq!(prepare(&addr, 1, transfer(50)).await, Ok(Vote::Yes));
    let spend = vec![Operation::Debit { account: AccountId(2), amount: cny(30) }];
    let waiting_vote = tokio::spawn(addr.send(Prepare { txn: txn(2), ops: spend, disk_low: None }));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting_vote.is_finished(), "the prepare waits instead of voting NO");
    decide(&addr, 1, true).await;
    let vote = waiting_vote.await.unwrap().expect("actor alive");
    assert_eq!(vote, Ok(Vote::Yes), "tried again after the commit, it fits");
    assert_eq!(balance(&addr, 2).await, (50, 30));
}

/// The wait is bounded: with no decision, the prepare votes the refusal.
#[actix_rt::test]
async fn a_waiting_prepare_votes_its_refusal_when_the_wait_ends() {
    let disk = MemDisk::new();
    let addr = funded_with(waiting(ACCOUNTS, 100), &disk, silent()).await;
    assert_eq!(prepare(&addr, 1, transfer(50)).await, Ok(Vote::Yes));
    let spend = vec![Operation::Debit { account: AccountId(2), amount: cny(30) }];
    let vote = addr.send(Prepare { txn: txn(2), ops: spend, disk_low: None }).await.expect("actor alive");
    assert!(matches!(vote, Ok(Vote::No(AbortReason::InsufficientFunds { .. }))), "{vote:?}");
    // An abort of the blocking transaction releases nothing T2 needed.
    decide(&addr, 1, false).await;
    assert_eq!(balance(&addr, 2).await, (0, 0));
}

/// A read waits for the transactions prepared on its entity before it, so
/// it sees a commit its client was already told about.
#[actix_rt::test]
async fn a_read_waits_for_the_transactions_prepared_before_it() {
    let disk = MemDisk::new();
    let addr = funded_with(waiting(ACCOUNTS, 5_000), &disk, silent()).await;
    assert_eq!(prepare(&addr, 1, transfer(10)).await, Ok(Vote::Yes));
    let read = tokio::spawn(addr.send(ReadAccount(AccountId(1))));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!read.is_finished(), "the read waits for the prepared transaction");
    decide(&addr, 1, true).await;
    let view = read.await.unwrap().expect("actor alive").expect("account exists");
    assert_eq!((view.balance_minor, view.held_minor), (90, 0), "the read sees the commit");
}
