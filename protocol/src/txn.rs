//! A client's transaction request and its outcome.
//!
//! Idempotency follows Stripe: the first request with a key decides the
//! outcome; the same key with the same body returns that outcome again
//! (applied once); the same key with a different body is
//! [`RequestError::IdempotencyConflict`](crate::RequestError).

use crate::error::{AbortReason, InvalidRequest};
use crate::ids::{IdempotencyKey, TxnId};
use crate::money::Currency;
use crate::ops::Operation;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Most operations one transaction may carry (TIGER_STYLE: a limit on
/// everything). A payment uses four.
pub const MAX_OPS_PER_TXN: usize = 64;

/// A transaction as submitted by a client.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TxnRequest {
    pub key: IdempotencyKey,
    pub ops: Vec<Operation>,
}

/// SHA-256 of the encoded operations: what "the same body" means.
pub type BodyHash = [u8; 32];

impl TxnRequest {
    pub fn new(key: impl Into<String>, ops: Vec<Operation>) -> Self {
        TxnRequest { key: IdempotencyKey::new(key), ops }
    }

    /// Checks everything that can be checked without reading state: limits,
    /// positive amounts, supported currencies, and that account debits and
    /// credits balance per currency (money is only minted by `OpenAccount`).
    pub fn validate(&self, max_ops: usize) -> Result<(), InvalidRequest> {
        if !self.key.is_valid() {
            return Err(InvalidRequest::BadIdempotencyKey);
        }
        if self.ops.is_empty() {
            return Err(InvalidRequest::Empty);
        }
        if self.ops.len() > max_ops {
            return Err(InvalidRequest::TooManyOperations { count: self.ops.len(), max: max_ops });
        }
        // i128 sums cannot overflow for at most 64 i64 amounts.
        let mut balance: BTreeMap<Currency, (i128, i128)> = BTreeMap::new();
        for (index, op) in self.ops.iter().enumerate() {
            let record_value = match op {
                Operation::PutRecord { value: Some(value), .. } => Some(value),
                Operation::PutRecordAtCommit { partition, value, .. } => {
                    // A `Partition` off the wire is not checked by its decoder.
                    if !crate::ids::is_ordered_ns(partition.ns) {
                        return Err(InvalidRequest::NotAnOrderedNamespace {
                            ns: partition.ns,
                            first: crate::ids::FIRST_ORDERED_NS,
                        });
                    }
                    Some(value)
                }
                _ => None,
            };
            if let Some(value) = record_value {
                if value.len() > crate::ops::MAX_RECORD_VALUE_BYTES {
                    return Err(InvalidRequest::RecordTooLarge {
                        index,
                        len_bytes: value.len(),
                        max_bytes: crate::ops::MAX_RECORD_VALUE_BYTES,
                    });
                }
            }
            let Some(money) = op.amount() else { continue };
            if !money.currency.is_supported() {
                return Err(InvalidRequest::UnsupportedCurrency {
                    index,
                    currency: String::from_utf8_lossy(&money.currency.0).into_owned(),
                });
            }
            match op {
                Operation::OpenAccount { initial_minor, .. } if *initial_minor < 0 => {
                    return Err(InvalidRequest::NegativeInitialBalance { index, amount_minor: *initial_minor });
                }
                Operation::OpenAccount { .. } => {}
                _ if money.amount_minor <= 0 => {
                    return Err(InvalidRequest::NonPositiveAmount { index, amount_minor: money.amount_minor });
                }
                Operation::Debit { amount, .. } => {
                    balance.entry(amount.currency).or_default().0 += i128::from(amount.amount_minor)
                }
                Operation::Credit { amount, .. } => {
                    balance.entry(amount.currency).or_default().1 += i128::from(amount.amount_minor)
                }
                _ => {}
            }
        }
        for (currency, (debits_minor, credits_minor)) in balance {
            if debits_minor != credits_minor {
                return Err(InvalidRequest::Unbalanced { currency, debits_minor, credits_minor });
            }
        }
        Ok(())
    }

    /// Hash of the body (the operations). Two requests with one key are "the
    /// same" exactly when their body hashes match.
    pub fn body_hash(&self) -> BodyHash {
        let encoded = crate::encode(&self.ops).expect("encoding plain data into a Vec cannot fail");
        Sha256::digest(&encoded).into()
    }
}

/// The final outcome of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied on every shard it touched (acknowledged once the decision is
    /// committed in the replicated table: it survives any crash).
    Committed,
    /// Applied nowhere.
    Aborted(AbortReason),
}

impl Outcome {
    pub fn is_committed(&self) -> bool {
        matches!(self, Outcome::Committed)
    }
}

/// What a client gets back for a submitted transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnReceipt {
    pub txn: TxnId,
    pub outcome: Outcome,
    /// `true` when this answer replays the outcome of an earlier request with
    /// the same idempotency key (nothing was applied again).
    pub replayed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::AccountId;
    use crate::money::Money;

    fn transfer(amount_minor: i64) -> Vec<Operation> {
        vec![
            Operation::Debit { account: AccountId(1), amount: Money::new(amount_minor, Currency::CNY) },
            Operation::Credit { account: AccountId(2), amount: Money::new(amount_minor, Currency::CNY) },
        ]
    }

    #[test]
    fn validation_rejects_bad_requests_with_typed_errors() {
        assert_eq!(TxnRequest::new("k", vec![]).validate(64), Err(InvalidRequest::Empty));
        assert_eq!(TxnRequest::new("", transfer(1)).validate(64), Err(InvalidRequest::BadIdempotencyKey));
        assert_eq!(TxnRequest::new("a b", transfer(1)).validate(64), Err(InvalidRequest::BadIdempotencyKey));
        assert!(matches!(
            TxnRequest::new("k", transfer(0)).validate(64),
            Err(InvalidRequest::NonPositiveAmount { index: 0, .. })
        ));
        let mut unbalanced = transfer(5);
        unbalanced.pop();
        assert!(matches!(TxnRequest::new("k", unbalanced).validate(64), Err(InvalidRequest::Unbalanced { .. })));
        let many = (0..65).flat_map(|_| transfer(1)).collect();
        assert!(matches!(TxnRequest::new("k", many).validate(64), Err(InvalidRequest::TooManyOperations { .. })));
        let bad_currency = vec![Operation::Debit { account: AccountId(1), amount: Money::new(1, Currency(*b"ZZZ")) }];
        assert!(matches!(
            TxnRequest::new("k", bad_currency).validate(64),
            Err(InvalidRequest::UnsupportedCurrency { .. })
        ));
        assert_eq!(TxnRequest::new("k", transfer(7)).validate(64), Ok(()));
    }

    #[test]
    fn a_commit_timed_entry_needs_an_ordered_partition_and_a_bounded_value() {
        use crate::ids::{Partition, FIRST_ORDERED_NS, PARTITION_BYTES};
        use crate::ops::MAX_RECORD_VALUE_BYTES;
        let entry = |partition: Partition, len: usize| {
            TxnRequest::new("k", vec![Operation::PutRecordAtCommit { partition, number: 1, value: vec![7; len] }])
        };
        let ordered = Partition::new(FIRST_ORDERED_NS + 1, b"m").expect("an ordered namespace");
        assert_eq!(entry(ordered, MAX_RECORD_VALUE_BYTES).validate(64), Ok(()));
        assert_eq!(
            entry(ordered, MAX_RECORD_VALUE_BYTES + 1).validate(64),
            Err(InvalidRequest::RecordTooLarge {
                index: 0,
                len_bytes: MAX_RECORD_VALUE_BYTES + 1,
                max_bytes: MAX_RECORD_VALUE_BYTES
            })
        );
        // A partition decoded off the wire can name any namespace.
        let unordered = Partition { ns: 7, id: [0; PARTITION_BYTES] };
        assert_eq!(
            entry(unordered, 1).validate(64),
            Err(InvalidRequest::NotAnOrderedNamespace { ns: 7, first: FIRST_ORDERED_NS })
        );
    }

    #[test]
    fn body_hash_distinguishes_bodies_not_keys() {
        let a = TxnRequest::new("k1", transfer(5));
        let b = TxnRequest::new("k2", transfer(5));
        let c = TxnRequest::new("k1", transfer(6));
        assert_eq!(a.body_hash(), b.body_hash());
        assert_ne!(a.body_hash(), c.body_hash());
    }
}
