//! Users: registration and sessions.

use super::*;

#[utoipa::path(post, path = "/v1/users", request_body = RegisterUserRequest,
    responses((status = 201, body = UserView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn register_user(gw: web::Data<Gateway>, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let mut note = AuditNote::new("user.register");
    let result = register_user_inner(&gw, &req, payload, &mut note).await;
    finish(&gw, note, result)
}

async fn register_user_inner(
    gw: &Gateway,
    req: &HttpRequest,
    payload: web::Payload,
    note: &mut AuditNote,
) -> Result<HttpResponse, ApiError> {
    let body: RegisterUserRequest = parse(&read_body(req, payload).await?)?;
    validate::username(&body.username)?;
    validate::password(&body.password)?;
    validate::name("real_name", &body.real_name)?;
    validate::card_number(&body.card_number)?;
    let currency = validate::currency(body.currency.as_deref().unwrap_or("CNY"))?;
    note.target = body.username.clone();
    if gw.store.get::<Claim>(ns::USERNAME, &body.username).await?.is_some() {
        return Err(ApiError::UsernameTaken);
    }
    let password = body.password.clone();
    let password_hash =
        gw.run_password_work(move || secrets::hash_password(&password)).await?.map_err(|_| ApiError::Internal)?;
    let (id, _) = new_id("usr");
    let (_, account) = new_id("acct");
    let user = UserRecord {
        id: id.clone(),
        username: body.username.clone(),
        real_name: body.real_name.trim().to_string(),
        password_hash,
        card_sealed: gw.vault.seal(&body.card_number),
        card_last4: secrets::last_four(&body.card_number),
        card_fingerprint: gw.vault.fingerprint(&body.card_number),
        account,
        currency: currency.to_string(),
        created_at: now_secs(),
    };
    let ops = vec![
        store::insert(ns::USERNAME, &user.username, &Claim { id: id.clone(), request_hash: String::new() })?,
        store::insert(ns::USER, &id, &user)?,
        store::insert(ns::ACCOUNT_OWNER, &account.to_string(), &Owner::User(id.clone()))?,
        Operation::OpenAccount { account: AccountId(account), currency, initial_minor: 0 },
    ];
    match gw.store.submit(TxnRequest::new(txn_key("reg"), ops)).await? {
        Ok(()) => {}
        Err(AbortReason::RecordExists { .. }) => return Err(ApiError::UsernameTaken),
        Err(reason) => return Err(map_abort(reason)),
    }
    note.actor = format!("user:{id}");
    note.target = id;
    Ok(json(StatusCode::CREATED, &UserView::from(&user)))
}

#[utoipa::path(post, path = "/v1/sessions", request_body = CreateSessionRequest,
    responses((status = 201, body = SessionView), (status = 401, body = ErrorBody)))]
pub async fn create_session(gw: web::Data<Gateway>, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let mut note = AuditNote::new("session.create");
    let result = create_session_inner(&gw, &req, payload, &mut note).await;
    finish(&gw, note, result)
}

async fn create_session_inner(
    gw: &Gateway,
    req: &HttpRequest,
    payload: web::Payload,
    note: &mut AuditNote,
) -> Result<HttpResponse, ApiError> {
    let body: CreateSessionRequest = parse(&read_body(req, payload).await?)?;
    validate::username(&body.username).map_err(|_| ApiError::BadCredentials)?;
    note.target = body.username.clone();
    let Some((claim, _)) = gw.store.get::<Claim>(ns::USERNAME, &body.username).await? else {
        return Err(ApiError::BadCredentials);
    };
    let (user, _) = gw.store.get::<UserRecord>(ns::USER, &claim.id).await?.ok_or(ApiError::BadCredentials)?;
    let (password, hash) = (body.password, user.password_hash.clone());
    let ok = gw.run_password_work(move || secrets::verify_password(&password, &hash)).await?;
    if !ok {
        return Err(ApiError::BadCredentials);
    }
    note.actor = format!("user:{}", user.id);
    let expires_at = now_secs() + gw.config.session_ttl_secs;
    let token = gw.tokens.issue(&user.id, expires_at);
    Ok(json(StatusCode::CREATED, &SessionView { token, user_id: user.id, expires_at }))
}
