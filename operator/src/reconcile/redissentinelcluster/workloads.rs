//! The StatefulSets of the data nodes and of the Sentinels. Each pod starts
//! with `tokenplane-sidecar redis-node start` (an init container): it asks
//! the Sentinels who the master is before Redis serves, so a returning old
//! master comes back as a replica, and it writes the final configuration
//! with the passwords from the mounted role Secrets.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, Lifecycle,
    LifecycleHandler, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm,
    PodAntiAffinity, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements,
    SecretKeySelector, SecretProjection, TCPSocketAction, TopologySpreadConstraint, Volume, VolumeProjection,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, KeyToPath};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokenplane_api::RedisSentinelCluster;
use tokenplane_api::redis::AclRole;

use super::config::{REDIS_CONF, SENTINEL_CONF};
use tokenplane_api::acl::username;

use super::tls::{FINGERPRINT, TLS_MOUNT, Tls};
use super::users::{ALSO_HASH, HASH, PASSWORD};
use super::{EXPORTER_PORT, Environment, Names, REDIS_PORT, SENTINEL_PORT, meta, quorum, selector};
use crate::reconcile::ca::BUNDLE_KEY;
use crate::reconcile::pod::{mount, pod_security, read_only_mount, restricted, secret_volume};

/// The official Redis image's `redis` user.
const REDIS_UID: i64 = 999;
/// The tokenplane image's non-root user (distroless `nonroot`).
pub(super) const TOKENPLANE_UID: i64 = 65532;
/// oliver006/redis_exporter's user.
const EXPORTER_UID: i64 = 59000;
const CONFIG_MOUNT: &str = "/etc/tokenplane/redis";
const USERS_MOUNT: &str = "/var/run/tokenplane/users";
const RUNTIME_MOUNT: &str = "/run/tokenplane";
const DATA_MOUNT: &str = "/data";
/// The start-up step's copy of tokenplane-sidecar, for the preStop hand-over.
const SELF_COPY: &str = "/run/tokenplane/tokenplane-sidecar";
/// Longer than the hand-over's own bound (20 s): a master that leaves
/// waits for the Sentinels to name its successor.
const NODE_GRACE_SECS: i64 = 30;

/// What of a role's Secret a pod mounts: `<users-dir>/<user>` holds the
/// password, `<users-dir>/<user>.sha256` its hash.
#[derive(Clone, Copy)]
enum Secret {
    Password,
    Hash,
}

/// Which kind of pod a StatefulSet runs.
#[derive(Clone, Copy)]
enum Kind {
    Node,
    Sentinel,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Node => "node",
            Self::Sentinel => "sentinel",
        }
    }

    /// The users a pod of this kind creates (every role of the cluster
    /// that talks to it: a restarted pod has them again at once), and
    /// whether it needs the password itself (to log in: replication,
    /// Sentinel links, the start-up step and probes as monitor) or only its
    /// hash.
    fn users(self) -> &'static [(AclRole, Secret)] {
        use AclRole::*;
        match self {
            Self::Node => &[
                (Replication, Secret::Password),
                (Monitor, Secret::Password),
                (Sentinel, Secret::Hash),
                (Operator, Secret::Hash),
                (Cleanup, Secret::Hash),
                (Backup, Secret::Hash),
            ],
            Self::Sentinel => &[
                (Sentinel, Secret::Password),
                (Monitor, Secret::Password),
                (Replication, Secret::Hash),
                (Operator, Secret::Hash),
                (Cleanup, Secret::Hash),
                (Backup, Secret::Hash),
            ],
        }
    }
}

/// The pod template annotation that restarts the data nodes' pods when the
/// monitor password changes: the exporter reads it from its environment,
/// at start only.
pub const MONITOR_PASSWORD: &str = "tokenplane.io/monitor-password";

/// The roles whose users a Sentinel (`sentinel`) or a data node creates.
pub fn roles_on(sentinel: bool) -> impl Iterator<Item = AclRole> {
    let kind = if sentinel { Kind::Sentinel } else { Kind::Node };
    kind.users().iter().map(|(role, _)| *role)
}

pub(super) fn redis(
    rsc: &RedisSentinelCluster,
    (env, names): (&Environment, &Names),
    labels: &BTreeMap<String, String>,
    monitor_password: &str,
    tls: Option<&Tls>,
) -> StatefulSet {
    let spec = &rsc.spec;
    let redis_cli_tls = match tls {
        Some(_) => format!("--tls --cacert {} ", ca_file()),
        None => String::new(),
    };
    let server = Container {
        name: "redis".into(),
        image: Some(spec.image.clone()),
        command: Some(vec!["redis-server".into(), format!("{RUNTIME_MOUNT}/{REDIS_CONF}")]),
        ports: Some(vec![port("redis", REDIS_PORT)]),
        env: Some(hand_over_env(rsc, names, tls.is_some())),
        // A master being deleted or evicted first hands over to a replica.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![SELF_COPY.into(), "redis-node".into(), "hand-over".into()]),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        // LOADING, a master link down or a wrong password all answer
        // something other than PONG. The password is read from the mount at
        // each probe: a rotated one arrives there without a restart.
        readiness_probe: Some(exec_probe(&format!(
            "[ \"$(REDISCLI_AUTH=\"$(cat {USERS_MOUNT}/{user})\" redis-cli {redis_cli_tls}--no-auth-warning --user {user} -p {REDIS_PORT} ping)\" = PONG ]",
            user = username(AclRole::Monitor)
        ))),
        liveness_probe: Some(tcp_probe(REDIS_PORT)),
        resources: Some(spec.resources.clone().unwrap_or_else(|| resources("100m", "128Mi", "512Mi"))),
        security_context: Some(restricted(REDIS_UID)),
        volume_mounts: Some(vec![
            mount("runtime", RUNTIME_MOUNT),
            mount("data", DATA_MOUNT),
            read_only_mount("users", USERS_MOUNT),
        ]),
        ..Container::default()
    };
    let exporter = Container {
        name: "exporter".into(),
        image: Some(env.exporter_image.clone()),
        env: Some(exporter_env(names, tls.is_some())),
        ports: Some(vec![port("metrics", EXPORTER_PORT)]),
        resources: Some(resources("10m", "16Mi", "64Mi")),
        security_context: Some(restricted(EXPORTER_UID)),
        ..Container::default()
    };
    let start = start_container(rsc, env, names, (Kind::Node, tls.is_some()));
    let persistent = spec.persistence.enabled;
    let mut volumes = common_volumes(names, Kind::Node);
    if !persistent {
        volumes.push(empty_dir("data"));
    }
    let mut set =
        stateful_set(rsc, names.redis(), labels, spec.replicas, vec![start], vec![server, exporter], volumes);
    let spec = set.spec.get_or_insert_default();
    spec.template.spec.get_or_insert_default().termination_grace_period_seconds = Some(NODE_GRACE_SECS);
    // A fingerprint, not the hash: nothing to test guesses against.
    let fingerprint = tokenplane_api::acl::password_hash(monitor_password)[..16].to_owned();
    let template = spec.template.metadata.get_or_insert_default();
    template.annotations.get_or_insert_default().insert(MONITOR_PASSWORD.into(), fingerprint);
    if persistent {
        spec.volume_claim_templates = Some(vec![data_claim(rsc)]);
    }
    if let Some(tls) = tls {
        mount_tls(&mut set, tls);
    }
    set
}

pub(super) fn sentinel(
    rsc: &RedisSentinelCluster,
    (env, names): (&Environment, &Names),
    labels: &BTreeMap<String, String>,
    tls: Option<&Tls>,
) -> StatefulSet {
    let spec = &rsc.spec;
    let server = Container {
        name: "sentinel".into(),
        image: Some(spec.image.clone()),
        // Sentinel rewrites its file as it learns the cluster: it lives on
        // the writable data volume.
        command: Some(vec!["redis-sentinel".into(), format!("{DATA_MOUNT}/{SENTINEL_CONF}")]),
        ports: Some(vec![port("sentinel", SENTINEL_PORT)]),
        readiness_probe: Some(tcp_probe(SENTINEL_PORT)),
        liveness_probe: Some(tcp_probe(SENTINEL_PORT)),
        resources: Some(spec.sentinel_resources.clone().unwrap_or_else(|| resources("50m", "32Mi", "64Mi"))),
        security_context: Some(restricted(REDIS_UID)),
        volume_mounts: Some(vec![mount("data", DATA_MOUNT)]),
        ..Container::default()
    };
    let start = start_container(rsc, env, names, (Kind::Sentinel, tls.is_some()));
    let mut volumes = common_volumes(names, Kind::Sentinel);
    volumes.push(empty_dir("data"));
    let mut set =
        stateful_set(rsc, names.sentinel_peers(), labels, spec.sentinels, vec![start], vec![server], volumes);
    if let Some(tls) = tls {
        mount_tls(&mut set, tls);
    }
    set
}

/// The CA bundle the pods' own clients verify their peers with.
pub(super) fn ca_file() -> String {
    format!("{TLS_MOUNT}/{BUNDLE_KEY}")
}

/// The certificate in every container of `set` (Redis and Sentinel serve
/// with it, the others verify with its CA), and its fingerprint on the pod
/// template: Redis reads it at start only, so a new one rolls the pods.
fn mount_tls(set: &mut StatefulSet, tls: &Tls) {
    let template = &mut set.spec.get_or_insert_default().template;
    let annotations = template.metadata.get_or_insert_default().annotations.get_or_insert_default();
    annotations.insert(FINGERPRINT.into(), tls.fingerprint[..16].to_owned());
    let pod = template.spec.get_or_insert_default();
    pod.volumes.get_or_insert_default().push(secret_volume("tls", tls.secret_name.clone()));
    for container in pod.init_containers.iter_mut().flatten().chain(pod.containers.iter_mut()) {
        container.volume_mounts.get_or_insert_default().push(read_only_mount("tls", TLS_MOUNT));
    }
}

/// The exporter logs in as `monitor` to the Redis of its own pod.
fn exporter_env(names: &Names, tls: bool) -> Vec<EnvVar> {
    let scheme = if tls { "rediss" } else { "redis" };
    let mut env = vec![
        plain_env("REDIS_ADDR", format!("{scheme}://localhost:{REDIS_PORT}")),
        plain_env("REDIS_USER", username(AclRole::Monitor).into()),
        secret_env("REDIS_PASSWORD", names.role_secret(AclRole::Monitor)),
    ];
    if tls {
        env.push(plain_env("REDIS_EXPORTER_TLS_CA_CERT_FILE", ca_file()));
    }
    env
}

/// What the Redis container's preStop `hand-over` reads from its
/// environment (hooks get no `$(VAR)` expansion of their arguments), and
/// the monitor password of the readiness probe.
fn hand_over_env(rsc: &RedisSentinelCluster, names: &Names, tls: bool) -> Vec<EnvVar> {
    let mut env = vec![
        pod_name_env(),
        plain_env(
            "TOKENPLANE_REDIS_ANNOUNCE_HOST",
            format!("$(POD_NAME).{}", names.service_host(&names.redis())),
        ),
        plain_env("TOKENPLANE_REDIS_ANNOUNCE_PORT", REDIS_PORT.to_string()),
        plain_env("TOKENPLANE_REDIS_SENTINELS", sentinels(rsc, names)),
        plain_env("TOKENPLANE_REDIS_MASTER_NAME", rsc.spec.master_name.clone()),
        plain_env("TOKENPLANE_REDIS_USERS_DIR", USERS_MOUNT.into()),
        plain_env("TOKENPLANE_REDIS_MIN_REPLICAS", rsc.spec.min_replicas_to_acknowledge.to_string()),
    ];
    if tls {
        env.push(plain_env("TOKENPLANE_REDIS_CA_FILE", ca_file()));
    }
    env
}

/// Where the pods and jobs find the Sentinels: the headless Service, which
/// names them all; with TLS each by its stable name, the name its
/// certificate is checked against.
pub(super) fn sentinels(rsc: &RedisSentinelCluster, names: &Names) -> String {
    match rsc.spec.tls.enabled {
        true => names.sentinel_addrs(rsc.spec.sentinels).join(","),
        false => format!("{}:{SENTINEL_PORT}", names.service_host(&names.sentinel_peers())),
    }
}

fn pod_name_env() -> EnvVar {
    EnvVar {
        name: "POD_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), ..Default::default() }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// `tokenplane-sidecar redis-node start`, as pod `$(POD_NAME)` of `kind`'s
/// StatefulSet; pod 0 of the data nodes is the master of a new cluster.
fn start_container(
    rsc: &RedisSentinelCluster,
    env: &Environment,
    names: &Names,
    (kind, tls): (Kind, bool),
) -> Container {
    let (template, service, port, writes) = match kind {
        Kind::Node => (REDIS_CONF, names.redis(), REDIS_PORT, mount("runtime", RUNTIME_MOUNT)),
        Kind::Sentinel => (SENTINEL_CONF, names.sentinel_peers(), SENTINEL_PORT, mount("data", DATA_MOUNT)),
    };
    let nodes = names.node_addrs(rsc.spec.replicas);
    let args = [
        "redis-node",
        "start",
        "--kind",
        kind.name(),
        "--template",
        &format!("{CONFIG_MOUNT}/{template}"),
        "--out",
        &format!("{}/{template}", writes.mount_path),
        "--users-dir",
        USERS_MOUNT,
        "--announce-host",
        &format!("$(POD_NAME).{}", names.service_host(&service)),
        "--announce-port",
        &port.to_string(),
        "--nodes",
        &nodes.join(","),
        "--sentinels",
        &sentinels(rsc, names),
        "--master-name",
        &rsc.spec.master_name,
        "--first-master",
        &nodes[0],
        "--quorum",
        &quorum(rsc.spec.sentinels).to_string(),
    ];
    let mut args: Vec<String> = args.into_iter().map(str::to_owned).collect();
    if matches!(kind, Kind::Node) {
        args.extend(["--copy-self-to".into(), SELF_COPY.into()]);
    }
    if tls {
        args.extend(["--redis-ca-file".into(), ca_file()]);
    }
    let mounts = vec![read_only_mount("config", CONFIG_MOUNT), read_only_mount("users", USERS_MOUNT), writes];
    Container {
        name: "start".into(),
        image: Some(env.tokenplane_image.clone()),
        args: Some(args),
        env: Some(vec![pod_name_env()]),
        resources: Some(resources("10m", "16Mi", "64Mi")),
        security_context: Some(restricted(REDIS_UID)),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

/// The ConfigMap, the passwords or hashes of `kind`'s users, and
/// for data nodes the runtime directory of the final configuration.
fn common_volumes(names: &Names, kind: Kind) -> Vec<Volume> {
    let sources = kind
        .users()
        .iter()
        .map(|(role, secret)| {
            let (key, path) = match secret {
                Secret::Password => (PASSWORD, username(*role).to_owned()),
                Secret::Hash => (HASH, format!("{}.{HASH}", username(*role))),
            };
            let also = KeyToPath {
                key: ALSO_HASH.into(),
                path: format!("{}.also.{HASH}", username(*role)),
                mode: None,
            };
            VolumeProjection {
                secret: Some(SecretProjection {
                    name: names.role_secret(*role),
                    items: Some(vec![KeyToPath { key: key.into(), path, mode: None }, also]),
                    ..SecretProjection::default()
                }),
                ..VolumeProjection::default()
            }
        })
        .collect();
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.config(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "users".into(),
            projected: Some(ProjectedVolumeSource { sources: Some(sources), default_mode: Some(0o440) }),
            ..Volume::default()
        },
    ];
    if matches!(kind, Kind::Node) {
        volumes.push(empty_dir("runtime"));
    }
    volumes
}

fn stateful_set(
    rsc: &RedisSentinelCluster,
    name: String,
    labels: &BTreeMap<String, String>,
    replicas: i32,
    init: Vec<Container>,
    containers: Vec<Container>,
    volumes: Vec<Volume>,
) -> StatefulSet {
    StatefulSet {
        metadata: meta(rsc, name.clone(), labels),
        spec: Some(StatefulSetSpec {
            service_name: Some(name),
            replicas: Some(replicas),
            // Each pod finds its place through the Sentinels, not its ordinal.
            pod_management_policy: Some("Parallel".into()),
            selector: selector(labels),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels.clone()), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    init_containers: Some(init),
                    containers,
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(pod_security(REDIS_UID)),
                    affinity: Some(spread_over_nodes(labels)),
                    topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                        max_skew: 1,
                        topology_key: "topology.kubernetes.io/zone".into(),
                        when_unsatisfiable: "ScheduleAnyway".into(),
                        label_selector: Some(selector(labels)),
                        ..TopologySpreadConstraint::default()
                    }]),
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// Two pods of one StatefulSet on one machine are avoided, not forbidden: a
/// small cluster must still schedule.
fn spread_over_nodes(labels: &BTreeMap<String, String>) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: PodAffinityTerm {
                    label_selector: Some(selector(labels)),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..PodAffinityTerm::default()
                },
            }]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

fn data_claim(rsc: &RedisSentinelCluster) -> PersistentVolumeClaim {
    let persistence = &rsc.spec.persistence;
    PersistentVolumeClaim {
        metadata: ObjectMeta { name: Some("data".into()), ..ObjectMeta::default() },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: persistence.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), persistence.size.clone())])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume { name: name.into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort { name: Some(name.into()), container_port: number, ..ContainerPort::default() }
}

fn plain_env(name: &str, value: String) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value), ..EnvVar::default() }
}

fn secret_env(name: &str, secret: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret,
                key: PASSWORD.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn exec_probe(script: &str) -> Probe {
    Probe {
        exec: Some(ExecAction { command: Some(vec!["sh".into(), "-c".into(), script.into()]) }),
        period_seconds: Some(5),
        timeout_seconds: Some(3),
        ..Probe::default()
    }
}

fn tcp_probe(port: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction { port: IntOrString::Int(port), ..TCPSocketAction::default() }),
        period_seconds: Some(10),
        failure_threshold: Some(6),
        ..Probe::default()
    }
}

pub(super) fn resources(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
    let q = |s: &str| Quantity(s.into());
    ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".into(), q(cpu)), ("memory".into(), q(memory))])),
        limits: Some(BTreeMap::from([("memory".into(), q(memory_limit))])),
        ..ResourceRequirements::default()
    }
}
