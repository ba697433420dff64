//! Shared by the operator's test binaries.
#![allow(dead_code)] // each test binary uses a different part of it

pub mod api;
pub mod rbac;

use std::time::Duration;

use tokenplane_api::redis_tls::{RedisTls, RedisTlsFiles};
use tokenplane_api::{OAuth2Client, TokenPolicy};
use tokenplane_operator::redis::{RedisAdmin, RedisConfig};
use tokenplane_testkit::RedisCluster;

/// Now, in unix seconds, as the controllers see it.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// An operator Redis that nothing connects to.
pub fn unused_redis() -> RedisAdmin {
    RedisAdmin::new(RedisConfig {
        sentinels: vec!["127.0.0.1:9".into()],
        master_name: "unused".into(),
        username: "unused".into(),
        password: "unused".into(),
        sentinel_username: None,
        sentinel_password: None,
        timeout: Duration::from_millis(100),
        tls: None,
        members: None,
        dial: Default::default(),
    })
}

/// The operator's Redis side on `cluster`, as its admin user.
pub fn admin(cluster: &RedisCluster) -> RedisAdmin {
    RedisAdmin::new(admin_config(cluster))
}

/// How the operator reaches `cluster` as its admin user; over TLS with the
/// cluster's CA and client certificate when it serves TLS.
pub fn admin_config(cluster: &RedisCluster) -> RedisConfig {
    let (admin, sentinel) = (cluster.admin_credentials(), cluster.sentinel_credentials());
    let tls = cluster.tls().map(|t| {
        let files = RedisTlsFiles::new(Some(t.ca_file), Some(t.client.cert), Some(t.client.key));
        RedisTls::load(&files, |path| std::fs::read(path)).unwrap()
    });
    RedisConfig {
        sentinels: cluster.sentinel_addrs(),
        master_name: cluster.master_name().to_owned(),
        username: admin.username,
        password: admin.password,
        sentinel_username: Some(sentinel.username),
        sentinel_password: Some(sentinel.password),
        timeout: Duration::from_secs(2),
        tls,
        members: None,
        dial: Default::default(),
    }
}

/// The TokenPolicy `default` in namespace `auth`.
pub fn policy() -> TokenPolicy {
    serde_norway::from_str(
        "apiVersion: tokenplane.io/v1alpha1\nkind: TokenPolicy\nmetadata: {name: default, namespace: auth}\n\
         spec: {lifetimes: {accessToken: 15m}}\n",
    )
    .unwrap()
}

/// A confidential client `name` in namespace `shop` under [`policy`], with
/// the one audience `https://<name>`.
pub fn client(name: &str) -> OAuth2Client {
    let mut client: OAuth2Client = serde_norway::from_str(&format!(
        "apiVersion: tokenplane.io/v1alpha1\nkind: OAuth2Client\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec: {{policyRef: {{name: default, namespace: auth}}, audiences: [https://{name}]}}\n"
    ))
    .unwrap();
    client.metadata.uid = Some(format!("uid-{name}"));
    client
}
