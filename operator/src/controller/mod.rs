//! The controllers: kube-runtime loops that apply the builders of
//! `reconcile` to the cluster and to Redis.

pub mod oauth2client;
pub mod tokenpolicy;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokenplane_api::{OAuth2Client, TokenPolicy};

use crate::metrics::Metrics;
use crate::reconcile::MANAGED_BY;
use crate::reconcile::tokenpolicy::{Environment, SentinelLogin};
use crate::redis::{RedisAdmin, RedisError};

/// What every reconcile shares.
pub struct Context {
    pub kube: kube::Client,
    pub redis: RedisAdmin,
    /// A new 256-bit secret, base64url (client secrets, Redis passwords).
    pub generate: fn() -> String,
    /// Kubernetes events on the resources, as `tokenplane-operator`.
    pub recorder: Recorder,
    /// What issuer Deployments need beyond their TokenPolicy.
    pub issuers: Environment,
    /// What `/metrics` and `/readyz` report.
    pub metrics: Arc<Metrics>,
}

/// Issuers log in to the Sentinels as the operator does.
fn sentinel_login(config: &crate::redis::RedisConfig) -> Option<SentinelLogin> {
    let username = config.sentinel_username.clone()?;
    Some(SentinelLogin { username, password: config.sentinel_password.clone().unwrap_or_default() })
}

/// The issuer image of this operator's version.
pub const ISSUER_IMAGE: &str = concat!("ghcr.io/tokenplane/tokenplane-sidecar:", env!("CARGO_PKG_VERSION"));

impl Context {
    /// Issuers reach Redis where the operator does (Sentinel login
    /// included) and run this version's image, unless `issuers` is changed.
    pub fn new(kube: kube::Client, redis: RedisAdmin, generate: fn() -> String) -> Self {
        let reporter =
            Reporter { controller: "tokenplane-operator".into(), instance: std::env::var("POD_NAME").ok() };
        let issuers = Environment {
            image: ISSUER_IMAGE.into(),
            sentinels: redis.config().sentinels.clone(),
            master_name: redis.config().master_name.clone(),
            sentinel_login: sentinel_login(redis.config()),
            operator_namespace: "tokenplane-system".into(),
        };
        let metrics = Arc::default();
        Self { recorder: Recorder::new(kube.clone(), reporter), kube, redis, generate, issuers, metrics }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error("the object has no namespace; tokenplane resources are namespaced")]
    NotNamespaced,
}

/// Server-side applies `object` (field manager `tokenplane`, forced: the
/// operator owns what it writes).
pub(crate) async fn apply<K>(kube: &kube::Client, object: &K) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let meta = object.meta();
    let api: Api<K> = Api::namespaced(kube.clone(), meta.namespace.as_deref().ok_or(Error::NotNamespaced)?);
    let mut body = serde_json::to_value(object).expect("a Kubernetes object serializes");
    body["apiVersion"] = K::api_version(&()).into();
    body["kind"] = K::kind(&()).into();
    let name = meta.name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(MANAGED_BY).force(), &Patch::Apply(body)).await?;
    Ok(())
}

/// A status condition; its transition time moves only when its status does.
pub(crate) fn condition(
    previous: &[Condition],
    generation: Option<i64>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let since = previous.iter().find(|c| c.type_ == type_ && c.status == status).map_or_else(
        || k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
        |c| c.last_transition_time.clone(),
    );
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// An event on `object`, best effort: logs and conditions carry the same news.
pub(crate) async fn event<K: kube::Resource<DynamicType = ()>>(
    object: &K,
    ctx: &Context,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(error = %e, "could not record an event");
    }
}

pub(crate) fn unix_now() -> u64 {
    u64::try_from(k8s_openapi::jiff::Timestamp::now().as_second()).unwrap_or_default()
}

/// A fresh 256-bit secret from the system's randomness.
pub fn generate_secret() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("system randomness");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

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

/// The Lease the replicas compete for.
pub const LEASE: &str = "tokenplane-operator";

/// Runs the controllers while this replica holds the Lease in `namespace`;
/// the others wait to take over. Only the leader writes anything, status
/// included. Returns on SIGTERM or ctrl-c, releasing the Lease.
pub async fn lead(ctx: Arc<Context>, namespace: &str, identity: String) -> Result<(), LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(ctx.kube.clone(), LEASE)
        .with_namespace(namespace)
        .with_identity(identity.clone())
        .with_duration(15)
        .with_grace(5)
        .build()
        .await?;
    let (mut leading, lease) = manager.watch().await;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        while !*leading.borrow_and_update() {
            ctx.metrics.set_leader(false);
            tracing::info!(%identity, "waiting for the lease {namespace}/{LEASE}");
            tokio::select! {
                changed = leading.changed() => if changed.is_err() { return Ok(()) },
                () = &mut stop => return release(leading, lease).await,
            }
        }
        tracing::info!(%identity, "holding the lease: reconciling");
        ctx.metrics.set_leader(true);
        tokio::select! {
            () = run(ctx.clone()) => return release(leading, lease).await,
            () = lost(&mut leading) => tracing::warn!(%identity, "lost the lease: stopped reconciling"),
        }
    }
}

/// Resolves when `leading` turns false (or its manager is gone).
async fn lost(leading: &mut tokio::sync::watch::Receiver<bool>) {
    while *leading.borrow_and_update() {
        if leading.changed().await.is_err() {
            return;
        }
    }
}

/// Gives the Lease up, so another replica takes over at once.
async fn release(
    leading: tokio::sync::watch::Receiver<bool>,
    lease: tokio::task::JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
) -> Result<(), LeaseManagerError> {
    drop(leading);
    match lease.await {
        Ok(result) => result.map(drop),
        Err(e) => {
            tracing::warn!(error = %e, "the lease task ended abnormally");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
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

/// Runs the OAuth2Client and TokenPolicy controllers until a shutdown signal.
pub async fn run(ctx: Arc<Context>) {
    tokio::join!(run_clients(ctx.clone()), run_policies(ctx));
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
