//! The OpenAPI 3 document, generated from the handlers' annotations.

use crate::api;
use crate::error::{ErrorBody, ErrorDetail};
use crate::model::*;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "user_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "merchant_signature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Paytx-Signature",
                "base64 RSA PKCS#1 v1.5 SHA-256 over METHOD\\nPATH_AND_QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n, with \
                 X-Paytx-Merchant, X-Paytx-Timestamp and X-Paytx-Nonce",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "paytx open platform", description = "Signed HTTP/JSON payment API of a paytx cluster"),
    paths(
        api::register_user, api::create_session, api::create_merchant, api::create_order, api::get_order,
        api::close_order, api::pay_order, api::create_refund, api::get_refund, api::create_topup,
        api::get_account, api::list_notifications, api::list_orders, api::list_refunds, api::get_statement,
        api::list_user_transactions, api::delete_session, api::change_password
    ),
    components(schemas(
        ErrorBody, ErrorDetail, RegisterUserRequest, CreateSessionRequest, CreateMerchantRequest, CreateOrderRequest,
        PayOrderRequest, CreateRefundRequest, CreateTopupRequest, UserView, SessionView, MerchantView, OrderView,
        PaymentView, RefundView, TopupView, AccountView, EntryView, NotificationView, NotificationList, Attempt,
        OrderList, RefundList, TransactionList, WalletEntry, ChangePasswordRequest, PasswordChanged
    )),
    modifiers(&Security)
)]
pub struct ApiDoc;

pub fn document() -> String {
    ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_lists_every_endpoint() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for path in [
            "/v1/users",
            "/v1/sessions",
            "/v1/merchants",
            "/v1/orders",
            "/v1/orders/{id}/pay",
            "/v1/orders/{id}/refunds",
            "/v1/refunds/{id}",
            "/v1/users/{id}/topups",
            "/v1/accounts/{id}",
            "/v1/notifications",
            "/v1/statements/{date}",
            "/v1/users/{id}/transactions",
            "/v1/sessions/current",
            "/v1/users/{id}/password",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} missing");
        }
        assert!(doc["paths"]["/v1/orders"]["get"].is_object(), "the order list");
        assert!(doc["paths"]["/v1/orders/{id}/refunds"]["get"].is_object(), "the refund list");
    }
}
