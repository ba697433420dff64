//! What a TokenPolicy needs, as pure functions of the resource, its keys
//! Secret as it is, the verifiers' heartbeats, its clients and the time:
//! the keys Secret as it should be (rotated by `signing::plan`), the public
//! JWKS (a ConfigMap, and Redis), the policy record issuers read from
//! Redis, the issuer's Redis user and its Secret, and the issuer itself
//! (Deployment, Service, PodDisruptionBudget, HorizontalPodAutoscaler) with
//! the NetworkPolicies that let only the clients' workloads in.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, HTTPGetAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource, SecurityContext, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use tokenplane_api::credentials::{REDIS_PASSWORD, REDIS_USERNAME};
use tokenplane_api::signing::{self as keyfmt, KeyPair};
use tokenplane_api::storage::{self, VerifierHeartbeat};
use tokenplane_api::tokenpolicy::{KeyState, PolicyRecord};
use tokenplane_api::{OAuth2Client, TokenPolicy};

use super::signing::{self, Key, Timing, Verifier};
use super::{AclUser, Invalid, managed_meta};

/// Annotation of the keys Secret recording each key's state and since when
/// (JSON), so a rotation survives operator restarts.
pub const KEY_STATES: &str = "tokenplane.io/key-states";
/// Annotation of a TokenPolicy naming a compromised kid: it leaves the JWKS
/// at once and a new key signs at once.
pub const COMPROMISED_KEY: &str = "tokenplane.io/compromised-key";
/// The issuer container's port.
pub const ISSUER_PORT: i32 = 8080;
/// How long past the access-token lifetime a key that stopped signing stays
/// published: the verifiers' clock skew (the agent's `--clock-skew`
/// default, 5 s), plus how late the operator can learn that the last issuer
/// stopped signing with it (a heartbeat interval, and the 30 s between looks
/// while an issuer still signs with a retiring key).
pub const RETIRE_MARGIN: u64 = 5 + storage::HEARTBEAT_INTERVAL_SECS + 30;
const KEYS_MOUNT: &str = "/var/run/tokenplane/keys";
const REDIS_MOUNT: &str = "/var/run/tokenplane/redis";
const REDIS_PORT: i32 = 6379;
/// The issuer image's non-root user (distroless `nonroot`).
const ISSUER_UID: i64 = 65532;
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

/// Secret entries of the Sentinel login in the issuer's Redis Secret.
const SENTINEL_USERNAME: &str = "sentinel_username";
const SENTINEL_PASSWORD: &str = "sentinel_password";

/// The keys as the keys Secret holds them.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    pub keys: Vec<Key>,
    pems: BTreeMap<String, Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct Recorded {
    kid: String,
    state: KeyState,
    since: u64,
}

impl Keys {
    /// Reads a keys Secret. Keys without a recorded state (a Secret made by
    /// hand, as the standalone issuer reads it) are adopted: `active` signs,
    /// the others retire. A state without its PEM is dropped.
    pub fn read(secret: Option<&Secret>, now: u64) -> Result<Self, Invalid> {
        let Some(secret) = secret else { return Ok(Self::default()) };
        let data = secret.data.clone().unwrap_or_default();
        let pems: BTreeMap<String, Vec<u8>> = data
            .iter()
            .filter_map(|(k, v)| Some((k.strip_suffix(".pem")?.to_owned(), v.0.clone())))
            .collect();
        for (kid, pem) in &pems {
            KeyPair::from_pem(kid, pem).map_err(|e| {
                Invalid::keys(format!(
                    "the keys Secret {}: {e}",
                    secret.metadata.name.as_deref().unwrap_or("")
                ))
            })?;
        }
        let recorded = secret.metadata.annotations.as_ref().and_then(|a| a.get(KEY_STATES));
        let keys = match recorded.and_then(|json| serde_json::from_str::<Vec<Recorded>>(json).ok()) {
            Some(recorded) => recorded
                .into_iter()
                .filter(|r| pems.contains_key(&r.kid))
                .map(|r| Key { kid: r.kid, state: r.state, since: r.since })
                .collect(),
            None => {
                let active =
                    data.get(keyfmt::ACTIVE).map(|a| String::from_utf8_lossy(&a.0).trim().to_owned());
                let state = |kid: &str| {
                    if Some(kid) == active.as_deref() { KeyState::Active } else { KeyState::Retiring }
                };
                pems.keys().map(|kid| Key { kid: kid.clone(), state: state(kid), since: now }).collect()
            }
        };
        Ok(Self { keys, pems })
    }
}

/// Everything a policy's reconcile looks at.
pub struct Inputs<'a> {
    pub policy: &'a TokenPolicy,
    pub keys: Keys,
    /// Every live heartbeat in Redis, by verifier id; those of other
    /// issuers are ignored.
    pub heartbeats: &'a [(String, VerifierHeartbeat)],
    /// The OAuth2Clients that reference this policy.
    pub clients: &'a [OAuth2Client],
    pub issuer_password: &'a str,
    pub env: &'a Environment,
    pub now: u64,
}

/// Where the signing keys are, for the status.
#[derive(Debug, PartialEq, Eq)]
pub struct Rotation {
    pub keys: Vec<Key>,
    /// Live verifiers that do not hold the next key yet.
    pub lagging: Vec<String>,
    /// Live verifiers that do not hold the key that signs: they reject new
    /// tokens until they catch up.
    pub behind: Vec<String>,
    /// The key signing now was promoted before every verifier held it.
    pub forced: bool,
    /// A key dropped at once as compromised.
    pub compromised: Option<String>,
    pub next_at: u64,
    pub next_rotation_at: u64,
}

impl Rotation {
    pub fn active(&self) -> &str {
        self.keys.iter().find(|k| k.state == KeyState::Active).map_or("", |k| k.kid.as_str())
    }
}

/// Everything a TokenPolicy should have.
pub struct Desired {
    pub policy_id: String,
    pub issuer_url: String,
    pub keys_secret: Secret,
    /// The public JWKS, as issuers serve it.
    pub jwks: String,
    pub jwks_config_map: ConfigMap,
    pub record: PolicyRecord,
    pub issuer_user: AclUser,
    pub issuer_secret: Secret,
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
pub fn desired(inputs: Inputs<'_>, new_key: impl FnMut() -> (String, Vec<u8>)) -> Result<Desired, Invalid> {
    let policy = inputs.policy;
    policy.spec.validate().map_err(|e| Invalid::spec(e.to_string()))?;
    let (name, namespace) = match (policy.metadata.name.as_deref(), policy.metadata.namespace.as_deref()) {
        (Some(name), Some(namespace)) => (name, namespace),
        _ => return Err(Invalid::spec("a TokenPolicy needs a name and a namespace".into())),
    };
    let policy_id = TokenPolicy::id_for(name, namespace);
    let issuer_url = super::oauth2client::issuer_url(policy);
    let (rotation, pems) = rotate(&inputs, &issuer_url, new_key);
    let jwks = jwks(&rotation.keys, &pems);
    let user = issuer_user(&policy_id);
    let labels = issuer_labels(name);
    Ok(Desired {
        keys_secret: keys_secret(policy, &rotation, &pems),
        jwks_config_map: ConfigMap {
            metadata: managed_meta(
                policy,
                format!("{name}-jwks"),
                [("tokenplane.io/policy", name.to_owned())],
            ),
            data: Some(BTreeMap::from([("jwks.json".to_owned(), jwks.clone())])),
            ..ConfigMap::default()
        },
        jwks,
        record: PolicyRecord { issuer: issuer_url.clone(), spec: policy.spec.clone() },
        issuer_secret: issuer_secret(policy, &user, inputs.issuer_password, inputs.env),
        deployment: deployment(policy, inputs.env, &user, &labels),
        service: service(policy, &labels),
        pdb: pdb(policy, &labels),
        hpa: hpa(policy),
        network_policies: network_policies(policy, inputs.clients, &inputs.env.operator_namespace, &labels),
        issuer_user: user,
        policy_id,
        issuer_url,
        rotation,
    })
}

/// Plans the keys (an emergency first, if a key is marked compromised) and
/// returns them with every PEM they need, fresh ones included.
fn rotate(
    inputs: &Inputs<'_>,
    issuer_url: &str,
    mut new_key: impl FnMut() -> (String, Vec<u8>),
) -> (Rotation, BTreeMap<String, Vec<u8>>) {
    let now = inputs.now;
    let mut pems = inputs.keys.pems.clone();
    let mut new_kid = || {
        let (kid, pem) = new_key();
        pems.insert(kid.clone(), pem);
        kid
    };
    let marked = inputs.policy.metadata.annotations.as_ref().and_then(|a| a.get(COMPROMISED_KEY));
    let compromised = marked.filter(|kid| inputs.keys.keys.iter().any(|k| k.kid == **kid)).cloned();
    let keys = match &compromised {
        Some(kid) => signing::emergency(&inputs.keys.keys, kid, now, &mut new_kid),
        None => inputs.keys.keys.clone(),
    };
    let verifiers: Vec<Verifier> = inputs
        .heartbeats
        .iter()
        .filter(|(_, beat)| beat.issuer == issuer_url)
        .map(|(id, beat)| Verifier {
            id: id.clone(),
            seen_at: now,
            kids: beat.kids.clone(),
            signing: beat.signing.clone(),
        })
        .collect();
    let timing = Timing::of(&inputs.policy.spec, RETIRE_MARGIN, storage::HEARTBEAT_TTL_SECS);
    let plan = signing::plan(&keys, &verifiers, timing, now, &mut new_kid);
    pems.retain(|kid, _| plan.keys.iter().any(|k| k.kid == *kid));
    let mut rotation = Rotation {
        keys: plan.keys,
        lagging: plan.lagging,
        behind: Vec::new(),
        forced: plan.forced,
        compromised,
        next_at: plan.next_at,
        next_rotation_at: plan.next_rotation_at,
    };
    let active = rotation.active().to_owned();
    rotation.behind = verifiers.into_iter().filter(|v| !v.kids.contains(&active)).map(|v| v.id).collect();
    (rotation, pems)
}

fn jwks(keys: &[Key], pems: &BTreeMap<String, Vec<u8>>) -> String {
    let jwks: Vec<_> = pems
        .iter()
        .filter(|(kid, _)| keys.iter().any(|k| k.kid == **kid))
        .map(|(kid, pem)| {
            KeyPair::from_pem(kid, pem).expect("PEMs were checked").public_jwk(Some(kid.clone()))
        })
        .collect();
    serde_json::json!({ "keys": jwks }).to_string()
}

fn keys_secret(policy: &TokenPolicy, rotation: &Rotation, pems: &BTreeMap<String, Vec<u8>>) -> Secret {
    let mut data: BTreeMap<String, ByteString> =
        pems.iter().map(|(kid, pem)| (keyfmt::pem_entry(kid), ByteString(pem.clone()))).collect();
    data.insert(keyfmt::ACTIVE.into(), ByteString(rotation.active().as_bytes().to_vec()));
    let recorded: Vec<Recorded> = rotation
        .keys
        .iter()
        .map(|k| Recorded { kid: k.kid.clone(), state: k.state, since: k.since })
        .collect();
    let name = policy.metadata.name.clone().unwrap_or_default();
    let mut metadata = managed_meta(policy, policy.keys_secret_name(), [("tokenplane.io/policy", name)]);
    metadata.annotations =
        Some(BTreeMap::from([(KEY_STATES.to_owned(), serde_json::to_string(&recorded).expect("states"))]));
    Secret { metadata, type_: Some("Opaque".into()), data: Some(data), ..Secret::default() }
}

fn issuer_secret(policy: &TokenPolicy, user: &AclUser, password: &str, env: &Environment) -> Secret {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let mut data = BTreeMap::from([
        (REDIS_USERNAME.to_owned(), ByteString(user.name.as_bytes().to_vec())),
        (REDIS_PASSWORD.to_owned(), ByteString(password.as_bytes().to_vec())),
    ]);
    if let Some(login) = &env.sentinel_login {
        data.insert(SENTINEL_USERNAME.into(), ByteString(login.username.as_bytes().to_vec()));
        data.insert(SENTINEL_PASSWORD.into(), ByteString(login.password.as_bytes().to_vec()));
    }
    Secret {
        metadata: managed_meta(policy, format!("{name}-issuer-redis"), [("tokenplane.io/policy", name)]),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
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

/// Sentinels and master name as issuer pods reach them: the policy's
/// RedisSentinelCluster's Service, else the operator's own.
fn sentinels(policy: &TokenPolicy, env: &Environment) -> String {
    match &policy.spec.redis_ref {
        Some(cluster) => format!(
            "{cluster}-sentinel.{}.svc:{SENTINEL_PORT}",
            policy.metadata.namespace.as_deref().unwrap_or_default()
        ),
        None => env.sentinels.join(","),
    }
}

fn deployment(
    policy: &TokenPolicy,
    env: &Environment,
    user: &AclUser,
    labels: &BTreeMap<String, String>,
) -> Deployment {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let namespace = policy.metadata.namespace.clone().unwrap_or_default();
    let shape = policy.spec.issuer_deployment.clone().unwrap_or_default();
    let mut args = vec![
        "issuer",
        "--policy",
        &format!("{namespace}/{name}"),
        "--keys-dir",
        KEYS_MOUNT,
        "--listen",
        &format!("0.0.0.0:{ISSUER_PORT}"),
        "--redis-sentinels",
        &sentinels(policy, env),
        "--redis-master",
        &env.master_name,
        "--redis-username",
        &user.name,
        "--redis-password-file",
        &format!("{REDIS_MOUNT}/{REDIS_PASSWORD}"),
        "--log-format",
        "json",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    if let Some(login) = &env.sentinel_login {
        args.extend([
            "--redis-sentinel-username".to_owned(),
            login.username.clone(),
            "--redis-sentinel-password-file".to_owned(),
            format!("{REDIS_MOUNT}/{SENTINEL_PASSWORD}"),
        ]);
    }
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(ISSUER_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    };
    let secret_volume = |volume: &str, secret: String| Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = |volume: &str, path: &str| VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let container = Container {
        name: "issuer".into(),
        image: Some(shape.image.clone().unwrap_or_else(|| env.image.clone())),
        args: Some(args),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: ISSUER_PORT,
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(probe("/readyz")),
        liveness_probe: Some(Probe { failure_threshold: Some(6), ..probe("/healthz") }),
        resources: Some(shape.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(restricted()),
        volume_mounts: Some(vec![mount("keys", KEYS_MOUNT), mount("redis", REDIS_MOUNT)]),
        ..Container::default()
    };
    Deployment {
        metadata: issuer_meta(policy, labels),
        spec: Some(DeploymentSpec {
            // No replicas: the HorizontalPodAutoscaler owns the count.
            selector: selector(labels),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels.clone()), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        // The mounted Secrets are readable by this group only.
                        fs_group: Some(ISSUER_UID),
                        run_as_non_root: Some(true),
                        seccomp_profile: Some(runtime_default()),
                        ..PodSecurityContext::default()
                    }),
                    volumes: Some(vec![
                        secret_volume("keys", policy.keys_secret_name()),
                        secret_volume("redis", format!("{name}-issuer-redis")),
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }
}

/// The `restricted` Pod Security Standard, and a read-only root.
fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(ISSUER_UID),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

/// About 26k tokens/s per core were measured (docs/benchmarks.md); a tenth
/// of a core and 64 MiB serve a small cluster, the autoscaler the rest.
fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.into());
    ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".into(), q("100m")), ("memory".into(), q("64Mi"))])),
        limits: Some(BTreeMap::from([("memory".into(), q("128Mi"))])),
        ..ResourceRequirements::default()
    }
}

fn service(policy: &TokenPolicy, labels: &BTreeMap<String, String>) -> Service {
    Service {
        metadata: issuer_meta(policy, labels),
        spec: Some(ServiceSpec {
            selector: Some(labels.clone()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn pdb(policy: &TokenPolicy, labels: &BTreeMap<String, String>) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: issuer_meta(policy, labels),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(labels)),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

fn hpa(policy: &TokenPolicy) -> HorizontalPodAutoscaler {
    let shape = policy.spec.issuer_deployment.clone().unwrap_or_default();
    let labels = issuer_labels(policy.metadata.name.as_deref().unwrap_or_default());
    let meta = issuer_meta(policy, &labels);
    HorizontalPodAutoscaler {
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: meta.name.clone().unwrap_or_default(),
            },
            min_replicas: Some(shape.replicas),
            max_replicas: shape.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(70),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        metadata: meta,
        ..HorizontalPodAutoscaler::default()
    }
}

/// The pods of each client's `workloadSelector`, in the client's namespace.
/// A client without one selects nothing: deny by default.
fn workloads(clients: &[OAuth2Client]) -> Vec<NetworkPolicyPeer> {
    clients
        .iter()
        .filter_map(|c| {
            let namespace = c.metadata.namespace.clone()?;
            Some(NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("kubernetes.io/metadata.name".into(), namespace)])),
                    ..LabelSelector::default()
                }),
                pod_selector: Some(c.spec.workload_selector.clone()?),
                ..NetworkPolicyPeer::default()
            })
        })
        .collect()
}

/// A rule admitting `from` on `ports`; none without sources, since a rule
/// with an empty `from` admits every source.
fn ingress(from: Vec<NetworkPolicyPeer>, ports: &[i32]) -> Vec<NetworkPolicyIngressRule> {
    if from.is_empty() {
        return Vec::new();
    }
    let ports = ports
        .iter()
        .map(|p| NetworkPolicyPort {
            port: Some(IntOrString::Int(*p)),
            protocol: Some("TCP".into()),
            ..NetworkPolicyPort::default()
        })
        .collect();
    vec![NetworkPolicyIngressRule { from: Some(from), ports: Some(ports) }]
}

/// Only the clients' workloads reach the issuer. With a `redisRef`, only
/// they, the issuers, the Redis set itself and the operator reach Redis.
/// NetworkPolicies add up: a platform's own policy can let an ingress
/// controller reach the issuer for the browser-facing code flow.
fn network_policies(
    policy: &TokenPolicy,
    clients: &[OAuth2Client],
    operator_namespace: &str,
    issuer: &BTreeMap<String, String>,
) -> Vec<NetworkPolicy> {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let netpol = |suffix: &str, pods: LabelSelector, rules| NetworkPolicy {
        metadata: managed_meta(policy, format!("{name}-{suffix}"), [("tokenplane.io/policy", name.clone())]),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(rules),
            ..NetworkPolicySpec::default()
        }),
    };
    let mut policies = vec![netpol("issuer", selector(issuer), ingress(workloads(clients), &[ISSUER_PORT]))];
    if let Some(cluster) = &policy.spec.redis_ref {
        let redis = BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), "redis".to_owned()),
            ("app.kubernetes.io/instance".to_owned(), cluster.clone()),
        ]);
        let operator = NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".into(),
                    operator_namespace.to_owned(),
                )])),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        };
        let pods = |labels| NetworkPolicyPeer {
            pod_selector: Some(selector(labels)),
            ..NetworkPolicyPeer::default()
        };
        let mut from = workloads(clients);
        from.extend([pods(issuer), pods(&redis), operator]);
        policies.push(netpol("redis", selector(&redis), ingress(from, &[REDIS_PORT, SENTINEL_PORT])));
    }
    policies
}

#[cfg(test)]
mod tests {
    use tokenplane_api::tokenpolicy::SigningAlgorithm;

    use super::*;

    const DAY: u64 = 86_400;

    fn policy(yaml: &str) -> TokenPolicy {
        let mut policy: TokenPolicy = serde_norway::from_str(yaml).expect("fixture parses");
        policy.metadata.uid = Some("uid-p".into());
        policy
    }

    const DEFAULT: &str = "
apiVersion: tokenplane.io/v1alpha1
kind: TokenPolicy
metadata: {name: default, namespace: auth}
spec:
  signing: {rotationInterval: 720h, propagationTimeout: 10m}
  issuerDeployment: {replicas: 3, maxReplicas: 5}
";

    fn client(name: &str, namespace: &str, selector: Option<&str>) -> OAuth2Client {
        let selector = selector
            .map(|s| format!("\n  workloadSelector: {{matchLabels: {{app: {s}}}}}"))
            .unwrap_or_default();
        serde_norway::from_str(&format!(
            "apiVersion: tokenplane.io/v1alpha1\nkind: OAuth2Client\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
             spec:\n  policyRef: {{name: default, namespace: auth}}\n  audiences: [https://api]{selector}"
        ))
        .unwrap()
    }

    fn env() -> Environment {
        Environment {
            image: "tokenplane/sidecar:test".into(),
            sentinels: vec!["sentinel.redis.svc:26379".into()],
            master_name: "tokenplane".into(),
            sentinel_login: Some(SentinelLogin {
                username: "sentinel-client".into(),
                password: "sentinel-pw".into(),
            }),
            operator_namespace: "tokenplane-system".into(),
        }
    }

    fn new_key() -> (String, Vec<u8>) {
        let key = KeyPair::generate(SigningAlgorithm::EdDSA).unwrap();
        (key.thumbprint(), key.to_pem().into_bytes())
    }

    /// Reconciles `policy` at `now` on top of the keys Secret `previous` produced.
    fn reconcile(
        policy: &TokenPolicy,
        previous: Option<&Secret>,
        heartbeats: &[(String, VerifierHeartbeat)],
        now: u64,
    ) -> Desired {
        let env = env();
        let clients = [client("orders", "shop", Some("orders")), client("batch", "jobs", None)];
        let inputs = Inputs {
            policy,
            keys: Keys::read(previous, now).unwrap(),
            heartbeats,
            clients: &clients,
            issuer_password: "issuer-password",
            env: &env,
            now,
        };
        desired(inputs, new_key).unwrap()
    }

    fn states(d: &Desired) -> Vec<KeyState> {
        d.rotation.keys.iter().map(|k| k.state).collect()
    }

    fn jwks_kids(d: &Desired) -> Vec<String> {
        let jwks: serde_json::Value = serde_json::from_str(&d.jwks).unwrap();
        jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
    }

    fn beat(issuer: &str, kids: &[&str]) -> VerifierHeartbeat {
        VerifierHeartbeat {
            issuer: issuer.into(),
            kids: kids.iter().map(|k| (*k).to_owned()).collect(),
            signing: None,
        }
    }

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
        assert_eq!(d.record.issuer, "http://default-issuer.auth.svc");
        assert_eq!(d.policy_id, "default.auth");
        assert_eq!(d.issuer_user.name, "issuer:default.auth");
        assert_eq!(d.rotation.next_rotation_at, 1000 + 30 * DAY);
        assert_eq!(d.rotation.next_at, 1000 + 30 * DAY - 600, "wakes to publish the next key");
        let owner = &d.keys_secret.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("TokenPolicy", "uid-p"));
    }

    #[test]
    fn a_rotation_publishes_then_promotes_once_every_verifier_of_this_issuer_holds_the_key() {
        let p = policy(DEFAULT);
        let first = reconcile(&p, None, &[], 0);
        let k1 = first.rotation.active().to_owned();
        let publish_at = 30 * DAY - 300;
        let published = reconcile(&p, Some(&first.keys_secret), &[], publish_at);
        assert_eq!(states(&published), [KeyState::Active, KeyState::Published]);
        let k2 = published.rotation.keys[1].kid.clone();
        assert_eq!(published.rotation.active(), k1, "the new key does not sign yet");
        assert_eq!(jwks_kids(&published).len(), 2, "but it is published");

        let issuer = "http://default-issuer.auth.svc";
        let lagging = [
            ("agent:a".to_owned(), beat(issuer, &[&k1, &k2])),
            ("agent:b".to_owned(), beat(issuer, &[&k1])),
            ("agent:other".to_owned(), beat("https://other.example", &[])),
        ];
        let due = reconcile(&p, Some(&published.keys_secret), &lagging, 30 * DAY);
        assert_eq!(due.rotation.active(), k1, "agent:b does not hold the new key yet");
        assert_eq!(due.rotation.lagging, ["agent:b"], "another issuer's verifiers are not waited for");
        assert!(due.rotation.next_at <= 30 * DAY + 30, "looks again soon");

        let forced = reconcile(&p, Some(&due.keys_secret), &lagging, publish_at + 600);
        assert_eq!(forced.rotation.active(), k2, "the propagation timeout bounds the wait");
        assert!(forced.rotation.forced);
        assert_eq!(forced.rotation.behind, ["agent:b"], "the one that cannot verify new tokens");

        let caught_up = [("agent:b".to_owned(), beat(issuer, &[&k1, &k2]))];
        let promoted = reconcile(&p, Some(&due.keys_secret), &caught_up, 30 * DAY + 20);
        assert_eq!(promoted.rotation.active(), k2);
        assert_eq!(states(&promoted), [KeyState::Retiring, KeyState::Active]);
        assert_eq!(promoted.keys_secret.data.as_ref().unwrap()["active"].0, k2.as_bytes());
        assert!(promoted.rotation.behind.is_empty() && !promoted.rotation.forced);

        let retired = reconcile(&p, Some(&promoted.keys_secret), &[], 30 * DAY + 20 + 900 + RETIRE_MARGIN);
        assert_eq!(jwks_kids(&retired), [k2.as_str()], "retired once every token it signed expired");
        assert!(!retired.keys_secret.data.as_ref().unwrap().contains_key(&format!("{k1}.pem")));
    }

    #[test]
    fn a_compromised_key_leaves_at_once_and_a_new_one_signs() {
        let mut p = policy(DEFAULT);
        let first = reconcile(&p, None, &[], 0);
        let k1 = first.rotation.active().to_owned();
        p.metadata.annotations = Some(BTreeMap::from([(COMPROMISED_KEY.to_owned(), k1.clone())]));
        let d = reconcile(&p, Some(&first.keys_secret), &[], 60);
        assert_eq!(d.rotation.compromised.as_deref(), Some(k1.as_str()));
        assert_ne!(d.rotation.active(), k1);
        assert!(!jwks_kids(&d).contains(&k1), "tokens it signed stop verifying");
        let again = reconcile(&p, Some(&d.keys_secret), &[], 120);
        assert_eq!(again.rotation.compromised, None, "handled once: the annotation names a key that is gone");
        assert_eq!(again.rotation.active(), d.rotation.active());
    }

    #[test]
    fn a_hand_made_keys_secret_is_adopted_and_a_broken_one_refused() {
        let (kid, pem) = new_key();
        let mut secret = Secret {
            data: Some(BTreeMap::from([
                (format!("{kid}.pem"), ByteString(pem)),
                ("active".into(), ByteString(kid.as_bytes().to_vec())),
            ])),
            ..Secret::default()
        };
        let d = reconcile(&policy(DEFAULT), Some(&secret), &[], 5);
        assert_eq!(d.rotation.active(), kid, "its active key keeps signing");
        secret.data.as_mut().unwrap().insert(format!("{kid}.pem"), ByteString(b"not a key".to_vec()));
        let invalid = Keys::read(Some(&secret), 5).unwrap_err();
        assert_eq!(invalid.reason, "InvalidKeys");
        assert!(invalid.message.contains(&kid), "{}", invalid.message);
    }

    #[test]
    fn the_issuer_runs_restricted_with_its_keys_and_own_redis_user() {
        let d = reconcile(&policy(DEFAULT), None, &[], 0);
        let spec = d.deployment.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, None, "the autoscaler owns the replica count");
        let pod = spec.template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        let args = c.args.as_ref().unwrap().join(" ");
        assert!(
            args.starts_with("issuer --policy auth/default --keys-dir /var/run/tokenplane/keys"),
            "{args}"
        );
        assert!(args.contains("--redis-username issuer:default.auth"), "{args}");
        assert!(args.contains("--redis-sentinels sentinel.redis.svc:26379"), "{args}");
        assert!(
            args.ends_with("--redis-sentinel-username sentinel-client --redis-sentinel-password-file /var/run/tokenplane/redis/sentinel_password"),
            "{args}"
        );
        assert!(
            !args.contains("issuer-password") && !args.contains("sentinel-pw"),
            "passwords are mounted, never arguments"
        );
        assert_eq!(d.issuer_secret.data.as_ref().unwrap()[SENTINEL_PASSWORD].0, b"sentinel-pw");
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_owned()][..]));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.fs_group, sc.run_as_user, "the non-root user can read its mounted Secrets");
        let volumes: Vec<_> = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.secret.as_ref().unwrap().secret_name.clone())
            .collect();
        assert_eq!(volumes, [Some("default-signing-keys".into()), Some("default-issuer-redis".into())]);
        assert_eq!(d.issuer_secret.data.as_ref().unwrap()[REDIS_PASSWORD].0, b"issuer-password");
        let hpa = d.hpa.spec.as_ref().unwrap();
        assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(3), 5));
        assert_eq!(d.service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port, 80);
    }

    #[test]
    fn only_the_clients_selected_workloads_reach_the_issuer_and_redis() {
        let d = reconcile(&policy(DEFAULT), None, &[], 0);
        assert_eq!(d.network_policies.len(), 1, "no redisRef: Redis is not ours to fence");
        let rule = &d.network_policies[0].spec.as_ref().unwrap().ingress.as_ref().unwrap()[0];
        let from = rule.from.as_ref().unwrap();
        assert_eq!(from.len(), 1, "the client without a workloadSelector gets no access");
        let ns = from[0].namespace_selector.as_ref().unwrap().match_labels.as_ref().unwrap();
        assert_eq!(ns["kubernetes.io/metadata.name"], "shop");
        assert_eq!(from[0].pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["app"], "orders");

        let env = env();
        let nobody = Inputs {
            policy: &policy(DEFAULT),
            keys: Keys::default(),
            heartbeats: &[],
            clients: &[client("batch", "jobs", None)],
            issuer_password: "x",
            env: &env,
            now: 0,
        };
        let closed = desired(nobody, new_key).unwrap().network_policies.remove(0).spec.unwrap();
        assert_eq!(
            closed.ingress,
            Some(vec![]),
            "no workload selected: nothing admitted (an empty from admits all)"
        );

        let with_redis = policy(&format!("{DEFAULT}  redisRef: tokens\n"));
        let d = reconcile(&with_redis, None, &[], 0);
        let redis = d.network_policies[1].spec.as_ref().unwrap();
        assert_eq!(
            redis.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["app.kubernetes.io/instance"],
            "tokens"
        );
        let from = redis.ingress.as_ref().unwrap()[0].from.as_ref().unwrap();
        assert_eq!(from.len(), 4, "the workload, the issuers, the Redis set, the operator: {from:?}");
        let args =
            d.deployment.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap().join(" ");
        assert!(args.contains("--redis-sentinels tokens-sentinel.auth.svc:26379"), "{args}");
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
            issuer_password: "x",
            env: &env,
            now: 0,
        };
        let invalid = desired(inputs, new_key).err().expect("refused");
        assert_eq!(invalid.reason, "InvalidSpec");
        assert!(invalid.message.contains("spec.lifetimes.accessToken"), "{}", invalid.message);
    }
}
