//! Validation of a bearer token: the agent's hot path, with no network
//! round trip. A token is verified once (signature, `typ`, algorithm bound
//! to its key, `iss`, `aud`, `exp`/`nbf` with the allowed skew); after that
//! only its SHA-256 and expiry are remembered, so a token seen again costs a
//! hash, a lookup and a decode of its claims. Revocation is checked every
//! time, against the feed.

use std::sync::Arc;

use aws_lc_rs::digest;
use tokenplane_api::claims::AccessTokenClaims;

use super::feed::{Revocations, Revoked};
use super::jwks::Jwks;
use crate::clock::unix_now;
use crate::keys::{InvalidToken, decode_payload};

/// Longest token accepted; ours are well under 1 KiB.
pub const MAX_TOKEN: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("the token is longer than {MAX_TOKEN} bytes")]
    TooLong,
    #[error("{0}")]
    Invalid(InvalidToken),
    #[error("{0}")]
    Revoked(Revoked),
}

impl Rejection {
    /// A fixed label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLong => "too_long",
            Self::Invalid(InvalidToken::Malformed) => "malformed",
            Self::Invalid(InvalidToken::UnknownKey { .. }) => "unknown_key",
            Self::Invalid(InvalidToken::WrongType) => "wrong_type",
            Self::Invalid(InvalidToken::Critical) => "critical",
            Self::Invalid(InvalidToken::Algorithm) => "algorithm",
            Self::Invalid(InvalidToken::Signature) => "signature",
            Self::Invalid(InvalidToken::Expired) => "expired",
            Self::Invalid(InvalidToken::NotYetValid) => "not_yet_valid",
            Self::Invalid(InvalidToken::Issuer) => "issuer",
            Self::Invalid(InvalidToken::Audience) => "audience",
            Self::Revoked(Revoked::Token) => "revoked",
            Self::Revoked(Revoked::Client(_)) => "client_revoked",
            Self::Revoked(Revoked::NotSynced | Revoked::Stale(..)) => "feed_stale",
        }
    }

    /// Whether the agent, not the token, is at fault (the caller may retry).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Revoked(Revoked::NotSynced | Revoked::Stale(..)))
    }
}

/// First 128 bits of a token's SHA-256.
type Digest = [u8; 16];

/// A verified token: the JWKS generation it was verified under and its
/// `exp`. An entry of an older generation (a key withdrawn since) counts as
/// unseen and is overwritten when the token verifies again. 8 bytes, next
/// to a 16-byte key: the entry size sets the agent's memory.
#[derive(Clone, Copy)]
struct Verified {
    generation: u32,
    exp: u32,
}

pub struct Validator {
    jwks: Arc<Jwks>,
    revocations: Arc<Revocations>,
    /// Bounded by `--verified-cache`; quick_cache evicts the least useful
    /// entries when full (CLOCK-Pro), and the next use of one re-verifies.
    verified: quick_cache::sync::Cache<Digest, Verified>,
    leeway: u64,
}

impl Validator {
    pub fn new(jwks: Arc<Jwks>, revocations: Arc<Revocations>, capacity: usize, leeway: u64) -> Self {
        Self { jwks, revocations, verified: quick_cache::sync::Cache::new(capacity.max(1)), leeway }
    }

    pub async fn validate(&self, token: &str) -> Result<AccessTokenClaims, Rejection> {
        if token.len() > MAX_TOKEN {
            return Err(Rejection::TooLong);
        }
        let digest = digest_of(token);
        let claims = match self.seen(digest) {
            true => decode_claims(token).map_err(Rejection::Invalid)?,
            false => {
                let claims = self.verify(token).await.map_err(Rejection::Invalid)?;
                self.remember(digest, claims.exp);
                claims
            }
        };
        self.revocations.check(&claims.jti, &claims.client_id, claims.iat).map_err(Rejection::Revoked)?;
        Ok(claims)
    }

    /// How many verified tokens are remembered.
    pub fn remembered(&self) -> usize {
        self.verified.len()
    }

    /// Whether the token was verified before, under the current keys, and
    /// has not expired since.
    fn seen(&self, digest: Digest) -> bool {
        self.verified.get(&digest).is_some_and(|v| {
            v.generation == self.jwks.generation() && unix_now() < u64::from(v.exp) + self.leeway
        })
    }

    async fn verify(&self, token: &str) -> Result<AccessTokenClaims, InvalidToken> {
        match self.jwks.keys().verify(token) {
            Err(InvalidToken::UnknownKey { kid: Some(kid) }) if self.jwks.refresh_for(&kid).await => {
                self.jwks.keys().verify(token)
            }
            verified => verified,
        }
    }

    /// Remembers a verified token under the current JWKS generation.
    fn remember(&self, digest: Digest, exp: u64) {
        let exp = u32::try_from(exp).unwrap_or(u32::MAX);
        self.verified.insert(digest, Verified { generation: self.jwks.generation(), exp });
    }
}

fn digest_of(token: &str) -> Digest {
    let hash = digest::digest(&digest::SHA256, token.as_bytes());
    hash.as_ref()[..16].try_into().expect("SHA-256 has 32 bytes")
}

/// The claims of a token, unverified: one verified before, or one the
/// issuer just handed us.
pub(super) fn decode_claims(token: &str) -> Result<AccessTokenClaims, InvalidToken> {
    decode_payload(token.split('.').nth(1).ok_or(InvalidToken::Malformed)?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::keys::Checks;

    fn validator(capacity: usize) -> Validator {
        let jwks = Jwks::new(
            "http://127.0.0.1:9",
            Arc::new(crate::agent::issuer_client::IssuerClient::load(None).unwrap()),
            Checks::default(),
            Duration::ZERO,
        );
        Validator::new(Arc::new(jwks), Arc::new(Revocations::new(Duration::from_secs(10))), capacity, 0)
    }

    #[test]
    fn the_verified_cache_stays_within_its_capacity_and_forgets_expired_tokens() {
        let v = validator(100);
        let live = unix_now() + 600;
        for i in 0..1000 {
            v.remember(digest_of(&format!("token {i}")), live);
        }
        assert!(v.remembered() <= 100, "{} remembered", v.remembered());
        assert!(v.seen(digest_of("token 999")), "the newest token is kept");
        v.remember(digest_of("expired"), unix_now() - 1);
        assert!(!v.seen(digest_of("expired")));
    }
}
