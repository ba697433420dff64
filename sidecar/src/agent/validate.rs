//! Validation of a bearer token: the agent's hot path, with no network
//! round trip. A token is verified once (signature, `typ`, algorithm bound
//! to its key, `iss`, `aud`, `exp`/`nbf` with the allowed skew); after that
//! only its SHA-256 and expiry are remembered, so a token seen again costs a
//! hash, a lookup and a decode of its claims. Revocation is checked every
//! time, against the feed.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use tokenplane_api::claims::AccessTokenClaims;

use super::feed::{Revocations, Revoked};
use super::jwks::Jwks;
use crate::clock::unix_now;
use crate::keys::InvalidToken;

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
            Self::Invalid(InvalidToken::UnknownKey) => "unknown_key",
            Self::Invalid(InvalidToken::WrongType) => "wrong_type",
            Self::Invalid(InvalidToken::Rejected(e)) => match e.kind() {
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::ImmatureSignature => "not_yet_valid",
                ErrorKind::InvalidAudience => "audience",
                ErrorKind::InvalidIssuer => "issuer",
                ErrorKind::InvalidSignature => "signature",
                ErrorKind::InvalidAlgorithm => "algorithm",
                _ => "invalid",
            },
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

/// Tokens verified under one JWKS generation: digest -> `exp` (20 bytes an
/// entry). A new generation (a key withdrawn) empties it.
#[derive(Default)]
struct Verified {
    generation: u64,
    tokens: HashMap<Digest, u32>,
}

pub struct Validator {
    jwks: Arc<Jwks>,
    revocations: Arc<Revocations>,
    verified: RwLock<Verified>,
    capacity: usize,
    leeway: u64,
}

impl Validator {
    pub fn new(jwks: Arc<Jwks>, revocations: Arc<Revocations>, capacity: usize, leeway: u64) -> Self {
        Self { jwks, revocations, verified: RwLock::default(), capacity, leeway }
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
        self.verified.read().unwrap_or_else(std::sync::PoisonError::into_inner).tokens.len()
    }

    /// Whether the token was verified before, under the current keys, and
    /// has not expired since.
    fn seen(&self, digest: Digest) -> bool {
        let now = unix_now();
        let verified = self.verified.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        verified.generation == self.jwks.generation()
            && verified.tokens.get(&digest).is_some_and(|exp| now < u64::from(*exp) + self.leeway)
    }

    async fn verify(&self, token: &str) -> Result<AccessTokenClaims, InvalidToken> {
        match self.jwks.keys().verify(token) {
            Err(InvalidToken::UnknownKey) => {
                let kid = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid);
                match kid {
                    Some(kid) if self.jwks.refresh_for(&kid).await => self.jwks.keys().verify(token),
                    _ => Err(InvalidToken::UnknownKey),
                }
            }
            verified => verified,
        }
    }

    /// Remembers a verified token; when full, forgets expired ones first,
    /// and everything if that is not enough (the next use re-verifies).
    fn remember(&self, digest: Digest, exp: u64) {
        let generation = self.jwks.generation();
        let mut verified = self.verified.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if verified.generation != generation {
            *verified = Verified { generation, tokens: HashMap::new() };
        }
        if verified.tokens.len() >= self.capacity {
            let now = unix_now();
            verified.tokens.retain(|_, e| now < u64::from(*e) + self.leeway);
            if verified.tokens.len() >= self.capacity {
                verified.tokens.clear();
            }
        }
        verified.tokens.insert(digest, u32::try_from(exp).unwrap_or(u32::MAX));
    }
}

fn digest_of(token: &str) -> Digest {
    let hash = digest::digest(&digest::SHA256, token.as_bytes());
    hash.as_ref()[..16].try_into().expect("SHA-256 has 32 bytes")
}

/// The claims of a token, unverified: one verified before, or one the
/// issuer just handed us.
pub(super) fn decode_claims(token: &str) -> Result<AccessTokenClaims, InvalidToken> {
    let payload = token.split('.').nth(1).ok_or(InvalidToken::Malformed)?;
    let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| InvalidToken::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| InvalidToken::Malformed)
}
