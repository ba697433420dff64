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
use crate::reconcile::ca::BUNDLE_KEY;
use crate::reconcile::redissentinelcluster::{self, Names, PASSWORD, tls};
use crate::redis::{Dial, RedisAdmin};

/// A login: the password and CA bundle it logs in with.
type Login = ((String, Option<Vec<u8>>), Arc<RedisAdmin>);

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

    /// The operator's login on `cluster` with `password` (over TLS, the
    /// members verified against `ca`): a new one (new connections) once
    /// either changed.
    pub fn admin(
        &self,
        cluster: &RedisSentinelCluster,
        names: &Names,
        (password, ca): (&str, Option<&[u8]>),
    ) -> Arc<RedisAdmin> {
        let key = (names.namespace.clone(), names.cluster.clone());
        let login = (password.to_owned(), ca.map(<[u8]>::to_vec));
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((known, admin)) = open.get(&key)
            && *known == login
        {
            return admin.clone();
        }
        let config = redissentinelcluster::operator_login(cluster, names, (password, ca), self.dial.clone());
        let admin = Arc::new(RedisAdmin::new(config));
        open.insert(key, (login, admin.clone()));
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
    /// What the cluster's certificate is verified against, with TLS.
    pub cluster_ca: Option<Vec<u8>>,
}

/// The Redis of `policy`; a condition when its cluster is missing or has
/// no operator user yet.
pub(super) async fn target_of(policy: &TokenPolicy, ctx: &Context) -> Result<Result<Target, Invalid>, Error> {
    let Some(name) = &policy.spec.redis_ref else {
        return Ok(Ok(Target { redis: ctx.redis.clone(), cluster: None, cluster_ca: None }));
    };
    let namespace = policy.namespace().ok_or(Error::NotNamespaced)?;
    let clusters: Api<RedisSentinelCluster> = Api::namespaced(ctx.kube.clone(), &namespace);
    let Some(cluster) = clusters.get_opt(name).await? else {
        return Ok(Err(Invalid::redis_cluster_not_found(name, policy)));
    };
    Ok(match cluster_admin(&cluster, ctx).await? {
        Some((redis, cluster_ca)) => Ok(Target { redis, cluster: Some(cluster), cluster_ca }),
        None => Err(Invalid::redis_cluster_not_ready(&namespace, name)),
    })
}

/// The operator's login on `cluster`, once its controller wrote the
/// operator user's Secret (and, with TLS, the certificate's), and the CA
/// bundle of that certificate.
async fn cluster_admin(
    cluster: &RedisSentinelCluster,
    ctx: &Context,
) -> Result<Option<(Arc<RedisAdmin>, Option<Vec<u8>>)>, Error> {
    let Ok(names) = Names::of(cluster, &ctx.clusters.cluster_domain) else { return Ok(None) };
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &names.namespace);
    let Some(password) = entry(&secrets, &names.role_secret(AclRole::Operator), PASSWORD).await? else {
        return Ok(None);
    };
    let password = String::from_utf8_lossy(&password).into_owned();
    let ca = match tls::secret_name(cluster, &names) {
        None => None,
        Some(name) => match entry(&secrets, &name, BUNDLE_KEY).await? {
            Some(ca) => Some(ca),
            None => return Ok(None),
        },
    };
    let admin = ctx.cluster_logins.admin(cluster, &names, (&password, ca.as_deref()));
    Ok(Some((admin, ca)))
}

/// The non-empty `key` of the Secret `name`, if both exist.
async fn entry(secrets: &Api<Secret>, name: &str, key: &str) -> Result<Option<Vec<u8>>, Error> {
    let secret = secrets.get_opt(name).await?;
    Ok(secret.and_then(|s| s.data?.remove(key)).map(|v| v.0).filter(|v| !v.is_empty()))
}
