//! The webhooks in a cluster, against the in-memory API server: the
//! leader's certificate Secret and webhook configurations (kept, renewed,
//! re-bundled on a new CA), and a replica that watches the custom
//! resources, copies the certificate and answers over HTTPS with it.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokenplane_api::{OAuth2Client, TokenPolicy};
use tokenplane_operator::admission::cluster::{self, Place};
use tokenplane_operator::admission::inject::Settings;
use tokenplane_operator::controller::{Context, generate_secret, webhooks};
use tokenplane_operator::reconcile::ca::{self, Authorities, Authority};
use tokenplane_testkit::free_port;

use support::api::ApiServer;

const POD_REVIEW: &str = include_str!("fixtures/pod-review.json");

fn context(server: &ApiServer) -> Context {
    let ctx = Context::new(server.client(), support::unused_redis(), generate_secret);
    ctx.ca.send_replace(Authorities::first(&ctx.ca_settings, support::unix_now()));
    ctx
}

fn ca_bundle(config: &Value) -> String {
    let bundle = &config["webhooks"][0]["clientConfig"]["caBundle"];
    String::from_utf8(base64_decode(bundle.as_str().unwrap())).unwrap()
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).unwrap()
}

#[tokio::test]
async fn the_leader_applies_the_certificate_and_configurations_and_a_new_ca_reaches_them() {
    let server = ApiServer::default();
    let ctx = context(&server);
    let kube = server.client();
    // The requests of the leader's part, not of the test's own reads.
    let mut used = Vec::new();
    let mut refresh = async || {
        let before = server.used().len();
        let wait = webhooks::refresh(&ctx).await.unwrap();
        used.extend(server.used().split_off(before));
        wait
    };
    let wait = refresh().await;
    assert!(wait <= Duration::from_secs(600), "looked at again within the resync");
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), "tokenplane-system");
    let serving = secrets.get("tokenplane-webhook-tls").await.unwrap();
    let leaf = ca::leaf_info(&serving.data.as_ref().unwrap()["tls.crt"].0).unwrap();
    assert!(ctx.ca.borrow().signed_by_active(&leaf));
    assert_eq!(leaf.dns_names[0], "tokenplane-webhook.tokenplane-system.svc");
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(kube.clone());
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(kube.clone());
    let inject = serde_json::to_value(mutating.get("tokenplane-inject").await.unwrap()).unwrap();
    assert_eq!(ca_bundle(&inject), ctx.ca.borrow().bundle());
    assert_eq!(inject["webhooks"][0]["objectSelector"]["matchLabels"]["tokenplane.io/inject"], "true");

    // Again: the certificate is kept.
    refresh().await;
    let again = secrets.get("tokenplane-webhook-tls").await.unwrap();
    assert_eq!(again.data, serving.data);

    // A next CA published: both configurations trust it before it signs.
    let mut cas = ctx.ca.borrow().clone();
    cas.next = Some(Authority::generate(support::unix_now(), 365 * 86_400));
    ctx.ca.send_replace(cas);
    refresh().await;
    let validate = serde_json::to_value(validating.get("tokenplane-validate").await.unwrap()).unwrap();
    assert_eq!(ca_bundle(&validate).matches("BEGIN CERTIFICATE").count(), 2);
    let kept = secrets.get("tokenplane-webhook-tls").await.unwrap().data.unwrap();
    assert_eq!(kept["tls.crt"], serving.data.as_ref().unwrap()["tls.crt"], "still the active CA's");
    support::rbac::assert_role_allows(&used);
}

fn ready(mut object: Value) -> Value {
    object["status"] = json!({"conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled",
        "message": "", "lastTransitionTime": "2026-12-04T00:00:00Z"}]});
    object
}

#[tokio::test]
async fn a_replica_serves_with_the_leaders_certificate_and_its_own_watches() {
    let server = ApiServer::default();
    let ctx = context(&server);
    let kube = server.client();
    let policy: TokenPolicy =
        serde_norway::from_str(include_str!("../../config/samples/tokenpolicy.yaml")).unwrap();
    Api::<TokenPolicy>::namespaced(kube.clone(), "default")
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let client: OAuth2Client =
        serde_norway::from_str(include_str!("../../config/samples/oauth2client.yaml")).unwrap();
    let clients: Api<OAuth2Client> = Api::namespaced(kube.clone(), "default");
    clients.create(&PostParams::default(), &client).await.unwrap();
    let status = Patch::Merge(ready(json!({})));
    clients.patch_status("demo", &PatchParams::default(), &status).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let place = Place {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        namespace: "tokenplane-system".into(),
        cert_dir: dir.path().into(),
    };
    let settings = Settings { env: ctx.issuers.clone(), native_sidecar: true, admit_without_client: false };
    tokio::spawn(cluster::serve(kube.clone(), place, (settings, ctx.clusters.clone()), ctx.metrics.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "no serving before a certificate");
    webhooks::refresh(&ctx).await.unwrap();

    let bundle = reqwest::Certificate::from_pem(ctx.ca.borrow().bundle().as_bytes()).unwrap();
    let https = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(bundle)
        .resolve("tokenplane-webhook.tokenplane-system.svc", format!("127.0.0.1:{port}").parse().unwrap())
        .build()
        .unwrap();
    let url = format!("https://tokenplane-webhook.tokenplane-system.svc:{port}/mutate-pods");
    let started = Instant::now();
    let reply = loop {
        match https.post(&url).body(POD_REVIEW).header("content-type", "application/json").send().await {
            Ok(reply) => break reply,
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("the replica never served: {e}"),
        }
    };
    let review: Value = reply.json().await.unwrap();
    assert_eq!(review["response"]["allowed"], true, "{review}");
    assert_eq!(review["response"]["patchType"], "JSONPatch", "the client from the watch, Ready: {review}");
    let patch: Vec<Value> =
        serde_json::from_slice(&base64_decode(review["response"]["patch"].as_str().unwrap())).unwrap();
    let agent = patch.iter().find(|op| op["path"] == "/spec/initContainers/0/image").unwrap();
    assert_eq!(agent["value"], ctx.issuers.image.as_str());
    let counted = r#"tokenplane_operator_admissions_total{webhook="mutate-pods",outcome="patched"} 1"#;
    assert!(ctx.metrics.encode().contains(counted), "on the replica's /metrics");
}
