//! One simulation run: a seeded cluster, a seeded workload, a seeded fault
//! schedule, then heal, settle and check.

use crate::check::{check_state, Actual, Model, Violation};
use crate::cluster::SimCluster;
use crate::faults::{FaultProfile, Nemesis};
use crate::workload::{self, client_call, Client, History, Known, SharedHistory, WorkloadConfig, CLIENT_ID_BASE};
use crate::world::{Counters, NetFaults, World};
use paytx_node::NodeConfig;
use paytx_protocol::messages::{KeyStatus, NodeStatusView, TxnState, TxnStatusView};
use paytx_protocol::planted::Bug;
use paytx_protocol::{
    AccountId, ChannelId, EntityKey, EntityKind, NodeId, Operation, OrderId, Outcome, RecordKey, Request, Response,
    ShardId, TxnRequest,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Client operations in all (a payment is one operation of two txns).
    pub operations: u64,
    /// Stop the workload after this much virtual time, if it runs longer.
    pub virtual_secs: Option<u64>,
    pub faults: FaultProfile,
    pub bug: Option<Bug>,
    /// Keep every event (for `--trace FILE`).
    pub keep_trace: bool,
    /// Copies of every participant shard (1: single-copy; 3: every shard
    /// a Raft group on the three nodes).
    pub replicas: u32,
    /// `[raft] key_retention_secs` of every node (`None`: the default, a
    /// day, which no run comes near). Small, keys are evicted during the
    /// run and the checker must say it cannot decide their outcomes
    /// (`outcomes-decidable`) rather than read them as never registered.
    pub key_retention_secs: Option<u64>,
}

impl SimConfig {
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            operations: 300,
            virtual_secs: None,
            faults: FaultProfile::All,
            bug: None,
            keep_trace: false,
            replicas: paytx_protocol::ops::DEFAULT_SHARD_REPLICAS,
            key_retention_secs: None,
        }
    }
}

/// Why a run failed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub violations: Vec<Violation>,
    /// Virtual time at which the first violation was seen.
    pub at_ms: u64,
    /// The last events before it.
    pub recent: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RunReport {
    pub seed: u64,
    pub trace_hash: u64,
    pub events: u64,
    pub virtual_ms: u64,
    pub txns: u64,
    pub committed: u64,
    pub aborted: u64,
    pub unknown: u64,
    /// Committed record writes (the records the checker followed).
    pub record_writes: u64,
    pub counters: Counters,
    pub failure: Option<Failure>,
    pub trace: Option<Vec<String>>,
}

/// Derives independent sub-seeds from the run seed.
pub fn sub_seed(seed: u64, stream: u64) -> u64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng.gen()
}

thread_local! {
    /// The first panic seen on this thread during the current run.
    static PANICKED: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Installs (once per process) a panic hook that remembers, per thread, the
/// first panic of the run on that thread, then does what the previous hook
/// did.
///
/// Why not tokio's `UnhandledPanic::ShutdownRuntime`: when a task panics it
/// drops the task's future inside the scheduler, and an openraft core's
/// future wakes another task as it drops (its channels close); the wake
/// borrows the scheduler's core, already borrowed, and that second panic
/// during unwinding aborts the whole process — a campaign of many seeds
/// lost to one. With the hook the panicked task just ends (tokio's default),
/// the run goes on degraded, and the panic is reported as `no-panic`.
fn install_panic_hook() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.with(|first| {
                if let Ok(mut first) = first.try_borrow_mut() {
                    if first.is_none() {
                        *first = Some(info.to_string());
                    }
                }
            });
            previous(info);
        }));
    });
}

/// Whether a task of this thread's run has panicked.
fn panicked() -> bool {
    PANICKED.with(|first| first.try_borrow().map(|f| f.is_some()).unwrap_or(true))
}

/// Runs one simulation on this thread: a paused tokio runtime whose
/// scheduler is seeded, an actix system on it, every RNG from the seed.
pub fn run(config: &SimConfig) -> RunReport {
    install_panic_hook();
    PANICKED.with(|first| first.borrow_mut().take());
    let runtime = tokio::runtime::Builder::new_current_thread()
        // Timers only: a simulated node does no I/O, and with the I/O (and
        // process/signal) driver on, every advance of the paused clock
        // parked in epoll_wait and reaped orphans (13% of a profile).
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&config.seed.to_le_bytes()))
        // A panic in any task (an actor, an openraft task, a message in
        // flight) is remembered by the panic hook and reported as
        // `no-panic` (see `install_panic_hook` for why not ShutdownRuntime).
        .build()
        .expect("a current-thread runtime can always be built");
    paytx_coordinator::runtime::seed_raft_rng(sub_seed(config.seed, 1));
    paytx_protocol::planted::plant(config.bug);
    let system = actix_rt::System::with_tokio_rt(move || runtime);
    let config = config.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| system.block_on(simulate(config.clone()))));
    paytx_protocol::planted::plant(None);
    let task_panic = PANICKED.with(|first| first.borrow_mut().take());
    match outcome {
        Ok(mut report) => {
            if let Some(message) = task_panic {
                let violation = Violation { invariant: "no-panic", detail: message };
                match &mut report.failure {
                    Some(failure) => failure.violations.insert(0, violation),
                    None => {
                        report.failure =
                            Some(Failure { violations: vec![violation], at_ms: report.virtual_ms, recent: Vec::new() })
                    }
                }
            }
            report
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            RunReport {
                seed: config.seed,
                trace_hash: 0,
                events: 0,
                virtual_ms: 0,
                txns: 0,
                committed: 0,
                aborted: 0,
                unknown: 0,
                record_writes: 0,
                counters: Counters::default(),
                failure: Some(Failure {
                    violations: vec![Violation { invariant: "no-panic", detail: message }],
                    at_ms: 0,
                    recent: Vec::new(),
                }),
                trace: None,
            }
        }
    }
}

pub(crate) fn node_configs(seed: u64, replicas: u32, rng: &mut ChaCha8Rng) -> BTreeMap<NodeId, NodeConfig> {
    let addrs: BTreeMap<NodeId, SocketAddr> =
        (1..=3u64).map(|id| (id, SocketAddr::from(([127, 0, 0, 1], 7100 + id as u16)))).collect();
    // Channels with seeded latency and failure models (slow prepares,
    // declined charges).
    let mut channels = paytx_participants::default_channels();
    for channel in &mut channels {
        // Now and then a channel slower than the prepare timeout: its
        // transactions time out in prepare and abort.
        channel.authorize_latency_ms = if rng.gen_bool(0.1) { rng.gen_range(800..1_500) } else { rng.gen_range(0..40) };
        channel.decline_per_million = if rng.gen_bool(0.5) { rng.gen_range(0..50_000) } else { 0 };
    }
    // The layout: replicated runs take the default (one shard of each kind
    // on three nodes) or, every other seed or so, three of each kind, so
    // that payer and merchant are often in different accounts shards and a
    // node is the preferred leader of several groups; single-copy runs
    // have one of each kind per node.
    let ids: Vec<NodeId> = addrs.keys().copied().collect();
    let shards = if replicas > 1 && rng.gen_bool(0.5) {
        paytx_protocol::ShardMap::one_shard_per_node(&ids).with_replicas(replicas)
    } else {
        paytx_protocol::ShardMap::for_replicas(&ids, replicas)
    };
    addrs
        .keys()
        .map(|id| {
            // The simulated links need no handshake; the config still
            // carries a valid secret.
            let mut config =
                NodeConfig::local(*id, &addrs, format!("sim/node-{id}").into(), "simulated-cluster-secret");
            config.seed = Some(sub_seed(seed, 100 + id));
            config.channels = channels.clone();
            config.shards = shards.clone();
            // Heartbeats and elections keep the production timing
            // (`RaftSettings::default`, 100 / 400-800 ms), so runs test the
            // timing nodes run with. They were 50 / 300-600 ms here: twice
            // the heartbeats and ticks of every group in each virtual
            // second, which is what an idle second of a run costs (issue
            // 11, README "Speed").
            // Small, so snapshots and snapshot installs happen in most runs,
            // in the shard groups too (each gets a fraction of the entries
            // the coordinator does): a replica cut off for a few seconds, or
            // rebuilt from nothing, then catches up by snapshot.
            config.raft.snapshot_every_entries = 20;
            config.raft.keep_entries_after_snapshot = 5;
            config.coordinator.prepare_timeout_ms = 1_000;
            config.coordinator.decide_retry_ms = 100;
            config.coordinator.in_doubt_after_ms = 500;
            config.limits.request_timeout_ms = 3_000;
            config.limits.peer_timeout_ms = 1_000;
            (*id, config)
        })
        .collect()
}

/// Reads from the node owning an entity, straight from its service (the
/// network has been healed by then).
async fn read(cluster: &SimCluster, entity: EntityKey, request: Request) -> Option<Response> {
    let config = cluster.configs.values().next()?;
    read_shard(cluster, config.shards.shard_of(entity), request).await
}

/// Waits (up to `timeout_ms` of virtual time) until every rebuilt node
/// that is running is a voter of the coordinator group and of every shard
/// group it holds under its new replica id, and no group lists its old one.
async fn rebuilt_nodes_rejoined(cluster: &SimCluster, timeout_ms: u64) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        let mut missing = Vec::new();
        for (node, incarnation) in &cluster.rebuilt {
            let Some(service) = cluster.service(*node) else { continue };
            let me = paytx_protocol::replica::replica_id(*node, *incarnation);
            let is_alone = |voters: &[u64]| {
                voters.contains(&me) && voters.iter().all(|v| paytx_protocol::replica::node_of(*v) != *node || *v == me)
            };
            let status = service.status().await;
            if !is_alone(&status.local.coordinator_voters) {
                missing.push(format!("node {node}: coordinator voters {:?}", status.local.coordinator_voters));
            }
            for shard in status.shards.iter().filter(|s| !is_alone(&s.voters)) {
                missing.push(format!("node {node}: {} voters {:?}", shard.shard, shard.voters));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("rebuilt replicas not voters after {timeout_ms} ms: {}", missing.join("; ")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (at most 30 s of virtual time) until every live replica of every
/// shard has applied the same log index, then compares their states.
/// `Err` names a shard whose replicas hold different states at the same
/// index, or that did not converge.
async fn replicas_agree(world: &World, cluster: &SimCluster) -> Result<(), String> {
    let Some(config) = cluster.configs.values().next() else { return Ok(()) };
    let shards: Vec<ShardId> = config.shards.shards().collect();
    let deadline = world.now_ms() + 30_000;
    loop {
        let mut lagging = None;
        for shard in &shards {
            let states: Vec<(NodeId, paytx_node::shards::ReplicaState)> = config
                .shards
                .replicas_of(*shard)
                .into_iter()
                .filter_map(|node| Some((node, cluster.service(node)?.shard_replica_state(*shard)?)))
                .collect();
            let Some((_, first)) = states.first() else { continue };
            if states.iter().any(|(_, state)| state.applied_index != first.applied_index) {
                lagging = Some(format!("{shard}: applied {states:?}"));
                continue;
            }
            if let Some((node, differs)) = states.iter().find(|(_, state)| state.digest != first.digest) {
                return Err(format!(
                    "{shard}: replicas applied through {:?} hold different states (node {node}: {differs:?}, all: {states:?})",
                    first.applied_index
                ));
            }
        }
        match lagging {
            None => return Ok(()),
            Some(detail) if world.now_ms() >= deadline => return Err(format!("not converged after 30 s: {detail}")),
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Reads from the replica of `shard` that answers: the only copy, or the
/// group's leader. While the group elects, every replica refuses (not the
/// leader, or a leader that cannot confirm it still leads): asked again for
/// up to 10 virtual seconds.
async fn read_shard(cluster: &SimCluster, shard: ShardId, request: Request) -> Option<Response> {
    let config = cluster.configs.values().next()?;
    let replicated = config.shards.is_replicated();
    let mut answer = None;
    for _ in 0..100 {
        for node in config.shards.replicas_of(shard) {
            let Some(service) = cluster.service(node) else { continue };
            let response = service.handle_request(request.clone(), false).await;
            // A single copy's error is its answer; a replica's may only
            // mean another replica leads.
            let refused = replicated && matches!(response, Response::Error(_));
            answer = Some(response);
            if !refused {
                return answer;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    answer
}

/// One whole partition (the name index, the journal), page by page on the
/// node owning its shard, ascending or descending. `Err` when the shard did
/// not answer or a page does not follow its cursor in the scan's direction.
async fn read_partition(
    cluster: &SimCluster,
    partition: paytx_protocol::Partition,
    descending: bool,
) -> Result<Vec<paytx_protocol::messages::RecordView>, String> {
    use paytx_protocol::ids::SORT_BYTES;
    let mut entries: Vec<paytx_protocol::messages::RecordView> = Vec::new();
    let mut after = None;
    // Bounded: the name index holds at most one entry per name of the
    // pool, the journal one per transfer of the run (pages of 5).
    for _ in 0..100_000 {
        let scan = paytx_protocol::RangeScan {
            partition,
            from: [0; SORT_BYTES],
            to: [0xff; SORT_BYTES],
            descending,
            after,
            limit: 5,
        };
        let entity = EntityKey::Record(partition.key(scan.from));
        let Some(Response::Records(page)) = read(cluster, entity, Request::ScanRange(scan)).await else {
            return Err(format!("the shard of partition {} did not answer a range read", partition.ns));
        };
        let follows = |key: RecordKey| match after {
            None => true,
            Some(after) if descending => key.sort() < after,
            Some(after) => key.sort() > after,
        };
        if page.records.iter().any(|r| r.key.partition() != Some(partition) || !follows(r.key)) {
            return Err("a range read answered a page outside its partition or cursor".to_string());
        }
        after = page.records.last().map(|r| r.key.sort()).or(after);
        entries.extend(page.records);
        if !page.more {
            return Ok(entries);
        }
    }
    Err(format!("partition {} did not end within 100,000 pages", partition.ns))
}

/// Every record of namespace `ns` on every records shard, by scanning each
/// shard page by page on the node that owns it. `Err` names a shard that
/// did not answer, or answered a page that does not follow its cursor.
async fn scan_all(cluster: &SimCluster, ns: paytx_protocol::RecordNs) -> Result<Vec<RecordKey>, String> {
    let config = cluster.configs.values().next().ok_or("no node configured")?;
    let mut keys = Vec::new();
    for index in 0..config.shards.records.len() as u32 {
        let shard = ShardId { kind: EntityKind::Record, index };
        let mut after = None;
        // Bounded: the pools hold far fewer keys than this many pages.
        for _ in 0..1_000 {
            let request = Request::ScanRecords { shard: index, ns, after, limit: 16 };
            let Some(Response::Records(page)) = read_shard(cluster, shard, request).await else {
                return Err(format!("{shard} did not answer a scan"));
            };
            if page.records.iter().any(|r| r.key.ns != ns || after.is_some_and(|a| r.key <= a)) {
                return Err(format!("{shard} answered a page out of order"));
            }
            keys.extend(page.records.iter().map(|r| r.key));
            after = page.records.last().map(|r| r.key).or(after);
            if !page.more {
                break;
            }
        }
    }
    Ok(keys)
}

pub(crate) async fn wait_for_leader(cluster: &SimCluster, timeout_ms: u64) -> Option<NodeId> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    while tokio::time::Instant::now() < deadline {
        for id in cluster.ids() {
            if let Some(service) = cluster.service(id) {
                if service.status().await.coordinator_ready {
                    return Some(id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Waits (up to `timeout_ms` of virtual time) until every participant
/// shard of the map has a leader some running node knows of: a cluster is
/// ready for its first transaction then, not when the coordinator alone
/// has one (the shard groups elect on their own timeouts). `false` when a
/// shard has none by the deadline.
async fn wait_for_shard_leaders(cluster: &SimCluster, timeout_ms: u64) -> bool {
    let Some(map) = cluster.configs.values().next().map(|config| config.shards.clone()) else {
        return false;
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    while tokio::time::Instant::now() < deadline {
        let mut led = std::collections::BTreeSet::new();
        for id in cluster.ids() {
            if let Some(service) = cluster.service(id) {
                led.extend(service.status().await.shards.iter().filter(|s| s.leader.is_some()).map(|s| s.shard));
            }
        }
        if map.shards().all(|shard| led.contains(&shard)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// `true` once nothing is undecided, unacknowledged or in doubt anywhere.
/// Submits fresh transactions (each opens a new, empty account: no money
/// moves) to the nodes that are up until one commits; `Err` when none has
/// within 10 virtual seconds. Each attempt has its own key and account, so
/// an earlier attempt still in doubt (its answer lost) cannot refuse the
/// next: a client that sees an abort tries again, and liveness is that one
/// of them gets through.
async fn probe_commit(world: &World, nodes: &[NodeId], seed: u64) -> Result<(), String> {
    let deadline = world.now_ms() + 10_000;
    let mut last = String::from("no node is up");
    for attempt in 0u64..1_000 {
        if world.now_ms() >= deadline {
            break;
        }
        let Some(node) = nodes.get(attempt as usize % nodes.len().max(1)).copied() else { break };
        let account = AccountId(900_000_000 + (seed % 1_000) * 1_000 + attempt);
        let op = Operation::OpenAccount { account, currency: paytx_protocol::Currency::CNY, initial_minor: 0 };
        let request = paytx_protocol::TxnRequest::new(format!("liveness-probe-{seed}-{attempt}"), vec![op]);
        match client_call(world, CLIENT_ID_BASE - 3, node, Request::Submit(request), 2_000).await {
            Some(Response::Submitted(receipt)) if receipt.outcome.is_committed() => return Ok(()),
            Some(Response::Submitted(receipt)) => last = format!("node {node}: aborted {:?}", receipt.outcome),
            Some(other) => last = format!("node {node}: {other:?}"),
            None => last = format!("node {node} did not answer"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("no new transaction committed within 10 s after healing; the last attempt: {last}"))
}

/// How long after a first quiet observation the settle phase looks again.
const QUIET_CONFIRM_MS: u64 = 1_000;

/// Most virtual time the monitor spends reading one hot account.
const MONITOR_READ_BUDGET_MS: u64 = 2_000;

async fn quiet(cluster: &SimCluster) -> bool {
    let mut leader_seen = false;
    for id in cluster.ids() {
        // A node lost for good is not waited for.
        let Some(service) = cluster.service(id) else { continue };
        let status = service.status().await;
        if status.shards.iter().any(|s| s.in_doubt > 0) {
            return false;
        }
        if status.coordinator_ready {
            leader_seen = true;
            if status.undecided_txns > 0 || status.unacked_txns > 0 {
                return false;
            }
        }
    }
    leader_seen
}

struct Monitor {
    leaders: BTreeMap<u64, NodeId>,
    /// Each shard group's leader as last traced (for `--timeline`).
    shard_leaders: BTreeMap<paytx_protocol::ShardId, NodeId>,
    violations: Vec<Violation>,
    first_at_ms: Option<u64>,
    recent: Vec<String>,
}

impl Monitor {
    fn flag(&mut self, world: &World, violation: Violation) {
        if self.first_at_ms.is_none() {
            self.first_at_ms = Some(world.now_ms());
            self.recent = world.lock().trace.recent();
        }
        if !self.violations.contains(&violation) {
            self.violations.push(violation);
        }
    }

    /// The cheap invariants, checked continuously: at most one leader per
    /// term, no negative balance on any hot account.
    async fn observe(&mut self, world: &World, cluster: &SimCluster, hot: &[AccountId]) {
        let mut statuses = Vec::new();
        for id in cluster.ids() {
            let Some(service) = cluster.service(id) else { continue };
            let status = service.status().await;
            if let (Some(term), Some(leader)) = (status.raft_term, status.leader) {
                match self.leaders.get(&term) {
                    Some(known) if *known != leader => {
                        let detail = format!("term {term}: node {id} follows {leader}, another node followed {known}");
                        self.flag(world, Violation { invariant: "one-leader-per-term", detail });
                    }
                    _ => {
                        self.leaders.insert(term, leader);
                    }
                }
            }
            statuses.push(status);
        }
        // Each shard group's leader, as the lowest-numbered node that knows
        // one reports it: traced when it changes, for the timeline.
        for (shard, leader) in NodeStatusView::shard_leaders(&statuses) {
            if self.shard_leaders.insert(shard, leader) != Some(leader) {
                world.record(|| format!("shard {shard} led by node {leader}"), &leader.to_le_bytes());
            }
        }
        for account in hot {
            // Bounded: a group without a majority answers nothing, and the
            // nemesis (which restarts and reconnects nodes) waits for this.
            let budget = Duration::from_millis(MONITOR_READ_BUDGET_MS);
            let answer = tokio::time::timeout(
                budget,
                read(cluster, EntityKey::Account(*account), Request::GetAccount(*account)),
            );
            if let Ok(Some(Response::Account(Some(view)))) = answer.await {
                if view.balance_minor < 0 {
                    let detail = format!("{account} at {}", view.balance_minor);
                    self.flag(world, Violation { invariant: "no-negative-balance", detail });
                }
            }
        }
    }
}

async fn simulate(config: SimConfig) -> RunReport {
    let seed = config.seed;
    let mut rng = ChaCha8Rng::seed_from_u64(sub_seed(seed, 2));
    let mut configs = node_configs(seed, config.replicas, &mut rng);
    if let Some(key_retention_secs) = config.key_retention_secs {
        // After the draws, so the rest of the run is the seed's usual one.
        configs.values_mut().for_each(|node| node.raft.key_retention_secs = key_retention_secs);
    }
    let nodes: Vec<NodeId> = configs.keys().copied().collect();
    let world = World::new(ChaCha8Rng::seed_from_u64(sub_seed(seed, 3)), config.keep_trace, NetFaults::none());
    let mut cluster = SimCluster::new(world.clone(), configs, sub_seed(seed, 6));
    if config.faults != FaultProfile::None {
        // Clocks differ per node (a stream of its own: the other draws
        // stay the seed's).
        cluster.skew_clocks(ChaCha8Rng::seed_from_u64(sub_seed(seed, 8)));
    }
    let mut monitor = Monitor {
        leaders: BTreeMap::new(),
        shard_leaders: BTreeMap::new(),
        violations: Vec::new(),
        first_at_ms: None,
        recent: Vec::new(),
    };
    let clients = rng.gen_range(2..=6);
    // A quarter of the seeds run many clients at once, so that prepares and
    // decisions meet in the coordinator's outbox and travel as batches
    // (lone ones are the rule with a few clients). From a stream of its
    // own, so that the other seeds' draws stay as they were.
    let mut crowd = ChaCha8Rng::seed_from_u64(sub_seed(seed, 7));
    let clients = if crowd.gen_range(0..4) == 0 { crowd.gen_range(12..=24) } else { clients };
    let workload_config = WorkloadConfig {
        clients,
        operations: config.operations,
        accounts: rng.gen_range(6..=16),
        hot_accounts: rng.gen_range(1..=3),
        initial_balance_minor: rng.gen_range(5_000..50_000),
        client_timeout_ms: 2_000,
        max_retries: 6,
    };
    let history: SharedHistory = Arc::new(Mutex::new(History::default()));

    for (id, started) in cluster.start_many(&cluster.ids()).await {
        if let Err(e) = started {
            monitor.flag(&world, Violation { invariant: "node-starts", detail: format!("node {id}: {e}") });
        }
    }
    if wait_for_leader(&cluster, 20_000).await.is_none() {
        monitor.flag(&world, Violation { invariant: "liveness", detail: "no leader within 20 s".into() });
    }
    if !wait_for_shard_leaders(&cluster, 20_000).await {
        let detail = "a participant shard has no leader within 20 s".to_string();
        monitor.flag(&world, Violation { invariant: "liveness", detail });
    }

    // Opening deposits, before any fault.
    let opening = workload::opening_balances(&workload_config);
    let deposited: i64 = opening.values().sum();
    let open_ops: Vec<Operation> = opening
        .iter()
        .map(|(account, initial)| Operation::OpenAccount {
            account: *account,
            currency: workload::CURRENCY,
            initial_minor: *initial,
        })
        .collect();
    let mut opener = Client {
        id: CLIENT_ID_BASE,
        world: world.clone(),
        nodes: nodes.clone(),
        rng: ChaCha8Rng::seed_from_u64(sub_seed(seed, 4)),
        config: WorkloadConfig { max_retries: 30, ..workload_config.clone() },
        history: history.clone(),
    };
    if opener.submit(TxnRequest::new("open-accounts", open_ops)).await != Known::Acked(Outcome::Committed) {
        monitor.flag(&world, Violation { invariant: "liveness", detail: "opening the accounts did not commit".into() });
    }

    // Faults on, clients go.
    world.lock().faults = config.faults.net_faults(&mut rng);
    let mut handles = Vec::new();
    let per_client = workload_config.operations / workload_config.clients + 1;
    for c in 0..workload_config.clients {
        let client = Client {
            id: CLIENT_ID_BASE + 1 + c,
            world: world.clone(),
            nodes: nodes.clone(),
            rng: ChaCha8Rng::seed_from_u64(sub_seed(seed, 10 + c)),
            config: workload_config.clone(),
            history: history.clone(),
        };
        handles.push(tokio::spawn(client.run(per_client)));
    }
    let hot: Vec<AccountId> = (1..=workload_config.hot_accounts).map(AccountId).collect();
    let mut nemesis = Nemesis::new(config.faults, ChaCha8Rng::seed_from_u64(sub_seed(seed, 5)), config.replicas > 1);
    let stop_at_ms = config.virtual_secs.map(|s| s * 1_000);
    loop {
        if handles.iter().all(|h| h.is_finished()) {
            break;
        }
        // A task panicked (reported at the end): stop the workload early.
        if stop_at_ms.is_some_and(|stop| world.now_ms() >= stop) || panicked() {
            for handle in &handles {
                handle.abort();
            }
            break;
        }
        nemesis.step(&mut cluster).await;
        monitor.observe(&world, &cluster, &hot).await;
    }
    for handle in handles {
        let _ = handle.await;
    }

    // Heal everything and let the cluster settle for a bounded time.
    nemesis.heal(&mut cluster).await;
    world.record(|| "healed".to_string(), b"healed");
    let settle_deadline = world.now_ms() + 60_000;
    let mut settled = false;
    while world.now_ms() < settle_deadline {
        // Quiet twice, an election timeout apart: a node cut off until the
        // heal may still believe it leads, and its stale table looks quiet
        // until it hears the others.
        if quiet(&cluster).await {
            tokio::time::sleep(Duration::from_millis(QUIET_CONFIRM_MS)).await;
            if quiet(&cluster).await {
                settled = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !settled {
        monitor
            .flag(&world, Violation { invariant: "nothing-in-doubt", detail: "not quiet 60 s after healing".into() });
    }
    // From here on only the nodes that are up answer (all but one lost for
    // good, if any).
    let nodes: Vec<NodeId> = nodes.iter().copied().filter(|id| cluster.is_running(*id)).collect();
    // Liveness: with every fault healed (one node perhaps lost for good,
    // so a majority of every group up), a new transaction commits within
    // 10 virtual seconds.
    if let Err(detail) = probe_commit(&world, &nodes, seed).await {
        monitor.flag(&world, Violation { invariant: "liveness", detail });
    }

    // Amnesia: a node whose disk was wiped never ran under an identity
    // (replica id) that had voted or acknowledged from the lost disk.
    for detail in cluster.identity_reuses.clone() {
        monitor.flag(&world, Violation { invariant: "no-identity-reused-after-wipe", detail });
    }
    // And it rejoined: a voter of every group it belongs to, under its new
    // replica id, with its old one gone (bounded virtual time).
    if let Err(detail) = rebuilt_nodes_rejoined(&cluster, 30_000).await {
        monitor.flag(&world, Violation { invariant: "rebuilt-node-rejoins", detail });
    }

    // Final outcomes: what the clients were told must be what the table
    // says (durability); what they were not told is looked up by key.
    let txns = workload::lock(&history).txns.clone();
    let mut model = Model::new(&BTreeMap::new());
    let (mut committed, mut aborted, mut unknown) = (0, 0, 0);
    let mut committed_ops: Vec<Vec<Operation>> = Vec::new();
    for record in &txns {
        let final_state = workload::final_status(&world, &nodes, &record.request.key).await;
        let decidable = !matches!(final_state, Some(KeyStatus::Unknown { .. }));
        let final_outcome = match final_state {
            Some(KeyStatus::Known(TxnStatusView { state: TxnState::Decided(outcome), .. })) => Some(outcome),
            Some(KeyStatus::NotRegistered) => None, // never registered: nothing applied
            // Evicted by retention: whether it applied cannot be known, so
            // the run cannot be checked exactly. Never read as "nothing
            // applied" (that would hide a payment applied twice or lost).
            Some(KeyStatus::Unknown { retention_secs }) => {
                let detail = format!(
                    "{}: status unknown, keys older than {retention_secs} s evicted (key retention too small for the run)",
                    record.request.key
                );
                monitor.flag(&world, Violation { invariant: "outcomes-decidable", detail });
                None
            }
            Some(KeyStatus::Known(TxnStatusView { state: TxnState::InProgress, .. })) => {
                let detail = format!("{} still in progress after settling", record.request.key);
                monitor.flag(&world, Violation { invariant: "nothing-in-doubt", detail });
                None
            }
            None => {
                let detail = format!("no node answered the status of {}", record.request.key);
                monitor.flag(&world, Violation { invariant: "liveness", detail });
                None
            }
        };
        match &record.known {
            Known::Acked(told) => {
                // An undecidable outcome is flagged above, not compared.
                if decidable && final_outcome.as_ref() != Some(told) {
                    let detail =
                        format!("{}: client was told {told:?}, the table says {final_outcome:?}", record.request.key);
                    monitor.flag(&world, Violation { invariant: "durable-outcomes", detail });
                }
            }
            Known::Unknown => unknown += 1,
            Known::Rejected(reason) => {
                let detail = format!("{} rejected: {reason}", record.request.key);
                monitor.flag(&world, Violation { invariant: "valid-requests-accepted", detail });
            }
        }
        match final_outcome {
            Some(Outcome::Committed) => {
                committed += 1;
                committed_ops.push(record.request.ops.clone());
            }
            Some(Outcome::Aborted(_)) => aborted += 1,
            None => {}
        }
    }
    // Apply in an order that respects the order life cycle.
    committed_ops.sort_by_key(|ops| crate::check::lifecycle_rank(ops));
    for ops in &committed_ops {
        for violation in model.apply(ops) {
            monitor.flag(&world, violation);
        }
    }

    // The actual state.
    let mut actual = Actual::default();
    for account in opening.keys() {
        let view = match read(&cluster, EntityKey::Account(*account), Request::GetAccount(*account)).await {
            Some(Response::Account(view)) => view,
            _ => None,
        };
        actual.accounts.insert(*account, view);
    }
    let orders = workload::lock(&history).next_order;
    for order in (1..=orders).map(OrderId) {
        let view = match read(&cluster, EntityKey::Order(order), Request::GetOrder(order)).await {
            Some(Response::Order(view)) => view,
            _ => None,
        };
        actual.orders.insert(order, view);
        for channel in (1..=3).map(ChannelId) {
            let request = Request::GetCharge { channel, order };
            let view = match read(&cluster, EntityKey::Channel(channel), request).await {
                Some(Response::Charge(view)) => view,
                _ => None,
            };
            actual.charges.insert((channel, order), view);
        }
    }
    let pool: Vec<RecordKey> = workload::all_pool_keys();
    for key in &pool {
        let view = match read(&cluster, EntityKey::Record(*key), Request::GetRecord(*key)).await {
            Some(Response::Record(view)) => view,
            _ => None,
        };
        actual.records.insert(*key, view);
    }
    // Scans must find exactly the records the reads found, and nothing the
    // workload never wrote.
    for (ns, _, _) in workload::RECORD_POOLS {
        match scan_all(&cluster, ns).await {
            Ok(scanned) => {
                let expected: Vec<RecordKey> =
                    actual.records.iter().filter(|(k, v)| k.ns == ns && v.is_some()).map(|(k, _)| *k).collect();
                let mut sorted = scanned.clone();
                sorted.sort_unstable();
                if sorted != expected {
                    let detail =
                        format!("namespace {ns}: scans found {} records, reads {}", scanned.len(), expected.len());
                    monitor.flag(&world, Violation { invariant: "record-scans", detail });
                }
            }
            Err(detail) => monitor.flag(&world, Violation { invariant: "record-scans", detail }),
        }
    }
    // Every index against the records it indexes, read both ways.
    let names = workload::name_index_partition();
    match (read_partition(&cluster, names, false).await, read_partition(&cluster, names, true).await) {
        (Ok(ascending), Ok(descending)) => {
            for violation in crate::check::check_name_index(&actual.records, &ascending, &descending) {
                monitor.flag(&world, violation);
            }
        }
        (Err(detail), _) | (_, Err(detail)) => {
            monitor.flag(&world, Violation { invariant: "index-matches-records", detail })
        }
    }
    // The journal: one entry per committed transfer, under a log time.
    let log_times_ms = crate::check::log_time_bounds_ms(world.now_ms());
    let journal = workload::journal_partition();
    match read_partition(&cluster, journal, false).await {
        Ok(found) => {
            for violation in crate::check::check_commit_timed(journal, &model.commit_timed, &found, log_times_ms) {
                monitor.flag(&world, violation);
            }
        }
        Err(detail) => monitor.flag(&world, Violation { invariant: "commit-timed-entries", detail }),
    }
    for violation in check_state(&model, &actual, deposited) {
        monitor.flag(&world, violation);
    }

    // Idempotency: resubmitting acknowledged transactions replays them and
    // changes nothing.
    let before: Vec<_> = actual.accounts.values().cloned().collect();
    for record in txns.iter().filter(|r| matches!(r.known, Known::Acked(_))).take(8) {
        let response =
            client_call(&world, CLIENT_ID_BASE - 2, nodes[0], Request::Submit(record.request.clone()), 5_000).await;
        if let Some(Response::Submitted(receipt)) = response {
            if !receipt.replayed || Known::Acked(receipt.outcome.clone()) != record.known {
                let detail =
                    format!("{} resubmitted: {receipt:?}, first answer {:?}", record.request.key, record.known);
                monitor.flag(&world, Violation { invariant: "idempotency", detail });
            }
        }
    }
    let mut after = Vec::new();
    for account in opening.keys() {
        after.push(match read(&cluster, EntityKey::Account(*account), Request::GetAccount(*account)).await {
            Some(Response::Account(view)) => view,
            _ => None,
        });
    }
    if after != before {
        monitor.flag(&world, Violation { invariant: "idempotency", detail: "a replay changed balances".into() });
    }

    // Replicated shards: once every live replica has applied the same
    // entries, they hold the same state.
    if config.replicas > 1 {
        if let Err(detail) = replicas_agree(&world, &cluster).await {
            monitor.flag(&world, Violation { invariant: "replicas-agree", detail });
        }
    }

    // What batching carried, from the replica that applied the most.
    let batch = cluster
        .configs
        .keys()
        .filter_map(|id| cluster.service(*id).and_then(|service| service.batch_stats()))
        .max_by_key(|stats| stats.proposals);
    if let Some(batch) = batch {
        world.lock().counters.batch = batch;
    }
    let snapshots_installed: u64 = cluster
        .configs
        .values()
        .next()
        .map(|config| {
            config
                .shards
                .shards()
                .flat_map(|shard| cluster.ids().into_iter().map(move |node| (node, shard)))
                .filter_map(|(node, shard)| cluster.service(node)?.shard_replica_state(shard))
                .map(|state| state.snapshots_installed)
                .sum()
        })
        .unwrap_or(0);
    {
        let mut state = world.lock();
        state.counters.shard_snapshots_installed = snapshots_installed;
        for id in cluster.ids() {
            if let Some(service) = cluster.service(id) {
                let (handed_over, stopped) = service.metrics().hand_overs();
                state.counters.leaders_handed_over += handed_over;
                state.counters.hand_overs_stopped += stopped;
                let batches = service.metrics().batches();
                state.counters.prepare_batches += batches.prepare_batches;
                state.counters.prepares_in_batches += batches.prepares;
                state.counters.blocked_in_batches += batches.blocked;
                state.counters.decide_batches += batches.decide_batches;
                state.counters.decisions_in_batches += batches.decisions;
            }
        }
        for disk in cluster.disks.values() {
            let group = disk.group_commit_stats();
            state.counters.disk_syncs_joined += group.joined;
            state.counters.disk_max_syncs_in_flight = state.counters.disk_max_syncs_in_flight.max(group.max_in_flight);
        }
    }
    cluster.stop_all().await;
    let virtual_ms = world.now_ms();
    let mut state = world.lock();
    RunReport {
        seed,
        trace_hash: state.trace.hash(),
        events: state.trace.events(),
        virtual_ms,
        txns: txns.len() as u64,
        committed,
        aborted,
        unknown,
        record_writes: model.record_writes.values().map(|writes| writes.len() as u64).sum(),
        counters: state.counters.clone(),
        failure: monitor.first_at_ms.map(|at_ms| Failure {
            violations: monitor.violations,
            at_ms,
            recent: monitor.recent,
        }),
        trace: state.trace.take_full(),
    }
}
