//! Money: an integer count of minor units (cents, fen) in one ISO-4217
//! currency. No floats anywhere; every operation is checked.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An ISO-4217 alphabetic code, three upper-case ASCII letters.
///
/// Serialised as the string `"CNY"` in human-readable formats (JSON, TOML)
/// and as three raw bytes in bincode (the wire and the disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency(pub [u8; 3]);

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&String::from_utf8_lossy(&self.0))
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let code = String::deserialize(deserializer)?;
            let bytes: [u8; 3] = code
                .as_bytes()
                .try_into()
                .map_err(|_| serde::de::Error::custom(format!("currency {code:?} is not a 3-letter ISO-4217 code")))?;
            Ok(Currency(bytes))
        } else {
            <[u8; 3]>::deserialize(deserializer).map(Currency)
        }
    }
}

impl Currency {
    pub const CNY: Currency = Currency(*b"CNY");
    pub const USD: Currency = Currency(*b"USD");
    pub const EUR: Currency = Currency(*b"EUR");

    /// Currencies the cluster accepts. A closed list: an unknown currency is
    /// a typed error, not a new ledger silently opened.
    pub const SUPPORTED: [Currency; 7] = [
        Currency::CNY,
        Currency::USD,
        Currency::EUR,
        Currency(*b"GBP"),
        Currency(*b"JPY"),
        Currency(*b"HKD"),
        Currency(*b"SGD"),
    ];

    pub fn parse(code: &str) -> Option<Currency> {
        let bytes: [u8; 3] = code.as_bytes().try_into().ok()?;
        let currency = Currency(bytes);
        currency.is_supported().then_some(currency)
    }

    pub fn is_supported(self) -> bool {
        Self::SUPPORTED.contains(&self)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount of money in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount_minor: i64, currency: Currency) -> Self {
        Money { amount_minor, currency }
    }

    /// `None` on overflow or when the currencies differ.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        (self.currency == other.currency)
            .then(|| self.amount_minor.checked_add(other.amount_minor))
            .flatten()
            .map(|amount_minor| Money::new(amount_minor, self.currency))
    }

    /// `None` on overflow or when the currencies differ.
    pub fn checked_sub(self, other: Money) -> Option<Money> {
        (self.currency == other.currency)
            .then(|| self.amount_minor.checked_sub(other.amount_minor))
            .flatten()
            .map(|amount_minor| Money::new(amount_minor, self.currency))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount_minor, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_arithmetic_refuses_overflow_and_mixed_currencies() {
        let max = Money::new(i64::MAX, Currency::CNY);
        assert_eq!(max.checked_add(Money::new(1, Currency::CNY)), None);
        assert_eq!(Money::new(1, Currency::CNY).checked_add(Money::new(1, Currency::USD)), None);
        assert_eq!(
            Money::new(5, Currency::CNY).checked_sub(Money::new(7, Currency::CNY)),
            Some(Money::new(-2, Currency::CNY))
        );
        assert_eq!(Money::new(i64::MIN, Currency::CNY).checked_sub(Money::new(1, Currency::CNY)), None);
    }

    #[test]
    fn currency_is_a_string_in_json_and_three_bytes_in_bincode() {
        let money = Money::new(250, Currency::CNY);
        let json = serde_json::to_string(&money).unwrap();
        assert_eq!(json, r#"{"amount_minor":250,"currency":"CNY"}"#);
        assert_eq!(serde_json::from_str::<Money>(&json).unwrap(), money);
        assert!(serde_json::from_str::<Currency>(r#""CNYX""#).is_err());
        let bytes = crate::encode(&Currency::CNY).unwrap();
        assert_eq!(bytes, b"CNY".to_vec());
        assert_eq!(crate::decode::<Currency>(&bytes).unwrap(), Currency::CNY);
    }

    #[test]
    fn only_supported_currencies_parse() {
        assert_eq!(Currency::parse("CNY"), Some(Currency::CNY));
        assert_eq!(Currency::parse("XXX"), None);
        assert_eq!(Currency::parse("CN"), None);
    }
}
