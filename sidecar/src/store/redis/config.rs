//! Where the Redis master is found and how to authenticate.

use std::time::Duration;

use tokenplane_api::redis_tls::RedisTls;

#[derive(Clone)]
pub struct RedisConfig {
    /// Sentinel addresses, `host:port`.
    pub sentinels: Vec<String>,
    /// The name the Sentinels monitor the master under.
    pub master_name: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
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
}
