//! Users: registration and sessions.

use super::*;

#[utoipa::path(post, path = "/v1/users", request_body = RegisterUserRequest,
    responses((status = 201, body = UserView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn register_user(gw: web::Data<Gateway>, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let mut note = AuditNote::new("user.register");
    let result = register_user_inner(&gw, &req, payload, &mut note).await;
    finish(&gw, note, result).await
}

async fn register_user_inner(
    gw: &Gateway,
    req: &HttpRequest,
    payload: web::Payload,
    note: &mut AuditNote,
) -> Result<HttpResponse, ApiError> {
    auth::limit_address(gw, req)?;
    let raw = read_body(req, payload).await?;
    // The key is scoped by the username the body names: parse and check
    // it first (the same body parses the same way on a replay).
    let body: RegisterUserRequest = parse(&raw)?;
    validate::username(&body.username)?;
    let scope = idempotency::account_scope(idempotency::AccountRoute::Register, &body.username)?;
    let idem = idempotency::from_request(req, &scope, &raw)?;
    note.idem = idem.clone();
    if let Some(replay) = idempotency::replayed(gw, &idem).await? {
        return Ok(replay);
    }
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
        session_epoch: 0,
    };
    let mut ops = vec![
        store::insert(ns::USERNAME, &user.username, &Claim { id: id.clone(), request_hash: String::new() })?,
        store::insert(ns::USER, &id, &user)?,
        store::insert(ns::ACCOUNT_OWNER, &account.to_string(), &Owner::User(id.clone()))?,
        Operation::OpenAccount { account: AccountId(account), currency, initial_minor: 0 },
        wallet_op(
            &id,
            &WalletEntry {
                at_ms: now_ms(),
                kind: "open".into(),
                delta_minor: 0,
                currency: currency.to_string(),
                reference: id.clone(),
            },
            account,
        )?,
    ];
    let answer = idempotency::with_answer(&idem, &mut ops, StatusCode::CREATED, &UserView::from(&user))?;
    match gw.store.submit(TxnRequest::new(txn_key("reg"), ops)).await? {
        Ok(()) => {}
        Err(reason) if idem.as_ref().is_some_and(|i| i.lost_to_twin(&reason)) => {
            return idempotency::replayed(gw, &idem).await?.ok_or(ApiError::Unavailable);
        }
        Err(AbortReason::RecordExists { .. }) => return Err(ApiError::UsernameTaken),
        Err(reason) => return Err(map_abort(reason)),
    }
    note.actor = format!("user:{id}");
    note.target = id;
    idempotency::settle(gw, &idem).await?;
    Ok(answer)
}

#[utoipa::path(post, path = "/v1/sessions", request_body = CreateSessionRequest,
    responses((status = 201, body = SessionView), (status = 401, body = ErrorBody)))]
pub async fn create_session(gw: web::Data<Gateway>, req: HttpRequest, payload: web::Payload) -> HttpResponse {
    let mut note = AuditNote::new("session.create");
    let result = create_session_inner(&gw, &req, payload, &mut note).await;
    finish(&gw, note, result).await
}

async fn create_session_inner(
    gw: &Gateway,
    req: &HttpRequest,
    payload: web::Payload,
    note: &mut AuditNote,
) -> Result<HttpResponse, ApiError> {
    auth::limit_address(gw, req)?;
    let raw = read_body(req, payload).await?;
    // The key is scoped by the username the body names (see `register_user`).
    let body: CreateSessionRequest = parse(&raw)?;
    validate::username(&body.username).map_err(|_| ApiError::BadCredentials)?;
    let scope = idempotency::account_scope(idempotency::AccountRoute::Login, &body.username)
        .map_err(|_| ApiError::BadCredentials)?;
    let idem = idempotency::from_request(req, &scope, &raw)?;
    note.idem = idem.clone();
    if let Some(replay) = idempotency::replayed(gw, &idem).await? {
        return Ok(replay);
    }
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
    let (session_id, _) = new_id("ses");
    let session = SessionRecord {
        session_id: session_id.clone(),
        user_id: user.id.clone(),
        epoch: user.session_epoch,
        expires_at,
    };
    let token = auth::session_token(gw, &user.id, &session_id, expires_at);
    let mut ops = vec![store::insert(ns::SESSION, &session_id, &session)?];
    let answer = idempotency::with_answer(
        &idem,
        &mut ops,
        StatusCode::CREATED,
        &SessionView { token, user_id: user.id, expires_at },
    )?;
    match gw.store.submit(TxnRequest::new(txn_key("ses"), ops)).await? {
        Ok(()) => {
            // The token must work on the very next request.
            gw.store.wait_visible(ns::SESSION, &session_id, Some(1)).await?;
            idempotency::settle(gw, &idem).await?;
            Ok(answer)
        }
        Err(reason) if idem.as_ref().is_some_and(|i| i.lost_to_twin(&reason)) => {
            idempotency::replayed(gw, &idem).await?.ok_or(ApiError::Unavailable)
        }
        Err(reason) => Err(map_abort(reason)),
    }
}

#[utoipa::path(delete, path = "/v1/sessions/current",
    responses((status = 204, description = "the token is revoked"), (status = 401, body = ErrorBody)),
    security(("user_token" = [])))]
pub async fn delete_session(gw: web::Data<Gateway>, req: HttpRequest) -> HttpResponse {
    let mut note = AuditNote::new("session.delete");
    let result = delete_session_inner(&gw, &req, &mut note).await;
    finish(&gw, note, result).await
}

async fn delete_session_inner(gw: &Gateway, req: &HttpRequest, note: &mut AuditNote) -> Result<HttpResponse, ApiError> {
    let (session, version) = auth::require_session(gw, req).await?;
    note.actor = format!("user:{}", session.user_id);
    note.target = session.session_id.clone();
    let ops = vec![store::delete(ns::SESSION, &session.session_id, RecordExpect::Version(version))];
    match gw.store.submit(TxnRequest::new(txn_key("logout"), ops)).await? {
        Ok(()) => {
            // Revoked means refused from the moment the answer arrives.
            gw.store.wait_visible(ns::SESSION, &session.session_id, None).await?;
            Ok(HttpResponse::NoContent().finish())
        }
        // A concurrent logout of the same session deleted it first.
        Err(AbortReason::RecordVersionMismatch { .. }) => Err(ApiError::InvalidToken),
        Err(reason) => Err(map_abort(reason)),
    }
}

#[utoipa::path(post, path = "/v1/users/{id}/password", request_body = ChangePasswordRequest,
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = PasswordChanged), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("user_token" = [])))]
pub async fn change_password(
    gw: web::Data<Gateway>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let mut note = AuditNote::new("user.password");
    note.target = path.clone();
    let result = change_password_inner(&gw, &req, &path, payload, &mut note).await;
    finish(&gw, note, result).await
}

async fn change_password_inner(
    gw: &Gateway,
    req: &HttpRequest,
    id: &str,
    payload: web::Payload,
    note: &mut AuditNote,
) -> Result<HttpResponse, ApiError> {
    let raw = read_body(req, payload).await?;
    let user_id = match auth::require_user(gw, req).await {
        Ok(user_id) => user_id,
        // A change whose answer was lost, retried with its key, finds its
        // session revoked by its own first attempt: it is answered that
        // attempt's response (the key and the body, both passwords
        // included, must match), not invalid_token.
        Err(ApiError::InvalidToken) => {
            let user_id = auth::token_user(gw, req).filter(|user_id| user_id == id).ok_or(ApiError::InvalidToken)?;
            let idem = idempotency::from_request(req, &format!("user:{user_id}"), &raw)?;
            return match idempotency::replayed(gw, &idem).await {
                Ok(Some(replay)) => Ok(replay),
                _ => Err(ApiError::InvalidToken),
            };
        }
        Err(error) => return Err(error),
    };
    note.actor = format!("user:{user_id}");
    if user_id != id {
        return Err(ApiError::Forbidden);
    }
    let idem = idempotency::from_request(req, &format!("user:{user_id}"), &raw)?;
    note.idem = idem.clone();
    if let Some(replay) = idempotency::replayed(gw, &idem).await? {
        return Ok(replay);
    }
    let body: ChangePasswordRequest = parse(&raw)?;
    validate::password(&body.new_password).map_err(|_| ApiError::InvalidField {
        field: "new_password",
        reason: "at least 8 characters with a letter and a digit".into(),
    })?;
    let (user, version) = gw.store.get::<UserRecord>(ns::USER, &user_id).await?.ok_or(ApiError::InvalidToken)?;
    let (current, hash) = (body.current_password, user.password_hash.clone());
    if !gw.run_password_work(move || secrets::verify_password(&current, &hash)).await? {
        return Err(ApiError::BadCredentials);
    }
    let new_password = body.new_password;
    let password_hash =
        gw.run_password_work(move || secrets::hash_password(&new_password)).await?.map_err(|_| ApiError::Internal)?;
    // One CAS: the new hash and a new epoch, which revokes every session.
    let epoch = user.session_epoch.checked_add(1).ok_or(ApiError::Internal)?;
    let updated = UserRecord { password_hash, session_epoch: epoch, ..user };
    let mut ops = vec![store::put(ns::USER, &user_id, &updated, RecordExpect::Version(version))?];
    let view = PasswordChanged { user_id: user_id.clone(), sessions_revoked: true };
    let answer = idempotency::with_answer(&idem, &mut ops, StatusCode::OK, &view)?;
    match gw.store.submit(TxnRequest::new(txn_key("pwd"), ops)).await? {
        Ok(()) => {
            // Every old session is refused from the moment the answer arrives.
            gw.store.wait_visible(ns::USER, &user_id, Some(version.saturating_add(1))).await?;
            idempotency::settle(gw, &idem).await?;
            Ok(answer)
        }
        Err(reason) if idem.as_ref().is_some_and(|i| i.lost_to_twin(&reason)) => {
            idempotency::replayed(gw, &idem).await?.ok_or(ApiError::Unavailable)
        }
        // Another change of this user committed first: its epoch ended this session.
        Err(AbortReason::RecordVersionMismatch { .. }) | Err(AbortReason::Conflict { .. }) => {
            Err(ApiError::InvalidToken)
        }
        Err(reason) => Err(map_abort(reason)),
    }
}
