//! An issuer run by the operator: its TokenPolicy comes from Redis (the
//! record the operator writes) and its signing keys from the mounted keys
//! Secret. Both are followed while it runs, so lifetime, rate-limit and key
//! changes apply without a restart, and the issuer reports the keys it holds
//! (a heartbeat) for the operator's key rotation.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokenplane_api::storage;
use tokenplane_api::tokenpolicy::PolicyRecord;

use super::{Issuer, Settings};
use crate::heartbeat;
use crate::keys::{KeyError, KeySet};
use crate::store::{RedisStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    #[error("cannot read the signing keys in {dir}: {source}; is the keys Secret mounted there?")]
    KeysDir { dir: PathBuf, source: io::Error },
    #[error("the signing keys in {dir} are unusable: {source}")]
    Keys { dir: PathBuf, source: KeyError },
    #[error("no policy record for {0} in Redis; the operator writes it when it reconciles the TokenPolicy")]
    NoPolicy(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a managed issuer's policy and keys come from.
pub struct Source {
    /// `<name>.<namespace>` of the TokenPolicy.
    pub policy_id: String,
    pub keys_dir: PathBuf,
    /// Kept across policy changes: it is the issuer's own, not the policy's.
    pub admin_token_hash: Option<String>,
}

impl Source {
    /// The settings the policy record gives.
    pub async fn settings(&self, store: &RedisStore) -> Result<(PolicyRecord, Settings), ManagedError> {
        let record = store
            .policy(&self.policy_id)
            .await?
            .ok_or_else(|| ManagedError::NoPolicy(self.policy_id.clone()))?;
        let mut settings = Settings::from_policy(record.issuer.clone(), &record.spec);
        settings.policy = Some(self.policy_id.clone());
        settings.admin_token_hash = self.admin_token_hash.clone();
        Ok((record, settings))
    }

    /// What the keys are built from: the mounted Secret's files and the
    /// kids the operator publishes. Cheap to read and compare; the keys are
    /// parsed only when it changed.
    pub async fn origin(&self, store: &RedisStore) -> Result<Origin, ManagedError> {
        let dir = &self.keys_dir;
        let entries = read_keys(dir).map_err(|source| ManagedError::KeysDir { dir: dir.clone(), source })?;
        Ok((entries, store.published_kids(&self.policy_id).await?))
    }

    /// The keys and their origin, if it differs from `since`.
    async fn changed_keys(
        &self,
        store: &RedisStore,
        since: &Origin,
    ) -> Result<Option<(Origin, KeySet)>, ManagedError> {
        let origin = self.origin(store).await?;
        if origin == *since {
            return Ok(None);
        }
        let keys = self.keys(&origin)?;
        Ok(Some((origin, keys)))
    }

    /// The keys in the mounted Secret less those the operator withdrew
    /// from the published JWKS.
    pub fn keys(&self, (entries, published): &Origin) -> Result<KeySet, ManagedError> {
        let invalid = |source| ManagedError::Keys { dir: self.keys_dir.clone(), source };
        let mut keys = KeySet::from_entries(entries).map_err(invalid)?;
        if let Some(published) = published {
            keys = keys.within(published).map_err(invalid)?;
            if !keys.can_sign() {
                tracing::warn!(
                    kid = keys.active_kid(),
                    "the signing key was withdrawn: not signing until the new key is mounted"
                );
            }
        }
        Ok(keys)
    }
}

type Entries = BTreeMap<String, Vec<u8>>;

/// What a key set was built from: the mounted files and the published kids.
pub type Origin = (Entries, Option<Vec<String>>);

/// The `<kid>.pem` and `active` files of a mounted Secret. Kubernetes swaps
/// a mounted Secret through symlinks (`..data`), which reading by name follows.
fn read_keys(dir: &Path) -> io::Result<Entries> {
    let mut entries = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".pem") || name == tokenplane_api::signing::ACTIVE {
            entries.insert(name.clone(), std::fs::read(dir.join(&name))?);
        }
    }
    Ok(entries)
}

/// Follows the policy record and the keys every `every`, replacing what
/// changed, and reports the keys held every heartbeat. A failed read keeps
/// what the issuer has (logged): an unreadable update must not stop it.
pub async fn follow(
    issuer: Arc<Issuer<RedisStore>>,
    source: Source,
    (mut record, mut origin): (PolicyRecord, Origin),
    every: Duration,
) {
    let verifier = storage::issuer_verifier(&source.policy_id, &heartbeat::instance());
    let mut reload = tokio::time::interval(every);
    let mut beat = tokio::time::interval(heartbeat::INTERVAL);
    loop {
        tokio::select! {
            _ = reload.tick() => {
                match source.settings(issuer.store()).await {
                    Ok((new, settings)) if new != record => {
                        tracing::info!(policy = %source.policy_id, "policy changed: serving with the new settings");
                        issuer.replace_settings(settings);
                        record = new;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot re-read the policy; keeping the current settings"),
                }
                match source.changed_keys(issuer.store(), &origin).await {
                    Ok(Some((new, keys))) => {
                        tracing::info!(kids = ?keys.kids().collect::<Vec<_>>(), "signing keys changed");
                        issuer.replace_keys(keys);
                        origin = new;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot re-read the signing keys; keeping the current ones"),
                }
            }
            _ = beat.tick() => {
                let live = issuer.current();
                let signing = live.keys.can_sign().then(|| live.keys.active_kid());
                let report = heartbeat::report(&live.settings.issuer, live.keys.kids(), signing);
                if let Err(e) = issuer.store().report(&verifier, &report).await {
                    tracing::warn!(error = %e, "cannot report the keys held (heartbeat)");
                }
            }
        }
    }
}
