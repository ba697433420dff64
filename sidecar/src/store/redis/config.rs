//! Where the Redis master is found and how to authenticate.

use std::path::PathBuf;
use std::time::Duration;

use tokenplane_api::redis_tls::RedisTls;

use crate::store::StoreError;

/// A password given as is, or kept in a file (a mounted Secret) that is
/// read again each time a connection opens: a rotated password is used
/// from the next connection on, without a restart. Connections already
/// open stay logged in, as Redis keeps them when a password is removed.
#[derive(Clone, PartialEq, Eq)]
pub enum Password {
    Given(String),
    File(PathBuf),
}

impl Password {
    /// The password now: the file's trimmed content.
    pub fn read(&self) -> Result<String, StoreError> {
        match self {
            Password::Given(p) => Ok(p.clone()),
            Password::File(path) => std::fs::read_to_string(path).map(|t| t.trim().to_owned()).map_err(|e| {
                StoreError(format!(
                    "cannot read the Redis password file {}: {e}; mount the user's Secret there",
                    path.display()
                ))
            }),
        }
    }
}

impl From<&str> for Password {
    fn from(p: &str) -> Self {
        Password::Given(p.to_owned())
    }
}

impl From<String> for Password {
    fn from(p: String) -> Self {
        Password::Given(p)
    }
}

#[derive(Clone)]
pub struct RedisConfig {
    /// Sentinel addresses, `host:port`.
    pub sentinels: Vec<String>,
    /// The name the Sentinels monitor the master under.
    pub master_name: String,
    pub username: Option<String>,
    pub password: Option<Password>,
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<Password>,
    /// TLS to the Sentinels and the data nodes, verified against the CA
    /// bundle (the system's roots without one); plain TCP when `None`.
    pub tls: Option<RedisTls>,
    /// Replicas that must confirm a revocation, redemption or rotation.
    pub min_replicas: usize,
    /// How long to wait for any reply, and for the replicas (`WAIT`).
    pub timeout: Duration,
}

impl RedisConfig {
    /// The master `master_name` found through `sentinels`, without
    /// credentials or TLS, one replica confirming durable writes, 1 s timeout.
    pub fn new(sentinels: Vec<String>, master_name: impl Into<String>) -> Self {
        Self {
            sentinels,
            master_name: master_name.into(),
            username: None,
            password: None,
            sentinel_username: None,
            sentinel_password: None,
            tls: None,
            min_replicas: 1,
            timeout: Duration::from_secs(1),
        }
    }
}

/// Never prints a password, should one reach a log line.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .field("username", &self.username)
            .field("sentinel_username", &self.sentinel_username)
            .field("tls", &self.tls)
            .field("min_replicas", &self.min_replicas)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_never_prints_its_passwords() {
        let config = RedisConfig {
            password: Some("redis-secret".into()),
            sentinel_password: Some("sentinel-secret".into()),
            ..RedisConfig::new(vec!["127.0.0.1:26379".into()], "tokenplane")
        };
        let printed = format!("{config:?}");
        assert!(printed.contains("127.0.0.1:26379") && !printed.contains("secret"), "{printed}");
    }

    #[test]
    fn a_password_file_is_read_afresh_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redis_password");
        std::fs::write(&path, "first\n").unwrap();
        let password = Password::File(path.clone());
        assert_eq!(password.read().unwrap(), "first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(password.read().unwrap(), "second", "a rotated Secret is seen without a restart");
        std::fs::remove_file(&path).unwrap();
        let error = password.read().unwrap_err().0;
        assert!(error.contains("redis_password") && error.contains("mount"), "{error}");
    }
}
