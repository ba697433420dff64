//! Tokens for the workload's own client: obtained from the issuer with the
//! client credentials grant, cached per (audience, scope), and renewed once
//! most of their life is spent. One request to the issuer per renewal,
//! however many callers ask at once: callers for the same key queue on its
//! slot, the first fetches, the rest find the fresh token. A cached token
//! the revocation feed names (revoked, or its client's not-before mark moved
//! past it) is replaced at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::credentials::Watched;
use super::feed::{Revocations, Revoked};
use super::validate::decode_claims;

/// Renew when this share of a token's life is left.
const RENEW_AT_REMAINING: f64 = 0.2;
/// Distinct (audience, scope) pairs cached at once.
const MAX_SLOTS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum VendError {
    #[error("the issuer at {url} did not answer: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("the issuer refused the token request ({status}): {body}")]
    Refused { status: u16, body: String },
    #[error("too many distinct audience and scope pairs (more than {MAX_SLOTS})")]
    TooManyKinds,
    #[error("the issuer's access token is not a readable JWT")]
    Unreadable,
}

/// The issuer's token response, as much as we need of it.
#[derive(Deserialize)]
struct Issued {
    access_token: String,
    expires_in: u64,
    #[serde(default)]
    scope: Option<String>,
}

/// What the workload gets: the token and its remaining life.
#[derive(Clone, Debug, Serialize)]
pub struct Vended {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

struct Cached {
    issued: Issued,
    /// `jti` and `iat`, to ask the revocation feed about it.
    jti: String,
    iat: u64,
    expires_at: Instant,
    renew_at: Instant,
}

type Key = (Option<String>, Option<String>);

pub struct Vendor {
    token_url: String,
    http: std::sync::Arc<super::issuer_client::IssuerClient>,
    credentials: Arc<Watched>,
    revocations: Arc<Revocations>,
    slots: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Option<Cached>>>>>,
}

impl Vendor {
    pub fn new(
        issuer: &str,
        http: std::sync::Arc<super::issuer_client::IssuerClient>,
        credentials: Arc<Watched>,
        revocations: Arc<Revocations>,
    ) -> Self {
        let token_url = format!("{}/oauth2/token", issuer.trim_end_matches('/'));
        Self { token_url, http, credentials, revocations, slots: Mutex::default() }
    }

    /// A token for `audience` (RFC 8707 `resource`) and `scope`, from the
    /// cache or the issuer.
    pub async fn token(&self, audience: Option<&str>, scope: Option<&str>) -> Result<Vended, VendError> {
        let slot = self.slot((audience.map(str::to_owned), scope.map(str::to_owned)))?;
        let mut cached = slot.lock().await;
        let now = Instant::now();
        if let Some(c) = cached.as_ref().filter(|c| now < c.renew_at && !self.revoked(c)) {
            return Ok(vended(c, now));
        }
        let issued = self.fetch(audience, scope).await?;
        let claims = decode_claims(&issued.access_token).map_err(|_| VendError::Unreadable)?;
        let life = Duration::from_secs(issued.expires_in);
        let fresh = Cached {
            jti: claims.jti,
            iat: claims.iat,
            expires_at: now + life,
            renew_at: now + life.mul_f64(1.0 - RENEW_AT_REMAINING),
            issued,
        };
        let reply = vended(&fresh, now);
        *cached = Some(fresh);
        Ok(reply)
    }

    /// Whether the feed knows the token dead. A stale feed does not stop
    /// vending: whoever receives the token validates it.
    fn revoked(&self, cached: &Cached) -> bool {
        let client = &self.credentials.get().client_id;
        matches!(
            self.revocations.check(&cached.jti, client, cached.iat),
            Err(Revoked::Token | Revoked::Client(_))
        )
    }

    fn slot(&self, key: Key) -> Result<Arc<tokio::sync::Mutex<Option<Cached>>>, VendError> {
        let mut slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !slots.contains_key(&key) && slots.len() >= MAX_SLOTS {
            return Err(VendError::TooManyKinds);
        }
        Ok(slots.entry(key).or_default().clone())
    }

    async fn fetch(&self, audience: Option<&str>, scope: Option<&str>) -> Result<Issued, VendError> {
        let creds = self.credentials.get();
        let mut form = vec![("grant_type", "client_credentials")];
        form.extend(audience.map(|a| ("resource", a)));
        form.extend(scope.map(|s| ("scope", s)));
        let unreachable = |source| VendError::Unreachable { url: self.token_url.clone(), source };
        let reply = self
            .http
            .current()
            .post(&self.token_url)
            .basic_auth(form_encode(&creds.client_id), Some(form_encode(&creds.client_secret)))
            .form(&form)
            .send()
            .await
            .map_err(unreachable)?;
        let status = reply.status();
        if !status.is_success() {
            let body = reply.text().await.unwrap_or_default();
            return Err(VendError::Refused { status: status.as_u16(), body });
        }
        reply.json().await.map_err(unreachable)
    }
}

/// RFC 6749 §2.3.1: client id and secret are form-encoded inside Basic.
fn form_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

fn vended(c: &Cached, now: Instant) -> Vended {
    Vended {
        access_token: c.issued.access_token.clone(),
        token_type: "Bearer",
        expires_in: c.expires_at.saturating_duration_since(now).as_secs(),
        scope: c.issued.scope.clone(),
    }
}
