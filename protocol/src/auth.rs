//! Peer authentication: only nodes that know the cluster secret may speak
//! the node-to-node protocol (2PC and Raft messages) on a connection.
//!
//! Mutual HMAC-SHA256 challenge–response, bound to both nonces:
//!
//! ```text
//! connector                                   acceptor
//!   AuthHello { node, nonce_c }          ──▶
//!                                        ◀──  AuthChallenge { nonce_s,
//!                                               proof_s = HMAC(secret, "server" ‖ node ‖ nonce_c ‖ nonce_s) }
//!   checks proof_s (the acceptor knows the secret)
//!   AuthProof { proof_c = HMAC(secret, "client" ‖ node ‖ nonce_c ‖ nonce_s) }  ──▶
//!                                        ◀──  Acked; the connection may now carry peer messages from `node`
//! ```
//!
//! Fresh nonces on both sides make a recorded handshake useless on another
//! connection; the secret never crosses the wire.

use crate::ids::NodeId;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of nonces and proofs, in bytes.
pub const AUTH_BYTES: usize = 32;
/// Shortest accepted cluster secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

pub type Nonce = [u8; AUTH_BYTES];
pub type Proof = [u8; AUTH_BYTES];

/// Most sections a [`ConfigDigest`] may carry (a hostile hello cannot make
/// the comparison large).
pub const MAX_CONFIG_SECTIONS: usize = 32;

/// The cluster-wide part of a node's configuration — what must be
/// identical on every node (shard map, channels, retention, the limits
/// that change validation) — as one SHA-256 per named section, sorted by
/// name. Sent in `AuthHello`; a node refuses a peer whose digest differs,
/// naming the sections, so a misconfigured node is refused at its first
/// connection instead of diverging later.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfigDigest(pub Vec<(String, [u8; 32])>);

impl ConfigDigest {
    /// Digests each `(name, encoded section)`.
    pub fn of(sections: Vec<(&str, Vec<u8>)>) -> Self {
        use sha2::Digest;
        let mut digests: Vec<(String, [u8; 32])> =
            sections.into_iter().map(|(name, bytes)| (name.to_string(), Sha256::digest(&bytes).into())).collect();
        digests.sort();
        assert!(digests.len() <= MAX_CONFIG_SECTIONS, "a bounded number of sections");
        ConfigDigest(digests)
    }

    /// The sections in which `self` and `other` differ (present in one
    /// only, or with another digest), by name; empty when they agree.
    pub fn differing(&self, other: &ConfigDigest) -> Vec<String> {
        if other.0.len() > MAX_CONFIG_SECTIONS {
            return vec![format!("(more than {MAX_CONFIG_SECTIONS} sections)")];
        }
        let mine: std::collections::BTreeMap<&str, &[u8; 32]> = self.0.iter().map(|(n, d)| (n.as_str(), d)).collect();
        let theirs: std::collections::BTreeMap<&str, &[u8; 32]> =
            other.0.iter().map(|(n, d)| (n.as_str(), d)).collect();
        let names: std::collections::BTreeSet<&str> = mine.keys().chain(theirs.keys()).copied().collect();
        names.into_iter().filter(|name| mine.get(name) != theirs.get(name)).map(str::to_string).collect()
    }
}

fn mac(secret: &[u8], role: &[u8], node: NodeId, client_nonce: &Nonce, server_nonce: &Nonce) -> Hmac<Sha256> {
    // Infallible: HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(b"paytx-peer-auth-v1/");
    mac.update(role);
    mac.update(&node.to_be_bytes());
    mac.update(client_nonce);
    mac.update(server_nonce);
    mac
}

/// The acceptor's proof that it knows the secret.
pub fn server_proof(secret: &[u8], node: NodeId, client_nonce: &Nonce, server_nonce: &Nonce) -> Proof {
    mac(secret, b"server", node, client_nonce, server_nonce).finalize().into_bytes().into()
}

/// The connector's proof that it knows the secret.
pub fn client_proof(secret: &[u8], node: NodeId, client_nonce: &Nonce, server_nonce: &Nonce) -> Proof {
    mac(secret, b"client", node, client_nonce, server_nonce).finalize().into_bytes().into()
}

/// Checks a proof in constant time.
pub fn verify_server(secret: &[u8], node: NodeId, client_nonce: &Nonce, server_nonce: &Nonce, proof: &Proof) -> bool {
    mac(secret, b"server", node, client_nonce, server_nonce).verify_slice(proof).is_ok()
}

/// Checks a proof in constant time.
pub fn verify_client(secret: &[u8], node: NodeId, client_nonce: &Nonce, server_nonce: &Nonce, proof: &Proof) -> bool {
    mac(secret, b"client", node, client_nonce, server_nonce).verify_slice(proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_need_the_secret_and_are_bound_to_role_node_and_nonces() {
        let (secret, cn, sn) = (b"0123456789abcdef-cluster".as_slice(), [1u8; 32], [2u8; 32]);
        let proof = client_proof(secret, 7, &cn, &sn);
        assert!(verify_client(secret, 7, &cn, &sn, &proof));
        assert!(!verify_client(b"another secret of 16+ bytes", 7, &cn, &sn, &proof));
        assert!(!verify_client(secret, 8, &cn, &sn, &proof), "bound to the node id");
        assert!(!verify_client(secret, 7, &sn, &cn, &proof), "bound to the nonces");
        assert!(!verify_server(secret, 7, &cn, &sn, &proof), "a client proof is not a server proof");
        assert!(verify_server(secret, 7, &cn, &sn, &server_proof(secret, 7, &cn, &sn)));
    }
}
