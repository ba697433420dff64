//! What every reconcile shares: the clients, the issuers' environment,
//! the metrics, and where fresh secrets and the time come from.

use std::sync::Arc;

use kube::runtime::events::{Recorder, Reporter};

use crate::metrics::Metrics;
use crate::reconcile::ca::{Authorities, Settings};
use crate::reconcile::tokenpolicy::{Environment, SentinelLogin};
use crate::redis::RedisAdmin;

/// What every reconcile shares.
pub struct Context {
    pub kube: kube::Client,
    /// The Redis of the `--redis-*` flags, for policies without a `redisRef`.
    pub redis: Arc<RedisAdmin>,
    /// The operator's logins on the RedisSentinelClusters.
    pub cluster_logins: super::redis_target::ClusterLogins,
    /// A new 256-bit secret, base64url (client secrets, Redis passwords).
    pub generate: fn() -> String,
    /// Kubernetes events on the resources, as `tokenplane-operator`.
    pub recorder: Recorder,
    /// What issuer Deployments need beyond their TokenPolicy.
    pub issuers: Environment,
    /// What a RedisSentinelCluster's pods need beyond the resource.
    pub clusters: crate::reconcile::redissentinelcluster::Environment,
    /// What `/metrics` and `/readyz` report.
    pub metrics: Arc<Metrics>,
    /// The operator's CAs as last loaded; the reconciles sign and publish with them.
    pub ca: tokio::sync::watch::Sender<Authorities>,
    /// Lifetimes of the CAs and of the certificates they sign.
    pub ca_settings: Settings,
    /// The replicas serve the admission webhooks (`--webhook-listen`): the
    /// leader keeps their certificate and configurations applied.
    pub webhooks: bool,
}

/// Issuers log in to the Sentinels as the operator does.
fn sentinel_login(config: &crate::redis::RedisConfig) -> Option<SentinelLogin> {
    let username = config.sentinel_username.clone()?;
    Some(SentinelLogin { username, password: config.sentinel_password.clone().unwrap_or_default() })
}

/// The issuer image of this operator's version.
pub const ISSUER_IMAGE: &str = concat!("ghcr.io/tokenplane/tokenplane-sidecar:", env!("CARGO_PKG_VERSION"));
/// The Prometheus exporter beside each Redis node, logging in as the monitor user.
pub const EXPORTER_IMAGE: &str = "docker.io/oliver006/redis_exporter:v1.67.0";

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
            cert_manager_issuer: None,
            redis_tls: redis.config().tls.as_ref().map(|tls| tls.ca_bundle.clone().unwrap_or_default()),
        };
        let clusters = crate::reconcile::redissentinelcluster::Environment::default();
        let metrics = Arc::default();
        Self {
            clusters,
            recorder: Recorder::new(kube.clone(), reporter),
            kube,
            redis: Arc::new(redis),
            cluster_logins: Default::default(),
            generate,
            issuers,
            metrics,
            ca: tokio::sync::watch::Sender::new(Authorities::default()),
            ca_settings: Settings::default(),
            webhooks: false,
        }
    }
}

/// This release's images, `cluster.local`, the operator in
/// `tokenplane-system`: what flags change.
impl Default for crate::reconcile::redissentinelcluster::Environment {
    fn default() -> Self {
        Self {
            tokenplane_image: ISSUER_IMAGE.into(),
            exporter_image: EXPORTER_IMAGE.into(),
            cluster_domain: "cluster.local".into(),
            operator_namespace: "tokenplane-system".into(),
        }
    }
}

pub(super) fn unix_now() -> u64 {
    u64::try_from(k8s_openapi::jiff::Timestamp::now().as_second()).unwrap_or_default()
}

/// A fresh 256-bit secret from the system's randomness.
pub fn generate_secret() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("system randomness");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
