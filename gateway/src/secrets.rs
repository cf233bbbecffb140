//! Sensitive data at rest: card numbers encrypted with AES-256-GCM, a keyed
//! card fingerprint (HMAC-SHA256), passwords hashed with Argon2id, and the
//! 32-byte key files these use.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} must hold 64 hex digits (a 32-byte key)")]
    BadKeyFile { path: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("the sealed card cannot be opened with this key")]
    Unseal,
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// A 32-byte key (card encryption; the admin key's hash is separate).
#[derive(Clone)]
pub struct Key32(pub [u8; 32]);

impl std::fmt::Debug for Key32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key32(..)")
    }
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

impl Key32 {
    pub fn random() -> Key32 {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Key32(key)
    }

    /// Reads a key file of 64 hex digits.
    pub fn load(path: &Path) -> Result<Key32, SecretError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SecretError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        let bytes = from_hex(text.trim()).ok_or(SecretError::BadKeyFile { path: path.display().to_string() })?;
        let key: [u8; 32] =
            bytes.try_into().map_err(|_| SecretError::BadKeyFile { path: path.display().to_string() })?;
        Ok(Key32(key))
    }

    /// Loads the key at `path`, first writing a fresh random one (mode 0600)
    /// when the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Key32, SecretError> {
        if !path.exists() {
            write_private_file(path, &to_hex(&Key32::random().0))?;
        }
        Key32::load(path)
    }

    /// A sub-key for `purpose`, so one key file can serve several jobs
    /// without reusing the same key for two of them.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// Writes `contents` to a new file only its owner can read.
pub fn write_private_file(path: &Path, contents: &str) -> Result<(), SecretError> {
    let write_error =
        |e: std::io::Error| SecretError::Write { path: path.display().to_string(), reason: e.to_string() };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(write_error)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(write_error)?;
    std::io::Write::write_all(&mut file, contents.as_bytes()).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}

/// Card numbers sealed with AES-256-GCM under the card key.
pub struct CardVault {
    cipher: Aes256Gcm,
    fingerprint_key: [u8; 32],
}

impl CardVault {
    pub fn new(key: &Key32) -> CardVault {
        let encryption_key = key.derive("paytx card encryption v1");
        CardVault {
            cipher: Aes256Gcm::new_from_slice(&encryption_key).expect("AES-256 takes a 32-byte key"),
            fingerprint_key: key.derive("paytx card fingerprint v1"),
        }
    }

    /// base64(nonce ‖ ciphertext ‖ tag), with a random 96-bit nonce.
    pub fn seal(&self, card_number: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), card_number.as_bytes())
            .expect("AES-GCM encryption of a short buffer cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    pub fn open(&self, sealed: &str) -> Result<String, SecretError> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(sealed).map_err(|_| SecretError::Unseal)?;
        if bytes.len() < 12 {
            return Err(SecretError::Unseal);
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let plain = self.cipher.decrypt(Nonce::from_slice(nonce), ciphertext).map_err(|_| SecretError::Unseal)?;
        String::from_utf8(plain).map_err(|_| SecretError::Unseal)
    }

    /// A keyed fingerprint (first 16 hex digits of HMAC-SHA256): equal cards
    /// compare equal, and without the key it cannot be brute-forced back to
    /// the number (a plain hash of a 16-digit card could be).
    pub fn fingerprint(&self, card_number: &str) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.fingerprint_key).expect("HMAC takes keys of any length");
        mac.update(card_number.as_bytes());
        to_hex(&mac.finalize().into_bytes()[..8])
    }
}

pub fn last_four(card_number: &str) -> String {
    card_number.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect()
}

/// Argon2id PHC string of `password` with a random salt.
pub fn hash_password(password: &str) -> Result<String, SecretError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| SecretError::Hash(e.to_string()))
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    let Ok(hash) = PasswordHash::new(phc) else { return false };
    argon2::Argon2::default().verify_password(password.as_bytes(), &hash).is_ok()
}

/// Constant-time comparison through digests: the time taken does not
/// depend on where two secrets first differ.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    let (da, db) = (Sha256::digest(a), Sha256::digest(b));
    da.iter().zip(db.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards_are_sealed_and_fingerprinted_without_the_plaintext() {
        let vault = CardVault::new(&Key32::random());
        let sealed = vault.seal("4111111111111111");
        assert!(!sealed.contains("4111111111111111"));
        assert_ne!(sealed, vault.seal("4111111111111111"), "a fresh nonce per seal");
        assert_eq!(vault.open(&sealed).unwrap(), "4111111111111111");
        assert_eq!(vault.fingerprint("4111111111111111"), vault.fingerprint("4111111111111111"));
        assert_ne!(vault.fingerprint("4111111111111111"), vault.fingerprint("5555555555554444"));
        let other = CardVault::new(&Key32::random());
        assert_eq!(other.open(&sealed), Err(SecretError::Unseal));
        assert_eq!(last_four("4111111111111111"), "1111");
    }

    #[test]
    fn passwords_hash_with_argon2id() {
        let hash = hash_password("correct1horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct1horse", &hash));
        assert!(!verify_password("wrong1horse", &hash));
        assert!(!verify_password("correct1horse", "not a hash"));
    }

    #[test]
    fn key_files_are_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("card.key");
        let first = Key32::load_or_create(&path).unwrap();
        let again = Key32::load_or_create(&path).unwrap();
        assert_eq!(first.0, again.0);
        std::fs::write(dir.path().join("bad.key"), "xyz").unwrap();
        assert!(matches!(Key32::load(&dir.path().join("bad.key")), Err(SecretError::BadKeyFile { .. })));
        assert!(secrets_equal(b"abc", b"abc"));
        assert!(!secrets_equal(b"abc", b"abd"));
    }
}
