//! Abort reasons shared by the engines for amounts that cannot be applied.

use paytx_protocol::{AbortReason, AccountId};
use std::fmt::Display;

/// A non-positive amount (or a negative initial balance) on `entity`.
///
/// Requests are validated before any prepare (`TxnRequest::validate`), so
/// this only happens when something upstream is broken. `AbortReason` has no
/// variant for it; the shard refuses with a `Conflict` naming the problem,
/// because refusing is what keeps the ledger's invariants whatever the
/// caller sent (a negative debit would be a credit in disguise).
pub(crate) fn non_positive_amount(entity: impl Display, amount_minor: i64) -> AbortReason {
    AbortReason::Conflict { entity: format!("{entity} (invalid amount {amount_minor}: the request was not validated)") }
}

/// Checked arithmetic on `account` would overflow `i64`.
pub(crate) fn overflow(account: AccountId) -> AbortReason {
    AbortReason::BalanceOverflow(account)
}
