//! The gateway's ordered secondary indexes: which ones exist, the entries a
//! transaction writes into them, and reading one partition a page at a time.
//!
//! An index entry is a record of an ordered namespace (see
//! `paytx_protocol::ids::FIRST_ORDERED_NS`): its key is `partition ‖ sort`,
//! its shard is the partition's, so one partition is one range read on one
//! shard. Every entry is written by the **same transaction** as what it
//! indexes, so an index never points at a missing record nor misses a
//! committed one. The sort key is `(time, id number)`: time first so a range
//! of times is one key range, the id number to make entries unique.

use crate::error::ApiError;
use crate::store::Store;
use paytx_protocol::ids::{sort_key, sort_key_parts, FIRST_ORDERED_NS, SORT_BYTES};
use paytx_protocol::messages::RecordView;
use paytx_protocol::{Operation, Partition, RangeScan, RecordExpect, RecordNs};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Index namespaces. Part of the stored format: never renumber.
pub mod ins {
    use super::*;
    /// A merchant's orders by creation time. Partition: merchant id;
    /// sort: (created_at s, order number).
    pub const ORDERS_BY_CREATED: RecordNs = FIRST_ORDERED_NS + 100;
    /// A merchant's orders of one status. Partition: merchant id ‖ status;
    /// sort: (created_at s, order number). A status change moves the entry.
    pub const ORDERS_BY_STATUS: RecordNs = FIRST_ORDERED_NS + 101;
    /// An order's refunds. Partition: order id; sort: (created_at ms, refund number).
    pub const REFUNDS_BY_ORDER: RecordNs = FIRST_ORDERED_NS + 102;
    /// An order's notifications. Partition: order id; sort: (created_at ms, notify number).
    pub const NOTIFICATIONS_BY_ORDER: RecordNs = FIRST_ORDERED_NS + 103;
    /// A merchant's statement lines of one UTC day, as earlier versions
    /// wrote them: partition merchant id ‖ day, sort (the gateway's time when
    /// it built the transaction ms, payment/refund number). No longer
    /// written; still read, so a statement of a day before the upgrade is
    /// whole.
    pub const STATEMENT_LINES: RecordNs = FIRST_ORDERED_NS + 104;
    /// A user's wallet entries. Partition: user id; sort: (at ms, entry number).
    /// The value is the entry.
    pub const WALLET_ENTRIES: RecordNs = FIRST_ORDERED_NS + 105;
    /// A merchant's statement lines by **commit time**. Partition: merchant
    /// id; sort: (committed_at ms, payment/refund number), the key fixed by
    /// the commit (`Operation::PutRecordAtCommit`: the coordinator's log
    /// time its decision carried). A day's statement is one range of it.
    pub const STATEMENT_BY_COMMIT: RecordNs = FIRST_ORDERED_NS + 106;
}

/// What an index entry that only points at a record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    pub id: String,
}

/// The partition of `app_key` in the index `ns`.
pub fn partition(ns: RecordNs, app_key: &str) -> Result<Partition, ApiError> {
    // Only the constants above are passed here: all ordered.
    Partition::new(ns, app_key.as_bytes()).ok_or(ApiError::Internal)
}

/// The partition of a merchant's orders of one status.
pub fn status_partition(merchant_id: &str, status: &str) -> Result<Partition, ApiError> {
    partition(ins::ORDERS_BY_STATUS, &format!("{merchant_id}\n{status}"))
}

/// The partition of a merchant's statement lines of `day` (`YYYY-MM-DD`)
/// as earlier versions wrote them ([`ins::STATEMENT_LINES`]).
pub fn legacy_statement_partition(merchant_id: &str, day: &str) -> Result<Partition, ApiError> {
    partition(ins::STATEMENT_LINES, &format!("{merchant_id}\n{day}"))
}

/// The partition of a merchant's statement lines by commit time.
pub fn statement_partition(merchant_id: &str) -> Result<Partition, ApiError> {
    partition(ins::STATEMENT_BY_COMMIT, merchant_id)
}

/// Inserts the entry `(commit time, number)` of `partition` holding
/// `value`: its time is the commit's, fixed by the shard when it applies it.
pub fn insert_at_commit<T: Serialize>(partition: Partition, number: u64, value: &T) -> Result<Operation, ApiError> {
    let value = serde_json::to_vec(value).map_err(|_| ApiError::Internal)?;
    Ok(Operation::PutRecordAtCommit { partition, number, value })
}

/// Inserts the entry `(time, number)` of `partition` holding `value`.
pub fn insert<T: Serialize>(partition: Partition, time: u64, number: u64, value: &T) -> Result<Operation, ApiError> {
    let bytes = serde_json::to_vec(value).map_err(|_| ApiError::Internal)?;
    Ok(Operation::PutRecord {
        key: partition.key(sort_key(time, number)),
        value: Some(bytes),
        expect: RecordExpect::Absent,
    })
}

/// Deletes the entry `(time, number)` of `partition`, which must exist as
/// inserted (version 1): a stale caller aborts instead of deleting nothing.
pub fn remove(partition: Partition, time: u64, number: u64) -> Operation {
    Operation::PutRecord { key: partition.key(sort_key(time, number)), value: None, expect: RecordExpect::Version(1) }
}

/// A position in a partition: the sort key of the last entry of a page, as
/// 32 hex digits (opaque to clients).
pub fn encode_cursor(sort: [u8; SORT_BYTES]) -> String {
    crate::secrets::to_hex(&sort)
}

pub fn decode_cursor(cursor: &str) -> Result<[u8; SORT_BYTES], ApiError> {
    let bad = || ApiError::InvalidField { field: "cursor", reason: "not a cursor this API returned".into() };
    if cursor.len() != SORT_BYTES * 2 || !cursor.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut sort = [0u8; SORT_BYTES];
    for (i, byte) in sort.iter_mut().enumerate() {
        let pair = cursor.get(i * 2..i * 2 + 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(sort)
}

/// One page of an index read: the entries' values, each with its sort key
/// `(time, number)`, and where to resume.
pub struct Page<T> {
    pub entries: Vec<((u64, u64), T)>,
    /// The cursor of the next page, `None` on the last one.
    pub next_cursor: Option<String>,
}

/// Reads up to `limit` entries of `partition` with a time in
/// `from_time..=to_time`, in order (`descending`: newest first), after
/// `cursor`. Each entry comes with its sort key's two numbers. A page may
/// come back short of `limit` (the node bounds pages by bytes too); then it
/// carries a cursor.
pub async fn read<T: DeserializeOwned>(
    store: &Store,
    partition: Partition,
    (from_time, to_time): (u64, u64),
    descending: bool,
    cursor: Option<[u8; SORT_BYTES]>,
    limit: u32,
) -> Result<Page<T>, ApiError> {
    let scan = RangeScan {
        partition,
        from: sort_key(from_time, 0),
        to: sort_key(to_time, u64::MAX),
        descending,
        after: cursor,
        limit,
    };
    let page = store.scan_range(scan).await?;
    let next_cursor = if page.more { page.records.last().map(|r| encode_cursor(r.key.sort())) } else { None };
    let entries = page.records.iter().map(decode_entry).collect::<Result<Vec<_>, _>>()?;
    Ok(Page { entries, next_cursor })
}

fn decode_entry<T: DeserializeOwned>(view: &RecordView) -> Result<((u64, u64), T), ApiError> {
    let value = serde_json::from_slice(&view.value).map_err(|error| {
        tracing::error!(%error, ns = view.key.ns, "a stored index entry does not decode");
        ApiError::Internal
    })?;
    Ok((sort_key_parts(view.key.sort()), value))
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date (proleptic Gregorian), or
/// `None` for anything else (a bad month, February 30th, another format).
pub fn parse_day(day: &str) -> Option<i64> {
    let bytes = day.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = day.get(range)?;
        part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok()).flatten()
    };
    let (year, month, date) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    if !(1..=12).contains(&month) || date < 1 || date > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, date))
}

/// The Unix times in milliseconds of the first and the last millisecond of
/// day number `days` (since 1970-01-01, as [`parse_day`] returns), or
/// `None` before 1970 (no commit time is).
pub fn day_range_ms(days: i64) -> Option<(u64, u64)> {
    let first_ms = u64::try_from(days).ok()?.checked_mul(86_400_000)?;
    Some((first_ms, first_ms.checked_add(86_400_000 - 1)?))
}

/// The `YYYY-MM-DD` (UTC) of a Unix time in milliseconds.
pub fn day_of_ms(at_ms: u64) -> String {
    let days = (at_ms / 86_400_000) as i64;
    let (year, month, date) = civil_from_days(days);
    format!("{year:04}-{month:02}-{date:02}")
}

/// RFC 3339 UTC time of a Unix time in milliseconds (`2026-12-01T09:17:50.123Z`).
pub fn rfc3339_ms(at_ms: u64) -> String {
    let ms_of_day = at_ms % 86_400_000;
    let (h, m, s, ms) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1_000 % 60, ms_of_day % 1_000);
    format!("{}T{h:02}:{m:02}:{s:02}.{ms:03}Z", day_of_ms(at_ms))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's `days_from_civil` / `civil_from_days` (public domain):
// exact for every date, no table, no clock.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (if month <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip_and_bad_dates_are_refused() {
        assert_eq!(parse_day("1970-01-01"), Some(0));
        assert_eq!(parse_day("2026-12-01"), Some(20_788));
        assert_eq!(parse_day("2024-02-29"), Some(19_782));
        for bad in ["2023-02-29", "2026-13-01", "2026-00-10", "2026-1-01", "20261201", "2026-12-32", "+026-12-01", ""] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
        for days in [0i64, 1, 59, 365, 19_782, 20_788, 40_000] {
            let ms = days as u64 * 86_400_000 + 3_723_004;
            assert_eq!(parse_day(&day_of_ms(ms)), Some(days));
        }
        assert_eq!(rfc3339_ms(20_788 * 86_400_000 + 3_723_004), "2026-12-01T01:02:03.004Z");
        let (first_ms, last_ms) = day_range_ms(20_788).unwrap();
        assert_eq!((day_of_ms(first_ms), day_of_ms(last_ms)), ("2026-12-01".into(), "2026-12-01".into()));
        assert_eq!(day_of_ms(first_ms - 1), "2026-11-30");
        assert_eq!(day_of_ms(last_ms + 1), "2026-12-02");
        assert_eq!(day_range_ms(-1), None);
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_a_typed_error() {
        let sort = sort_key(1_700_000_000, 42);
        assert_eq!(decode_cursor(&encode_cursor(sort)), Ok(sort));
        for bad in ["", "zz", &"0".repeat(31), &"g".repeat(32), &"0".repeat(33), "é".repeat(16).as_str()] {
            assert!(matches!(decode_cursor(bad), Err(ApiError::InvalidField { field: "cursor", .. })), "{bad}");
        }
    }
}
