//! Reconcile logic as pure builders: custom resource in, desired objects
//! out. One module per kind; the apply layer (server-side apply, Redis)
//! comes on top.

pub mod ca;
pub mod oauth2client;
pub mod pod;
pub mod redis_password;
pub mod redissentinelcluster;
pub mod secret_rotation;
pub mod signing;
pub mod tokenpolicy;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;

/// The field manager and `app.kubernetes.io/managed-by` of everything the
/// operator writes.
pub const MANAGED_BY: &str = "tokenplane";

/// Why a resource cannot be reconciled as it is: the reason and message of
/// its `Ready=False` condition. Nothing is applied until it changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn spec(message: String) -> Self {
        Self { reason: "InvalidSpec", message }
    }

    pub fn policy(message: String) -> Self {
        Self { reason: "PolicyNotFound", message }
    }

    pub fn keys(message: String) -> Self {
        Self { reason: "InvalidKeys", message }
    }

    /// A `redisRef` to a RedisSentinelCluster that does not exist.
    pub fn redis_cluster_not_found<K: Resource>(cluster: &str, referrer: &K) -> Self {
        let namespace = referrer.meta().namespace.as_deref().unwrap_or_default();
        Self {
            reason: "RedisClusterNotFound",
            message: format!(
                "RedisSentinelCluster {namespace}/{cluster} not found: create it or fix spec.redisRef"
            ),
        }
    }

    /// A RedisSentinelCluster whose operator user has no Secret yet.
    pub fn redis_cluster_not_ready(namespace: &str, cluster: &str) -> Self {
        Self {
            reason: "RedisClusterNotReady",
            message: format!(
                "RedisSentinelCluster {namespace}/{cluster} has no operator user yet (Secret \
                 {cluster}-redis-operator); waiting for its controller"
            ),
        }
    }
}

/// A Redis ACL user, to be set on every node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclUser {
    pub name: String,
    /// Rules without the password (`ACL SETUSER name on >password RULES`).
    pub rules: String,
}

pub use tokenplane_api::acl::password_hash;

/// Metadata of an object `owner` owns (as its controller), in its
/// namespace, labelled as ours plus `labels`; the owner's deletion takes it.
pub fn managed_meta<K: Resource<DynamicType = ()>, const N: usize>(
    owner: &K,
    name: String,
    labels: [(&str, String); N],
) -> ObjectMeta {
    let mut all = BTreeMap::from([("app.kubernetes.io/managed-by".to_owned(), MANAGED_BY.to_owned())]);
    all.extend(labels.into_iter().map(|(k, v)| (k.to_owned(), v)));
    ObjectMeta {
        name: Some(name),
        namespace: owner.meta().namespace.clone(),
        labels: Some(all),
        owner_references: owner.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// Unix seconds as RFC 3339 (UTC), as status and annotations show times.
pub fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}
