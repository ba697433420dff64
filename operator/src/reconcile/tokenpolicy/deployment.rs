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
use tokenplane_api::TokenPolicy;
use tokenplane_api::credentials::{REDIS_PASSWORD, REDIS_USERNAME};

use super::tls::{TLS_CRT, TLS_KEY, serving_secret_name};
use super::{Environment, ISSUER_PORT, SENTINEL_PORT, issuer_meta, selector};
use crate::reconcile::pod::{pod_security, read_only_mount, restricted, secret_volume};
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

pub(super) fn issuer_secret(
    policy: &TokenPolicy,
    user: &AclUser,
    password: &str,
    env: &Environment,
) -> Secret {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let mut data = BTreeMap::from([
        (REDIS_USERNAME.to_owned(), ByteString(user.name.as_bytes().to_vec())),
        (REDIS_PASSWORD.to_owned(), ByteString(password.as_bytes().to_vec())),
    ]);
    if let Some(login) = &env.sentinel_login {
        data.insert(SENTINEL_USERNAME.into(), ByteString(login.username.as_bytes().to_vec()));
        data.insert(SENTINEL_PASSWORD.into(), ByteString(login.password.as_bytes().to_vec()));
    }
    if let Some(ca) = env.redis_tls.as_ref().filter(|ca| !ca.is_empty()) {
        data.insert(REDIS_CA.into(), ByteString(ca.clone()));
    }
    Secret {
        metadata: managed_meta(policy, format!("{name}-issuer-redis"), [("tokenplane.io/policy", name)]),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
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

pub(super) fn deployment(
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
    if let Some(login) = &env.sentinel_login {
        args.extend([
            "--redis-sentinel-username".to_owned(),
            login.username.clone(),
            "--redis-sentinel-password-file".to_owned(),
            format!("{REDIS_MOUNT}/{SENTINEL_PASSWORD}"),
        ]);
    }
    if let Some(ca) = &env.redis_tls {
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
                metadata: Some(ObjectMeta { labels: Some(labels.clone()), ..ObjectMeta::default() }),
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
            let d = deployment(&p, env, &user, &labels);
            d.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap().join(" ")
        };
        assert!(args(&env).ends_with("--redis-tls --redis-ca-file /var/run/tokenplane/redis/redis_ca.crt"));
        let secret = issuer_secret(&p, &user, "pw", &env);
        assert_eq!(secret.data.unwrap()[REDIS_CA].0, b"-----BEGIN CERTIFICATE-----");
        env.redis_tls = Some(Vec::new());
        assert!(args(&env).ends_with("--redis-tls"), "the system's roots");
        env.redis_tls = None;
        assert!(!args(&env).contains("--redis-tls"));
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
