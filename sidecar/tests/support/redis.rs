//! A real Redis Sentinel cluster with the issuer's ACL user, and a store on it.

use std::sync::Arc;
use std::time::Duration;

use tokenplane_sidecar::store::{RedisConfig, RedisStore};
use tokenplane_testkit::{RedisCluster, RedisClusterOptions};

pub const ISSUER_PASSWORD: &str = "issuer-password-0123456789abcdefghijklmnop";

pub async fn cluster() -> Arc<RedisCluster> {
    let cluster = RedisCluster::start(RedisClusterOptions::default()).await.expect("Redis cluster starts");
    cluster
        .add_user("issuer", ISSUER_PASSWORD, tokenplane_api::storage::ISSUER_ACL)
        .await
        .expect("issuer ACL user");
    Arc::new(cluster)
}

/// Where `cluster` is, with its Sentinel credentials and no Redis user.
pub fn config(cluster: &RedisCluster) -> RedisConfig {
    let sentinel = cluster.sentinel_credentials();
    RedisConfig {
        sentinel_username: Some(sentinel.username),
        sentinel_password: Some(sentinel.password),
        timeout: Duration::from_millis(500),
        ..RedisConfig::new(cluster.sentinel_addrs(), cluster.master_name())
    }
}

/// A store on `cluster` as the issuer's ACL user.
pub fn store(cluster: &RedisCluster) -> RedisStore {
    let config = RedisConfig {
        username: Some("issuer".into()),
        password: Some(ISSUER_PASSWORD.into()),
        ..config(cluster)
    };
    RedisStore::new(config).unwrap()
}
