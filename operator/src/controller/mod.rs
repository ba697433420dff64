//! The controllers: kube-runtime loops that apply the builders of
//! `reconcile` to the cluster and to Redis.

mod acl_sync;
mod apply;
mod ca;
mod conditions;
mod context;
mod events;
mod leader;
pub mod oauth2client;
mod password_rotation;
mod redis_target;
pub mod redissentinelcluster;
pub mod tokenpolicy;
pub mod webhooks;

pub use context::{Context, EXPORTER_IMAGE, ISSUER_IMAGE, generate_secret};
pub use leader::{LEASE, lead, shutdown_signal};
pub use redis_target::ClusterLogins;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tokenplane_api::{OAuth2Client, TokenPolicy};

use crate::error::Error;

use apply::{apply, apply_dynamic};
use conditions::condition;
use context::unix_now;
use events::{event, event_of_action};

/// Retries soon when Redis is the problem (it comes back by itself), later
/// for the API server.
fn error_policy<K: kube::Resource<DynamicType = ()>>(
    object: Arc<K>,
    error: &Error,
    _: Arc<Context>,
) -> Action {
    let name = kube::ResourceExt::name_any(object.as_ref());
    tracing::warn!(kind = %K::kind(&()), %name, %error, "reconcile failed; retrying");
    match error {
        Error::Redis(_) => Action::requeue(Duration::from_secs(5)),
        _ => Action::requeue(Duration::from_secs(15)),
    }
}

/// How long a resource refused for want of another object waits before
/// it looks again, when no watch brings news of that object.
const WAIT_FOR_OTHERS: Duration = Duration::from_secs(15);

/// After a refusal: the object must change, unless it waits for its
/// RedisSentinelCluster to appear or to make the operator's user.
fn after_refusal(invalid: &crate::reconcile::Invalid) -> Action {
    match invalid.reason {
        // Another controller, or the user's cert-manager, makes what is missing.
        "RedisClusterNotFound" | "RedisClusterNotReady" | "TlsSecretInvalid" => {
            Action::requeue(WAIT_FOR_OTHERS)
        }
        _ => Action::await_change(),
    }
}

/// Reconciles running at once. Unbounded (kube-runtime's default), a cold
/// start with thousands of clients starts them all together: Redis answers
/// slower than the timeout, everything retries, memory balloons. Past a
/// few, more do not go faster (see `operator/tests/scale.rs`).
const CONCURRENCY: u16 = 16;

/// A kind whose reconcile reaches outside Kubernetes (Redis), so that its
/// deletion waits on a finalizer for the cleanup.
pub trait Reconciled:
    kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::Serialize
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const FINALIZER: &'static str;
    /// The kind, as metrics label it.
    const KIND: &'static str;

    /// Brings everything the object describes in line with it.
    fn apply(&self, ctx: &Context) -> impl Future<Output = Result<Action, Error>> + Send;

    /// Undoes what `apply` did outside Kubernetes; owner references take the rest.
    fn cleanup(&self, ctx: &Context) -> impl Future<Output = Result<Action, Error>> + Send;
}

/// One reconcile of `object`: its finalizer first, then `apply`, or
/// `cleanup` once it is being deleted; counted and timed.
pub async fn reconcile<K: Reconciled>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = object.meta().namespace.clone().ok_or(Error::NotNamespaced)?;
    let api: Api<K> = Api::namespaced(ctx.kube.clone(), &namespace);
    let reconciled = finalizer(&api, K::FINALIZER, object, |event| async {
        match event {
            finalizer::Event::Apply(object) => object.apply(&ctx).await,
            finalizer::Event::Cleanup(object) => object.cleanup(&ctx).await,
        }
    });
    ctx.metrics.measure(K::KIND, async { reconciled.await.map_err(|e| Error::Finalizer(Box::new(e))) }).await
}

/// Loads the CA, then runs the OAuth2Client, TokenPolicy and
/// RedisSentinelCluster controllers, the CA's rotation and, when they are
/// served, the webhooks' objects until a shutdown signal.
pub async fn run(ctx: Arc<Context>) {
    ca::load(&ctx).await;
    let controllers = async {
        tokio::join!(
            run_clients(ctx.clone()),
            run_policies(ctx.clone()),
            redissentinelcluster::run(ctx.clone())
        )
    };
    let webhooks = async {
        match ctx.webhooks {
            true => webhooks::keep(ctx.clone()).await,
            false => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ca::keep(ctx.clone()) => {}
        () = webhooks => {}
        _ = controllers => {}
    }
}

fn managed() -> watcher::Config {
    watcher::Config::default().labels("app.kubernetes.io/managed-by=tokenplane")
}

/// Which objects' specs changed since last seen: a status write does not
/// bump `metadata.generation`, a spec change does.
#[derive(Default)]
struct SpecChanges(std::sync::Mutex<std::collections::HashMap<String, Option<i64>>>);

impl SpecChanges {
    /// Whether `object` is new or its spec changed since the last call.
    fn changed<K: kube::Resource>(&self, object: &K) -> bool {
        let meta = object.meta();
        let key = meta.uid.clone().or_else(|| meta.name.clone()).unwrap_or_default();
        let mut seen = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.insert(key, meta.generation) != Some(meta.generation)
    }
}

/// A client is looked at again when its Secret drifts, and when its
/// policy's spec changes (its issuer URL goes into the Secret; a client
/// waiting for a missing policy gets it). Policy status writes (heartbeats
/// during a rotation) do not send every client round again.
async fn run_clients(ctx: Arc<Context>) {
    let clients = Api::<OAuth2Client>::all(ctx.kube.clone());
    let secrets = Api::<Secret>::all(ctx.kube.clone());
    let policies = Api::<TokenPolicy>::all(ctx.kube.clone());
    let controller = Controller::new(clients, watcher::Config::default());
    let known = controller.store();
    let specs = SpecChanges::default();
    let clients_of = move |policy: TokenPolicy| {
        if !specs.changed(&policy) {
            return Vec::new();
        }
        let id = TokenPolicy::id_for(&policy.name_any(), &policy.namespace().unwrap_or_default());
        known
            .state()
            .into_iter()
            .filter(|c| c.spec.policy_ref.policy_id(&c.namespace().unwrap_or_default()) == id)
            .map(|c| ObjectRef::from_obj(c.as_ref()))
            .collect::<Vec<_>>()
    };
    controller
        .with_config(ControllerConfig::default().concurrency(CONCURRENCY))
        .owns(secrets, managed())
        .watches(policies, watcher::Config::default(), clients_of)
        .reconcile_all_on(ca::changes(&ctx))
        .shutdown_on_signal()
        .run(reconcile::<OAuth2Client>, error_policy, ctx)
        .for_each(|result| log("OAuth2Client", result))
        .await;
}

/// A policy is looked at again when its clients change (its
/// NetworkPolicies list their workloads) or what it owns drifts.
async fn run_policies(ctx: Arc<Context>) {
    let policies = Api::<TokenPolicy>::all(ctx.kube.clone());
    let clients = Api::<OAuth2Client>::all(ctx.kube.clone());
    let policy_of = |client: OAuth2Client| {
        let r = &client.spec.policy_ref;
        let namespace = r.namespace.clone().or_else(|| client.namespace())?;
        Some(ObjectRef::<TokenPolicy>::new(&r.name).within(&namespace))
    };
    Controller::new(policies, watcher::Config::default())
        .owns(Api::<Secret>::all(ctx.kube.clone()), managed())
        .owns(Api::<Deployment>::all(ctx.kube.clone()), managed())
        .watches(clients, watcher::Config::default(), policy_of)
        .with_config(ControllerConfig::default().concurrency(CONCURRENCY).debounce(Duration::from_secs(1)))
        .reconcile_all_on(ca::changes(&ctx))
        .shutdown_on_signal()
        .run(reconcile::<TokenPolicy>, error_policy, ctx)
        .for_each(|result| log("TokenPolicy", result))
        .await;
}

async fn log<K: kube::Resource, E: std::fmt::Display>(
    kind: &'static str,
    result: Result<(ObjectRef<K>, Action), E>,
) {
    match result {
        Ok((object, _)) => tracing::debug!(kind, name = %object.name, "reconciled"),
        Err(e) => tracing::debug!(kind, error = %e, "reconcile error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_new_objects_and_spec_changes_count() {
        let specs = SpecChanges::default();
        let mut policy = TokenPolicy::new("default", Default::default());
        policy.metadata.uid = Some("uid-p".into());
        policy.metadata.generation = Some(1);
        assert!(specs.changed(&policy), "first sight");
        policy.status = Some(Default::default());
        assert!(!specs.changed(&policy), "a status write");
        policy.metadata.generation = Some(2);
        assert!(specs.changed(&policy), "a spec change");
    }
}
