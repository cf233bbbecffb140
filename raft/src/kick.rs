//! Breaking a livelocked election.
//!
//! openraft 0.9.25 draws a replica's election timeout once, when the
//! replica starts (`EngineConfig::new`), not at every election. Two
//! surviving replicas whose timeouts differ by less than a message's trip
//! time both become candidates in the same term, each votes for itself
//! (`single-term-leader`), neither wins — and the next round repeats at
//! the same offsets, forever: a group that lost one of three voters for
//! good never elects. (The simulator found it: a node lost for good, two
//! survivors exchanging vote requests every 500 ms for 30 virtual seconds.)
//!
//! [`ElectionKick`] is the way out: a replica that has known no leader for
//! longer than the longest election timeout plus a seeded random extra
//! starts an election itself (`Raft::trigger().elect()`), at a time the
//! other survivor does not share. Pure: the caller gives the time and
//! whether a leader is known, and acts when told.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// When to start an election of one's own (see the module doc).
#[derive(Debug)]
pub struct ElectionKick {
    rng: ChaCha8Rng,
    election_timeout_max_ms: u64,
    /// Virtual or real ms at which to kick, while no leader is known.
    kick_at_ms: Option<u64>,
}

impl ElectionKick {
    pub fn new(seed: u64, election_timeout_max_ms: u64) -> Self {
        ElectionKick { rng: ChaCha8Rng::seed_from_u64(seed), election_timeout_max_ms, kick_at_ms: None }
    }

    fn next_kick(&mut self, now_ms: u64) -> u64 {
        let max = self.election_timeout_max_ms.max(1);
        now_ms.saturating_add(max).saturating_add(self.rng.gen_range(0..max.saturating_mul(2)))
    }

    /// Called periodically with the time and whether the replica knows a
    /// leader; `true` when it should start an election now.
    pub fn poll(&mut self, now_ms: u64, leader_known: bool) -> bool {
        if leader_known {
            self.kick_at_ms = None;
            return false;
        }
        match self.kick_at_ms {
            None => {
                self.kick_at_ms = Some(self.next_kick(now_ms));
                false
            }
            Some(at) if now_ms >= at => {
                self.kick_at_ms = Some(self.next_kick(now_ms));
                true
            }
            Some(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_without_a_leader_kicks_after_a_random_extra_and_again_later() {
        let mut kick = ElectionKick::new(7, 600);
        assert!(!kick.poll(0, false), "first sight of no leader: wait");
        let first = (1..10_000).find(|t| kick.poll(*t, false)).expect("a kick");
        assert!((600..1_800).contains(&first), "after the longest timeout plus up to twice it: {first}");
        let second = (first + 1..20_000).find(|t| kick.poll(*t, false)).expect("another kick");
        assert!(second - first >= 600);
        // A known leader resets it.
        assert!(!kick.poll(second + 1, true));
        assert!(!kick.poll(second + 2, false));
        // Two replicas with different seeds kick at different times.
        let when = |seed| {
            let mut kick = ElectionKick::new(seed, 600);
            kick.poll(0, false);
            (1..10_000).find(|t| kick.poll(*t, false))
        };
        assert_ne!(when(1), when(2));
    }
}
