//! The registration of a client as the issuer serves it: derived from an
//! OAuth2Client and its credentials, holding only hashes of the secrets.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::oauth2client::{AuthMethod, GrantType, OAuth2ClientSpec};

/// SHA-256 of a client secret. Secrets are 256-bit random strings, so a fast
/// hash is enough: there is nothing to brute-force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretHash {
    /// base64url of the digest.
    pub sha256: String,
    /// Unix time after which this secret no longer works (the previous
    /// secret during a rotation); `None` for the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

fn digest(secret: &[u8]) -> [u8; 32] {
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret);
    hash.as_ref().try_into().expect("SHA-256 has 32 bytes")
}

impl SecretHash {
    pub fn of(secret: &str) -> Self {
        Self { sha256: URL_SAFE_NO_PAD.encode(digest(secret.as_bytes())), expires_at: None }
    }

    fn matches(&self, presented: &[u8; 32]) -> bool {
        let mut stored = [0u8; 32];
        let decoded = URL_SAFE_NO_PAD.decode_slice(&self.sha256, &mut stored);
        decoded == Ok(32) && bool::from(stored.ct_eq(presented))
    }
}

/// A client registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    pub client_id: String,
    /// Hashes of the secrets that work now: the current one, and the previous
    /// one while a rotation overlaps. Empty for a public client.
    pub secrets: Vec<SecretHash>,
    pub auth_method: AuthMethod,
    pub grant_types: Vec<GrantType>,
    pub scopes: Vec<String>,
    pub default_scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub redirect_uris: Vec<String>,
    pub first_party: bool,
    pub disabled: bool,
    /// The TokenPolicy (`<name>.<namespace>`) whose issuers serve this
    /// client; an issuer of another policy treats it as unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// A hash to compare against when a client id is unknown, so that an unknown
/// client costs the same time as a wrong secret.
static DECOY: [u8; 32] = [0x5a; 32];

impl ClientRecord {
    pub fn new(client_id: String, spec: &OAuth2ClientSpec, secrets: Vec<SecretHash>) -> Self {
        Self {
            client_id,
            secrets,
            auth_method: spec.token_endpoint_auth_method,
            grant_types: spec.grant_types.clone(),
            scopes: spec.scopes.clone(),
            default_scopes: spec.default_scopes.clone(),
            audiences: spec.audiences.clone(),
            redirect_uris: spec.redirect_uris.clone(),
            first_party: spec.first_party,
            disabled: spec.disabled,
            policy: None,
        }
    }

    /// Whether `secret` is one of this client's live secrets, compared in
    /// constant time against every stored hash.
    pub fn secret_matches(&self, secret: &str, now: u64) -> bool {
        self.matching_secret(secret, now).is_some()
    }

    /// The live stored hash `secret` matches, compared in constant time
    /// against every stored hash (which one matched is no secret: the
    /// answer tells anyway).
    pub fn matching_secret(&self, secret: &str, now: u64) -> Option<&SecretHash> {
        let presented = digest(secret.as_bytes());
        let mut found = None;
        for hash in &self.secrets {
            let live = hash.expires_at.is_none_or(|t| now < t);
            if hash.matches(&presented) & live {
                found = Some(hash);
            }
        }
        found
    }

    pub fn allows(&self, grant: GrantType) -> bool {
        !self.disabled && self.grant_types.contains(&grant)
    }
}

/// Spends the time of one secret comparison, for a client id that does not exist.
pub fn compare_decoy(secret: &str) -> bool {
    bool::from(digest(secret.as_bytes()).ct_eq(&DECOY))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(secrets: Vec<SecretHash>) -> ClientRecord {
        let spec: OAuth2ClientSpec = serde_json::from_value(serde_json::json!({
            "audiences": ["https://api.example.com"],
            "policyRef": {"name": "default"},
        }))
        .unwrap();
        ClientRecord::new("a.b".into(), &spec, secrets)
    }

    #[test]
    fn current_and_unexpired_previous_secrets_match() {
        let mut previous = SecretHash::of("old");
        previous.expires_at = Some(100);
        let client = record(vec![SecretHash::of("new"), previous]);
        assert!(client.secret_matches("new", 50));
        assert!(client.secret_matches("old", 99));
        assert!(!client.secret_matches("old", 100), "expired previous secret");
        assert!(!client.secret_matches("other", 50));
        assert!(!client.secret_matches("", 50));
        assert_eq!(client.matching_secret("old", 99), client.secrets.get(1), "which one, to record its use");
        assert_eq!(client.matching_secret("new", 99), client.secrets.first());
    }

    #[test]
    fn public_clients_match_no_secret() {
        assert!(!record(vec![]).secret_matches("", 0));
    }

    #[test]
    fn a_corrupt_stored_hash_matches_nothing() {
        let corrupt = SecretHash { sha256: "not base64!".into(), expires_at: None };
        assert!(!record(vec![corrupt]).secret_matches("not base64!", 0));
    }
}
