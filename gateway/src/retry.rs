//! The notification retry schedule: durations such as `15s`, `3m`, `1h`,
//! `500ms`, parsed from the config.

use std::time::Duration;

/// The default schedule (as WeChat Pay): 15s, 15s, 30s, 3m, 10m, 20m, 30m, 1h, 3h, 6h.
pub fn default_schedule() -> Vec<String> {
    ["15s", "15s", "30s", "3m", "10m", "20m", "30m", "1h", "3h", "6h"].iter().map(|s| s.to_string()).collect()
}

/// Most entries a schedule may have (each is one more delivery attempt).
pub const MAX_SCHEDULE_ENTRIES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("{0:?} is not a duration like 500ms, 15s, 3m, 1h")]
    BadDuration(String),
    #[error("a retry schedule has at most {MAX_SCHEDULE_ENTRIES} entries")]
    TooLong,
}

pub fn parse_duration(text: &str) -> Result<Duration, ScheduleError> {
    let bad = || ScheduleError::BadDuration(text.to_string());
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    number.checked_mul(millis_per_unit).map(Duration::from_millis).ok_or_else(bad)
}

pub fn parse_schedule(entries: &[String]) -> Result<Vec<Duration>, ScheduleError> {
    if entries.len() > MAX_SCHEDULE_ENTRIES {
        return Err(ScheduleError::TooLong);
    }
    entries.iter().map(|entry| parse_duration(entry)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_schedules_parse() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        for bad in ["", "s", "15", "15x", "-1s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        let schedule = parse_schedule(&default_schedule()).unwrap();
        assert_eq!(schedule.len(), 10);
        assert_eq!(schedule[9], Duration::from_secs(6 * 3600));
        assert_eq!(parse_schedule(&vec!["1s".to_string(); 33]), Err(ScheduleError::TooLong));
    }
}
