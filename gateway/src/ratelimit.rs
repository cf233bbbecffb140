//! Token-bucket rate limits: per merchant (signed requests, counted once
//! the signature verifies, so nobody can drain another merchant's bucket)
//! and per client address (the unauthenticated routes: registration and
//! login). Buckets live in each node's memory (decision): a limit is per
//! node, so a cluster of N nodes admits up to N times the rate; the point
//! is to keep one client from taking a node's capacity, which needs no
//! consensus. Integer arithmetic in milli-tokens, time passed in.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// One limit: `per_sec` requests a second on average, bursts of `burst`.
/// `per_sec = 0` turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub per_sec: u32,
    pub burst: u32,
}

/// Most buckets a limiter keeps (one per merchant or address seen
/// recently); a full bucket is forgotten first, it is the same as a new one.
pub const MAX_BUCKETS: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli_tokens: u64,
    at_ms: u64,
}

pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<BTreeMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter { limit, buckets: Mutex::new(BTreeMap::new()) }
    }

    fn capacity(&self) -> u64 {
        u64::from(self.limit.burst.max(1)).saturating_mul(1_000)
    }

    fn refilled(&self, bucket: Bucket, now_ms: u64) -> u64 {
        let elapsed_ms = now_ms.saturating_sub(bucket.at_ms);
        // per_sec tokens a second = per_sec milli-tokens a millisecond.
        let refill = elapsed_ms.saturating_mul(u64::from(self.limit.per_sec));
        bucket.milli_tokens.saturating_add(refill).min(self.capacity())
    }

    /// Takes one token of `key`'s bucket, or says in how many whole seconds
    /// (at least 1) one will be there.
    pub fn take(&self, key: &str, now_ms: u64) -> Result<(), u64> {
        if self.limit.per_sec == 0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= MAX_BUCKETS {
            let capacity = self.capacity();
            buckets.retain(|_, bucket| self.refilled(*bucket, now_ms) < capacity);
            if buckets.len() >= MAX_BUCKETS {
                return Err(1); // every bucket in use: new clients wait
            }
        }
        let full = Bucket { milli_tokens: self.capacity(), at_ms: now_ms };
        let bucket = buckets.entry(key.to_string()).or_insert(full);
        let tokens = self.refilled(*bucket, now_ms);
        if tokens >= 1_000 {
            *bucket = Bucket { milli_tokens: tokens - 1_000, at_ms: now_ms };
            return Ok(());
        }
        *bucket = Bucket { milli_tokens: tokens, at_ms: now_ms };
        let missing_ms = (1_000 - tokens).div_ceil(u64::from(self.limit.per_sec));
        Err(missing_ms.div_ceil(1_000).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(RateLimit { per_sec: 2, burst: 3 });
        for _ in 0..3 {
            assert_eq!(limiter.take("m", 1_000), Ok(()));
        }
        assert_eq!(limiter.take("m", 1_000), Err(1), "burst spent");
        assert_eq!(limiter.take("other", 1_000), Ok(()), "buckets are per key");
        assert_eq!(limiter.take("m", 1_499), Err(1));
        assert_eq!(limiter.take("m", 1_500), Ok(()), "2/s: one token every 500 ms");
        assert_eq!(limiter.take("m", 1_500), Err(1));
        assert_eq!(limiter.take("m", 100_000), Ok(()), "refilled, but never above the burst");
        assert_eq!(limiter.take("m", 100_000), Ok(()));
        assert_eq!(limiter.take("m", 100_000), Ok(()));
        assert_eq!(limiter.take("m", 100_000), Err(1));
        // A slow rate says how long to wait, in whole seconds.
        let slow = RateLimiter::new(RateLimit { per_sec: 1, burst: 1 });
        assert_eq!(slow.take("a", 0), Ok(()));
        assert_eq!(slow.take("a", 1), Err(1));
        let off = RateLimiter::new(RateLimit { per_sec: 0, burst: 0 });
        assert!((0..10_000).all(|_| off.take("a", 0).is_ok()));
    }

    #[test]
    fn the_bucket_map_is_bounded() {
        let limiter = RateLimiter::new(RateLimit { per_sec: 1, burst: 2 });
        for n in 0..MAX_BUCKETS {
            assert_eq!(limiter.take(&format!("k{n}"), 0), Ok(()));
        }
        assert_eq!(limiter.take("late", 0), Err(1), "every bucket in use");
        // Once the buckets have refilled they are forgotten and make room.
        assert_eq!(limiter.take("late", 2_000), Ok(()));
        assert!(limiter.buckets.lock().unwrap().len() <= MAX_BUCKETS);
    }
}
