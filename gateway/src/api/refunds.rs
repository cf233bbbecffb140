//! Refunds: partial and repeated, back the way the money came.

use super::*;

/// Attempts of a refund that lost without anyone making progress (a lock
/// wait that expired, a merchant balance held by a racing refund that may
/// yet abort, an order record read before its payment committed): with the
/// backoff, about 10 s before `503`.
const REFUND_STALLS: usize = 16;

/// How a refund that lost a round decides whether to try again.
///
/// Concurrent refunds of one order through different nodes race on the
/// order record's version. Losing that race (or the status entry's, or the
/// `out_refund_no` claim's) means another refund of this order *committed*:
/// after the payment only refunds write a paid order's record, and a
/// version moves only at a commit. At most [`MAX_REFUNDS_PER_ORDER`] ever
/// commit per order, so a refund loses at most that many such rounds
/// before it wins or meets a definite `409` (`too_many_refunds`,
/// `refund_exceeds_paid`, `order_not_refundable`). Those rounds are
/// therefore not counted against [`REFUND_STALLS`]: a fixed budget over
/// both (16 before) could answer `503` to a refund that fits, under enough
/// cross-node contention. Only rounds nobody won are.
#[derive(Debug, Default)]
struct RefundRounds {
    /// Rounds lost to a refund of this order that committed.
    overtaken: usize,
    /// Rounds lost without a commit of this order.
    stalled: usize,
}

/// What a lost round means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    /// Another refund of this order committed since we read it.
    Overtaken,
    /// Nobody is known to have made progress.
    Stalled,
}

impl RefundRounds {
    /// Records a lost round; the delay before the next, or `None` to give
    /// up (`503`).
    fn lost(&mut self, how: Lost) -> Option<std::time::Duration> {
        match how {
            Lost::Overtaken => {
                self.overtaken += 1;
                // More overtakes than refunds can ever commit breaks the
                // reasoning above: stop rather than loop.
                if self.overtaken > MAX_REFUNDS_PER_ORDER {
                    return None;
                }
                // The winner has committed: go again at once, with a
                // little jitter so racing nodes do not line up again.
                Some(std::time::Duration::from_millis(contention_jitter_ms(5)))
            }
            Lost::Stalled => {
                self.stalled += 1;
                (self.stalled < REFUND_STALLS).then(|| contention_delay(self.stalled))
            }
        }
    }

    /// The rounds played so far (the first included); bounded by
    /// [`MAX_REFUNDS_PER_ORDER`] + [`REFUND_STALLS`] + 1.
    fn played(&self) -> usize {
        self.overtaken + self.stalled + 1
    }
}

/// How a refund's abort counts, or `None` when it is definite.
fn lost_round(reason: &AbortReason) -> Option<Lost> {
    match reason {
        AbortReason::RecordVersionMismatch { .. } | AbortReason::RecordExists { .. } => Some(Lost::Overtaken),
        AbortReason::Conflict { .. } | AbortReason::InsufficientFunds { .. } => Some(Lost::Stalled),
        _ => None,
    }
}

#[utoipa::path(post, path = "/v1/orders/{id}/refunds", request_body = CreateRefundRequest,
    params(("id" = String, Path, description = "order id")),
    responses((status = 201, body = RefundView), (status = 200, description = "replay of the same out_refund_no", body = RefundView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("merchant_signature" = [])))]
pub async fn create_refund(
    gw: web::Data<Gateway>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let mut note = AuditNote::new("refund.create");
    note.target = path.clone();
    let result = create_refund_inner(&gw, &req, &path, payload, &mut note).await;
    finish_durable(&gw, note, result).await
}

async fn create_refund_inner(
    gw: &Gateway,
    req: &HttpRequest,
    id: &str,
    payload: web::Payload,
    note: &mut AuditNote,
) -> Result<HttpResponse, ApiError> {
    let raw = read_body(req, payload).await?;
    let merchant = auth::require_merchant(gw, req, &raw).await?;
    note.actor = format!("merchant:{}", merchant.id);
    let idem = idempotency::from_request(req, &format!("merchant:{}", merchant.id), &raw)?;
    note.idem = idem.clone();
    if let Some(replay) = idempotency::replayed(gw, &idem).await? {
        return Ok(replay);
    }
    let body: CreateRefundRequest = parse(&raw)?;
    validate::merchant_key("out_refund_no", &body.out_refund_no)?;
    let amount_minor = validate::amount(&body.amount_minor)?;
    validate::text("reason", &body.reason, 256)?;
    let caller = Caller::Merchant(Box::new(merchant.clone()));
    let order = OrderId(parse_id("ord", id).ok_or(ApiError::NotFound("order"))?);
    let request_hash = hash_hex(&[id, &body.out_refund_no, &amount_minor.to_string(), &body.reason]);
    let claim_key = format!("{}\n{}", merchant.id, body.out_refund_no);
    // Concurrent refunds of one order must each end in 201 or a definite
    // 409, never a 503 for a refund that fits. On this node they queue per
    // order (a loser would only abort on the order record's version);
    // across nodes they retry, more patiently than other writes.
    let _queued = gw.order_locks.lock(id).await;
    let mut last_abort = ApiError::Unavailable;
    let mut rounds = RefundRounds::default();
    loop {
        assert!(rounds.played() <= MAX_REFUNDS_PER_ORDER + REFUND_STALLS + 1, "refund rounds are bounded");
        if let Some((claim, _)) = gw.store.get::<Claim>(ns::OUT_REFUND_NO, &claim_key).await? {
            same_request(&claim, &request_hash, "out_refund_no")?;
            let (refund, _) =
                gw.store.get::<RefundRecord>(ns::REFUND, &claim.id).await?.ok_or(ApiError::Unavailable)?;
            return Ok(json(StatusCode::OK, &RefundView::from(&refund)));
        }
        let (record, version) = load_order(gw, &caller, id).await?;
        let live = gw.store.order(order).await?.ok_or(ApiError::NotFound("order"))?;
        if !matches!(live.status, OrderStatus::Paid | OrderStatus::PartiallyRefunded) {
            return Err(ApiError::OrderNotRefundable { status: live.status.to_string() });
        }
        let remaining = live.amount.amount_minor.saturating_sub(live.refunded_minor);
        if amount_minor > remaining {
            return Err(ApiError::RefundExceedsPaid { requested_minor: amount_minor, remaining_minor: remaining });
        }
        if record.refunds.len() >= MAX_REFUNDS_PER_ORDER {
            return Err(ApiError::TooManyRefunds { max: MAX_REFUNDS_PER_ORDER });
        }
        let Some(payment) = record.payment.clone() else {
            // The order record was read just before its payment committed
            // (the live order, read after, is paid): read both again.
            match rounds.lost(Lost::Stalled) {
                Some(delay) => {
                    tokio::time::sleep(delay).await;
                    continue;
                }
                None => return Err(ApiError::Unavailable),
            }
        };
        let currency = currency_of(&record.currency)?;
        let amount = Money::new(amount_minor, currency);
        // The money goes back the way it came.
        let (target, channel) = match payment.channel {
            None => {
                let (payer, _) =
                    gw.store.get::<UserRecord>(ns::USER, &payment.user_id).await?.ok_or(ApiError::Internal)?;
                (AccountId(payer.account), None)
            }
            Some(channel) => (ensure_clearing(gw, ChannelId(channel), currency).await?, Some(ChannelId(channel))),
        };
        let (refund_id, refund_number) = new_id("rfd");
        let created_at_ms = now_ms();
        let data = serde_json::json!({
            "order_id": record.id, "out_trade_no": record.out_trade_no, "refund_id": refund_id,
            "out_refund_no": body.out_refund_no, "amount_minor": amount_minor, "currency": record.currency,
            "status": "SUCCEEDED",
        });
        let (notify_id, notify_ops) =
            notification_ops(&merchant, &record.id, Some(&refund_id), "refund.succeeded", data)?;
        let refund = RefundRecord {
            id: refund_id.clone(),
            order_id: record.id.clone(),
            merchant_id: merchant.id.clone(),
            out_refund_no: body.out_refund_no.clone(),
            amount_minor,
            currency: record.currency.clone(),
            reason: body.reason.clone(),
            method: payment.method.clone(),
            channel: payment.channel,
            notify_id: notify_id.clone(),
            created_at: created_at_ms / 1_000,
        };
        let mut updated = record.clone();
        updated.refunds.push(refund_id.clone());
        updated.notify_ids.push(notify_id);
        let mut ops = vec![
            Operation::Debit { account: AccountId(merchant.account), amount },
            Operation::Credit { account: target, amount },
            Operation::RefundOrder { order, amount },
        ];
        if let Some(channel) = channel {
            ops.push(Operation::ChannelRefund { channel, order, amount });
        }
        ops.push(store::insert(
            ns::OUT_REFUND_NO,
            &claim_key,
            &Claim { id: refund_id.clone(), request_hash: request_hash.clone() },
        )?);
        ops.push(store::insert(ns::REFUND, &refund_id, &refund)?);
        ops.push(store::put(ns::ORDER, &record.id, &updated, RecordExpect::Version(version))?);
        ops.extend(notify_ops);
        // Indexes, in the same transaction: the order's refunds, its status
        // entry (when the status changes), the statement line, the wallet.
        ops.push(index::insert(
            index::partition(index::ins::REFUNDS_BY_ORDER, &record.id)?,
            created_at_ms,
            refund_number,
            &index::Pointer { id: refund_id.clone() },
        )?);
        let after = if amount_minor == remaining { OrderStatus::Refunded } else { OrderStatus::PartiallyRefunded };
        ops.extend(status_move(&record, live.status, after)?);
        let line = StatementLine {
            at_ms: 0, // the commit's (`statement_op`)
            order_id: record.id.clone(),
            out_trade_no: record.out_trade_no.clone(),
            kind: "refund".into(),
            method: payment.method.clone(),
            amount_minor,
            currency: record.currency.clone(),
            refund_id: Some(refund_id.clone()),
            out_refund_no: Some(body.out_refund_no.clone()),
        };
        ops.push(statement_op(&record.merchant_id, &line, refund_number)?);
        if channel.is_none() {
            let entry = WalletEntry {
                at_ms: created_at_ms,
                kind: "refund".into(),
                delta_minor: amount_minor,
                currency: record.currency.clone(),
                reference: refund_id.clone(),
            };
            ops.push(wallet_op(&payment.user_id, &entry, refund_number)?);
        }
        let answer = idempotency::with_answer(&idem, &mut ops, StatusCode::CREATED, &RefundView::from(&refund))?;
        match gw.store.submit(TxnRequest::new(txn_key("rfd"), ops)).await? {
            Ok(()) => {
                note.target = refund_id;
                idempotency::settle(gw, &idem).await?;
                return Ok(answer);
            }
            Err(reason) if idem.as_ref().is_some_and(|i| i.lost_to_twin(&reason)) => {
                return idempotency::replayed(gw, &idem).await?.ok_or(ApiError::Unavailable);
            }
            Err(AbortReason::IllegalOrderTransition { from, .. }) => {
                return Err(ApiError::OrderNotRefundable { status: from.to_string() })
            }
            Err(reason) => {
                let Some(how) = lost_round(&reason) else { return Err(map_abort(reason)) };
                // Racing refunds hold the merchant's money at prepare: look
                // at the order again, which names the real limit (what is
                // left); if the money is really short, say so.
                if matches!(reason, AbortReason::InsufficientFunds { .. }) {
                    last_abort = ApiError::InsufficientFunds;
                }
                match rounds.lost(how) {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(last_abort),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> paytx_protocol::RecordKey {
        paytx_protocol::RecordKey::new(7, name.as_bytes())
    }

    fn version_lost() -> AbortReason {
        AbortReason::RecordVersionMismatch { key: key("order"), expected: 1, actual: Some(2) }
    }

    #[test]
    fn a_refund_overtaken_by_every_other_refund_of_its_order_still_plays() {
        let mut rounds = RefundRounds::default();
        // Every other refund an order can take commits ahead of this one,
        // with the stall budget spent but one round as well.
        for _ in 0..MAX_REFUNDS_PER_ORDER {
            assert!(rounds.lost(lost_round(&version_lost()).unwrap()).is_some());
        }
        for _ in 1..REFUND_STALLS {
            let conflict = AbortReason::Conflict { entity: "order".into() };
            assert!(rounds.lost(lost_round(&conflict).unwrap()).is_some());
        }
        assert_eq!(rounds.played(), MAX_REFUNDS_PER_ORDER + REFUND_STALLS);
        // A 16th stall gives up; so would a 51st overtake.
        let mut spent = RefundRounds { overtaken: 0, stalled: REFUND_STALLS - 1 };
        assert!(spent.lost(Lost::Stalled).is_none());
        let mut overtaken = RefundRounds { overtaken: MAX_REFUNDS_PER_ORDER, stalled: 0 };
        assert!(overtaken.lost(Lost::Overtaken).is_none(), "more overtakes than refunds can commit");
    }

    #[test]
    fn definite_aborts_end_the_rounds() {
        let definite = [
            AbortReason::IllegalOrderTransition {
                order: OrderId(1),
                from: OrderStatus::Refunded,
                action: "refunded".into(),
            },
            AbortReason::CurrencyMismatch { entity: "acct".into(), expected: Currency::CNY, got: Currency::USD },
        ];
        for reason in definite {
            assert_eq!(lost_round(&reason), None, "{reason:?}");
        }
        assert_eq!(lost_round(&AbortReason::RecordExists { key: key("claim") }), Some(Lost::Overtaken));
        assert_eq!(
            lost_round(&AbortReason::InsufficientFunds {
                account: AccountId(1),
                available_minor: 1,
                requested_minor: 2,
            }),
            Some(Lost::Stalled)
        );
    }
}

#[utoipa::path(get, path = "/v1/refunds/{id}", params(("id" = String, Path, description = "refund id")),
    responses((status = 200, body = RefundView), (status = 404, body = ErrorBody)),
    security(("merchant_signature" = []), ("admin_key" = [])))]
pub async fn get_refund(
    gw: web::Data<Gateway>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload).await?;
    let caller = auth::any_caller(&gw, &req, &body).await?;
    parse_id("rfd", &path).ok_or(ApiError::NotFound("refund"))?;
    let (refund, _) = gw.store.get::<RefundRecord>(ns::REFUND, &path).await?.ok_or(ApiError::NotFound("refund"))?;
    match &caller {
        Caller::Admin => {}
        Caller::Merchant(merchant) if merchant.id == refund.merchant_id => {}
        _ => return Err(ApiError::NotFound("refund")),
    }
    Ok(json(StatusCode::OK, &RefundView::from(&refund)))
}
