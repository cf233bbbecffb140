//! The request-signing scheme (as in WeChat Pay v3 / Alipay RSA2).
//!
//! The signer builds the canonical string
//! `METHOD\nPATH_AND_QUERY\nTIMESTAMP\nNONCE\nBODY\n` and signs it with RSA
//! PKCS#1 v1.5 over SHA-256; the signature travels base64-encoded in
//! `X-Paytx-Signature`, next to `X-Paytx-Merchant`, `X-Paytx-Timestamp` (unix
//! seconds) and `X-Paytx-Nonce`. Merchants sign requests with their key; the
//! platform signs notifications with its own, with the same headers.

use base64::Engine;
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;

pub const HEADER_MERCHANT: &str = "X-Paytx-Merchant";
pub const HEADER_TIMESTAMP: &str = "X-Paytx-Timestamp";
pub const HEADER_NONCE: &str = "X-Paytx-Nonce";
pub const HEADER_SIGNATURE: &str = "X-Paytx-Signature";
/// On notifications: the stable id merchants deduplicate by.
pub const HEADER_NOTIFY_ID: &str = "X-Paytx-Notify-Id";

/// Smallest accepted RSA modulus, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest accepted RSA modulus, in bits (a bound on verification work).
pub const MAX_RSA_BITS: usize = 4096;
/// Largest accepted PEM, in bytes.
pub const MAX_PEM_BYTES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM-encoded RSA public key (SubjectPublicKeyInfo, \"BEGIN PUBLIC KEY\")")]
    NotPem,
    #[error("the RSA key has {bits} bits; {MIN_RSA_BITS}..={MAX_RSA_BITS} required")]
    BadSize { bits: usize },
    #[error("the PEM is larger than {MAX_PEM_BYTES} bytes")]
    TooLarge,
    #[error("cannot read or write the key file: {0}")]
    Io(String),
    #[error("cannot generate or encode an RSA key: {0}")]
    Crypto(String),
}

/// The bytes that are signed.
pub fn canonical_string(method: &str, path_and_query: &str, timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(method.len() + path_and_query.len() + timestamp.len() + nonce.len() + body.len() + 5);
    for part in [method.as_bytes(), path_and_query.as_bytes(), timestamp.as_bytes(), nonce.as_bytes(), body] {
        out.extend_from_slice(part);
        out.push(b'\n');
    }
    out
}

/// Base64 of the RSA PKCS#1 v1.5 SHA-256 signature of `message`.
pub fn sign(key: &RsaPrivateKey, message: &[u8]) -> String {
    let signing_key = SigningKey::<Sha256>::new(key.clone());
    base64::engine::general_purpose::STANDARD.encode(signing_key.sign(message).to_bytes())
}

/// `true` when `signature_b64` is a valid signature of `message` by `key`.
pub fn verify(key: &RsaPublicKey, message: &[u8], signature_b64: &str) -> bool {
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(signature_b64.trim()) else { return false };
    let Ok(signature) = Signature::try_from(bytes.as_slice()) else { return false };
    VerifyingKey::<Sha256>::new(key.clone()).verify(message, &signature).is_ok()
}

/// Parses a merchant's public key and checks its size.
pub fn parse_public_key(pem: &str) -> Result<RsaPublicKey, KeyError> {
    if pem.len() > MAX_PEM_BYTES {
        return Err(KeyError::TooLarge);
    }
    let key = RsaPublicKey::from_public_key_pem(pem.trim()).map_err(|_| KeyError::NotPem)?;
    let bits = key.n().bits();
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(KeyError::BadSize { bits });
    }
    Ok(key)
}

pub fn public_key_pem(key: &RsaPublicKey) -> Result<String, KeyError> {
    key.to_public_key_pem(LineEnding::LF).map_err(|e| KeyError::Crypto(e.to_string()))
}

/// Generates a 2048-bit key (slow in unoptimised builds: seconds).
/// The PEM of the public half of `key` (what a merchant hands the admin).
pub fn public_key_pem_of(key: &RsaPrivateKey) -> Result<String, KeyError> {
    public_key_pem(&RsaPublicKey::from(key))
}

pub fn generate_key() -> Result<RsaPrivateKey, KeyError> {
    RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).map_err(|e| KeyError::Crypto(e.to_string()))
}

pub fn private_key_pem(key: &RsaPrivateKey) -> Result<String, KeyError> {
    key.to_pkcs8_pem(LineEnding::LF).map(|pem| pem.to_string()).map_err(|e| KeyError::Crypto(e.to_string()))
}

/// Loads the platform's private key (PKCS#8 PEM) from `path`.
pub fn load_private_key(path: &std::path::Path) -> Result<RsaPrivateKey, KeyError> {
    let pem = std::fs::read_to_string(path).map_err(|e| KeyError::Io(format!("{}: {e}", path.display())))?;
    RsaPrivateKey::from_pkcs8_pem(pem.trim()).map_err(|e| KeyError::Crypto(format!("{}: {e}", path.display())))
}

/// The four headers of a signed request (what a merchant's SDK sends), with
/// the current time and a random nonce.
pub fn signed_headers(
    key: &RsaPrivateKey,
    merchant_id: &str,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> [(&'static str, String); 4] {
    let timestamp = crate::model::now_secs().to_string();
    let nonce = crate::model::new_id("n").0;
    let signature = sign(key, &canonical_string(method, path_and_query, &timestamp, &nonce, body));
    [
        (HEADER_MERCHANT, merchant_id.to_string()),
        (HEADER_TIMESTAMP, timestamp),
        (HEADER_NONCE, nonce),
        (HEADER_SIGNATURE, signature),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_round_trip_and_tamper_detection() {
        let key = generate_key().unwrap();
        let public = RsaPublicKey::from(&key);
        let message = canonical_string("POST", "/v1/orders", "1700000000", "n-1", br#"{"a":1}"#);
        assert_eq!(message, b"POST\n/v1/orders\n1700000000\nn-1\n{\"a\":1}\n".to_vec());
        let signature = sign(&key, &message);
        assert!(verify(&public, &message, &signature));
        let tampered = canonical_string("POST", "/v1/orders", "1700000000", "n-1", br#"{"a":2}"#);
        assert!(!verify(&public, &tampered, &signature));
        assert!(!verify(&public, &message, "not base64!"));
        assert!(!verify(&public, &message, ""));

        let pem = public_key_pem(&public).unwrap();
        assert_eq!(parse_public_key(&pem).unwrap(), public);
        assert_eq!(parse_public_key("garbage"), Err(KeyError::NotPem));
        let small = RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024).unwrap();
        let small_pem = public_key_pem(&RsaPublicKey::from(&small)).unwrap();
        assert_eq!(parse_public_key(&small_pem), Err(KeyError::BadSize { bits: 1024 }));

        let private_pem = private_key_pem(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("platform.pem");
        std::fs::write(&path, private_pem).unwrap();
        assert_eq!(load_private_key(&path).unwrap(), key);
    }
}
