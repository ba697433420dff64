//! What the builders' tests share: a policy, its clients and environment,
//! and a reconcile on top of the keys Secret a previous one produced.

use k8s_openapi::api::core::v1::Secret;
use tokenplane_api::signing::KeyPair;
use tokenplane_api::storage::VerifierHeartbeat;
use tokenplane_api::tokenpolicy::{KeyState, SigningAlgorithm};
use tokenplane_api::{OAuth2Client, RedisSentinelCluster, TokenPolicy};

use super::{Desired, Environment, Inputs, Keys, SentinelLogin, ServingInputs, desired};
use crate::reconcile::ca;
use crate::reconcile::redis_password::Credentials;

pub(super) const DAY: u64 = 86_400;

pub(super) fn policy(yaml: &str) -> TokenPolicy {
    let mut policy: TokenPolicy = serde_norway::from_str(yaml).expect("fixture parses");
    policy.metadata.uid = Some("uid-p".into());
    policy
}

pub(super) const DEFAULT: &str = "
apiVersion: tokenplane.io/v1alpha1
kind: TokenPolicy
metadata: {name: default, namespace: auth}
spec:
  signing: {rotationInterval: 720h, propagationTimeout: 10m}
  issuerDeployment: {replicas: 3, maxReplicas: 5}
";

pub(super) fn client(name: &str, namespace: &str, selector: Option<&str>) -> OAuth2Client {
    let selector =
        selector.map(|s| format!("\n  workloadSelector: {{matchLabels: {{app: {s}}}}}")).unwrap_or_default();
    serde_norway::from_str(&format!(
        "apiVersion: tokenplane.io/v1alpha1\nkind: OAuth2Client\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  policyRef: {{name: default, namespace: auth}}\n  audiences: [https://api]{selector}"
    ))
    .unwrap()
}

pub(super) fn env() -> Environment {
    Environment {
        image: "tokenplane/sidecar:test".into(),
        sentinels: vec!["sentinel.redis.svc:26379".into()],
        master_name: "tokenplane".into(),
        sentinel_login: Some(SentinelLogin {
            username: "sentinel-client".into(),
            password: "sentinel-pw".into(),
        }),
        operator_namespace: "tokenplane-system".into(),
        cert_manager_issuer: None,
        redis_tls: None,
    }
}

/// A RedisSentinelCluster `name` in `namespace`, masters named `tokens-master`.
pub(super) fn cluster(name: &str, namespace: &str) -> RedisSentinelCluster {
    serde_norway::from_str(&format!(
        "apiVersion: tokenplane.io/v1alpha1\nkind: RedisSentinelCluster\n\
         metadata: {{name: {name}, namespace: {namespace}}}\nspec: {{masterName: tokens-master}}\n"
    ))
    .unwrap()
}

/// A first serving certificate of 30 days from [`cas`].
pub(super) fn serving() -> ServingInputs<'static> {
    ServingInputs { cas: ca::test_authorities(), existing: None, lifetime: 30 * DAY }
}

pub(super) fn new_key() -> (String, Vec<u8>) {
    let key = KeyPair::generate(SigningAlgorithm::EdDSA).unwrap();
    (key.thumbprint(), key.to_pem().into_bytes())
}

/// Reconciles `policy` at `now` on top of the keys Secret `previous` produced.
pub(super) fn reconcile(
    policy: &TokenPolicy,
    previous: Option<&Secret>,
    heartbeats: &[(String, VerifierHeartbeat)],
    now: u64,
) -> Desired {
    let env = env();
    let clients = [client("orders", "shop", Some("orders")), client("batch", "jobs", None)];
    let cluster = policy.spec.redis_ref.as_deref().map(|name| cluster(name, "auth"));
    let inputs = Inputs {
        policy,
        keys: Keys::read(previous, now).unwrap(),
        heartbeats,
        clients: &clients,
        cluster: cluster.as_ref(),
        cluster_ca: None,
        issuer_redis: &Credentials::new("issuer-password".into(), 0),
        env: &env,
        serving: serving(),
        now,
    };
    desired(inputs, new_key).unwrap()
}

pub(super) fn states(d: &Desired) -> Vec<KeyState> {
    d.rotation.keys.iter().map(|k| k.state).collect()
}

pub(super) fn jwks_kids(d: &Desired) -> Vec<String> {
    let jwks: serde_json::Value = serde_json::from_str(&d.jwks).unwrap();
    jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
}
