//! The issuer's Deployment, and the Redis Secret its pods mount.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokenplane_api::credentials::{REDIS_PASSWORD, REDIS_USERNAME};
use tokenplane_api::{RedisSentinelCluster, TokenPolicy};

use super::tls::{TLS_CRT, TLS_KEY, serving_secret_name};
use super::{Environment, ISSUER_PORT, SENTINEL_PORT, issuer_meta, selector};
use crate::reconcile::pod::{pod_security, read_only_mount, restricted, secret_volume};
use crate::reconcile::redis_password::{Credentials, OWNED_KEYS};
use crate::reconcile::{AclUser, managed_meta};

const KEYS_MOUNT: &str = "/var/run/tokenplane/keys";
const REDIS_MOUNT: &str = "/var/run/tokenplane/redis";
const TLS_MOUNT: &str = "/var/run/tokenplane/tls";
/// The issuer image's non-root user (distroless `nonroot`).
const ISSUER_UID: i64 = 65532;

/// Secret entries of the Sentinel login in the issuer's Redis Secret.
const SENTINEL_USERNAME: &str = "sentinel_username";
const SENTINEL_PASSWORD: &str = "sentinel_password";
/// The CA bundle issuers verify Redis and the Sentinels with.
const REDIS_CA: &str = "redis_ca.crt";
/// The pod template annotation that rolls the issuers on a new Redis CA bundle.
const REDIS_CA_FINGERPRINT: &str = "tokenplane.io/redis-ca-fingerprint";

/// Where a policy's issuers find Redis.
#[derive(Clone, Copy)]
pub(crate) enum IssuerRedis<'a> {
    /// The operator's `--redis-*` Redis, logging in to its Sentinels as the
    /// operator was told to.
    Operator(&'a Environment),
    /// The policy's RedisSentinelCluster (`redisRef`), logging in to its
    /// Sentinels as the issuer's own user, over its Sentinel Service; with
    /// TLS, the CA bundle its certificate is verified against.
    Cluster(&'a RedisSentinelCluster, Option<&'a [u8]>),
}

impl IssuerRedis<'_> {
    pub(crate) fn sentinels(&self, policy: &TokenPolicy) -> String {
        match self {
            IssuerRedis::Operator(env) => env.sentinels.join(","),
            IssuerRedis::Cluster(cluster, _) => format!(
                "{}-sentinel.{}.svc:{SENTINEL_PORT}",
                cluster.metadata.name.as_deref().unwrap_or_default(),
                policy.metadata.namespace.as_deref().unwrap_or_default()
            ),
        }
    }

    pub(crate) fn master_name(&self) -> &str {
        match self {
            IssuerRedis::Operator(env) => &env.master_name,
            IssuerRedis::Cluster(cluster, _) => &cluster.spec.master_name,
        }
    }

    /// The Sentinel username and the file of its password in the mount.
    fn sentinel_login(&self, user: &AclUser) -> Option<(String, &'static str)> {
        match self {
            IssuerRedis::Operator(env) => {
                env.sentinel_login.as_ref().map(|l| (l.username.clone(), SENTINEL_PASSWORD))
            }
            IssuerRedis::Cluster(..) => Some((user.name.clone(), REDIS_PASSWORD)),
        }
    }

    /// The CA bundle to verify Redis with, with TLS (empty: the system's roots).
    fn tls(&self) -> Option<&[u8]> {
        match self {
            IssuerRedis::Operator(env) => env.redis_tls.as_deref(),
            IssuerRedis::Cluster(_, ca) => *ca,
        }
    }
}

/// The issuer's Redis login, with its password's rotation state.
pub(super) fn issuer_secret(
    policy: &TokenPolicy,
    user: &AclUser,
    credentials: &Credentials,
    redis: IssuerRedis<'_>,
) -> Secret {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let (mut data, times) = credentials.written(&OWNED_KEYS);
    data.insert(REDIS_USERNAME.to_owned(), ByteString(user.name.as_bytes().to_vec()));
    if let IssuerRedis::Operator(Environment { sentinel_login: Some(login), .. }) = redis {
        data.insert(SENTINEL_USERNAME.into(), ByteString(login.username.as_bytes().to_vec()));
        data.insert(SENTINEL_PASSWORD.into(), ByteString(login.password.as_bytes().to_vec()));
    }
    if let Some(ca) = redis.tls().filter(|ca| !ca.is_empty()) {
        data.insert(REDIS_CA.into(), ByteString(ca.to_vec()));
    }
    let mut metadata = managed_meta(policy, format!("{name}-issuer-redis"), [("tokenplane.io/policy", name)]);
    metadata.annotations.get_or_insert_default().extend(times);
    Secret { metadata, type_: Some("Opaque".into()), data: Some(data), ..Secret::default() }
}

pub(super) fn deployment(
    policy: &TokenPolicy,
    env: &Environment,
    redis: IssuerRedis<'_>,
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
        &redis.sentinels(policy),
        "--redis-master",
        redis.master_name(),
        "--redis-username",
        &user.name,
        "--redis-password-file",
        &format!("{REDIS_MOUNT}/{REDIS_PASSWORD}"),
        "--tls-cert-file",
        &format!("{TLS_MOUNT}/{TLS_CRT}"),
        "--tls-key-file",
        &format!("{TLS_MOUNT}/{TLS_KEY}"),
        "--log-format",
        "json",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    if let Some((username, password_file)) = redis.sentinel_login(user) {
        args.extend([
            "--redis-sentinel-username".to_owned(),
            username,
            "--redis-sentinel-password-file".to_owned(),
            format!("{REDIS_MOUNT}/{password_file}"),
        ]);
    }
    if let Some(ca) = redis.tls() {
        args.push("--redis-tls".to_owned());
        if !ca.is_empty() {
            args.extend(["--redis-ca-file".to_owned(), format!("{REDIS_MOUNT}/{REDIS_CA}")]);
        }
    }
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(ISSUER_PORT),
            scheme: Some("HTTPS".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    };
    let container = Container {
        name: "issuer".into(),
        image: Some(shape.image.clone().unwrap_or_else(|| env.image.clone())),
        args: Some(args),
        ports: Some(vec![ContainerPort {
            name: Some("https".into()),
            container_port: ISSUER_PORT,
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(probe("/readyz")),
        liveness_probe: Some(Probe { failure_threshold: Some(6), ..probe("/healthz") }),
        resources: Some(shape.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(restricted(ISSUER_UID)),
        volume_mounts: Some(vec![
            read_only_mount("keys", KEYS_MOUNT),
            read_only_mount("redis", REDIS_MOUNT),
            read_only_mount("tls", TLS_MOUNT),
        ]),
        ..Container::default()
    };
    Deployment {
        metadata: issuer_meta(policy, labels),
        spec: Some(DeploymentSpec {
            // No replicas: the HorizontalPodAutoscaler owns the count.
            selector: selector(labels),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    annotations: redis_ca_annotation(redis),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(false),
                    security_context: Some(pod_security(ISSUER_UID)),
                    volumes: Some(vec![
                        secret_volume("keys", policy.keys_secret_name()),
                        secret_volume("redis", format!("{name}-issuer-redis")),
                        secret_volume("tls", serving_secret_name(&name)),
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The issuer reads its Redis CA bundle at start: a changed one (a next CA
/// published, an old one retired) rolls the issuers before a certificate
/// of the new CA is served.
fn redis_ca_annotation(redis: IssuerRedis<'_>) -> Option<BTreeMap<String, String>> {
    let ca = redis.tls().filter(|ca| !ca.is_empty())?;
    let fingerprint = tokenplane_api::acl::sha256_hex(ca)[..16].to_owned();
    Some(BTreeMap::from([(REDIS_CA_FINGERPRINT.to_owned(), fingerprint)]))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::tokenpolicy::fixtures::{DEFAULT, policy, reconcile};

    #[test]
    fn with_redis_over_tls_issuers_get_the_flag_and_the_ca_in_their_redis_secret() {
        let user = AclUser { name: "issuer:default.auth".into(), rules: String::new() };
        let labels = BTreeMap::new();
        let mut env = crate::reconcile::tokenpolicy::fixtures::env();
        env.redis_tls = Some(b"-----BEGIN CERTIFICATE-----".to_vec());
        let p = policy(DEFAULT);
        let args = |env: &Environment| {
            let d = deployment(&p, env, IssuerRedis::Operator(env), &user, &labels);
            d.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap().join(" ")
        };
        assert!(args(&env).ends_with("--redis-tls --redis-ca-file /var/run/tokenplane/redis/redis_ca.crt"));
        let secret = issuer_secret(&p, &user, &Credentials::new("pw".into(), 0), IssuerRedis::Operator(&env));
        assert_eq!(secret.data.unwrap()[REDIS_CA].0, b"-----BEGIN CERTIFICATE-----");
        env.redis_tls = Some(Vec::new());
        assert!(args(&env).ends_with("--redis-tls"), "the system's roots");
        env.redis_tls = None;
        assert!(!args(&env).contains("--redis-tls"));
    }

    #[test]
    fn with_a_redis_ref_issuers_use_the_cluster_and_log_in_to_its_sentinels_as_themselves() {
        let d = reconcile(&policy(&format!("{DEFAULT}  redisRef: tokens\n")), None, &[], 0);
        let pod = d.deployment.spec.unwrap().template.spec.unwrap();
        let args = pod.containers[0].args.clone().unwrap().join(" ");
        assert!(
            args.contains("--redis-sentinels tokens-sentinel.auth.svc:26379 --redis-master tokens-master"),
            "{args}"
        );
        assert!(
            args.ends_with(
                "--redis-sentinel-username issuer:default.auth --redis-sentinel-password-file /var/run/tokenplane/redis/redis_password"
            ),
            "{args}"
        );
        let data = d.issuer_secret.data.unwrap();
        assert!(!data.contains_key(SENTINEL_PASSWORD), "the operator's Sentinel login is not handed out");
        assert_eq!(data[REDIS_PASSWORD].0, b"issuer-password");
    }

    #[test]
    fn on_a_cluster_with_tls_issuers_verify_its_members_against_its_ca() {
        let user = AclUser { name: "issuer:default.auth".into(), rules: String::new() };
        let p = policy(&format!("{DEFAULT}  redisRef: tokens\n"));
        let cluster = crate::reconcile::tokenpolicy::fixtures::cluster("tokens", "auth");
        let env = crate::reconcile::tokenpolicy::fixtures::env();
        let redis = IssuerRedis::Cluster(&cluster, Some(b"cluster CA"));
        let d = deployment(&p, &env, redis, &user, &BTreeMap::new());
        let args = d.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap().join(" ");
        assert!(
            args.contains("--redis-tls --redis-ca-file /var/run/tokenplane/redis/redis_ca.crt"),
            "{args}"
        );
        let secret = issuer_secret(&p, &user, &Credentials::new("pw".into(), 0), redis);
        assert_eq!(secret.data.unwrap()[REDIS_CA].0, b"cluster CA");
        let rolled = |ca: &'static [u8]| {
            let d = deployment(&p, &env, IssuerRedis::Cluster(&cluster, Some(ca)), &user, &BTreeMap::new());
            d.spec.unwrap().template.metadata.unwrap().annotations.unwrap()[REDIS_CA_FINGERPRINT].clone()
        };
        assert_ne!(
            rolled(b"cluster CA"),
            rolled(b"cluster CA and the next"),
            "a new bundle rolls the issuers"
        );
        let plain = deployment(&p, &env, IssuerRedis::Cluster(&cluster, None), &user, &BTreeMap::new());
        assert!(!serde_json::to_string(&plain).unwrap().contains("--redis-tls"));
        assert!(plain.spec.unwrap().template.metadata.unwrap().annotations.is_none());
    }

    #[test]
    fn the_issuer_secret_keeps_a_rotation_under_its_own_keys() {
        let user = AclUser { name: "issuer:default.auth".into(), rules: String::new() };
        let env = crate::reconcile::tokenpolicy::fixtures::env();
        let begun = crate::reconcile::redis_password::rotation::begin(
            &Credentials::new("current".into(), 17),
            "next".into(),
        );
        let secret = issuer_secret(&policy(DEFAULT), &user, &begun, IssuerRedis::Operator(&env));
        assert_eq!(Credentials::read(&secret, &OWNED_KEYS, 0), Some(begun));
        let data = secret.data.unwrap();
        assert_eq!(data[REDIS_PASSWORD].0, b"current", "the issuer logs in with the current one");
        assert_eq!(data[REDIS_USERNAME].0, b"issuer:default.auth");
    }

    #[test]
    fn a_redis_ref_to_a_missing_cluster_is_refused() {
        let p = policy(&format!("{DEFAULT}  redisRef: tokens\n"));
        let env = crate::reconcile::tokenpolicy::fixtures::env();
        let inputs = super::super::Inputs {
            policy: &p,
            keys: super::super::Keys::default(),
            heartbeats: &[],
            clients: &[],
            cluster: None,
            cluster_ca: None,
            issuer_redis: &Credentials::new("x".into(), 0),
            env: &env,
            serving: crate::reconcile::tokenpolicy::fixtures::serving(),
            now: 0,
        };
        let refused =
            super::super::desired(inputs, crate::reconcile::tokenpolicy::fixtures::new_key).err().unwrap();
        assert_eq!(refused.reason, "RedisClusterNotFound");
        assert!(refused.message.contains("auth/tokens"), "{}", refused.message);
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
        assert_eq!(
            volumes,
            [
                Some("default-signing-keys".into()),
                Some("default-issuer-redis".into()),
                Some("default-issuer-tls".into())
            ]
        );
        assert!(
            args.contains("--tls-cert-file /var/run/tokenplane/tls/tls.crt --tls-key-file /var/run/tokenplane/tls/tls.key"),
            "{args}"
        );
        assert!(!args.contains("--insecure-http"), "{args}");
        let probe = c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(probe.scheme.as_deref(), Some("HTTPS"));
        assert_eq!(d.issuer_secret.data.as_ref().unwrap()[REDIS_PASSWORD].0, b"issuer-password");
        let hpa = d.hpa.spec.as_ref().unwrap();
        assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(3), 5));
        assert_eq!(d.service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port, 443);
    }
}
