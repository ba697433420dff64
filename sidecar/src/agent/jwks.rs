//! The issuer's public keys, fetched from its JWKS endpoint: at start,
//! periodically, and when a token names a kid we do not hold (a rotation
//! that got ahead of the periodic refresh). Refreshes on unknown kids are
//! single flight and spaced by a minimum interval, so a flood of tokens with
//! made-up kids costs the issuer at most one request per interval.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use tokio::sync::Mutex;

use crate::keys::{Checks, KeyError, PublicKeys};

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot fetch the issuer's JWKS from {url}: {source}; is --issuer right and the issuer up?")]
    Fetch { url: String, source: reqwest::Error },
    #[error("the issuer's JWKS at {url} is unusable: {source}")]
    Keys { url: String, source: KeyError },
}

pub struct Jwks {
    url: String,
    http: std::sync::Arc<super::issuer_client::IssuerClient>,
    checks: Checks,
    keys: RwLock<Arc<PublicKeys>>,
    /// Bumped whenever a key disappears, so that tokens verified with it
    /// stop being trusted from the cache. 32 bits keep cache entries small;
    /// it wraps only after 2^32 withdrawals.
    generation: AtomicU32,
    /// When the last fetch on an unknown kid happened; held during a fetch.
    last_on_demand: Mutex<Option<Instant>>,
    min_interval: Duration,
}

impl Jwks {
    /// `issuer` is the issuer's base URL; tokens must carry it as `iss`.
    pub fn new(
        issuer: &str,
        http: std::sync::Arc<super::issuer_client::IssuerClient>,
        checks: Checks,
        min_interval: Duration,
    ) -> Self {
        let empty = PublicKeys::from_jwks(&JwkSet { keys: vec![] }, &checks).expect("an empty set is valid");
        Self {
            url: format!("{}/.well-known/jwks.json", issuer.trim_end_matches('/')),
            http,
            checks,
            keys: RwLock::new(Arc::new(empty)),
            generation: AtomicU32::new(0),
            last_on_demand: Mutex::new(None),
            min_interval,
        }
    }

    pub fn keys(&self) -> Arc<PublicKeys> {
        self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// Fetches the JWKS and replaces the keys.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let fetch = |source| JwksError::Fetch { url: self.url.clone(), source };
        let set: JwkSet = self
            .http
            .current()
            .get(&self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(fetch)?
            .json()
            .await
            .map_err(fetch)?;
        let fresh = PublicKeys::from_jwks(&set, &self.checks)
            .map_err(|source| JwksError::Keys { url: self.url.clone(), source })?;
        let count = fresh.len();
        let mut keys = self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if keys.kids().any(|kid| !fresh.contains(kid)) {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        *keys = Arc::new(fresh);
        Ok(count)
    }

    /// Called when a token names `kid`, which we do not hold: fetches the
    /// JWKS unless another caller just did. Whether `kid` is now known.
    pub async fn refresh_for(&self, kid: &str) -> bool {
        let mut last = self.last_on_demand.lock().await;
        if self.keys().contains(kid) {
            return true;
        }
        if last.is_some_and(|at| at.elapsed() < self.min_interval) {
            return false;
        }
        *last = Some(Instant::now());
        match self.refresh().await {
            Ok(_) => self.keys().contains(kid),
            Err(e) => {
                tracing::warn!(error = %e, "JWKS refresh for an unknown kid failed");
                false
            }
        }
    }

    /// Refreshes every `every`, and every second until the first success.
    pub async fn run(self: Arc<Self>, every: Duration) {
        loop {
            let wait = match self.refresh().await {
                Ok(keys) => {
                    tracing::debug!(keys, "JWKS refreshed");
                    every
                }
                Err(e) => {
                    tracing::warn!(error = %e, "JWKS refresh failed; keeping the keys we have");
                    if self.keys().is_empty() { Duration::from_secs(1) } else { every }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}
