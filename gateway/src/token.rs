//! Stateless session tokens: `base64url(user_id:expiry_unix_secs).base64url(HMAC-SHA256)`
//! under a secret every node shares, so any node can check a token another
//! node issued, and nothing is stored per session.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Longest token accepted, in bytes (a bound on work for hostile input).
pub const MAX_TOKEN_BYTES: usize = 256;

#[derive(Clone)]
pub struct TokenIssuer {
    secret: [u8; 32],
}

impl TokenIssuer {
    pub fn new(secret: [u8; 32]) -> TokenIssuer {
        TokenIssuer { secret }
    }

    fn mac(&self, payload: &[u8]) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).expect("HMAC takes keys of any length");
        mac.update(b"paytx session v1\n");
        mac.update(payload);
        mac.finalize().into_bytes().to_vec()
    }

    pub fn issue(&self, user_id: &str, expires_at_secs: u64) -> String {
        let payload = format!("{user_id}:{expires_at_secs}");
        format!("{}.{}", URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(self.mac(payload.as_bytes())))
    }

    /// The user id of a valid token that has not expired at `now_secs`.
    pub fn check(&self, token: &str, now_secs: u64) -> Option<String> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let (payload_b64, mac_b64) = token.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload_b64).ok()?;
        let mac = URL_SAFE_NO_PAD.decode(mac_b64).ok()?;
        let mut verifier = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).expect("HMAC takes keys of any length");
        verifier.update(b"paytx session v1\n");
        verifier.update(&payload);
        verifier.verify_slice(&mac).ok()?;
        let payload = String::from_utf8(payload).ok()?;
        let (user_id, expiry) = payload.rsplit_once(':')?;
        let expiry: u64 = expiry.parse().ok()?;
        (now_secs < expiry).then(|| user_id.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_expire_and_resist_tampering() {
        let issuer = TokenIssuer::new([7; 32]);
        let token = issuer.issue("usr_42", 1_000);
        assert_eq!(issuer.check(&token, 999), Some("usr_42".to_string()));
        assert_eq!(issuer.check(&token, 1_000), None, "expired");
        let forged = format!("{}.{}", URL_SAFE_NO_PAD.encode("usr_43:1000"), token.split_once('.').unwrap().1);
        assert_eq!(issuer.check(&forged, 10), None);
        assert_eq!(TokenIssuer::new([8; 32]).check(&token, 10), None, "another secret");
        assert_eq!(issuer.check("garbage", 10), None);
    }
}
