//! What a RedisSentinelCluster needs, as pure functions of the resource and
//! the passwords its role Secrets already hold: those Secrets (a password
//! is generated only for a role that has none), the ConfigMap with
//! redis.conf and sentinel.conf, the StatefulSets of the data nodes and of
//! the Sentinels, their Services and PodDisruptionBudgets.
//!
//! Pods reach each other by stable DNS names (`<pod>.<headless service>`),
//! never by pod IP: Sentinels resolve and announce hostnames, and each node
//! announces its own name to the master. Passwords never enter a ConfigMap:
//! the start-up step of each pod reads them from the mounted Secrets.

pub mod acl_sync;
mod changes;
mod config;
mod jobs;
mod network_policy;
mod service;
pub mod tls;
mod users;
mod workloads;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use tokenplane_api::RedisSentinelCluster;
use tokenplane_api::redis::AclRole;
use tokenplane_api::redis_tls::RedisTls;

pub use changes::unsafe_change;
pub use tls::Tls;
pub use users::{CLUSTER_ROLES, PASSWORD, Passwords};
pub use workloads::roles_on;

use super::ca::ServingInputs;
use super::{Invalid, managed_meta};
use crate::redis::{Dial, Members, RedisConfig};

pub const REDIS_PORT: i32 = 6379;
pub const SENTINEL_PORT: i32 = 26379;
pub const EXPORTER_PORT: i32 = 9121;

/// What the pods need that the resource does not say.
#[derive(Clone, Debug)]
pub struct Environment {
    /// The tokenplane-sidecar image, whose `redis-node` subcommand starts
    /// each pod.
    pub tokenplane_image: String,
    pub exporter_image: String,
    /// The cluster's DNS domain (`cluster.local` unless the kubelet says otherwise).
    pub cluster_domain: String,
    /// Where the operator runs: its pods reach every node and Sentinel.
    pub operator_namespace: String,
}

/// The names of a cluster's objects and how its pods reach each other.
#[derive(Clone, Debug)]
pub struct Names {
    pub cluster: String,
    pub namespace: String,
    domain: String,
}

impl Names {
    /// The names of `rsc`'s objects; refused without a name and a namespace.
    pub fn of(rsc: &RedisSentinelCluster, domain: &str) -> Result<Self, Invalid> {
        match (rsc.metadata.name.clone(), rsc.metadata.namespace.clone()) {
            (Some(cluster), Some(namespace)) => Ok(Self { cluster, namespace, domain: domain.to_owned() }),
            _ => Err(Invalid::spec("a RedisSentinelCluster needs a name and a namespace".into())),
        }
    }

    /// The data nodes' StatefulSet and headless Service.
    pub fn redis(&self) -> String {
        format!("{}-redis", self.cluster)
    }

    /// The Sentinels' StatefulSet and headless Service.
    pub fn sentinel_peers(&self) -> String {
        format!("{}-sentinel-peers", self.cluster)
    }

    /// The Service clients find the Sentinels at (a TokenPolicy's `redisRef`).
    pub fn sentinel(&self) -> String {
        format!("{}-sentinel", self.cluster)
    }

    pub fn config(&self) -> String {
        format!("{}-redis-config", self.cluster)
    }

    /// The Secret of one role's user.
    pub fn role_secret(&self, role: AclRole) -> String {
        format!("{}-redis-{}", self.cluster, tokenplane_api::acl::username(role))
    }

    /// The stable DNS name of pod `ordinal` of a StatefulSet behind `service`.
    pub fn pod_host(&self, service: &str, ordinal: i32) -> String {
        format!("{service}-{ordinal}.{}", self.service_host(service))
    }

    /// `<service>.<namespace>.svc.<domain>`.
    pub fn service_host(&self, service: &str) -> String {
        format!("{service}.{}.svc.{}", self.namespace, self.domain)
    }

    /// Every data node, `host:port` by its stable name, as each announces itself.
    pub fn node_addrs(&self, replicas: i32) -> Vec<String> {
        (0..replicas).map(|i| format!("{}:{REDIS_PORT}", self.pod_host(&self.redis(), i))).collect()
    }

    /// Every Sentinel, `host:port` by its stable name.
    pub fn sentinel_addrs(&self, sentinels: i32) -> Vec<String> {
        (0..sentinels)
            .map(|i| format!("{}:{SENTINEL_PORT}", self.pod_host(&self.sentinel_peers(), i)))
            .collect()
    }

    /// The pod of a stable `host:port` (its first DNS label).
    pub fn pod_of(addr: &str) -> &str {
        addr.split(['.', ':']).next().unwrap_or(addr)
    }
}

/// How the operator reaches `rsc` as its operator user (the same login on
/// the nodes and on the Sentinels), each Sentinel by its stable name: ACL
/// users live on each. With TLS, `ca` is what the members' certificate is
/// verified against.
pub fn operator_login(
    rsc: &RedisSentinelCluster,
    names: &Names,
    (password, ca): (&str, Option<&[u8]>),
    dial: Dial,
) -> RedisConfig {
    let sentinels = names.sentinel_addrs(rsc.spec.sentinels);
    let username = tokenplane_api::acl::username(AclRole::Operator).to_owned();
    RedisConfig {
        members: Some(Members { nodes: names.node_addrs(rsc.spec.replicas), sentinels: sentinels.clone() }),
        sentinels,
        master_name: rsc.spec.master_name.clone(),
        sentinel_username: Some(username.clone()),
        sentinel_password: Some(password.to_owned()),
        username,
        password: password.to_owned(),
        timeout: std::time::Duration::from_secs(2),
        tls: ca.map(|ca| RedisTls { ca_bundle: Some(ca.to_vec()), client: None }),
        dial,
    }
}

/// Everything a RedisSentinelCluster should have.
pub struct Desired {
    pub names: Names,
    /// Every role's password, as the role Secrets hold it.
    pub passwords: Passwords,
    pub role_secrets: Vec<Secret>,
    pub config: ConfigMap,
    pub redis: StatefulSet,
    pub sentinel: StatefulSet,
    pub services: Vec<Service>,
    pub budgets: Vec<PodDisruptionBudget>,
    /// Deny by default; each TokenPolicy with a `redisRef` adds its issuers
    /// and its clients' workloads with a NetworkPolicy of its own.
    pub network_policy: NetworkPolicy,
    pub cleanup: CronJob,
    /// The backup volume and CronJob, with `spec.backup`.
    pub backup: Option<(PersistentVolumeClaim, CronJob)>,
    /// The certificate, with `spec.tls`.
    pub tls: Option<Tls>,
}

/// The Sentinels that must agree the master is down: a majority.
pub fn quorum(sentinels: i32) -> i32 {
    sentinels / 2 + 1
}

/// Checks `rsc` and builds what it should have. `existing` holds the
/// credentials the role Secrets have now; `new_password` makes one for a
/// role that has none, current from `now`. `tls` is what the cluster's
/// certificate is made from (with `spec.tls`; `existing` there is the
/// Secret the pods mount, the operator's or `spec.tls.secretName`).
pub fn desired(
    rsc: &RedisSentinelCluster,
    env: &Environment,
    (existing, tls): (&Passwords, ServingInputs<'_>),
    (new_password, now): (impl FnMut() -> String, u64),
) -> Result<Desired, Invalid> {
    check(rsc)?;
    let names = Names::of(rsc, &env.cluster_domain)?;
    let tls = tls::tls(rsc, &names, tls, now)?;
    let passwords = existing.completed(new_password, now);
    let monitor = passwords.get(AclRole::Monitor).expect("completed passwords hold every cluster role");
    let redis_labels = labels(&names.cluster, "redis");
    let sentinel_labels = labels(&names.cluster, "sentinel");
    Ok(Desired {
        role_secrets: users::role_secrets(rsc, &names, &passwords),
        config: config::config_map(rsc, &names),
        redis: workloads::redis(rsc, (env, &names), &redis_labels, monitor, tls.as_ref()),
        sentinel: workloads::sentinel(rsc, (env, &names), &sentinel_labels, tls.as_ref()),
        services: service::services(rsc, &names, &redis_labels, &sentinel_labels),
        budgets: service::budgets(rsc, &names, &redis_labels, &sentinel_labels),
        network_policy: network_policy::network_policy(rsc, &env.operator_namespace),
        cleanup: jobs::cleanup(rsc, env, &names),
        backup: rsc.spec.backup.as_ref().map(|b| jobs::backup(rsc, env, &names, b)),
        names,
        passwords,
        tls,
    })
}

/// Why `new` may not replace `old`, as admission sees it before anything
/// runs: the checks of [`desired`], and the volume changes a running
/// cluster cannot take (the controller refuses them again, against the
/// StatefulSet as it runs).
pub fn admit(
    old: Option<&RedisSentinelCluster>,
    new: &RedisSentinelCluster,
    env: &Environment,
) -> Result<(), Invalid> {
    check(new)?;
    let names = Names::of(new, &env.cluster_domain)?;
    let Some(old) = old else { return Ok(()) };
    let nodes = |rsc: &RedisSentinelCluster| workloads::redis(rsc, (env, &names), &BTreeMap::new(), "", None);
    changes::unsafe_change(&nodes(old), &nodes(new)).map_or(Ok(()), Err)
}

/// The shortest time old and new passwords both work.
const MIN_PASSWORD_OVERLAP: std::time::Duration = std::time::Duration::from_secs(300);

/// What the CRD's rules say, again (a resource written before a rule
/// existed, or by `render`), and what they cannot say: the strings that
/// reach redis.conf and sentinel.conf must not carry a directive.
fn check(rsc: &RedisSentinelCluster) -> Result<(), Invalid> {
    let spec = &rsc.spec;
    let bad = |message: String| Err(Invalid::spec(message));
    if spec.sentinels < 3 || spec.sentinels % 2 == 0 {
        return bad(format!(
            "sentinels is {}: use an odd number, 3 or more, so a majority can elect",
            spec.sentinels
        ));
    }
    if spec.replicas < 1 {
        return bad(format!("replicas is {}: at least the master is needed", spec.replicas));
    }
    if spec.min_replicas_to_acknowledge < 0 || spec.min_replicas_to_acknowledge >= spec.replicas {
        return bad(format!(
            "minReplicasToAcknowledge is {} with {} nodes: it must be below replicas (the master does not count)",
            spec.min_replicas_to_acknowledge, spec.replicas
        ));
    }
    if !tokenplane_api::redis::valid_master_name(&spec.master_name) {
        return bad(format!(
            "masterName {:?}: use 1 to 64 letters, digits, '-', '_' or '.'",
            spec.master_name
        ));
    }
    if !["always", "everysec"].contains(&spec.persistence.append_fsync.as_str()) {
        return bad(format!(
            "persistence.appendFsync {:?}: use always or everysec",
            spec.persistence.append_fsync
        ));
    }
    if spec.image.trim().is_empty() {
        return bad("image is empty: name a Redis 7 image".into());
    }
    check_rotation(&spec.acl)
}

/// A rotation must leave every consumer time to read its new password:
/// the kubelet updates a mounted Secret within a minute or two, and the
/// consumers read it at their next connection.
fn check_rotation(acl: &tokenplane_api::redis::Acl) -> Result<(), Invalid> {
    let interval = std::time::Duration::from(acl.password_rotation_interval);
    let overlap = std::time::Duration::from(acl.password_overlap);
    let bad = |message: String| Err(Invalid::spec(message));
    if interval < std::time::Duration::from_secs(3600) {
        return bad(format!(
            "acl.passwordRotationInterval is {interval:?}: passwords rotate at most once an hour"
        ));
    }
    if overlap < MIN_PASSWORD_OVERLAP || overlap >= interval {
        return bad(format!(
            "acl.passwordOverlap is {}: give at least {}s (a mounted Secret takes up to a minute or two to \
             change in every pod) and less than passwordRotationInterval",
            acl.password_overlap,
            MIN_PASSWORD_OVERLAP.as_secs()
        ));
    }
    Ok(())
}

/// The labels every pod of the cluster `cluster` carries, data nodes and
/// Sentinels alike: what NetworkPolicies select them by.
pub fn pod_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "tokenplane-redis".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), cluster.to_owned()),
    ])
}

fn labels(cluster: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = pod_labels(cluster);
    labels.insert("app.kubernetes.io/component".to_owned(), component.to_owned());
    labels
}

fn meta(rsc: &RedisSentinelCluster, name: String, labels: &BTreeMap<String, String>) -> ObjectMeta {
    let cluster = rsc.metadata.name.clone().unwrap_or_default();
    let mut meta = managed_meta(rsc, name, [("tokenplane.io/redis-cluster", cluster)]);
    meta.labels.get_or_insert_default().extend(labels.clone());
    meta
}

fn selector(labels: &BTreeMap<String, String>) -> LabelSelector {
    LabelSelector { match_labels: Some(labels.clone()), ..LabelSelector::default() }
}

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;
