//! The OAuth2Client controller from a cold start with 2,000 clients in 20
//! namespaces, against the in-memory API server and a real Redis Sentinel
//! cluster: every client ends Ready, with its credentials Secret and its
//! registration, and the secret in the Secret matches the hash Redis
//! holds. Then the metrics endpoint over loopback HTTP: the reconciles are
//! counted and timed, and no secret shows.
//!
//! The time taken and the memory of the process (the operator and the
//! in-memory API server) are printed, not asserted: run with
//! `-- --nocapture`, in release mode for numbers that mean something.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Resource, ResourceExt};
use redis::AsyncCommands;
use serde_json::json;
use tokenplane_api::client::ClientRecord;
use tokenplane_api::{OAuth2Client, TokenPolicy, credentials, storage};
use tokenplane_operator::controller::{self, Context, generate_secret};
use tokenplane_operator::metrics::Metrics;
use tokenplane_testkit::{RedisCluster, RedisClusterOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::api::ApiServer;

const CLIENTS: usize = 2_000;
const NAMESPACES: usize = 20;
/// Only there so that a broken controller fails the test instead of hanging it.
const GIVE_UP: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_clients_reconcile_from_a_cold_start() {
    // Retries show up here (the reconcile failures are logged, not returned).
    tracing_subscriber::fmt().with_env_filter("warn").with_test_writer().init();
    let cluster = RedisCluster::start(RedisClusterOptions::default()).await.unwrap();
    let kube = ApiServer::default().client();
    create_policy_and_clients(&kube).await;
    let before = memory();
    let ctx = Arc::new(Context::new(kube.clone(), support::admin(&cluster), generate_secret));
    let started = Instant::now();
    let controller = tokio::spawn(controller::run(ctx.clone()));
    let all = Api::<OAuth2Client>::all(kube.clone());
    let clients = eventually("every client Ready", async || {
        let clients = all.list(&ListParams::default()).await.unwrap().items;
        (clients.len() == CLIENTS && clients.iter().all(is_ready)).then_some(clients)
    })
    .await;
    let elapsed = started.elapsed();
    let after = memory();
    eprintln!(
        "{CLIENTS} clients Ready in {:.1} s; RSS {before} before the controller started, {after} after",
        elapsed.as_secs_f64()
    );

    let secrets = secrets_by_client(&kube).await;
    let mut redis = cluster.admin_connection(&cluster.master_addr().await.unwrap()).await.unwrap();
    let now = u64::try_from(k8s_openapi::jiff::Timestamp::now().as_second()).unwrap();
    for client in &clients {
        let id = OAuth2Client::client_id_for(&client.name_any(), &client.namespace().unwrap());
        let secret = secrets.get(&id).unwrap_or_else(|| panic!("{id} has no credentials Secret"));
        let record: Option<String> = redis.get(storage::client(&id)).await.unwrap();
        let record: ClientRecord = serde_json::from_str(&record.expect("registered")).unwrap();
        assert!(record.secret_matches(&value(secret, credentials::CLIENT_SECRET), now), "{id}");
    }

    // A team leaves: its clients go once Redis forgot them.
    let team = Api::<OAuth2Client>::namespaced(kube.clone(), "team-00");
    let leaving = team.list(&ListParams::default()).await.unwrap().items;
    for client in &leaving {
        team.delete(&client.name_any(), &DeleteParams::default()).await.unwrap();
    }
    eventually("the team's clients gone", async || {
        team.list(&ListParams::default()).await.unwrap().items.is_empty().then_some(())
    })
    .await;
    controller.abort();
    for client in &leaving {
        let id = OAuth2Client::client_id_for(&client.name_any(), "team-00");
        let record: Option<String> = redis.get(storage::client(&id)).await.unwrap();
        assert_eq!(record, None, "{id} still registered");
    }

    assert_metrics_served(&ctx.metrics, &secrets).await;
}

async fn create_policy_and_clients(kube: &kube::Client) {
    let policy: TokenPolicy = serde_json::from_value(json!({
        "apiVersion": "tokenplane.io/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "default", "namespace": "auth"}, "spec": {"lifetimes": {"accessToken": "15m"}}
    }))
    .unwrap();
    Api::namespaced(kube.clone(), "auth").create(&PostParams::default(), &policy).await.unwrap();
    for i in 0..CLIENTS {
        let namespace = format!("team-{:02}", i % NAMESPACES);
        let client: OAuth2Client = serde_json::from_value(json!({
            "apiVersion": "tokenplane.io/v1alpha1", "kind": "OAuth2Client",
            "metadata": {"name": format!("service-{i:04}"), "namespace": namespace},
            "spec": {"policyRef": {"name": "default", "namespace": "auth"},
                     "audiences": ["https://api.example"], "scopes": ["read"]}
        }))
        .unwrap();
        Api::namespaced(kube.clone(), &namespace).create(&PostParams::default(), &client).await.unwrap();
    }
}

/// What `check` gives once it gives something, polled.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + GIVE_UP;
    loop {
        if let Some(done) = check().await {
            return done;
        }
        assert!(Instant::now() < deadline, "not {what} after {GIVE_UP:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn is_ready(client: &OAuth2Client) -> bool {
    let conditions = client.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    conditions.iter().any(|c| {
        c.type_ == "Ready" && c.status == "True" && c.observed_generation == client.meta().generation
    })
}

/// The credentials Secrets (not the CA's or an issuer's), by the client id they hold.
async fn secrets_by_client(kube: &kube::Client) -> HashMap<String, Secret> {
    let secrets = Api::<Secret>::all(kube.clone()).list(&ListParams::default()).await.unwrap().items;
    let of_client =
        |s: &Secret| s.metadata.labels.as_ref().is_some_and(|l| l.contains_key("tokenplane.io/client"));
    secrets.into_iter().filter(of_client).map(|s| (value(&s, credentials::CLIENT_ID), s)).collect()
}

fn value(secret: &Secret, key: &str) -> String {
    let bytes = &secret.data.as_ref().and_then(|d| d.get(key)).expect("the key is in the Secret").0;
    String::from_utf8(bytes.clone()).unwrap()
}

/// Peak and current resident memory of this process, from /proc.
fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_default();
        line.trim_start_matches(name).trim().to_owned()
    };
    format!("peak {} (current {})", field("VmHWM:"), field("VmRSS:"))
}

async fn assert_metrics_served(metrics: &Arc<Metrics>, secrets: &HashMap<String, Secret>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tokenplane_operator::serve::serve(listener, metrics.clone()));

    let (status, content_type, page) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8");
    let ok = sample(&page, r#"tokenplane_operator_reconciles_total{kind="OAuth2Client",outcome="ok"}"#);
    assert!(ok >= CLIENTS as f64, "every client reconciled at least once: {ok}\n{page}");
    let timed = sample(&page, r#"tokenplane_operator_reconcile_duration_seconds_count{kind="OAuth2Client"}"#);
    assert!(timed >= ok, "every reconcile timed: {timed}");
    eprintln!("{ok} reconciles, {} failed", timed - ok);
    assert!(page.contains("tokenplane_operator_leader 0"), "{page}");
    for secret in secrets.values() {
        for key in [credentials::CLIENT_SECRET, credentials::REDIS_PASSWORD] {
            assert!(!page.contains(&value(secret, key)), "a {key} in the metrics");
        }
    }

    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/readyz").await.0, 503, "outside leader election");
    metrics.set_leader(false);
    assert_eq!(get(addr, "/readyz").await.0, 200, "a standby is ready");
    assert_eq!(get(addr, "/nothing-here").await.0, 404);
}

/// The value of the sample named (with labels) `name` on a metrics page.
fn sample(page: &str, name: &str) -> f64 {
    let line = page.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name}:\n{page}"));
    line[name.len()..].trim().parse().unwrap()
}

/// Status, content type and body of `GET path`, over plain HTTP/1.1.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(name, _)| name.eq_ignore_ascii_case("content-type")))
        .map(|(_, value)| value.trim().to_owned())
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}
