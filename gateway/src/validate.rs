//! Field validation: pure functions, each returning a typed [`ApiError`].

use crate::error::ApiError;
use paytx_protocol::Currency;

/// `[a-z0-9_]{3,32}`.
pub fn username(value: &str) -> Result<(), ApiError> {
    let ok = (3..=32).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    ok.then_some(()).ok_or(ApiError::InvalidField { field: "username", reason: "3-32 characters of [a-z0-9_]".into() })
}

/// Most bytes of a password we hash (Argon2 accepts more; a bound on work).
pub const MAX_PASSWORD_BYTES: usize = 128;

/// At least 8 characters with a letter and a digit.
pub fn password(value: &str) -> Result<(), ApiError> {
    let ok = value.chars().count() >= 8
        && value.len() <= MAX_PASSWORD_BYTES
        && value.chars().any(|c| c.is_alphabetic())
        && value.chars().any(|c| c.is_ascii_digit());
    ok.then_some(()).ok_or(ApiError::InvalidField {
        field: "password",
        reason: format!("at least 8 characters (at most {MAX_PASSWORD_BYTES} bytes) with a letter and a digit"),
    })
}

/// 1–64 characters, no control characters (a real name, a merchant name).
pub fn name(field: &'static str, value: &str) -> Result<(), ApiError> {
    let count = value.trim().chars().count();
    let ok = (1..=64).contains(&count) && !value.chars().any(char::is_control);
    ok.then_some(()).ok_or(ApiError::InvalidField { field, reason: "1-64 characters, no control characters".into() })
}

/// Free text (description, refund reason): at most `max_chars`, no control characters.
pub fn text(field: &'static str, value: &str, max_chars: usize) -> Result<(), ApiError> {
    let ok = value.chars().count() <= max_chars && !value.chars().any(char::is_control);
    ok.then_some(()).ok_or(ApiError::InvalidField { field, reason: format!("at most {max_chars} characters") })
}

/// 12–19 digits passing the Luhn check. The error never contains the number.
pub fn card_number(value: &str) -> Result<(), ApiError> {
    if !(12..=19).contains(&value.len()) || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::InvalidCard("12-19 digits expected"));
    }
    if !luhn(value) {
        return Err(ApiError::InvalidCard("Luhn check failed"));
    }
    Ok(())
}

/// The Luhn (mod 10) check over a string of ASCII digits.
pub fn luhn(digits: &str) -> bool {
    let mut sum = 0u32;
    for (index, byte) in digits.bytes().rev().enumerate() {
        if !byte.is_ascii_digit() {
            return false;
        }
        let mut digit = u32::from(byte - b'0');
        if index % 2 == 1 {
            digit *= 2;
            if digit > 9 {
                digit -= 9;
            }
        }
        sum += digit;
    }
    sum % 10 == 0
}

/// A positive amount in minor units. JSON numbers arrive as `serde_json::Number`
/// so an overflowing or fractional amount is a typed error, not a parse error.
pub fn amount(value: &serde_json::Number) -> Result<i64, ApiError> {
    match value.as_i64() {
        Some(amount) if amount > 0 => Ok(amount),
        _ => Err(ApiError::InvalidAmount),
    }
}

pub fn currency(code: &str) -> Result<Currency, ApiError> {
    Currency::parse(code).ok_or_else(|| ApiError::UnsupportedCurrency(code.chars().take(8).collect()))
}

/// A merchant's idempotency key (`out_trade_no`, `out_refund_no`): 1–64 of `[A-Za-z0-9_-]`.
pub fn merchant_key(field: &'static str, value: &str) -> Result<(), ApiError> {
    let ok =
        (1..=64).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then_some(()).ok_or(ApiError::InvalidField { field, reason: "1-64 characters of [A-Za-z0-9_-]".into() })
}

/// An `http://` or `https://` URL of at most 512 bytes.
pub fn notify_url(value: &str) -> Result<reqwest::Url, ApiError> {
    let bad = |reason: &str| ApiError::InvalidField { field: "notify_url", reason: reason.to_string() };
    if value.len() > 512 {
        return Err(bad("at most 512 bytes"));
    }
    let url = reqwest::Url::parse(value).map_err(|_| bad("not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad("an http(s) URL with a host"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_test_cards_and_rejects_a_changed_digit() {
        assert!(luhn("4111111111111111"));
        assert!(luhn("5555555555554444"));
        assert!(luhn("378282246310005"));
        assert!(!luhn("4111111111111112"));
        assert!(card_number("4111111111111111").is_ok());
        assert_eq!(card_number("4111111111111112").unwrap_err().code(), "invalid_card");
        assert_eq!(card_number("41111111111").unwrap_err().code(), "invalid_card");
        assert_eq!(card_number("4111-1111-1111-1111").unwrap_err().code(), "invalid_card");
        assert!(!card_number("4111111111111112").unwrap_err().to_string().contains("4111"));
    }

    #[test]
    fn usernames_passwords_and_names() {
        assert!(username("alice_01").is_ok());
        for bad in ["al", "Alice", "alice!", &"a".repeat(33)] {
            assert!(username(bad).is_err(), "{bad}");
        }
        assert!(password("correct1horse").is_ok());
        for bad in ["short1", "onlyletters", "12345678"] {
            assert!(password(bad).is_err(), "{bad}");
        }
        assert!(name("real_name", "Zhang San").is_ok());
        assert!(name("real_name", "").is_err());
        assert!(name("real_name", &"x".repeat(65)).is_err());
    }

    #[test]
    fn amounts_must_be_positive_i64() {
        let number = |text: &str| serde_json::from_str::<serde_json::Number>(text).unwrap();
        assert_eq!(amount(&number("100")), Ok(100));
        for bad in ["0", "-5", "1.5", "9223372036854775808", "1e30"] {
            assert_eq!(amount(&number(bad)), Err(ApiError::InvalidAmount), "{bad}");
        }
        assert!(currency("CNY").is_ok());
        assert_eq!(currency("XYZ").unwrap_err().code(), "unsupported_currency");
    }

    #[test]
    fn merchant_keys_and_urls() {
        assert!(merchant_key("out_trade_no", "T-2024_001").is_ok());
        assert!(merchant_key("out_trade_no", "").is_err());
        assert!(merchant_key("out_trade_no", "a b").is_err());
        assert!(notify_url("http://127.0.0.1:9000/notify").is_ok());
        assert!(notify_url("ftp://example.com/").is_err());
        assert!(notify_url("not a url").is_err());
    }
}
