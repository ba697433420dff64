//! The validating webhook: at `kubectl apply` time, what the controllers
//! would refuse later with a condition. The CRD's rules again in Rust (the
//! kinds' `validate`), and for a RedisSentinelCluster the changes a running
//! cluster cannot take: a denial names the field and what to do. A
//! reference to a TokenPolicy or RedisSentinelCluster that does not exist
//! is a warning, not a denial: the controllers wait for it, and
//! `kubectl apply -f DIR` or a GitOps sync applies in an order of its own
//! (the samples' clients come before their policy), so refusing would fail
//! the very sync that creates it.

use kube::core::admission::Operation;
use serde::de::DeserializeOwned;
use tokenplane_api::{OAuth2Client, RedisSentinelCluster, TokenPolicy};

use super::Catalog;
use super::review::Review;
use crate::reconcile::redissentinelcluster::{self, Environment};

/// Whether the object of `review` may be written, and what to warn of.
pub fn check(review: &Review, catalog: &impl Catalog, clusters: &Environment) -> Result<Vec<String>, String> {
    let request = &review.request;
    if matches!(request.operation, Operation::Delete | Operation::Connect) {
        return Ok(Vec::new());
    }
    let Some(raw) = &review.object else { return Ok(Vec::new()) };
    let namespace = request.namespace.as_deref().unwrap_or("default");
    match request.kind.kind.as_str() {
        "OAuth2Client" => client(&typed::<OAuth2Client>(raw)?, namespace, catalog),
        "TokenPolicy" => policy(&typed::<TokenPolicy>(raw)?, namespace, catalog),
        "RedisSentinelCluster" => {
            let old = review.old_object.as_ref().map(typed::<RedisSentinelCluster>).transpose()?;
            let new = typed::<RedisSentinelCluster>(raw)?;
            redissentinelcluster::admit(old.as_ref(), &new, clusters).map_err(|invalid| invalid.message)?;
            Ok(Vec::new())
        }
        other => Err(format!(
            "this webhook validates OAuth2Client, TokenPolicy and RedisSentinelCluster, not {other}"
        )),
    }
}

/// The object as its kind, or which field is wrong.
fn typed<K: DeserializeOwned>(raw: &serde_json::Value) -> Result<K, String> {
    serde_path_to_error::deserialize(raw).map_err(|e| format!("{}: {}", e.path(), e.inner()))
}

fn client(client: &OAuth2Client, namespace: &str, catalog: &impl Catalog) -> Result<Vec<String>, String> {
    client.spec.validate().map_err(|e| e.to_string())?;
    let r = &client.spec.policy_ref;
    let policy_namespace = r.namespace.as_deref().unwrap_or(namespace);
    Ok(match catalog.policy(policy_namespace, &r.name) {
        Some(_) => Vec::new(),
        None => vec![format!(
            "spec.policyRef: TokenPolicy {policy_namespace}/{} does not exist (yet): the client waits for it",
            r.name
        )],
    })
}

fn policy(policy: &TokenPolicy, namespace: &str, catalog: &impl Catalog) -> Result<Vec<String>, String> {
    policy.spec.validate().map_err(|e| e.to_string())?;
    Ok(match &policy.spec.redis_ref {
        Some(name) if catalog.cluster(namespace, name).is_none() => vec![format!(
            "spec.redisRef: RedisSentinelCluster {namespace}/{name} does not exist (yet): the policy waits for it"
        )],
        _ => Vec::new(),
    })
}
