//! Channels: clearing accounts and routing a charge through a method's routes.

use super::*;

/// The per-(channel, currency) clearing account: money arriving from or
/// returning to an external channel moves through it, so every payment is
/// a balanced transfer and the total money in the cluster is conserved.
pub fn clearing_account(channel: ChannelId, currency: Currency) -> AccountId {
    let digest = Sha256::digest(format!("paytx clearing {} {}", channel.0, currency).as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    // Above 2^60: never one of the gateway's random ids (< 2^53).
    AccountId((1u64 << 60) | (u64::from_le_bytes(bytes) >> 4))
}

/// The float a clearing account opens with: the channel's pre-funded
/// settlement balance, large enough never to run out in practice.
pub const CLEARING_FLOAT_MINOR: i64 = 1_000_000_000_000_000;

pub(crate) async fn ensure_clearing(
    gw: &Gateway,
    channel: ChannelId,
    currency: Currency,
) -> Result<AccountId, ApiError> {
    let account = clearing_account(channel, currency);
    if gw.store.account(account).await?.is_some() {
        return Ok(account);
    }
    // A fixed idempotency key: nodes racing to open it replay one another.
    let open = Operation::OpenAccount { account, currency, initial_minor: CLEARING_FLOAT_MINOR };
    match gw.store.submit(TxnRequest::new(format!("gw-clearing-{}-{}", channel.0, currency), vec![open])).await? {
        Ok(()) | Err(AbortReason::AccountExists(_)) => Ok(account),
        Err(reason) => Err(map_abort(reason)),
    }
}

/// Runs `build(channel)` through the routes of `method` until one channel
/// accepts: a decline is reported to the circuit breaker and the next
/// route is tried (a declined charge aborted the whole transaction, so
/// nothing was applied).
pub(crate) async fn through_channel<F>(
    gw: &Gateway,
    method: PayMethod,
    currency: Currency,
    mut build: F,
) -> Result<Result<ChannelId, AbortReason>, ApiError>
where
    F: FnMut(ChannelId, AccountId) -> Result<TxnRequest, ApiError>,
{
    let mut tried: Vec<ChannelId> = Vec::new();
    let mut last = None;
    for _ in 0..crate::routing::MAX_ROUTES_PER_METHOD {
        let picked = {
            let mut rng = rand::thread_rng();
            gw.router.pick(method, &tried, std::time::Instant::now(), &mut rng)
        };
        let Some(channel) = picked else { break };
        tried.push(channel);
        let clearing = ensure_clearing(gw, channel, currency).await?;
        match gw.store.submit(build(channel, clearing)?).await? {
            Ok(()) => {
                gw.router.report(channel, true, std::time::Instant::now());
                return Ok(Ok(channel));
            }
            Err(reason @ (AbortReason::ChannelDeclined { .. } | AbortReason::UnknownChannel(_))) => {
                gw.router.report(channel, false, std::time::Instant::now());
                last = Some(reason);
            }
            // The channel's clearing float cannot cover it: the channel says no.
            Err(AbortReason::InsufficientFunds { account, .. }) if account == clearing => {
                return Ok(Err(AbortReason::ChannelDeclined { channel }))
            }
            Err(reason) => return Ok(Err(reason)),
        }
    }
    match last {
        Some(reason) => Ok(Err(reason)),
        None => Err(ApiError::ChannelUnavailable),
    }
}

pub(crate) fn channel_method(text: &str) -> Result<PayMethod, ApiError> {
    PayMethod::parse(text).ok_or_else(|| ApiError::InvalidMethod(text.chars().take(32).collect()))
}
