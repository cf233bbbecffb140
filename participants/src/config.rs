//! How one participant shard is configured.

use crate::channels::{default_channels, ChannelConfig, MAX_DECLINE_PER_MILLION};
use crate::engine::DEFAULT_REMEMBERED_COMMITS;
use crate::error::ParticipantError;
use paytx_protocol::ShardId;
use std::collections::BTreeSet;

/// Default: a prepared transaction is in doubt after this long undecided.
pub const DEFAULT_IN_DOUBT_AFTER_MS: u64 = 2_000;
/// Default: how often in-doubt transactions are looked for.
pub const DEFAULT_IN_DOUBT_CHECK_INTERVAL_MS: u64 = 500;
/// Default limit on prepared, undecided transactions per shard.
pub const DEFAULT_MAX_PREPARED: usize = 10_000;
/// Default limit on records per records shard.
pub const DEFAULT_MAX_RECORDS: usize = 1_000_000;
/// Default: how long a refused prepare waits for the prepared transactions
/// on its entities, and a read for those prepared before it.
pub const DEFAULT_LOCK_WAIT_MS: u64 = 1_000;
/// Default limit on waiting prepares plus waiting reads per shard.
pub const DEFAULT_MAX_WAITING: usize = 4_096;
/// Default limit on decision queries started per check.
pub const DEFAULT_MAX_QUERIES_PER_TICK: usize = 64;

/// The configuration of one [`crate::ParticipantActor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantConfig {
    pub shard: ShardId,
    /// The cluster's configured channels (used by channel shards only).
    pub channels: Vec<ChannelConfig>,
    /// Seeds the channel failure model's RNG. Derive it from the run seed
    /// (simulator) or the OS (production), and differently per shard.
    pub rng_seed: u64,
    /// A prepared transaction still undecided after this long is in doubt:
    /// the shard asks the coordinator group for its decision.
    pub in_doubt_after_ms: u64,
    /// How often in-doubt transactions are looked for.
    pub in_doubt_check_interval_ms: u64,
    /// Most prepared, undecided transactions at once. A new prepare beyond
    /// it is refused with `Vote::No(AbortReason::Conflict { .. })` naming the
    /// shard: holds pile up only when decisions stop arriving, and a bounded
    /// table keeps a stuck coordinator from exhausting memory. `Conflict` is
    /// the closest existing reason (retryable, "entity busy").
    pub max_prepared: usize,
    /// Most decision queries started per check (bounds the burst after a
    /// restart with many in-doubt transactions).
    pub max_queries_per_tick: usize,
    /// Most records a records shard holds (committed plus being created by
    /// prepared transactions); a prepare creating more votes
    /// `RecordStoreFull`. The store lives in memory, like every shard's state.
    pub max_records: usize,
    /// How many committed txn ids are remembered (durably) to ignore late
    /// duplicate prepares, and aborted ones (in memory) to refuse prepares
    /// that arrive after their abort (see [`crate::engine`]).
    pub remembered_commits: usize,
    /// A prepare refused while another prepared transaction touches one of
    /// its entities waits up to this long for that one to be decided, then
    /// is tried again (a transaction answered "committed" is prepared but
    /// maybe not yet applied here: the next transaction of the same client
    /// must see it, not conflict with it). A read waits as long for the
    /// transactions prepared on its entity before it. 0 disables both.
    pub lock_wait_ms: u64,
    /// Most prepares and reads waiting at once; more are answered at once.
    pub max_waiting: usize,
}

impl ParticipantConfig {
    /// Defaults for everything but the shard; the stock channels.
    pub fn new(shard: ShardId) -> Self {
        ParticipantConfig {
            shard,
            channels: default_channels(),
            rng_seed: 0,
            in_doubt_after_ms: DEFAULT_IN_DOUBT_AFTER_MS,
            in_doubt_check_interval_ms: DEFAULT_IN_DOUBT_CHECK_INTERVAL_MS,
            max_prepared: DEFAULT_MAX_PREPARED,
            max_queries_per_tick: DEFAULT_MAX_QUERIES_PER_TICK,
            max_records: DEFAULT_MAX_RECORDS,
            remembered_commits: DEFAULT_REMEMBERED_COMMITS,
            lock_wait_ms: DEFAULT_LOCK_WAIT_MS,
            max_waiting: DEFAULT_MAX_WAITING,
        }
    }

    /// Refuses a configuration that cannot work.
    pub fn validate(&self) -> Result<(), ParticipantError> {
        let invalid = |reason: String| Err(ParticipantError::InvalidConfig { shard: self.shard, reason });
        if self.in_doubt_check_interval_ms == 0 {
            return invalid("in_doubt_check_interval_ms must be positive".to_string());
        }
        if self.max_prepared == 0 || self.max_queries_per_tick == 0 {
            return invalid("max_prepared and max_queries_per_tick must be positive".to_string());
        }
        let mut ids = BTreeSet::new();
        for channel in &self.channels {
            if !ids.insert(channel.id) {
                return invalid(format!("channel {} is configured twice", channel.id));
            }
            if channel.decline_per_million > MAX_DECLINE_PER_MILLION {
                return invalid(format!(
                    "channel {}: decline_per_million {} is above {MAX_DECLINE_PER_MILLION}",
                    channel.id, channel.decline_per_million
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paytx_protocol::EntityKind;

    #[test]
    fn defaults_are_valid_and_bad_configs_are_refused() {
        let shard = ShardId { kind: EntityKind::Channel, index: 0 };
        let config = ParticipantConfig::new(shard);
        assert_eq!(config.validate(), Ok(()));
        assert_eq!((config.in_doubt_after_ms, config.in_doubt_check_interval_ms), (2_000, 500));
        let mut twice = config.clone();
        twice.channels.push(twice.channels[0].clone());
        assert!(matches!(twice.validate(), Err(ParticipantError::InvalidConfig { .. })));
        let mut zero = config.clone();
        zero.in_doubt_check_interval_ms = 0;
        assert!(zero.validate().is_err());
        let mut certain = config;
        certain.channels[0].decline_per_million = 1_000_001;
        assert!(certain.validate().is_err());
    }
}
