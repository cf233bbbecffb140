//! The API's errors: one enum, a stable machine-readable `code` and an HTTP
//! status each, answered as `{"error": {"code": "...", "message": "..."}}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// Everything a request can fail with. The `code`s are part of the API and
/// never change meaning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("missing field: {0}")]
    MissingField(String),
    #[error("invalid {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("amount_minor must be a positive integer that fits in 64 bits")]
    InvalidAmount,
    #[error("unknown or unsupported currency {0:?}")]
    UnsupportedCurrency(String),
    #[error("invalid card number: {0}")]
    InvalidCard(&'static str),
    #[error("unknown payment method {0:?}: use balance, bank_card, alipay or wechat")]
    InvalidMethod(String),
    #[error("the request body exceeds the {max_bytes}-byte limit")]
    BodyTooLarge { max_bytes: usize },
    #[error("authentication required: {0}")]
    Unauthorized(&'static str),
    #[error("bad signature: {0}")]
    BadSignature(&'static str),
    #[error("the timestamp is more than {window_secs} s away from the server's clock")]
    TimestampExpired { window_secs: u64 },
    #[error("this nonce was already used within the replay window")]
    NonceReplayed,
    #[error("the session token is invalid or expired")]
    InvalidToken,
    #[error("wrong username or password")]
    BadCredentials,
    #[error("not allowed to act on this resource")]
    Forbidden,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("username is already taken")]
    UsernameTaken,
    #[error("the order is {status}; it cannot be paid")]
    OrderNotPayable { status: String },
    #[error("the order is {status}; it cannot be closed")]
    OrderNotClosable { status: String },
    #[error("the order is {status}; it cannot be refunded")]
    OrderNotRefundable { status: String },
    #[error("refund of {requested_minor} exceeds what is left to refund ({remaining_minor})")]
    RefundExceedsPaid { requested_minor: i64, remaining_minor: i64 },
    #[error("too many refunds on this order (at most {max})")]
    TooManyRefunds { max: usize },
    #[error("{0} was already used with a different request body")]
    IdempotencyConflict(&'static str),
    #[error("the wallet and the order are in different currencies")]
    CurrencyMismatch,
    #[error("insufficient funds in the wallet")]
    InsufficientFunds,
    #[error("the payment channel declined the charge")]
    ChannelDeclined,
    #[error("no route of this channel is available right now; retry later")]
    ChannelUnavailable,
    #[error("the cluster is busy or changing leader; retry the same request")]
    Unavailable,
    #[error("the cluster's record store is full; the operator must raise its limit")]
    StoreFull,
    #[error("the statement holds more than {max_lines} lines; ask the operator for an export")]
    StatementTooLarge { max_lines: usize },
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("internal error; see the node's log")]
    Internal,
    /// A money-moving request's audit entry could not be made durable (the
    /// fsync failed): its answer is withheld and the node stops. The
    /// request may have taken effect; retry it with the same
    /// `Idempotency-Key` once the node is back (or through another node).
    #[error(
        "the audit entry of this request could not be made durable; the request may have taken effect: retry it with \
         the same Idempotency-Key"
    )]
    AuditNotDurable,
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::MissingField(_) => "missing_field",
            ApiError::InvalidField { .. } => "invalid_field",
            ApiError::InvalidAmount => "invalid_amount",
            ApiError::UnsupportedCurrency(_) => "unsupported_currency",
            ApiError::InvalidCard(_) => "invalid_card",
            ApiError::InvalidMethod(_) => "invalid_method",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::BadSignature(_) => "bad_signature",
            ApiError::TimestampExpired { .. } => "timestamp_expired",
            ApiError::NonceReplayed => "nonce_replayed",
            ApiError::InvalidToken => "invalid_token",
            ApiError::BadCredentials => "bad_credentials",
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::UsernameTaken => "username_taken",
            ApiError::OrderNotPayable { .. } => "order_not_payable",
            ApiError::OrderNotClosable { .. } => "order_not_closable",
            ApiError::OrderNotRefundable { .. } => "order_not_refundable",
            ApiError::RefundExceedsPaid { .. } => "refund_exceeds_paid",
            ApiError::TooManyRefunds { .. } => "too_many_refunds",
            ApiError::IdempotencyConflict(_) => "idempotency_conflict",
            ApiError::CurrencyMismatch => "currency_mismatch",
            ApiError::InsufficientFunds => "insufficient_funds",
            ApiError::ChannelDeclined => "channel_declined",
            ApiError::ChannelUnavailable => "channel_unavailable",
            ApiError::Unavailable => "unavailable",
            ApiError::StoreFull => "store_full",
            ApiError::StatementTooLarge { .. } => "statement_too_large",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Internal => "internal",
            ApiError::AuditNotDurable => "audit_not_durable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_)
            | ApiError::MissingField(_)
            | ApiError::InvalidField { .. }
            | ApiError::InvalidAmount
            | ApiError::UnsupportedCurrency(_)
            | ApiError::InvalidCard(_)
            | ApiError::InvalidMethod(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } | ApiError::StatementTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized(_)
            | ApiError::BadSignature(_)
            | ApiError::TimestampExpired { .. }
            | ApiError::NonceReplayed
            | ApiError::InvalidToken
            | ApiError::BadCredentials => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::UsernameTaken
            | ApiError::OrderNotPayable { .. }
            | ApiError::OrderNotClosable { .. }
            | ApiError::OrderNotRefundable { .. }
            | ApiError::RefundExceedsPaid { .. }
            | ApiError::TooManyRefunds { .. }
            | ApiError::IdempotencyConflict(_)
            | ApiError::CurrencyMismatch => StatusCode::CONFLICT,
            ApiError::InsufficientFunds | ApiError::ChannelDeclined => StatusCode::PAYMENT_REQUIRED,
            ApiError::ChannelUnavailable | ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::StoreFull => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal | ApiError::AuditNotDurable => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Maps a JSON decoding error to `missing_field` or `malformed_json`
    /// (serde's message names the field; it never echoes field values).
    pub fn from_json(error: &serde_json::Error) -> ApiError {
        let text = error.to_string();
        if let Some(rest) = text.strip_prefix("missing field `") {
            let field = rest.split('`').next().unwrap_or_default();
            return ApiError::MissingField(field.to_string());
        }
        // Type errors ("invalid type: string \"...\"") could echo a value
        // (a card number in the wrong type): report the position only.
        ApiError::MalformedJson(format!(
            "{:?} error at line {} column {}",
            error.classify(),
            error.line(),
            error.column()
        ))
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (see the README's table).
    pub code: String,
    pub message: String,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status());
        if let ApiError::RateLimited { retry_after_secs } = self {
            response.insert_header(("Retry-After", retry_after_secs.to_string()));
        }
        response.json(ErrorBody { error: ErrorDetail { code: self.code().to_string(), message: self.to_string() } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_name_the_field_and_never_echo_values() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Body {
            card: u64,
            name: String,
        }
        let missing = serde_json::from_str::<Body>(r#"{"card": 1}"#).unwrap_err();
        assert_eq!(ApiError::from_json(&missing), ApiError::MissingField("name".into()));
        let wrong = serde_json::from_str::<Body>(r#"{"card": "4111111111111111", "name": "x"}"#).unwrap_err();
        let mapped = ApiError::from_json(&wrong);
        assert_eq!(mapped.code(), "malformed_json");
        assert!(!mapped.to_string().contains("4111"));
        assert_eq!(ApiError::NonceReplayed.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(ApiError::BodyTooLarge { max_bytes: 1 }.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
