//! Shared by the operator's test binaries, each of which uses a part.
#![allow(dead_code)]

pub mod api;

use std::time::Duration;

use tokenplane_operator::redis::{RedisAdmin, RedisConfig};
use tokenplane_testkit::RedisCluster;

/// The operator's Redis side on `cluster`, as its admin user.
pub fn admin(cluster: &RedisCluster) -> RedisAdmin {
    let (admin, sentinel) = (cluster.admin_credentials(), cluster.sentinel_credentials());
    RedisAdmin::new(RedisConfig {
        sentinels: cluster.sentinel_addrs(),
        master_name: cluster.master_name().to_owned(),
        username: admin.username,
        password: admin.password,
        sentinel_username: Some(sentinel.username),
        sentinel_password: Some(sentinel.password),
        timeout: Duration::from_secs(2),
    })
}
