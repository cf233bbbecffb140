//! A pause stops a node's clock, which a partition does not: the
//! difference, on a real simulated cluster.

use crate::cluster::SimCluster;
use crate::run::{node_configs, wait_for_leader};
use crate::world::{NetFaults, World};
use paytx_node::NodeService;
use paytx_protocol::NodeId;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::future::Future;
use std::time::Duration;

fn on_sim_runtime<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
    paytx_coordinator::runtime::seed_raft_rng(7);
    actix_rt::System::with_tokio_rt(move || runtime).block_on(future)
}

async fn term(service: &NodeService) -> u64 {
    service.status().await.raft_term.expect("a coordinator replica")
}

fn cut_off(world: &World, node: NodeId, ids: &[NodeId]) {
    let mut state = world.lock();
    for other in ids.iter().copied().filter(|o| *o != node) {
        state.cut.insert((node, other));
        state.cut.insert((other, node));
    }
}

/// A follower cut off from its peers campaigns again and again (its term
/// climbs); paused as well, its election timer does not fire at all, and
/// once its clock runs again it campaigns like the cut-off one.
#[test]
fn a_paused_node_starts_no_election_and_a_cut_off_one_does() {
    on_sim_runtime(async {
        let world = World::new(ChaCha8Rng::seed_from_u64(1), false, NetFaults::none());
        let configs = node_configs(3, 3, &mut ChaCha8Rng::seed_from_u64(2));
        let mut cluster = SimCluster::new(world.clone(), configs, 4);
        for (id, started) in cluster.start_many(&cluster.ids()).await {
            started.unwrap_or_else(|e| panic!("node {id}: {e}"));
        }
        let leader = wait_for_leader(&cluster, 20_000).await.expect("a coordinator leader");
        let ids = cluster.ids();
        let follower = ids.iter().copied().find(|id| *id != leader).expect("three nodes");
        // Asked directly: the harness does not ask a paused node.
        let service = cluster.service(follower).expect("running");
        let before = term(&service).await;

        // Paused and cut off for 5 s: eight times the longest election
        // timeout (600 ms) without a single campaign.
        let clock = cluster.clock(follower);
        clock.pause();
        assert!(cluster.service(follower).is_none(), "the harness asks a paused node");
        cut_off(&world, follower, &ids);
        tokio::time::sleep(Duration::from_millis(5_000)).await;
        assert_eq!(term(&service).await, before, "a paused node campaigned");

        // The same node, cut off with its clock running: it campaigns.
        clock.resume();
        tokio::time::sleep(Duration::from_millis(5_000)).await;
        let campaigned = term(&service).await;
        assert!(campaigned >= before + 2, "a cut-off node stayed at term {campaigned} (from {before})");
        world.lock().cut.clear();
    });
}
