//! The controllers: kube-runtime loops that apply the builders of
//! `reconcile` to the cluster and to Redis.

pub mod oauth2client;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{finalizer, watcher};
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokenplane_api::OAuth2Client;

use crate::metrics::Metrics;
use crate::redis::{RedisAdmin, RedisError};

/// What every reconcile shares.
pub struct Context {
    pub kube: kube::Client,
    pub redis: RedisAdmin,
    /// A new 256-bit secret, base64url (client secrets, Redis passwords).
    pub generate: fn() -> String,
    /// Kubernetes events on the resources, as `tokenplane-operator`.
    pub recorder: Recorder,
    /// What `/metrics` and `/readyz` report.
    pub metrics: Arc<Metrics>,
}

impl Context {
    pub fn new(kube: kube::Client, redis: RedisAdmin, generate: fn() -> String) -> Self {
        let reporter =
            Reporter { controller: "tokenplane-operator".into(), instance: std::env::var("POD_NAME").ok() };
        let metrics = Arc::default();
        Self { recorder: Recorder::new(kube.clone(), reporter), kube, redis, generate, metrics }
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
    #[error("the object has no namespace; OAuth2Clients are namespaced")]
    NotNamespaced,
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
fn error_policy(client: Arc<OAuth2Client>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(client = %kube::ResourceExt::name_any(client.as_ref()), %error, "reconcile failed; retrying");
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

/// `oauth2client::reconcile`, counted and timed.
async fn reconcile_client(client: Arc<OAuth2Client>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.measure("OAuth2Client", oauth2client::reconcile(client, ctx.clone())).await
}

/// Runs the OAuth2Client controller until a shutdown signal.
pub async fn run(ctx: Arc<Context>) {
    let clients = Api::<OAuth2Client>::all(ctx.kube.clone());
    let secrets = Api::<Secret>::all(ctx.kube.clone());
    let managed = watcher::Config::default().labels("app.kubernetes.io/managed-by=tokenplane");
    Controller::new(clients, watcher::Config::default())
        .with_config(ControllerConfig::default().concurrency(CONCURRENCY))
        .owns(secrets, managed)
        .shutdown_on_signal()
        .run(reconcile_client, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(client = %object.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
}
