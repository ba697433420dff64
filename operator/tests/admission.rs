//! The admission handlers with AdmissionReviews in the shape kube-apiserver
//! sends: patches applied with json-patch to the pod as sent and read back
//! as a k8s-openapi Pod, container by container; re-invocation; every kind
//! of bad input; the validating checks of the three kinds.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::core::admission::AdmissionResponse;
use serde_json::{Value, json};
use tokenplane_operator::admission::inject::{AGENT, AGENT_URL, INJECTED, Settings};
use tokenplane_operator::admission::review::{self, Review};
use tokenplane_operator::admission::{Admission, Manifests};
use tokenplane_operator::reconcile::tokenpolicy;

const POD_REVIEW: &str = include_str!("fixtures/pod-review.json");
const SAMPLES: [&str; 3] = [
    include_str!("../../config/samples/tokenpolicy.yaml"),
    include_str!("../../config/samples/oauth2client.yaml"),
    include_str!("../../config/samples/redissentinelcluster.yaml"),
];
/// A policy on the sample cluster with TLS, and a client of it that only
/// pods labelled app=payments may act as.
const ON_THE_CLUSTER: &str = "
apiVersion: tokenplane.io/v1alpha1
kind: TokenPolicy
metadata: {name: clustered, namespace: shop}
spec: {redisRef: tokens}
---
apiVersion: tokenplane.io/v1alpha1
kind: RedisSentinelCluster
metadata: {name: tokens, namespace: shop}
spec: {tls: {enabled: true}}
---
apiVersion: tokenplane.io/v1alpha1
kind: OAuth2Client
metadata: {name: payments, namespace: shop}
spec:
  grantTypes: [client_credentials]
  scopes: [pay]
  audiences: [https://pay.example.com]
  policyRef: {name: clustered}
  workloadSelector: {matchLabels: {app: payments}}
";

fn settings() -> Settings {
    Settings {
        env: tokenpolicy::Environment {
            image: "ghcr.io/tokenplane/tokenplane-sidecar:test".into(),
            sentinels: vec!["redis-sentinel.tokenplane-system.svc:26379".into()],
            master_name: "tokenplane".into(),
            sentinel_login: None,
            operator_namespace: "tokenplane-system".into(),
            redis_tls: None,
            cert_manager_issuer: None,
        },
        native_sidecar: true,
        admit_without_client: false,
    }
}

fn admission(settings: Settings) -> Admission<Manifests> {
    let mut resources = tokenplane_operator::render::Resources::default();
    for (i, text) in SAMPLES.iter().chain([&ON_THE_CLUSTER]).enumerate() {
        resources.add(PathBuf::from(format!("sample-{i}.yaml")), text).unwrap();
    }
    Admission {
        catalog: Manifests::new(resources),
        inject: settings,
        clusters: Default::default(),
        metrics: Default::default(),
    }
}

/// The docs' pod review, its pod edited.
fn pod_review(edit: impl FnOnce(&mut Value)) -> Value {
    let mut review: Value = serde_json::from_str(POD_REVIEW).unwrap();
    edit(&mut review["request"]["object"]);
    review
}

fn read(review: &Value) -> Review {
    review::read(&serde_json::to_vec(review).unwrap()).unwrap()
}

/// The response as the API server reads it off the wire.
fn mutate(admission: &Admission<Manifests>, review: &Value) -> Value {
    let response = admission.mutate(&read(review));
    let wire: Value = serde_json::from_slice(&review::write(response)).unwrap();
    assert_eq!(wire["response"]["uid"], review["request"]["uid"], "the uid is echoed");
    wire["response"].clone()
}

/// The pod of `review` with the response's patch applied, as the API server does.
fn patched(review: &Value, response: &Value) -> Value {
    use base64::Engine;
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(response["patch"].as_str().unwrap()).unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).expect("the patch applies to the pod as sent");
    pod
}

fn arg_after<'a>(c: &'a Container, flag: &str) -> &'a str {
    let args = c.args.as_ref().unwrap();
    let i = args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("{flag} in {args:?}"));
    &args[i + 1]
}

fn env_of<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env.iter().flatten().find(|e| e.name == name).and_then(|e| e.value.as_deref())
}

#[test]
fn an_annotated_pod_gets_the_agent_as_a_native_sidecar_and_its_containers_its_address() {
    let review = pod_review(|pod| {
        pod["metadata"]["annotations"]["tokenplane.io/audiences"] = "https://orders.example.com".into()
    });
    let response = mutate(&admission(settings()), &review);
    assert_eq!(response["allowed"], true, "{response}");
    let raw = patched(&review, &response);
    assert_eq!(raw["spec"]["preemptionPolicy"], "PreemptLowerPriority", "what was there stays");
    let pod: Pod = serde_json::from_value(raw).expect("still a Pod");
    let spec = pod.spec.as_ref().unwrap();
    let init = spec.init_containers.as_ref().unwrap();
    assert_eq!(
        init.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        [AGENT, "migrate"],
        "the agent starts first"
    );
    let agent = &init[0];
    assert_eq!(agent.restart_policy.as_deref(), Some("Always"), "a native sidecar");
    assert_eq!(agent.image.as_deref(), Some("ghcr.io/tokenplane/tokenplane-sidecar:test"));
    assert_eq!(arg_after(agent, "--issuer"), "https://default-issuer.default.svc");
    assert_eq!(arg_after(agent, "--audience"), "https://orders.example.com");
    assert_eq!(arg_after(agent, "--listen"), "127.0.0.1:8081");
    assert_eq!(arg_after(agent, "--redis-sentinels"), "redis-sentinel.tokenplane-system.svc:26379");
    assert_eq!(arg_after(agent, "--credentials-dir"), "/var/run/tokenplane/credentials");
    let security = agent.security_context.as_ref().unwrap();
    assert_eq!(
        (security.run_as_non_root, security.read_only_root_filesystem, security.allow_privilege_escalation),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!(security.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let probe = agent.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!(probe.path.as_deref(), Some("/readyz"));
    assert_eq!(
        arg_after(agent, "--health-listen"),
        format!(
            "0.0.0.0:{}",
            match probe.port {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => p,
                _ => panic!("a numbered port"),
            }
        )
    );
    let resources = agent.resources.as_ref().unwrap();
    assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "64Mi");
    let volumes: Vec<_> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    assert_eq!(volumes, ["kube-api-access-x7k2p", "tokenplane-credentials", "tokenplane-issuer-ca"]);
    let credentials = spec.volumes.as_ref().unwrap()[1].secret.as_ref().unwrap();
    assert_eq!(credentials.secret_name.as_deref(), Some("demo-oauth2-credentials"));
    for c in spec.containers.iter().chain(&init[1..]) {
        assert_eq!(env_of(c, AGENT_URL), Some("http://127.0.0.1:8081"), "{}", c.name);
    }
    assert_eq!(env_of(&spec.containers[0], "LOG_LEVEL"), Some("info"));
    assert!(env_of(agent, AGENT_URL).is_none());
    assert_eq!(pod.metadata.annotations.as_ref().unwrap()[INJECTED], "demo");
}

#[test]
fn an_injected_pod_is_left_alone_when_admission_runs_again() {
    let admission = admission(settings());
    let review = pod_review(|_| {});
    let injected = patched(&review, &mutate(&admission, &review));
    let again = pod_review(|pod| *pod = injected);
    let response = mutate(&admission, &again);
    assert_eq!((response["allowed"].as_bool(), response.get("patch")), (Some(true), None), "{response}");
}

#[test]
fn pods_that_do_not_ask_and_namespaces_never_injected_get_no_patch() {
    let admission = admission(settings());
    let unlabelled = pod_review(|pod| {
        pod["metadata"]["labels"] = json!({"app": "demo"});
        pod["metadata"]["annotations"] = json!({"tokenplane.io/client": "demo"});
    });
    let mut system = pod_review(|pod| pod["metadata"]["namespace"] = "kube-system".into());
    system["request"]["namespace"] = "kube-system".into();
    let mut own = pod_review(|_| {});
    own["request"]["namespace"] = "tokenplane-system".into();
    for review in [unlabelled, system, own] {
        let response = mutate(&admission, &review);
        assert_eq!((response["allowed"].as_bool(), response.get("patch")), (Some(true), None), "{response}");
    }
}

fn denied(response: &Value) -> String {
    assert_eq!(response["allowed"], false, "{response}");
    response["status"]["message"].as_str().unwrap().to_owned()
}

#[test]
fn a_missing_client_is_refused_by_name_or_admitted_without_the_agent_when_so_set() {
    let review = pod_review(|pod| pod["metadata"]["annotations"]["tokenplane.io/client"] = "nope".into());
    let message = denied(&mutate(&admission(settings()), &review));
    assert!(message.contains("OAuth2Client default/nope") && message.contains("does not exist"), "{message}");
    let lenient = admission(Settings { admit_without_client: true, ..settings() });
    let response = mutate(&lenient, &review);
    assert_eq!((response["allowed"].as_bool(), response.get("patch")), (Some(true), None));
    assert!(response["warnings"][0].as_str().unwrap().contains("without the tokenplane agent"), "{response}");
    let unnamed = pod_review(|pod| pod["metadata"]["annotations"] = json!({}));
    assert!(denied(&mutate(&admission(settings()), &unnamed)).contains("tokenplane.io/client"));
}

#[test]
fn odd_but_legal_pods_get_a_patch_the_api_server_takes_or_a_clear_refusal() {
    let admission = admission(settings());
    // No initContainers, no env, no volumes, no securityContext at all.
    let bare = pod_review(|pod| {
        let spec = pod["spec"].as_object_mut().unwrap();
        for field in ["initContainers", "volumes", "securityContext"] {
            spec.remove(field);
        }
        pod["spec"]["containers"] = json!([{"name": "app", "image": "app:1"}]);
    });
    let pod: Pod = serde_json::from_value(patched(&bare, &mutate(&admission, &bare))).unwrap();
    let spec = pod.spec.unwrap();
    assert_eq!(spec.init_containers.unwrap()[0].name, AGENT);
    assert_eq!(env_of(&spec.containers[0], AGENT_URL), Some("http://127.0.0.1:8081"));
    // A volume of the agent's name already: refused, saying which.
    let clash = pod_review(|pod| {
        pod["spec"]["volumes"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "tokenplane-credentials", "emptyDir": {}}));
    });
    assert!(denied(&mutate(&admission, &clash)).contains("volume named tokenplane-credentials"));
    // A container that sets the agent's address itself keeps it.
    let own_url = pod_review(|pod| {
        pod["spec"]["containers"][0]["env"] = json!([{"name": AGENT_URL, "value": "http://127.0.0.1:9999"}]);
    });
    let pod: Pod = serde_json::from_value(patched(&own_url, &mutate(&admission, &own_url))).unwrap();
    assert_eq!(env_of(&pod.spec.unwrap().containers[0], AGENT_URL), Some("http://127.0.0.1:9999"));
    // Resource annotations: used when they are quantities, refused otherwise.
    let sized =
        pod_review(|pod| pod["metadata"]["annotations"]["tokenplane.io/agent-memory-limit"] = "128Mi".into());
    let pod: Pod = serde_json::from_value(patched(&sized, &mutate(&admission, &sized))).unwrap();
    let agent = pod.spec.unwrap().init_containers.unwrap().remove(0);
    assert_eq!(agent.resources.unwrap().limits.unwrap()["memory"].0, "128Mi");
    let bad =
        pod_review(|pod| pod["metadata"]["annotations"]["tokenplane.io/agent-cpu-request"] = "lots".into());
    assert!(denied(&mutate(&admission, &bad)).contains("tokenplane.io/agent-cpu-request: \"lots\""));
    // Not a pod at all.
    let broken = pod_review(|pod| pod["spec"]["containers"] = "none".into());
    assert!(denied(&mutate(&admission, &broken)).contains("not a Pod"));
}

#[test]
fn without_native_sidecars_the_agent_is_a_plain_container_after_the_others() {
    let review = pod_review(|_| {});
    let response = mutate(&admission(Settings { native_sidecar: false, ..settings() }), &review);
    let pod: Pod = serde_json::from_value(patched(&review, &response)).unwrap();
    let spec = pod.spec.unwrap();
    let names: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["orders", AGENT]);
    assert_eq!(spec.containers[1].restart_policy, None);
    assert_eq!(spec.init_containers.unwrap().len(), 1, "the app's init container only");
}

#[test]
fn on_a_cluster_the_agent_logs_in_to_its_sentinels_as_itself_over_tls_and_only_selected_pods_get_it() {
    let admission = admission(settings());
    let in_shop = |labels: Value| {
        let mut review = pod_review(|pod| {
            pod["metadata"]["namespace"] = "shop".into();
            pod["metadata"]["labels"] = labels;
            pod["metadata"]["annotations"]["tokenplane.io/client"] = "payments".into();
        });
        review["request"]["namespace"] = "shop".into();
        review
    };
    let other = in_shop(json!({"app": "orders"}));
    assert!(denied(&mutate(&admission, &other)).contains("workloadSelector of OAuth2Client shop/payments"));
    let review = in_shop(json!({"app": "payments"}));
    let pod: Pod = serde_json::from_value(patched(&review, &mutate(&admission, &review))).unwrap();
    let agent = pod.spec.unwrap().init_containers.unwrap().remove(0);
    assert_eq!(arg_after(&agent, "--redis-sentinels"), "tokens-sentinel.shop.svc:26379");
    assert_eq!(arg_after(&agent, "--redis-sentinel-username"), "agent:payments.shop");
    assert_eq!(arg_after(&agent, "--redis-ca-file"), "/var/run/tokenplane/issuer-ca/redis-ca.crt");
    assert!(agent.args.unwrap().contains(&"--redis-tls".to_owned()));
}

#[test]
fn what_is_not_an_admission_review_is_refused_with_what_is_wrong() {
    let cases = [
        (b"{not json".to_vec(), "not JSON"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#.to_vec(),
            "v1beta1",
        ),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}"#.to_vec(), "kind \"Pod\""),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(), "no request"),
    ];
    for (body, says) in cases {
        let error = review::read(&body).err().unwrap_or_else(|| panic!("{says}: accepted"));
        assert!(error.contains(says), "{says}: {error}");
    }
    let mut no_uid = pod_review(|_| {});
    no_uid["request"].as_object_mut().unwrap().remove("uid");
    assert!(review::read(&serde_json::to_vec(&no_uid).unwrap()).err().unwrap().contains("no uid"));
    let mut other_kind = pod_review(|_| {});
    other_kind["request"]["kind"]["kind"] = "Deployment".into();
    assert!(denied(&mutate(&admission(settings()), &other_kind)).contains("not Deployment"));
}

fn validation(kind: &str, object: Value, old: Option<Value>) -> AdmissionResponse {
    let operation = if old.is_some() { "UPDATE" } else { "CREATE" };
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "3f0e9b7c-1b8e-4c69-9d1b-6f2f3f1d2a11",
            "kind": {"group": "tokenplane.io", "version": "v1alpha1", "kind": kind},
            "resource": {"group": "tokenplane.io", "version": "v1alpha1", "resource": format!("{}s", kind.to_lowercase())},
            "namespace": "shop", "operation": operation,
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
            "object": object, "oldObject": old, "dryRun": false
        }
    });
    admission(settings()).validate(&read(&review))
}

fn resource(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "tokenplane.io/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": "shop"}, "spec": spec})
}

#[test]
fn the_validating_webhook_refuses_what_the_controllers_would_naming_the_field() {
    let client = |spec: Value| validation("OAuth2Client", resource("OAuth2Client", "c", spec), None);
    let good = json!({"grantTypes": ["client_credentials"], "scopes": ["pay"], "audiences": ["https://pay"], "policyRef": {"name": "clustered"}});
    assert!(client(good.clone()).allowed, "{:?}", client(good.clone()).result);
    let mut missing = good.clone();
    missing["policyRef"]["name"] = "nope".into();
    let warned = client(missing);
    assert!(warned.allowed, "a missing policy is waited for, not refused");
    let warning = &warned.warnings.as_ref().unwrap()[0];
    assert!(warning.contains("spec.policyRef: TokenPolicy shop/nope does not exist"), "{warning}");
    let mut code = good.clone();
    code["grantTypes"] = json!(["authorization_code"]);
    assert!(client(code).result.message.contains("spec.redirectUris"));
    let mut typo = good;
    typo["grantTypes"] = json!(["client_credential"]);
    let message = client(typo).result.message;
    assert!(message.contains("spec.grantTypes[0]"), "{message}");

    let policy = |spec: Value| validation("TokenPolicy", resource("TokenPolicy", "p", spec), None);
    assert!(policy(json!({"redisRef": "tokens"})).allowed);
    let warned = policy(json!({"redisRef": "gone"}));
    assert!(
        warned.allowed
            && warned.warnings.unwrap()[0].contains("spec.redisRef: RedisSentinelCluster shop/gone")
    );

    let cluster = |spec: Value, old: Option<Value>| {
        validation(
            "RedisSentinelCluster",
            resource("RedisSentinelCluster", "tokens", spec),
            old.map(|o| resource("RedisSentinelCluster", "tokens", o)),
        )
    };
    assert!(cluster(json!({}), None).allowed);
    assert!(cluster(json!({"sentinels": 2}), None).result.message.contains("sentinels is 2"));
    let short = cluster(json!({"acl": {"passwordOverlap": "10s"}}), None);
    assert!(
        !short.allowed && short.result.message.contains("acl.passwordOverlap is 10s"),
        "{}",
        short.result.message
    );
    let grown =
        cluster(json!({"persistence": {"size": "5Gi"}}), Some(json!({"persistence": {"size": "1Gi"}})));
    assert!(
        !grown.allowed && grown.result.message.contains("persistence.size changed from 1Gi to 5Gi"),
        "{}",
        grown.result.message
    );
    assert!(cluster(json!({"replicas": 5}), Some(json!({}))).allowed, "scaling is a safe change");
}
