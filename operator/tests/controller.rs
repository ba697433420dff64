//! The OAuth2Client apply layer against a scripted in-memory API server
//! (tower-test) and a real Redis Sentinel cluster: the requests it makes,
//! their bodies, and what lands in Redis, for a new client, an invalid one,
//! and a deletion.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::controller::Action;
use redis::AsyncCommands;
use serde_json::{Value, json};
use tokenplane_api::client::{ClientRecord, SecretHash};
use tokenplane_api::{OAuth2Client, TokenPolicy, storage};
use tokenplane_operator::controller::{Context, oauth2client, reconcile, tokenpolicy};
use tokenplane_operator::reconcile::ca::{self, Authorities};
use tokenplane_testkit::{RedisCluster, RedisClusterOptions};
use tower_test::mock::{self, Handle};

use support::rbac::{assert_role_allows, rbac_of};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// Every (verb, resource) the controller asked for, across the tests.
static USED: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

fn client_json(spec: Value, finalizers: &[&str], deleting: bool) -> Value {
    let mut meta = json!({"name": "orders", "namespace": "shop", "uid": "uid-1", "generation": 3,
                          "finalizers": finalizers, "resourceVersion": "7"});
    if deleting {
        meta["deletionTimestamp"] = "2026-11-23T00:00:00Z".into();
    }
    json!({"apiVersion": "tokenplane.io/v1alpha1", "kind": "OAuth2Client", "metadata": meta, "spec": spec})
}

fn spec() -> Value {
    json!({"policyRef": {"name": "default", "namespace": "auth"}, "audiences": ["https://orders"], "scopes": ["read"]})
}

const POLICY: &str = r#"{"apiVersion": "tokenplane.io/v1alpha1", "kind": "TokenPolicy",
    "metadata": {"name": "default", "namespace": "auth"}, "spec": {"lifetimes": {"accessToken": "15m"}}}"#;

fn context(
    cluster: &RedisCluster,
    api: mock::Mock<Request<Body>, Response<Body>>,
    generate: fn() -> String,
) -> Arc<Context> {
    let redis = support::admin(cluster);
    let ctx = Context::new(kube::Client::new(api, "default"), redis, generate);
    ctx.ca.send_replace(Authorities::first(&ctx.ca_settings, support::unix_now()));
    Arc::new(ctx)
}

/// The client's CA bundle ConfigMap, applied after its Secret: the
/// operator's CAs, and nothing secret.
async fn expect_bundle(api: &mut ApiHandle, ctx: &Context) {
    let bundle = expect(api, Method::PATCH, BUNDLE_PATH, StatusCode::OK, Value::Null).await;
    let pem = bundle["data"]["ca.crt"].as_str().unwrap();
    assert_eq!(pem, ctx.ca.borrow().bundle());
    assert!(pem.contains("BEGIN CERTIFICATE") && !pem.contains("PRIVATE"), "{pem}");
}

fn same_secret() -> String {
    "generated-0123456789".into()
}

/// Answers the next request, which must be `method` on `path`, with
/// `reply` (its own body when `reply` is null); returns its body.
async fn expect(api: &mut ApiHandle, method: Method, path: &str, status: StatusCode, reply: Value) -> Value {
    let (request, respond) = api.next_request().await.expect("the controller made a request");
    assert_eq!((request.method(), request.uri().path()), (&method, path), "{}", request.uri());
    USED.lock().unwrap().push(rbac_of(request.method(), request.uri().path()));
    let query = request.uri().query().unwrap_or_default().to_owned();
    let body = request.into_body().collect_bytes().await.unwrap();
    let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() };
    if method == Method::PATCH && body.get("apiVersion").is_some() {
        assert!(
            query.contains("fieldManager=tokenplane") && query.contains("force=true"),
            "server-side apply: {query}"
        );
    }
    let reply = if reply.is_null() { body.clone() } else { reply };
    respond.send_response(
        Response::builder().status(status).body(Body::from(serde_json::to_vec(&reply).unwrap())).unwrap(),
    );
    body
}

/// The TokenPolicy read every apply starts with.
async fn expect_policy(api: &mut ApiHandle) {
    expect(api, Method::GET, POLICY_PATH, StatusCode::OK, serde_json::from_str(POLICY).unwrap()).await;
}

/// The status patch every apply ends with; returns its body.
async fn expect_status(api: &mut ApiHandle, reply: Value) -> Value {
    expect(api, Method::PATCH, &format!("{CLIENT_PATH}/status"), StatusCode::OK, reply).await
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

const CLIENT_PATH: &str = "/apis/tokenplane.io/v1alpha1/namespaces/shop/oauth2clients/orders";
const SECRET_PATH: &str = "/api/v1/namespaces/shop/secrets/orders-oauth2-credentials";
const POLICY_PATH: &str = "/apis/tokenplane.io/v1alpha1/namespaces/auth/tokenpolicies/default";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";
const BUNDLE_PATH: &str = "/api/v1/namespaces/shop/configmaps/orders-oauth2-credentials-issuer-ca";

#[tokio::test]
async fn a_new_client_gets_its_secret_registration_and_status_and_deletion_cleans_redis() {
    let cluster = RedisCluster::start(RedisClusterOptions::default()).await.unwrap();
    let (api, mut server) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(&cluster, api, same_secret);

    // First pass: the finalizer goes on, nothing else.
    let fresh: OAuth2Client = serde_json::from_value(client_json(spec(), &[], false)).unwrap();
    let run = tokio::spawn(reconcile::<OAuth2Client>(Arc::new(fresh), ctx.clone()));
    let patch = expect(
        &mut server,
        Method::PATCH,
        CLIENT_PATH,
        StatusCode::OK,
        client_json(spec(), &[oauth2client::FINALIZER], false),
    )
    .await;
    assert!(patch.to_string().contains(oauth2client::FINALIZER), "{patch}");
    assert_eq!(run.await.unwrap().unwrap(), Action::await_change());

    // Second pass: policy, Secret (absent: generated), apply, Redis, status.
    let held: OAuth2Client =
        serde_json::from_value(client_json(spec(), &[oauth2client::FINALIZER], false)).unwrap();
    let run = tokio::spawn(reconcile::<OAuth2Client>(Arc::new(held), ctx.clone()));
    expect_policy(&mut server).await;
    expect(&mut server, Method::GET, SECRET_PATH, StatusCode::NOT_FOUND, not_found()).await;
    let secret = expect(&mut server, Method::PATCH, SECRET_PATH, StatusCode::OK, Value::Null).await;
    assert_eq!(secret["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    assert_eq!(secret["data"]["client_id"], "b3JkZXJzLnNob3A=", "base64 of orders.shop");
    expect_bundle(&mut server, &ctx).await;
    let status = expect_status(&mut server, client_json(spec(), &[], false)).await;
    assert_eq!(status["status"]["conditions"][0]["status"], "True");
    assert_eq!(
        (status["status"]["clientId"].as_str(), status["status"]["observedGeneration"].as_i64()),
        (Some("orders.shop"), Some(3))
    );
    assert_eq!(
        run.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(300)),
        "looked at again for drift"
    );
    let mut redis = cluster.admin_connection(&cluster.master_addr().await.unwrap()).await.unwrap();
    let record: String = redis.get(storage::client("orders.shop")).await.unwrap();
    assert!(record.contains("\"client_id\":\"orders.shop\"") && !record.contains("generated-0123456789"));

    // Someone sets a client secret of their choice in the Secret: it is not
    // adopted; the operator issues fresh credentials and says so.
    let held: OAuth2Client =
        serde_json::from_value(client_json(spec(), &[oauth2client::FINALIZER], false)).unwrap();
    let run = tokio::spawn(reconcile::<OAuth2Client>(Arc::new(held), ctx.clone()));
    expect_policy(&mut server).await;
    let mut edited = secret.clone();
    edited["data"]["client_secret"] = "Y2hvc2VuLWJ5LWhhbmQ=".into();
    expect(&mut server, Method::GET, SECRET_PATH, StatusCode::OK, edited).await;
    let event = expect(&mut server, Method::POST, EVENTS_PATH, StatusCode::OK, Value::Null).await;
    assert_eq!(event["reason"], "CredentialsReplaced");
    let repaired = expect(&mut server, Method::PATCH, SECRET_PATH, StatusCode::OK, Value::Null).await;
    assert_eq!(
        repaired["data"]["client_secret"], "Z2VuZXJhdGVkLTAxMjM0NTY3ODk=",
        "a generated secret, not the edited one"
    );
    expect_bundle(&mut server, &ctx).await;
    expect_status(&mut server, client_json(spec(), &[], false)).await;
    run.await.unwrap().unwrap();

    // Deleted: Redis forgets it and every older token dies, then the finalizer comes off.
    let deleting: OAuth2Client =
        serde_json::from_value(client_json(spec(), &[oauth2client::FINALIZER], true)).unwrap();
    let run = tokio::spawn(reconcile::<OAuth2Client>(Arc::new(deleting), ctx.clone()));
    expect_policy(&mut server).await; // which Redis holds it
    let patch =
        expect(&mut server, Method::PATCH, CLIENT_PATH, StatusCode::OK, client_json(spec(), &[], true)).await;
    assert_eq!(
        patch[1],
        json!({"op": "remove", "path": "/metadata/finalizers/0"}),
        "the finalizer comes off: {patch}"
    );
    run.await.unwrap().unwrap();
    let gone: Option<String> = redis.get(storage::client("orders.shop")).await.unwrap();
    assert_eq!(gone, None);
    let mark: Option<u64> = redis.hget(storage::NOT_BEFORE, "orders.shop").await.unwrap();
    assert!(mark.is_some(), "the client's tokens are dead");
    assert_role_allows_what_was_used();
}

#[tokio::test]
async fn an_invalid_client_gets_a_condition_and_nothing_else() {
    let cluster = RedisCluster::start(RedisClusterOptions::default()).await.unwrap();
    let (api, mut server) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(&cluster, api, same_secret);
    let mut bad = spec();
    bad["grantTypes"] = json!(["authorization_code"]);
    bad["redirectUris"] = json!(["http://evil.example/cb"]);
    let client: OAuth2Client =
        serde_json::from_value(client_json(bad.clone(), &[oauth2client::FINALIZER], false)).unwrap();
    let run = tokio::spawn(reconcile::<OAuth2Client>(Arc::new(client), ctx));
    expect_policy(&mut server).await;
    expect(&mut server, Method::GET, SECRET_PATH, StatusCode::NOT_FOUND, not_found()).await;
    let event = expect(&mut server, Method::POST, EVENTS_PATH, StatusCode::OK, Value::Null).await;
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("InvalidSpec")));
    assert_eq!(event["regarding"]["name"], "orders");
    let status = expect_status(&mut server, client_json(bad, &[], false)).await;
    let ready = &status["status"]["conditions"][0];
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("InvalidSpec")));
    assert!(ready["message"].as_str().unwrap().contains("redirectUris[0]"), "{ready}");
    assert_eq!(run.await.unwrap().unwrap(), Action::await_change());
    let mut redis = cluster.admin_connection(&cluster.master_addr().await.unwrap()).await.unwrap();
    let none: Option<String> = redis.get(storage::client("orders.shop")).await.unwrap();
    assert_eq!(none, None, "nothing half-applied");
    assert_role_allows_what_was_used();
}

/// A new secret at every call, as in production.
fn numbered_secret() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!("generated-{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

fn base64_text(value: &Value) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(value.as_str().unwrap()).unwrap();
    String::from_utf8(bytes).unwrap()
}

/// The registration of orders.shop in Redis.
async fn registration(cluster: &RedisCluster) -> ClientRecord {
    let mut redis = cluster.admin_connection(&cluster.master_addr().await.unwrap()).await.unwrap();
    let json: String = redis.get(storage::client("orders.shop")).await.unwrap();
    serde_json::from_str(&json).unwrap()
}

/// Runs one reconcile of `client`, which holds the finalizer, answering its
/// reads with `secret` (absent when null); returns the Secret it applied,
/// its status patch and its action, checking that it announced a rotation
/// exactly when `rotates`.
async fn reconcile_rotating(
    ctx: &Arc<Context>,
    server: &mut ApiHandle,
    client: Value,
    secret: &Value,
    rotates: bool,
) -> (Value, Value, Action) {
    let run = tokio::spawn(reconcile::<OAuth2Client>(
        Arc::new(serde_json::from_value(client).unwrap()),
        ctx.clone(),
    ));
    expect_policy(server).await;
    match secret {
        Value::Null => expect(server, Method::GET, SECRET_PATH, StatusCode::NOT_FOUND, not_found()).await,
        held => expect(server, Method::GET, SECRET_PATH, StatusCode::OK, held.clone()).await,
    };
    let applied = expect(server, Method::PATCH, SECRET_PATH, StatusCode::OK, Value::Null).await;
    expect_bundle(server, ctx).await;
    if rotates {
        let event = expect(server, Method::POST, EVENTS_PATH, StatusCode::OK, Value::Null).await;
        assert_eq!(
            (event["type"].as_str(), event["reason"].as_str()),
            (Some("Normal"), Some("SecretRotated"))
        );
        assert!(!event.to_string().contains("generated-"), "no secret in events: {event}");
    }
    let status = expect_status(server, client_json(spec(), &[], false)).await;
    assert!(!status.to_string().contains("generated-"), "no secret in status: {status}");
    (applied, status["status"].clone(), run.await.unwrap().unwrap())
}

fn rotation_condition(status: &Value) -> (String, String) {
    let conditions = status["conditions"].as_array().unwrap();
    let c = conditions.iter().find(|c| c["type"] == "PreviousSecretInUse").expect("the rotation condition");
    (c["status"].as_str().unwrap().to_owned(), c["reason"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn an_annotation_rotates_the_secret_and_the_old_one_works_until_the_grace_ends() {
    let cluster = RedisCluster::start(RedisClusterOptions::default()).await.unwrap();
    let (api, mut server) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(&cluster, api, numbered_secret);
    let mut rotating = spec();
    rotating["secretRotation"] = json!({"gracePeriod": "3s"});
    let mut client = client_json(rotating, &[oauth2client::FINALIZER], false);

    let (first, status, _) = reconcile_rotating(&ctx, &mut server, client.clone(), &Value::Null, false).await;
    let old = base64_text(&first["data"]["client_secret"]);
    assert!(status["secretIssuedAt"].is_string(), "{status}");
    assert_eq!(rotation_condition(&status), ("False".into(), "NoPreviousSecret".into()));

    // Someone asks for a rotation: a new secret in the Secret, both in Redis.
    client["metadata"]["annotations"] = json!({"tokenplane.io/rotate-secret": "2026-11-23T10:00:00Z"});
    let (second, status, action) = reconcile_rotating(&ctx, &mut server, client.clone(), &first, true).await;
    let new = base64_text(&second["data"]["client_secret"]);
    assert_ne!(new, old);
    assert_eq!(second["metadata"]["annotations"]["tokenplane.io/rotate-secret"], "2026-11-23T10:00:00Z");
    let now = support::unix_now();
    let record = registration(&cluster).await;
    assert!(
        record.secret_matches(&old, now) && record.secret_matches(&new, now),
        "both work during the grace"
    );
    assert!(status["previousSecretExpiresAt"].is_string(), "{status}");
    assert_eq!(rotation_condition(&status), ("False".into(), "UnusedSinceRotation".into()));
    assert_eq!(action, Action::requeue(Duration::from_secs(3)), "woken when the grace ends");

    // An issuer accepted the old secret: the status says so.
    let mut redis = cluster.admin_connection(&cluster.master_addr().await.unwrap()).await.unwrap();
    let old_hash = SecretHash::of(&old).sha256;
    let () = redis.hset(storage::secret_used("orders.shop"), &old_hash, support::unix_now()).await.unwrap();
    let (_, status, _) = reconcile_rotating(&ctx, &mut server, client.clone(), &second, false).await;
    assert_eq!(rotation_condition(&status), ("True".into(), "UsedSinceRotation".into()));
    assert!(status["previousSecretLastUsedAt"].is_string(), "{status}");
    assert_eq!(registration(&cluster).await, record, "the same answer: nothing rotated again");

    // The grace ends: the old secret is gone from Redis, and so is its use.
    while support::unix_now() < now + 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (third, status, action) = reconcile_rotating(&ctx, &mut server, client, &second, false).await;
    assert_eq!(
        third["data"]["client_secret"], second["data"]["client_secret"],
        "the Secret keeps only the current one"
    );
    let record = registration(&cluster).await;
    assert!(
        !record.secret_matches(&old, 0) && record.secret_matches(&new, support::unix_now()),
        "{record:?}"
    );
    assert!(status.get("previousSecretExpiresAt").is_none(), "{status}");
    assert_eq!(rotation_condition(&status), ("False".into(), "NoPreviousSecret".into()));
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let use_of_old: Option<u64> = redis.hget(storage::secret_used("orders.shop"), &old_hash).await.unwrap();
    assert_eq!(use_of_old, None, "what issuers recorded for a dead hash is pruned");
    assert_role_allows_what_was_used();
}

/// The role in config/rbac allows every request made so far, and the
/// list/watch of the resources the controllers watch.
fn assert_role_allows_what_was_used() {
    let mut used = USED.lock().unwrap().clone();
    used.extend(
        ["oauth2clients", "secrets", "tokenpolicies", "deployments"]
            .iter()
            .flat_map(|r| [("list".into(), (*r).into()), ("watch".into(), (*r).into())]),
    );
    assert_role_allows(&used);
}

const POLICY_DIR: &str = "/apis/tokenplane.io/v1alpha1/namespaces/auth/tokenpolicies/default";
const KEYS_PATH: &str = "/api/v1/namespaces/auth/secrets/default-signing-keys";
const ISSUER_SECRET_PATH: &str = "/api/v1/namespaces/auth/secrets/default-issuer-redis";
const SERVING_PATH: &str = "/api/v1/namespaces/auth/secrets/default-issuer-tls";

fn policy_json(finalizers: &[&str], deleting: bool) -> Value {
    let mut policy: Value = serde_json::from_str(POLICY).unwrap();
    policy["metadata"] = json!({"name": "default", "namespace": "auth", "uid": "uid-p", "generation": 2,
                                "finalizers": finalizers, "resourceVersion": "9"});
    if deleting {
        policy["metadata"]["deletionTimestamp"] = "2026-11-23T00:00:00Z".into();
    }
    policy
}

#[tokio::test]
async fn a_new_policy_gets_keys_redis_records_an_issuer_and_status_and_deletion_cleans_redis() {
    let cluster = RedisCluster::start(RedisClusterOptions::default()).await.unwrap();
    let (api, mut server) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(&cluster, api, numbered_secret);
    let held: TokenPolicy = serde_json::from_value(policy_json(&[tokenpolicy::FINALIZER], false)).unwrap();
    let run = tokio::spawn(reconcile::<TokenPolicy>(Arc::new(held), ctx.clone()));

    expect(&mut server, Method::GET, KEYS_PATH, StatusCode::NOT_FOUND, not_found()).await;
    expect(&mut server, Method::GET, SERVING_PATH, StatusCode::NOT_FOUND, not_found()).await;
    let mut orders = client_json(spec(), &[], false);
    orders["spec"]["workloadSelector"] = json!({"matchLabels": {"app": "orders"}});
    let list = json!({"apiVersion": "tokenplane.io/v1alpha1", "kind": "OAuth2ClientList",
                      "metadata": {"resourceVersion": "10"}, "items": [orders]});
    expect(&mut server, Method::GET, "/apis/tokenplane.io/v1alpha1/oauth2clients", StatusCode::OK, list)
        .await;
    expect(&mut server, Method::GET, ISSUER_SECRET_PATH, StatusCode::NOT_FOUND, not_found()).await;
    let keys = expect(&mut server, Method::PATCH, KEYS_PATH, StatusCode::OK, Value::Null).await;
    let kid = base64_text(&keys["data"]["active"]);
    assert!(keys["data"][format!("{kid}.pem")].is_string(), "the active key's PEM: {}", keys["data"]);
    assert!(keys["metadata"]["annotations"]["tokenplane.io/key-states"].as_str().unwrap().contains("Active"));
    let issuer_secret =
        expect(&mut server, Method::PATCH, ISSUER_SECRET_PATH, StatusCode::OK, Value::Null).await;
    let password = base64_text(&issuer_secret["data"]["redis_password"]);
    let serving = expect(&mut server, Method::PATCH, SERVING_PATH, StatusCode::OK, Value::Null).await;
    assert_eq!(serving["type"], "kubernetes.io/tls");
    let leaf = ca::leaf_info(base64_text(&serving["data"]["tls.crt"]).as_bytes()).expect("a certificate");
    assert!(ctx.ca.borrow().signed_by_active(&leaf) && leaf.dns_names[0] == "default-issuer.auth.svc");
    assert!(base64_text(&serving["data"]["tls.key"]).contains("PRIVATE KEY"));
    let jwks = expect(
        &mut server,
        Method::PATCH,
        "/api/v1/namespaces/auth/configmaps/default-jwks",
        StatusCode::OK,
        Value::Null,
    )
    .await;
    assert!(jwks["data"]["jwks.json"].as_str().unwrap().contains(&kid));
    for path in [
        "/api/v1/namespaces/auth/services/default-issuer",
        "/apis/apps/v1/namespaces/auth/deployments/default-issuer",
        "/apis/policy/v1/namespaces/auth/poddisruptionbudgets/default-issuer",
        "/apis/autoscaling/v2/namespaces/auth/horizontalpodautoscalers/default-issuer",
    ] {
        let applied = expect(&mut server, Method::PATCH, path, StatusCode::OK, Value::Null).await;
        assert_eq!(applied["metadata"]["ownerReferences"][0]["uid"], "uid-p", "{path}");
    }
    let netpol = expect(
        &mut server,
        Method::PATCH,
        "/apis/networking.k8s.io/v1/namespaces/auth/networkpolicies/default-issuer",
        StatusCode::OK,
        Value::Null,
    )
    .await;
    assert_eq!(netpol["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app"], "orders");
    let status = expect(
        &mut server,
        Method::PATCH,
        &format!("{POLICY_DIR}/status"),
        StatusCode::OK,
        policy_json(&[], false),
    )
    .await;
    let status = &status["status"];
    assert_eq!(
        (status["activeKeyId"].as_str(), status["keys"][0]["state"].as_str()),
        (Some(kid.as_str()), Some("Active"))
    );
    assert_eq!(status["conditions"][0]["status"], "True");
    assert!(status["nextRotationAt"].as_str().unwrap().starts_with("20"), "{status}");
    let requeue = run.await.unwrap().unwrap();
    assert_eq!(
        requeue,
        Action::requeue(Duration::from_secs(300)),
        "the next rotation is 30 days off: drift check"
    );

    let mut redis = cluster.admin_connection(&cluster.master_addr().await.unwrap()).await.unwrap();
    let record: String = redis.get(storage::policy("default.auth")).await.unwrap();
    let record: tokenplane_api::tokenpolicy::PolicyRecord = serde_json::from_str(&record).unwrap();
    assert_eq!(record.issuer, "https://default-issuer.auth.svc");
    let published: String = redis.get(storage::jwks("default.auth")).await.unwrap();
    assert_eq!(published, jwks["data"]["jwks.json"].as_str().unwrap(), "Redis and the ConfigMap agree");
    let issuer = tokenplane_testkit::Credentials::new("issuer:default.auth", password);
    for node in cluster.node_addrs() {
        let mut conn = cluster.connection(&node, &issuer).await.expect("the issuer user works on every node");
        let _: redis::Value = redis::cmd("ROLE").query_async(&mut conn).await.unwrap();
    }

    let deleting: TokenPolicy = serde_json::from_value(policy_json(&[tokenpolicy::FINALIZER], true)).unwrap();
    let run = tokio::spawn(reconcile::<TokenPolicy>(Arc::new(deleting), ctx.clone()));
    expect(&mut server, Method::PATCH, POLICY_DIR, StatusCode::OK, policy_json(&[], true)).await;
    run.await.unwrap().unwrap();
    let gone: Option<String> = redis.get(storage::policy("default.auth")).await.unwrap();
    assert_eq!(gone, None, "the record goes with the policy");
    let master = cluster.master_addr().await.unwrap();
    assert!(cluster.connection(&master, &issuer).await.is_err(), "and its issuer user");
    assert_role_allows_what_was_used();
}

/// Answers every request as a cluster holding nothing else would (a read
/// finds nothing, a list is empty, an apply echoes) until `last` is
/// patched, which gets `last_reply`; returns what was applied, by path.
async fn answer_as_empty(api: &mut ApiHandle, last: &str, last_reply: Value) -> Vec<(String, Value)> {
    let mut applied = Vec::new();
    loop {
        let (request, respond) = api.next_request().await.expect("the controller made a request");
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        USED.lock().unwrap().push(rbac_of(&method, &path));
        let body = request.into_body().collect_bytes().await.unwrap();
        let (status, reply) = match method {
            Method::PATCH if path == last => (StatusCode::OK, last_reply.clone()),
            Method::PATCH => (StatusCode::OK, serde_json::from_slice(&body).unwrap()),
            Method::GET if path.ends_with("/oauth2clients") => (
                StatusCode::OK,
                json!({"apiVersion": "tokenplane.io/v1alpha1", "kind": "OAuth2ClientList", "metadata": {}, "items": []}),
            ),
            _ => (StatusCode::NOT_FOUND, not_found()),
        };
        respond.send_response(
            Response::builder().status(status).body(Body::from(serde_json::to_vec(&reply).unwrap())).unwrap(),
        );
        if method == Method::PATCH {
            applied.push((path.clone(), serde_json::from_slice(&body).unwrap()));
        }
        if path == last {
            return applied;
        }
    }
}

#[tokio::test]
async fn a_policy_naming_a_cert_manager_issuer_orders_a_certificate_instead_of_signing_one() {
    let cluster = RedisCluster::start(RedisClusterOptions::default()).await.unwrap();
    let (api, mut server) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(&cluster, api, numbered_secret);
    let mut policy = policy_json(&[tokenpolicy::FINALIZER], false);
    policy["spec"]["tls"] = json!({"certManagerIssuer": {"name": "corp-ca", "kind": "ClusterIssuer"}});
    let run = tokio::spawn(reconcile::<TokenPolicy>(Arc::new(serde_json::from_value(policy).unwrap()), ctx));
    let applied =
        answer_as_empty(&mut server, &format!("{POLICY_DIR}/status"), policy_json(&[], false)).await;
    run.await.unwrap().unwrap();
    let certificate = "/apis/cert-manager.io/v1/namespaces/auth/certificates/default-issuer-tls";
    let (_, body) = applied.iter().find(|(path, _)| path == certificate).expect("a Certificate was applied");
    assert_eq!(
        body["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    assert_eq!(body["spec"]["secretName"], "default-issuer-tls");
    assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-p");
    assert!(!applied.iter().any(|(path, _)| path == SERVING_PATH), "the operator signs nothing itself");
    let deployment = &applied.iter().find(|(p, _)| p.ends_with("/deployments/default-issuer")).unwrap().1;
    assert!(
        deployment.to_string().contains("default-issuer-tls"),
        "the issuer mounts what cert-manager writes"
    );
    assert_role_allows_what_was_used();
}
