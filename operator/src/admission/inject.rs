//! Injection of the agent into a pod annotated `tokenplane.io/inject:
//! "true"`: a pure function from the pod as the API server sent it, the
//! OAuth2Client it names, that client's TokenPolicy and Redis, to an RFC
//! 6902 patch. The patch is the difference between the pod's JSON and the
//! same JSON with the agent added, so fields this operator's Kubernetes
//! types do not know are never touched.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, EnvVar, HTTPGetAction, Pod, Probe, ResourceRequirements,
    SecretVolumeSource, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{Selector, SelectorExt};
use serde_json::Value;
use tokenplane_api::{OAuth2Client, RedisSentinelCluster, TokenPolicy};

use crate::reconcile::ca::BUNDLE_KEY;
use crate::reconcile::oauth2client::{REDIS_CA_KEY, agent_user, issuer_url};
use crate::reconcile::pod::{read_only_mount, restricted};
use crate::reconcile::tokenpolicy::{Environment, IssuerRedis};

/// The label (or, standalone, annotation) that asks for the agent.
pub const INJECT: &str = "tokenplane.io/inject";
/// The annotation naming the OAuth2Client (same namespace) the pod acts as.
pub const CLIENT: &str = "tokenplane.io/client";
/// Comma-separated audiences the workload accepts (`--audience`); without
/// it the agent only vends tokens.
pub const AUDIENCES: &str = "tokenplane.io/audiences";
/// Set on an injected pod, naming its client.
pub const INJECTED: &str = "tokenplane.io/injected";
/// The agent's container.
pub const AGENT: &str = "tokenplane-agent";
/// What application containers learn the agent's address from.
pub const AGENT_URL: &str = "TOKENPLANE_AGENT_URL";

const AGENT_PORT: u16 = 8081;
/// The probes' port on the pod's address (`--health-listen`).
const HEALTH_PORT: i32 = 8082;
const AGENT_UID: i64 = 65532;
const CREDENTIALS_VOLUME: &str = "tokenplane-credentials";
const CREDENTIALS_MOUNT: &str = "/var/run/tokenplane/credentials";
const ISSUER_CA_VOLUME: &str = "tokenplane-issuer-ca";
const ISSUER_CA_MOUNT: &str = "/var/run/tokenplane/issuer-ca";

/// The agent's requests and limits, each overridable by its annotation.
const RESOURCES: [(&str, &str, &str, &str); 4] = [
    ("tokenplane.io/agent-cpu-request", "requests", "cpu", "10m"),
    ("tokenplane.io/agent-memory-request", "requests", "memory", "24Mi"),
    ("tokenplane.io/agent-cpu-limit", "limits", "cpu", ""),
    ("tokenplane.io/agent-memory-limit", "limits", "memory", "64Mi"),
];

/// How agents are injected, the same for every pod.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The sidecar image, and the Redis of policies without a `redisRef`.
    pub env: Environment,
    /// Kubernetes 1.29 or later: the agent as a native sidecar (an init
    /// container with `restartPolicy: Always`), started before the others
    /// and stopped after them; a plain container otherwise.
    pub native_sidecar: bool,
    /// Whether a pod naming a missing or unready client is admitted
    /// without the agent (with a warning) rather than refused.
    pub admit_without_client: bool,
}

/// What the pod names, as found.
pub struct Found<'a> {
    pub client: Option<&'a OAuth2Client>,
    /// Whether the client's controller says it is `Ready`.
    pub ready: bool,
    pub policy: Option<&'a TokenPolicy>,
    pub cluster: Option<&'a RedisSentinelCluster>,
}

/// What admission answers for a pod.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Admitted as it is; a warning for the user when there is one.
    Unchanged(Option<String>),
    Patch(json_patch::Patch),
    Deny(String),
}

/// The client a pod asks to be injected for, if it asks: `None` for a pod
/// left alone (not annotated, already injected, or in a namespace never
/// injected), else the client's name or why the request is refused.
pub fn requested(pod: &Pod, namespace: &str, env: &Environment) -> Option<Result<String, String>> {
    // The label is what the webhook configuration selects pods by; the
    // annotation alone serves where nothing selects (standalone).
    let asks = |marks: Option<&BTreeMap<String, String>>| {
        marks.and_then(|m| m.get(INJECT)).is_some_and(|v| v == "true")
    };
    if !asks(pod.metadata.labels.as_ref()) && !asks(pod.metadata.annotations.as_ref()) {
        return None;
    }
    if namespace == "kube-system" || namespace == env.operator_namespace || injected(pod) {
        return None;
    }
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    Some(annotations.get(CLIENT).filter(|c| !c.is_empty()).cloned().ok_or_else(|| {
        format!("the pod asks for the agent ({INJECT}) but names no client: annotate it {CLIENT}: <OAuth2Client name>")
    }))
}

/// A pod that has the agent already: admission may run twice (reinvocation).
fn injected(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let containers =
        spec.into_iter().flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()));
    containers.into_iter().any(|c| c.name == AGENT)
}

/// The answer for `raw`, a pod (as JSON) in `namespace` that asks for the
/// agent of `client` (see [`requested`]).
pub fn inject(
    raw: &Value,
    pod: &Pod,
    (namespace, client): (&str, &str),
    found: &Found<'_>,
    settings: &Settings,
) -> Outcome {
    let inputs = match ready_inputs(pod, (namespace, client), found) {
        Ok(inputs) => inputs,
        Err(Refusal::Client(why)) if settings.admit_without_client => {
            return Outcome::Unchanged(Some(format!("admitted without the tokenplane agent: {why}")));
        }
        Err(Refusal::Client(why) | Refusal::Pod(why)) => return Outcome::Deny(why),
    };
    match patched(raw, pod, &inputs, settings) {
        Ok(after) => Outcome::Patch(json_patch::diff(raw, &after)),
        Err(why) => Outcome::Deny(why),
    }
}

/// Why a pod is refused: its client (which a setting may let pass), or the
/// pod itself.
enum Refusal {
    Client(String),
    Pod(String),
}

struct Inputs<'a> {
    client: &'a OAuth2Client,
    policy: &'a TokenPolicy,
    cluster: Option<&'a RedisSentinelCluster>,
}

fn ready_inputs<'a>(
    pod: &Pod,
    (namespace, name): (&str, &str),
    found: &Found<'a>,
) -> Result<Inputs<'a>, Refusal> {
    let what = format!("OAuth2Client {namespace}/{name}");
    let client = found.client.ok_or_else(|| {
        Refusal::Client(format!(
            "{what} (annotation {CLIENT}) does not exist: create it, or fix the annotation"
        ))
    })?;
    if !found.ready {
        return Err(Refusal::Client(format!(
            "{what} is not Ready yet (see kubectl describe oauth2client {name} -n {namespace}); create the pod once it is"
        )));
    }
    let policy = found.policy.ok_or_else(|| {
        let r = &client.spec.policy_ref;
        Refusal::Client(format!("{what}: its TokenPolicy {} does not exist", r.name))
    })?;
    if let Some(selector) = &client.spec.workload_selector {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let selector = Selector::try_from(selector.clone())
            .map_err(|e| Refusal::Client(format!("{what}: its workloadSelector cannot be read: {e}")))?;
        if !selector.matches(&labels) {
            return Err(Refusal::Pod(format!(
                "the pod's labels do not match the workloadSelector of {what}, so the network policies would \
                 keep its agent from the issuer and Redis: label the pod to match, or name another client"
            )));
        }
    }
    if policy.spec.redis_ref.is_some() && found.cluster.is_none() {
        return Err(Refusal::Client(format!(
            "{what}: the RedisSentinelCluster of its TokenPolicy does not exist"
        )));
    }
    Ok(Inputs { client, policy, cluster: found.cluster })
}

/// `raw` with the agent, its volumes, the agent's address for the other
/// containers and the injected mark.
fn patched(raw: &Value, pod: &Pod, inputs: &Inputs<'_>, settings: &Settings) -> Result<Value, String> {
    let mut after = raw.clone();
    let spec = after.get_mut("spec").and_then(Value::as_object_mut).ok_or("the pod has no spec")?;
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let agent = to_value(agent(inputs, &annotations, settings)?);
    for (key, value) in spec.iter_mut() {
        if key == "containers" || key == "initContainers" {
            let containers = value.as_array_mut().ok_or_else(|| format!("spec.{key} is not a list"))?;
            containers.iter_mut().try_for_each(announce_agent)?;
        }
    }
    let volumes = spec.entry("volumes").or_insert_with(|| Value::Array(Vec::new()));
    let volumes = volumes.as_array_mut().ok_or("spec.volumes is not a list")?;
    for volume in agent_volumes(inputs.client) {
        if volumes.iter().any(|v| v["name"] == volume.name.as_str()) {
            return Err(format!(
                "the pod has a volume named {} already: rename it, the agent needs that name",
                volume.name
            ));
        }
        volumes.push(to_value(volume));
    }
    let (list, at) = match settings.native_sidecar {
        true => ("initContainers", 0),
        false => ("containers", spec.get("containers").and_then(Value::as_array).map_or(0, Vec::len)),
    };
    let containers = spec.entry(list).or_insert_with(|| Value::Array(Vec::new()));
    containers.as_array_mut().ok_or_else(|| format!("spec.{list} is not a list"))?.insert(at, agent);
    let metadata =
        after.get_mut("metadata").and_then(Value::as_object_mut).ok_or("the pod has no metadata")?;
    let marks = metadata.entry("annotations").or_insert_with(|| Value::Object(Default::default()));
    let name = inputs.client.metadata.name.clone().unwrap_or_default();
    marks.as_object_mut().ok_or("metadata.annotations is not a map")?.insert(INJECTED.into(), name.into());
    Ok(after)
}

fn to_value(value: impl serde::Serialize) -> Value {
    serde_json::to_value(value).expect("a Kubernetes object serializes")
}

/// `TOKENPLANE_AGENT_URL` in a container, unless it sets its own.
fn announce_agent(container: &mut Value) -> Result<(), String> {
    let name = container["name"].as_str().unwrap_or_default().to_owned();
    let object = container.as_object_mut().ok_or("a container is not an object")?;
    let env = object.entry("env").or_insert_with(|| Value::Array(Vec::new()));
    let env = env.as_array_mut().ok_or_else(|| format!("the env of container {name} is not a list"))?;
    if !env.iter().any(|e| e["name"] == AGENT_URL) {
        env.push(to_value(EnvVar {
            name: AGENT_URL.into(),
            value: Some(format!("http://127.0.0.1:{AGENT_PORT}")),
            ..EnvVar::default()
        }));
    }
    Ok(())
}

fn agent_volumes(client: &OAuth2Client) -> [Volume; 2] {
    // The agent runs as its own user and the pod may set no fsGroup: the
    // files must be readable by others, and only the agent mounts them.
    let readable = Some(0o444);
    [
        Volume {
            name: CREDENTIALS_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(client.credentials_secret_name()),
                default_mode: readable,
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: ISSUER_CA_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: client.issuer_ca_name(),
                default_mode: readable,
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
    ]
}

fn agent(
    inputs: &Inputs<'_>,
    annotations: &BTreeMap<String, String>,
    settings: &Settings,
) -> Result<Container, String> {
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(HEALTH_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    };
    Ok(Container {
        name: AGENT.into(),
        image: Some(settings.env.image.clone()),
        args: Some(agent_args(inputs, annotations, &settings.env)?),
        ports: Some(vec![ContainerPort {
            name: Some("agent-health".into()),
            container_port: HEALTH_PORT,
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(probe("/readyz")),
        liveness_probe: Some(Probe { failure_threshold: Some(6), ..probe("/healthz") }),
        resources: Some(resources(annotations)?),
        restart_policy: settings.native_sidecar.then(|| "Always".to_owned()),
        security_context: Some(restricted(AGENT_UID)),
        volume_mounts: Some(vec![
            read_only_mount(CREDENTIALS_VOLUME, CREDENTIALS_MOUNT),
            read_only_mount(ISSUER_CA_VOLUME, ISSUER_CA_MOUNT),
        ]),
        ..Container::default()
    })
}

fn agent_args(
    inputs: &Inputs<'_>,
    annotations: &BTreeMap<String, String>,
    env: &Environment,
) -> Result<Vec<String>, String> {
    let policy = inputs.policy;
    let redis = match inputs.cluster {
        Some(cluster) => IssuerRedis::Cluster(cluster, None),
        None => IssuerRedis::Operator(env),
    };
    let sentinels = redis.sentinels(policy);
    if sentinels.is_empty() {
        return Err(format!(
            "the TokenPolicy {} has no redisRef, and the webhook was given no Redis for such policies \
             (--agent-redis-sentinels)",
            policy.metadata.name.as_deref().unwrap_or_default()
        ));
    }
    let mut args: Vec<String> = [
        "agent",
        "--issuer",
        &issuer_url(policy),
        "--issuer-ca-file",
        &format!("{ISSUER_CA_MOUNT}/{BUNDLE_KEY}"),
        "--credentials-dir",
        CREDENTIALS_MOUNT,
        "--listen",
        &format!("127.0.0.1:{AGENT_PORT}"),
        "--health-listen",
        &format!("0.0.0.0:{HEALTH_PORT}"),
        "--redis-sentinels",
        &sentinels,
        "--redis-master",
        redis.master_name(),
        "--log-format",
        "json",
    ]
    .map(str::to_owned)
    .to_vec();
    if let Some(cluster) = inputs.cluster {
        // On a cluster, agents log in to the Sentinels as themselves.
        let client = inputs.client;
        let id = OAuth2Client::client_id_for(
            client.metadata.name.as_deref().unwrap_or_default(),
            client.metadata.namespace.as_deref().unwrap_or_default(),
        );
        args.extend([
            "--redis-sentinel-username".into(),
            agent_user(&id).name,
            "--redis-sentinel-password-file".into(),
            format!("{CREDENTIALS_MOUNT}/redis_password"),
        ]);
        if cluster.spec.tls.enabled {
            args.extend([
                "--redis-tls".into(),
                "--redis-ca-file".into(),
                format!("{ISSUER_CA_MOUNT}/{REDIS_CA_KEY}"),
            ]);
        }
    } else if let Some(ca) = &env.redis_tls {
        args.push("--redis-tls".into());
        if !ca.is_empty() {
            args.extend(["--redis-ca-file".into(), format!("{ISSUER_CA_MOUNT}/{REDIS_CA_KEY}")]);
        }
    }
    for audience in annotations.get(AUDIENCES).into_iter().flat_map(|a| a.split(',')).map(str::trim) {
        if audience.is_empty() || audience.chars().any(char::is_whitespace) {
            return Err(format!(
                "{AUDIENCES}: {audience:?} is not an audience; give a comma-separated list of URIs"
            ));
        }
        args.extend(["--audience".into(), audience.into()]);
    }
    Ok(args)
}

/// The defaults, each replaced by its annotation when the pod has it.
fn resources(annotations: &BTreeMap<String, String>) -> Result<ResourceRequirements, String> {
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    for (annotation, kind, resource, default) in RESOURCES {
        let value = annotations.get(annotation).map_or(default, String::as_str);
        if value.is_empty() {
            continue;
        }
        if !quantity(value) {
            return Err(format!("{annotation}: {value:?} is not a quantity (say 50m, 32Mi or 0.5)"));
        }
        let into = if kind == "requests" { &mut requests } else { &mut limits };
        into.insert(resource.to_owned(), Quantity(value.to_owned()));
    }
    Ok(ResourceRequirements {
        requests: Some(requests),
        limits: Some(limits),
        ..ResourceRequirements::default()
    })
}

/// A Kubernetes quantity as people write them: a decimal number and an
/// optional SI or binary suffix (the API server refuses anything else).
fn quantity(text: &str) -> bool {
    const SUFFIXES: [&str; 14] = ["", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let number_end = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    digits > 0 && number.matches('.').count() <= 1 && SUFFIXES.contains(&suffix)
}
