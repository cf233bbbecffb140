//! Accounts: balance and recent entries, for their owner or the admin.

use super::*;

#[utoipa::path(get, path = "/v1/accounts/{id}", params(("id" = String, Path, description = "account id")),
    responses((status = 200, body = AccountView), (status = 404, body = ErrorBody)),
    security(("user_token" = []), ("merchant_signature" = []), ("admin_key" = [])))]
pub async fn get_account(
    gw: web::Data<Gateway>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload).await?;
    let caller = auth::any_caller(&gw, &req, &body).await?;
    let account = parse_id("acct", &path).ok_or(ApiError::NotFound("account"))?;
    let (owner, _) =
        gw.store.get::<Owner>(ns::ACCOUNT_OWNER, &account.to_string()).await?.ok_or(ApiError::NotFound("account"))?;
    let allowed = match (&caller, &owner) {
        (Caller::Admin, _) => true,
        (Caller::User(me), Owner::User(owner)) => me == owner,
        (Caller::Merchant(me), Owner::Merchant(owner)) => &me.id == owner,
        _ => false,
    };
    if !allowed {
        return Err(ApiError::NotFound("account"));
    }
    let view = gw.store.account(AccountId(account)).await?.ok_or(ApiError::NotFound("account"))?;
    Ok(json(
        StatusCode::OK,
        &AccountView {
            id: path.clone(),
            currency: view.currency.to_string(),
            balance_minor: view.balance_minor,
            held_minor: view.held_minor,
            recent: view
                .recent
                .iter()
                .map(|e| EntryView {
                    txn: e.txn.to_string(),
                    delta_minor: e.delta_minor,
                    balance_after_minor: e.balance_after_minor,
                })
                .collect(),
        },
    ))
}
