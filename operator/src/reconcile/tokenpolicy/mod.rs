//! What a TokenPolicy needs, as pure functions of the resource, its keys
//! Secret as it is, the verifiers' heartbeats, its clients and the time:
//! the keys Secret as it should be (rotated by `signing::plan`), the public
//! JWKS (a ConfigMap, and Redis), the policy record issuers read from
//! Redis, the issuer's Redis user and its Secret, and the issuer itself
//! (Deployment, Service, PodDisruptionBudget, HorizontalPodAutoscaler, and
//! its serving certificate from the operator's CA) with
//! the NetworkPolicies that let only the clients' workloads in.

mod deployment;
#[cfg(test)]
mod fixtures;
mod keys;
mod network_policy;
mod service;
mod tls;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use tokenplane_api::storage::{self, VerifierHeartbeat};
use tokenplane_api::tokenpolicy::PolicyRecord;
use tokenplane_api::{OAuth2Client, RedisSentinelCluster, TokenPolicy};

pub(crate) use deployment::IssuerRedis;
pub(crate) use keys::{Keys, Rotation};
pub(crate) use tls::ServingInputs;
pub use tls::{Serving, TLS_CRT, TLS_KEY, cert_manager_issuer, certificate_resource, serving_secret_name};

use super::redis_password::Credentials;
use super::{AclUser, Invalid, managed_meta};

/// The issuer container's port.
const ISSUER_PORT: i32 = 8080;
const SENTINEL_PORT: i32 = 26379;

/// What issuer pods need that the policy does not say.
#[derive(Clone, Debug)]
pub struct Environment {
    /// The issuer image when the policy names none.
    pub image: String,
    /// Sentinels as pods reach them, when the policy has no `redisRef`.
    pub sentinels: Vec<String>,
    pub master_name: String,
    /// The user the Sentinels require, if any, handed to issuers in their
    /// Redis Secret.
    pub sentinel_login: Option<SentinelLogin>,
    /// Where the operator runs: its pods may reach Redis.
    pub operator_namespace: String,
    /// Issuers reach Redis over TLS: `Some`, with the CA bundle to verify
    /// it against (the system's roots when empty). Issuers present no
    /// client certificate: the operator's own is not theirs to share.
    pub redis_tls: Option<Vec<u8>>,
    /// The cert-manager issuer of serving certificates, for policies that
    /// name none; the operator's own CA when unset.
    pub cert_manager_issuer: Option<tokenplane_api::tokenpolicy::CertManagerIssuerRef>,
}

/// A Sentinel username and password.
#[derive(Clone)]
pub struct SentinelLogin {
    pub username: String,
    pub password: String,
}

/// Never prints the password, should one reach a log line.
impl std::fmt::Debug for SentinelLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelLogin").field("username", &self.username).finish_non_exhaustive()
    }
}

/// Everything a policy's reconcile looks at.
pub(crate) struct Inputs<'a> {
    pub policy: &'a TokenPolicy,
    pub keys: Keys,
    /// Every live heartbeat in Redis, by verifier id; those of other
    /// issuers are ignored.
    pub heartbeats: &'a [(String, VerifierHeartbeat)],
    /// The OAuth2Clients that reference this policy.
    pub clients: &'a [OAuth2Client],
    /// The RedisSentinelCluster of the policy's `redisRef`, if it has one
    /// and the cluster exists.
    pub cluster: Option<&'a RedisSentinelCluster>,
    /// With the cluster's TLS, the CA bundle its certificate is verified against.
    pub cluster_ca: Option<&'a [u8]>,
    /// The issuer user's passwords.
    pub issuer_redis: &'a Credentials,
    pub env: &'a Environment,
    pub serving: ServingInputs<'a>,
    pub now: u64,
}

/// Everything a TokenPolicy should have.
pub(crate) struct Desired {
    pub policy_id: String,
    pub issuer_url: String,
    pub keys_secret: Secret,
    /// The public JWKS, as issuers serve it.
    pub jwks: String,
    pub jwks_config_map: ConfigMap,
    pub record: PolicyRecord,
    pub issuer_user: AclUser,
    pub issuer_secret: Secret,
    /// The issuer's serving certificate, or cert-manager's order for it.
    pub serving: Serving,
    /// When that certificate is due for renewal.
    pub serving_renew_at: u64,
    pub deployment: Deployment,
    pub service: Service,
    pub pdb: PodDisruptionBudget,
    pub hpa: HorizontalPodAutoscaler,
    pub network_policies: Vec<NetworkPolicy>,
    pub rotation: Rotation,
}

/// The Redis user of a policy's issuers.
pub fn issuer_user(policy_id: &str) -> AclUser {
    AclUser { name: format!("issuer:{policy_id}"), rules: storage::ISSUER_ACL.to_owned() }
}

/// Checks `inputs.policy` and builds what it should have. `new_key` makes
/// a fresh key of the policy's algorithm: its kid and PKCS#8 PEM.
pub(crate) fn desired(
    inputs: Inputs<'_>,
    new_key: impl FnMut() -> (String, Vec<u8>),
) -> Result<Desired, Invalid> {
    let policy = inputs.policy;
    policy.spec.validate().map_err(|e| Invalid::spec(e.to_string()))?;
    let (name, namespace) = match (policy.metadata.name.as_deref(), policy.metadata.namespace.as_deref()) {
        (Some(name), Some(namespace)) => (name, namespace),
        _ => return Err(Invalid::spec("a TokenPolicy needs a name and a namespace".into())),
    };
    let policy_id = TokenPolicy::id_for(name, namespace);
    let redis = issuer_redis(policy, (inputs.cluster, inputs.cluster_ca), inputs.env)?;
    let issuer_url = super::oauth2client::issuer_url(policy);
    let (rotation, pems) = keys::rotate(&inputs, &issuer_url, new_key);
    let jwks = keys::jwks(&rotation.keys, &pems);
    let user = issuer_user(&policy_id);
    let labels = issuer_labels(name);
    let operator_issuer = inputs.env.cert_manager_issuer.as_ref();
    let (serving, serving_renew_at) = tls::serving(policy, inputs.serving, operator_issuer, inputs.now)?;
    Ok(Desired {
        serving,
        serving_renew_at,
        keys_secret: keys::keys_secret(policy, &rotation, &pems),
        jwks_config_map: keys::jwks_config_map(policy, &jwks),
        jwks,
        record: PolicyRecord { issuer: issuer_url.clone(), spec: policy.spec.clone() },
        issuer_secret: deployment::issuer_secret(policy, &user, inputs.issuer_redis, redis),
        deployment: deployment::deployment(policy, inputs.env, redis, &user, &labels),
        service: service::service(policy, &labels),
        pdb: service::pdb(policy, &labels),
        hpa: service::hpa(policy),
        network_policies: network_policy::network_policies(
            policy,
            inputs.clients,
            &inputs.env.operator_namespace,
            &labels,
        ),
        issuer_user: user,
        policy_id,
        issuer_url,
        rotation,
    })
}

/// The policy's RedisSentinelCluster when it names one, which must exist.
fn issuer_redis<'a>(
    policy: &TokenPolicy,
    (cluster, ca): (Option<&'a RedisSentinelCluster>, Option<&'a [u8]>),
    env: &'a Environment,
) -> Result<IssuerRedis<'a>, Invalid> {
    match (&policy.spec.redis_ref, cluster) {
        (None, _) => Ok(IssuerRedis::Operator(env)),
        (Some(_), Some(cluster)) => Ok(IssuerRedis::Cluster(cluster, ca)),
        (Some(name), None) => Err(Invalid::redis_cluster_not_found(name, policy)),
    }
}

fn issuer_labels(policy_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "tokenplane-issuer".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), policy_name.to_owned()),
    ])
}

fn issuer_meta(policy: &TokenPolicy, labels: &BTreeMap<String, String>) -> ObjectMeta {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let mut meta = managed_meta(policy, format!("{name}-issuer"), [("tokenplane.io/policy", name)]);
    meta.labels.get_or_insert_default().extend(labels.clone());
    meta
}

fn selector(labels: &BTreeMap<String, String>) -> LabelSelector {
    LabelSelector { match_labels: Some(labels.clone()), ..LabelSelector::default() }
}

#[cfg(test)]
mod tests {
    use tokenplane_api::signing::KeyPair;
    use tokenplane_api::tokenpolicy::KeyState;

    use super::fixtures::{DAY, DEFAULT, env, jwks_kids, new_key, policy, reconcile, states};
    use super::*;

    #[test]
    fn a_new_policy_gets_a_signing_key_its_jwks_and_record() {
        let d = reconcile(&policy(DEFAULT), None, &[], 1000);
        assert_eq!(states(&d), [KeyState::Active]);
        let kid = d.rotation.active().to_owned();
        let data = d.keys_secret.data.as_ref().unwrap();
        assert_eq!(data["active"].0, kid.as_bytes());
        assert!(KeyPair::from_pem(&kid, &data[&format!("{kid}.pem")].0).is_ok(), "a usable PKCS#8 key");
        assert_eq!(jwks_kids(&d), [kid.as_str()]);
        assert!(!d.jwks.contains("PRIVATE"), "the JWKS is public only");
        assert_eq!(d.jwks_config_map.data.as_ref().unwrap()["jwks.json"], d.jwks);
        assert_eq!(d.record.issuer, "https://default-issuer.auth.svc");
        assert_eq!(d.policy_id, "default.auth");
        assert_eq!(d.issuer_user.name, "issuer:default.auth");
        assert_eq!(d.rotation.next_rotation_at, 1000 + 30 * DAY);
        assert_eq!(d.rotation.next_at, 1000 + 30 * DAY - 600, "wakes to publish the next key");
        let owner = &d.keys_secret.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("TokenPolicy", "uid-p"));
    }

    #[test]
    fn an_invalid_policy_builds_nothing() {
        let p = policy(
            "apiVersion: tokenplane.io/v1alpha1\nkind: TokenPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  lifetimes: {accessToken: 30s}\n",
        );
        let env = env();
        let inputs = Inputs {
            policy: &p,
            keys: Keys::default(),
            heartbeats: &[],
            clients: &[],
            cluster: None,
            cluster_ca: None,
            issuer_redis: &Credentials::new("x".into(), 0),
            env: &env,
            serving: super::fixtures::serving(),
            now: 0,
        };
        let invalid = desired(inputs, new_key).err().expect("refused");
        assert_eq!(invalid.reason, "InvalidSpec");
        assert!(invalid.message.contains("spec.lifetimes.accessToken"), "{}", invalid.message);
    }
}
