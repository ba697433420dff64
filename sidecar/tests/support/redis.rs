//! A real Redis Sentinel cluster with the issuer's ACL user, and a store on it.

use std::sync::Arc;
use std::time::Duration;

use tokenplane_api::redis_tls::{RedisTls, RedisTlsFiles};
use tokenplane_sidecar::store::{RedisConfig, RedisStore};
use tokenplane_testkit::{ClientAuth, RedisCluster, RedisClusterOptions};

pub const ISSUER_PASSWORD: &str = "issuer-password-0123456789abcdefghijklmnop";

pub async fn cluster() -> Arc<RedisCluster> {
    start(RedisClusterOptions::default()).await
}

/// A cluster that serves TLS only, clients authenticated as `auth`.
pub async fn tls_cluster(auth: ClientAuth) -> Arc<RedisCluster> {
    start(RedisClusterOptions { tls: Some(auth), ..RedisClusterOptions::default() }).await
}

async fn start(opts: RedisClusterOptions) -> Arc<RedisCluster> {
    let cluster = RedisCluster::start(opts).await.expect("Redis cluster starts");
    cluster
        .add_user("issuer", ISSUER_PASSWORD, tokenplane_api::storage::ISSUER_ACL)
        .await
        .expect("issuer ACL user");
    Arc::new(cluster)
}

/// The TLS settings of a TLS `cluster` as the flags load them: its CA, and
/// its client certificate when `client_cert`.
pub fn tls(cluster: &RedisCluster, client_cert: bool) -> RedisTls {
    let files = cluster.tls().expect("a TLS cluster");
    let files = RedisTlsFiles {
        ca: Some(files.ca_file),
        client: client_cert.then_some((files.client.cert, files.client.key)),
    };
    RedisTls::load(&files, |path| std::fs::read(path)).unwrap()
}

/// Where `cluster` is, with its Sentinel credentials and no Redis user;
/// over TLS with the client certificate when the cluster serves TLS.
pub fn config(cluster: &RedisCluster) -> RedisConfig {
    let sentinel = cluster.sentinel_credentials();
    RedisConfig {
        sentinel_username: Some(sentinel.username),
        sentinel_password: Some(sentinel.password.into()),
        timeout: Duration::from_millis(500),
        tls: cluster.tls().map(|_| tls(cluster, true)),
        ..RedisConfig::new(cluster.sentinel_addrs(), cluster.master_name())
    }
}

/// What the issuer connects as: its ACL user on `cluster`.
pub fn issuer_config(cluster: &RedisCluster) -> RedisConfig {
    RedisConfig { username: Some("issuer".into()), password: Some(ISSUER_PASSWORD.into()), ..config(cluster) }
}

/// A store on `cluster` as the issuer's ACL user.
pub fn store(cluster: &RedisCluster) -> RedisStore {
    RedisStore::new(issuer_config(cluster)).unwrap()
}

/// `tokenplane-sidecar <job>` (cleanup, backup) on `cluster` as `user`,
/// with the Redis flags a CronJob gives it; the password files go in `dir`.
pub fn job(
    cluster: &RedisCluster,
    job: &str,
    (user, password): (&str, &str),
    dir: &std::path::Path,
) -> tokio::process::Command {
    let (password_file, sentinel_password_file) = (dir.join("pw"), dir.join("spw"));
    std::fs::write(&password_file, password).unwrap();
    let sentinel = cluster.sentinel_credentials();
    std::fs::write(&sentinel_password_file, &sentinel.password).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokenplane-sidecar"));
    cmd.arg(job)
        .args(["--redis-sentinels", &cluster.sentinel_addrs().join(",")])
        .args(["--redis-master", cluster.master_name(), "--redis-username", user])
        .arg("--redis-password-file")
        .arg(password_file)
        .args(["--redis-sentinel-username", &sentinel.username])
        .arg("--redis-sentinel-password-file")
        .arg(sentinel_password_file);
    cmd
}
