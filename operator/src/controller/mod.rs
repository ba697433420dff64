//! The controllers: kube-runtime loops that apply the builders of
//! `reconcile` to the cluster and to Redis.

pub mod oauth2client;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{finalizer, watcher};
use tokenplane_api::OAuth2Client;

use crate::redis::{RedisAdmin, RedisError};

/// What every reconcile shares.
pub struct Context {
    pub kube: kube::Client,
    pub redis: RedisAdmin,
    /// A new 256-bit secret, base64url (client secrets, Redis passwords).
    pub generate: fn() -> String,
    /// Kubernetes events on the resources, as `tokenplane-operator`.
    pub recorder: Recorder,
}

impl Context {
    pub fn new(kube: kube::Client, redis: RedisAdmin, generate: fn() -> String) -> Self {
        let reporter =
            Reporter { controller: "tokenplane-operator".into(), instance: std::env::var("POD_NAME").ok() };
        Self { recorder: Recorder::new(kube.clone(), reporter), kube, redis, generate }
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

/// Runs the OAuth2Client controller until a shutdown signal.
pub async fn run(ctx: Arc<Context>) {
    let clients = Api::<OAuth2Client>::all(ctx.kube.clone());
    let secrets = Api::<Secret>::all(ctx.kube.clone());
    let managed = watcher::Config::default().labels("app.kubernetes.io/managed-by=tokenplane");
    Controller::new(clients, watcher::Config::default())
        .owns(secrets, managed)
        .shutdown_on_signal()
        .run(oauth2client::reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(client = %object.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
}
