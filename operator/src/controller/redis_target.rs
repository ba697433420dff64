//! Which Redis the reconciles of a TokenPolicy and of its clients write to:
//! the policy's RedisSentinelCluster (`redisRef`), as the operator user that
//! cluster's controller made, or the Redis of the operator's `--redis-*`
//! flags.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use tokenplane_api::redis::AclRole;
use tokenplane_api::{RedisSentinelCluster, TokenPolicy};

use super::Context;
use crate::error::Error;
use crate::reconcile::Invalid;
use crate::reconcile::redissentinelcluster::{self, Names, PASSWORD};
use crate::redis::{Dial, RedisAdmin};

/// A login, and the password it logs in with.
type Login = (String, Arc<RedisAdmin>);

/// The operator's logins on the RedisSentinelClusters, by namespace and
/// name, kept with their connections while the password stays.
#[derive(Default)]
pub struct ClusterLogins {
    dial: Dial,
    open: Mutex<HashMap<(String, String), Login>>,
}

impl ClusterLogins {
    /// Logins that dial the pods through `dial`.
    pub fn new(dial: Dial) -> Self {
        Self { dial, open: Mutex::default() }
    }

    /// The operator's login on `cluster` with `password`: a new one (new
    /// connections) once the password changed.
    pub fn admin(&self, cluster: &RedisSentinelCluster, names: &Names, password: &str) -> Arc<RedisAdmin> {
        let key = (names.namespace.clone(), names.cluster.clone());
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((known, admin)) = open.get(&key)
            && known == password
        {
            return admin.clone();
        }
        let config = redissentinelcluster::operator_login(cluster, names, password, self.dial.clone());
        let admin = Arc::new(RedisAdmin::new(config));
        open.insert(key, (password.to_owned(), admin.clone()));
        admin
    }

    pub fn dial(&self) -> &Dial {
        &self.dial
    }
}

/// Where a policy's data lives.
pub(super) struct Target {
    pub redis: Arc<RedisAdmin>,
    /// Its RedisSentinelCluster, with a `redisRef`.
    pub cluster: Option<RedisSentinelCluster>,
}

/// The Redis of `policy`; a condition when its cluster is missing or has
/// no operator user yet.
pub(super) async fn target_of(policy: &TokenPolicy, ctx: &Context) -> Result<Result<Target, Invalid>, Error> {
    let Some(name) = &policy.spec.redis_ref else {
        return Ok(Ok(Target { redis: ctx.redis.clone(), cluster: None }));
    };
    let namespace = policy.namespace().ok_or(Error::NotNamespaced)?;
    let clusters: Api<RedisSentinelCluster> = Api::namespaced(ctx.kube.clone(), &namespace);
    let Some(cluster) = clusters.get_opt(name).await? else {
        return Ok(Err(Invalid::redis_cluster_not_found(name, policy)));
    };
    Ok(match cluster_admin(&cluster, ctx).await? {
        Some(redis) => Ok(Target { redis, cluster: Some(cluster) }),
        None => Err(Invalid::redis_cluster_not_ready(&namespace, name)),
    })
}

/// The operator's login on `cluster`, once its controller wrote the
/// operator user's Secret.
async fn cluster_admin(
    cluster: &RedisSentinelCluster,
    ctx: &Context,
) -> Result<Option<Arc<RedisAdmin>>, Error> {
    let Ok(names) = Names::of(cluster, &ctx.clusters.cluster_domain) else { return Ok(None) };
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &names.namespace);
    let password = secrets
        .get_opt(&names.role_secret(AclRole::Operator))
        .await?
        .and_then(|s| s.data?.remove(PASSWORD))
        .and_then(|p| String::from_utf8(p.0).ok())
        .filter(|p| !p.is_empty());
    Ok(password.map(|p| ctx.cluster_logins.admin(cluster, &names, &p)))
}
