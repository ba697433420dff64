//! The client's credentials, from the mounted credentials Secret: one file
//! per key. Kubernetes updates a mounted Secret by swapping a symlink, so
//! the folder is read again periodically and a change replaces the whole
//! set at once.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokenplane_api::credentials::{CLIENT_ID, CLIENT_SECRET, REDIS_PASSWORD, REDIS_USERNAME};

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub client_id: String,
    pub client_secret: String,
    pub redis_username: Option<String>,
    pub redis_password: Option<String>,
}

/// Never prints a secret, should one reach a log line.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("redis_username", &self.redis_username)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read {file} in the credentials folder {dir}: {reason}; mount the client's credentials Secret there"
)]
pub struct CredentialsError {
    dir: PathBuf,
    file: &'static str,
    reason: String,
}

impl Credentials {
    pub fn read(dir: &Path) -> Result<Self, CredentialsError> {
        let required = |file: &'static str| -> Result<String, CredentialsError> {
            let value = optional(dir, file)?;
            value.ok_or_else(|| CredentialsError { dir: dir.into(), file, reason: "missing or empty".into() })
        };
        Ok(Self {
            client_id: required(CLIENT_ID)?,
            client_secret: required(CLIENT_SECRET)?,
            redis_username: optional(dir, REDIS_USERNAME)?,
            redis_password: optional(dir, REDIS_PASSWORD)?,
        })
    }
}

/// A file's trimmed content; `None` when absent or empty.
fn optional(dir: &Path, file: &'static str) -> Result<Option<String>, CredentialsError> {
    match std::fs::read_to_string(dir.join(file)) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CredentialsError { dir: dir.into(), file, reason: e.to_string() }),
    }
}

/// The current credentials, kept up to date with the folder.
pub struct Watched {
    dir: PathBuf,
    current: RwLock<Arc<Credentials>>,
}

impl Watched {
    pub fn load(dir: &Path) -> Result<Self, CredentialsError> {
        Ok(Self { dir: dir.into(), current: RwLock::new(Arc::new(Credentials::read(dir)?)) })
    }

    pub fn get(&self) -> Arc<Credentials> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Reads the folder every `every`; a complete new set replaces the old
    /// one, a broken folder keeps the old one (with a warning).
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match Credentials::read(&self.dir) {
                Ok(fresh) if fresh != *self.get() => {
                    tracing::info!(client_id = %fresh.client_id, "credentials changed; using the new ones");
                    *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Arc::new(fresh);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "keeping the previous credentials"),
            }
        }
    }
}
