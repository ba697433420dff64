//! The agent against a real issuer on a real Redis Sentinel cluster, over
//! loopback: validation of good and bad tokens, revocations reaching several
//! agents, a cut feed failing closed, key rotation, and token vending.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::redis::{cluster, store};
use support::{Auth, SVC_SECRET, TestIssuer};
use tokenplane_api::storage;
use tokenplane_sidecar::agent::{Agent, Probes, Settings};
use tokenplane_sidecar::keys::{KeyPair, KeySet};
use tokenplane_sidecar::server;
use tokenplane_testkit::RedisCluster;
use tokenplane_testkit::pki::{TestCa, Usage};
use tokio::sync::oneshot;

const AGENT_PASSWORD: &str = "agent-password-0123456789abcdefghijklmnopq";
const API: &str = "https://api.test";

struct TestAgent {
    base: String,
    /// The probes' listener (`--health-listen`).
    probes: String,
    agent: Arc<Agent>,
    http: reqwest::Client,
    _stop: oneshot::Sender<()>,
    dir: tempfile::TempDir,
}

struct Options {
    max_staleness: Duration,
    jwks_refresh: Duration,
    /// The issuer CA bundle; the test CA's when unset.
    issuer_ca_file: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_staleness: Duration::from_secs(10),
            jwks_refresh: Duration::from_secs(60),
            issuer_ca_file: None,
        }
    }
}

/// An agent for the svc client, with its own ACL user (`storage::agent_acl`), ready.
async fn start_agent(cluster: &RedisCluster, issuer: &str, options: Options) -> TestAgent {
    let agent = launch_agent(cluster, issuer, options).await;
    agent.wait_ready().await;
    agent
}

/// The same, not waiting for it to be ready.
async fn launch_agent(cluster: &RedisCluster, issuer: &str, options: Options) -> TestAgent {
    cluster.add_user("agent-svc", AGENT_PASSWORD, &storage::agent_acl("svc.team")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (file, value) in [
        ("client_id", "svc.team"),
        ("client_secret", SVC_SECRET),
        ("redis_username", "agent-svc"),
        ("redis_password", AGENT_PASSWORD),
    ] {
        std::fs::write(dir.path().join(file), value).unwrap();
    }
    let redis = support::redis::config(cluster);
    let agent = Agent::start(Settings {
        issuer: issuer.to_owned(),
        audiences: vec![API.into()],
        clock_skew: Duration::from_secs(5),
        max_staleness: options.max_staleness,
        jwks_refresh: options.jwks_refresh,
        jwks_min_refresh: Duration::from_millis(200),
        cache_capacity: 1000,
        credentials_dir: dir.path().into(),
        credentials_poll: Duration::from_millis(100),
        issuer_ca_file: Some(options.issuer_ca_file.unwrap_or_else(|| support::pki().ca_file.clone())),
        redis,
    })
    .map(Arc::new)
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server::serve(listener, agent.clone(), async move {
        let _ = stopped.await;
    }));
    let health = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let probes = format!("http://{}", health.local_addr().unwrap());
    tokio::spawn(server::serve(health, Arc::new(Probes(agent.clone())), std::future::pending()));
    TestAgent { base, probes, agent, http: reqwest::Client::new(), _stop: stop, dir }
}

impl TestAgent {
    async fn wait_ready(&self) {
        let started = Instant::now();
        while self.http.get(format!("{}/readyz", self.base)).send().await.unwrap().status() != StatusCode::OK
        {
            assert!(started.elapsed() < Duration::from_secs(10), "the agent never got ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `POST /v1/validate`: status and body.
    async fn validate(&self, token: &str) -> (StatusCode, Value) {
        let r = self.http.post(format!("{}/v1/validate", self.base)).bearer_auth(token).send().await.unwrap();
        (r.status(), r.json().await.unwrap())
    }

    async fn reason(&self, token: &str) -> String {
        let (status, body) = self.validate(token).await;
        assert_ne!(status, StatusCode::OK, "accepted: {body}");
        body["reason"].as_str().unwrap().to_owned()
    }
}

/// An Ed25519 key as the issuer's keys Secret holds it: kid and PKCS#8 PEM.
fn key_pem() -> String {
    let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref().to_vec()))
}

fn key_set(active: &str, keys: &[(&str, &str)]) -> KeySet {
    let pairs =
        keys.iter().map(|(kid, pem)| ((*kid).to_owned(), KeyPair::from_pem(kid, pem.as_bytes()).unwrap()));
    KeySet::new(active, pairs.collect()).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn claims(issuer: &str) -> Value {
    json!({"iss": issuer, "sub": "svc.team", "aud": API, "exp": now() + 300, "iat": now(),
           "jti": tokenplane_sidecar::opaque::id(), "client_id": "svc.team"})
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

async fn issuer_with_fresh_key(cluster: &RedisCluster) -> TestIssuer {
    issuer_with(cluster, KeySet::generate(tokenplane_api::tokenpolicy::SigningAlgorithm::EdDSA).unwrap())
        .await
}

async fn issuer_with(cluster: &RedisCluster, keys: KeySet) -> TestIssuer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    support::start_at(store(cluster), &support::manifests(), listener, Some(keys)).await
}

#[tokio::test]
async fn validates_good_tokens_and_rejects_every_kind_of_bad_one() {
    let cluster = cluster().await;
    let pem = key_pem();
    let issuer = issuer_with(&cluster, key_set("k1", &[("k1", &pem)])).await;
    let signer = key_set("k1", &[("k1", &pem)]);
    let agent = start_agent(&cluster, &issuer.base, Options::default()).await;

    let token = issuer.svc_token(&[]).await;
    let (status, body) = agent.validate(&token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["active"].as_bool(), body["claims"]["sub"].as_str()), (Some(true), Some("svc.team")));
    assert_eq!(agent.validate(&token).await.0, StatusCode::OK, "again, from the cache");
    let introspected: Value = agent
        .http
        .post(format!("{}/oauth2/introspect", agent.base))
        .form(&[("token", &token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((introspected["active"].as_bool(), introspected["aud"].as_str()), (Some(true), Some(API)));

    let signed = |edit: &dyn Fn(&mut Value)| {
        let mut c = claims(&issuer.base);
        edit(&mut c);
        signer.sign(&c)
    };
    assert_eq!(agent.reason(&signed(&|c| c["exp"] = (now() - 60).into())).await, "expired");
    assert_eq!(agent.reason(&signed(&|c| c["aud"] = "https://other.test".into())).await, "audience");
    assert_eq!(agent.reason(&signed(&|c| c["iss"] = "https://evil.test".into())).await, "issuer");
    assert_eq!(agent.validate(&signed(&|_| {})).await.0, StatusCode::OK, "the control token is fine");

    let body = b64(claims(&issuer.base).to_string().as_bytes());
    let none = format!("{}.{body}.", b64(br#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#));
    assert!(["malformed", "algorithm"].contains(&agent.reason(&none).await.as_str()));
    // HS256 keyed with the public key: the classic algorithm confusion.
    let public: Value = issuer.get("/.well-known/jwks.json").await.json().await.unwrap();
    let x = URL_SAFE_NO_PAD.decode(public["keys"][0]["x"].as_str().unwrap()).unwrap();
    let head = format!("{}.{body}", b64(br#"{"alg":"HS256","typ":"at+jwt","kid":"k1"}"#));
    let mac =
        aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &x), head.as_bytes());
    assert_eq!(agent.reason(&format!("{head}.{}", b64(mac.as_ref()))).await, "algorithm");
    let wrong_typ = format!("{}.{body}.AAAA", b64(br#"{"alg":"EdDSA","typ":"JWT","kid":"k1"}"#));
    assert_eq!(agent.reason(&wrong_typ).await, "wrong_type");
    assert!(["signature", "malformed"].contains(&agent.reason(&token[..token.len() - 10]).await.as_str()));
    assert_eq!(agent.reason(&format!("{token}{}", "A".repeat(9000))).await, "too_long");
    // Made-up kids: each is refused, and together they cost the issuer
    // at most a JWKS fetch or two (one per --jwks-min-refresh).
    let jwks_fetches = || async {
        let metrics = issuer.get("/metrics").await.text().await.unwrap();
        let line = metrics.lines().find(|l| {
            l.starts_with("tokenplane_issuer_http_request_duration_seconds_count{endpoint=\"jwks\"")
        });
        line.map_or(0, |l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
    };
    let before = jwks_fetches().await;
    let started = Instant::now();
    for i in 0..20 {
        let stranger = key_set(&format!("k9-{i}"), &[(&format!("k9-{i}"), &key_pem())]);
        assert_eq!(agent.reason(&stranger.sign(&claims(&issuer.base))).await, "unknown_key");
    }
    let allowed = 1 + started.elapsed().as_millis() / 200;
    assert!(u128::from(jwks_fetches().await - before) <= allowed, "unknown kids hammer the issuer");
    let no_bearer = agent.http.post(format!("{}/v1/validate", agent.base)).send().await.unwrap();
    assert_eq!(no_bearer.status(), StatusCode::BAD_REQUEST);

    let metrics =
        agent.http.get(format!("{}/metrics", agent.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tokenplane_agent_validations_total{result=\"audience\"} 1"), "{metrics}");
    assert!(!metrics.contains(&token) && !metrics.contains(SVC_SECRET));
    assert!(cluster.acl_denials().await.unwrap().is_empty(), "the agent needs only its ACL");
}

/// Polls `agent` until it rejects `token` with `reason`; how long that took.
async fn until_rejected(agent: &TestAgent, token: &str, reason: &str, since: Instant) -> Duration {
    loop {
        let (status, body) = agent.validate(token).await;
        if status != StatusCode::OK {
            assert_eq!(body["reason"], reason, "{body}");
            return since.elapsed();
        }
        assert!(since.elapsed() < Duration::from_secs(5), "never rejected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn revocations_reach_three_agents_within_a_second() {
    let cluster = cluster().await;
    let issuer = issuer_with_fresh_key(&cluster).await;
    let agents =
        futures::future::join_all((0..3).map(|_| start_agent(&cluster, &issuer.base, Options::default())))
            .await;
    let mut delays = Vec::new();
    for _ in 0..20 {
        let token = issuer.svc_token(&[]).await;
        for agent in &agents {
            assert_eq!(agent.validate(&token).await.0, StatusCode::OK);
        }
        let revoked = Instant::now();
        let r =
            issuer.post("/oauth2/revoke", Auth::Basic("svc.team", SVC_SECRET), &[("token", &token)]).await;
        assert_eq!(r.status, StatusCode::OK);
        for agent in &agents {
            delays.push(until_rejected(agent, &token, "revoked", revoked).await);
        }
    }
    delays.sort();
    let p99 = delays[delays.len() * 99 / 100 - 1];
    println!(
        "revocation reached the agents: p50 {:?}, p99 {:?}, max {:?}",
        delays[delays.len() / 2],
        p99,
        delays.last().unwrap()
    );
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");

    // A client's not-before mark (what the operator writes when it is deleted).
    let token = issuer.svc_token(&[]).await;
    assert_eq!(agents[0].validate(&token).await.0, StatusCode::OK);
    let mut admin = cluster.admin_connection(&cluster.master_addr().await.unwrap()).await.unwrap();
    let at = now() + 1;
    let marked = Instant::now();
    let () = redis::pipe()
        .hset(storage::NOT_BEFORE, "svc.team", at)
        .ignore()
        .publish(storage::REVOCATIONS, format!("client svc.team {at}"))
        .ignore()
        .query_async(&mut admin)
        .await
        .unwrap();
    for agent in &agents {
        until_rejected(agent, &token, "client_revoked", marked).await;
    }
}

#[tokio::test]
async fn a_cut_feed_fails_closed_and_resyncs_before_trusting_again() {
    let cluster = cluster().await;
    let issuer = issuer_with_fresh_key(&cluster).await;
    let options = Options { max_staleness: Duration::from_secs(1), ..Options::default() };
    let agent = start_agent(&cluster, &issuer.base, options).await;
    let (kept, revoked) = (issuer.svc_token(&[]).await, issuer.svc_token(&[]).await);
    assert_eq!(agent.validate(&kept).await.0, StatusCode::OK);
    assert_eq!(agent.validate(&revoked).await.0, StatusCode::OK);

    // Cut the agent off: its user may not log in, its connection is killed.
    let mut admin = cluster.admin_connection(&cluster.master_addr().await.unwrap()).await.unwrap();
    let () =
        redis::cmd("ACL").arg("SETUSER").arg("agent-svc").arg("off").query_async(&mut admin).await.unwrap();
    let _: i64 =
        redis::cmd("CLIENT").arg("KILL").arg("USER").arg("agent-svc").query_async(&mut admin).await.unwrap();
    let r = issuer.post("/oauth2/revoke", Auth::Basic("svc.team", SVC_SECRET), &[("token", &revoked)]).await;
    assert_eq!(r.status, StatusCode::OK, "revoked while the agent cannot hear it");
    let cut = Instant::now();
    let (status, body) = loop {
        let (status, body) = agent.validate(&kept).await;
        if status != StatusCode::OK {
            break (status, body);
        }
        assert!(cut.elapsed() < Duration::from_secs(5), "still trusting a feed cut long ago");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("failed closed {:?} after the cut", cut.elapsed());
    assert_eq!((status, body["reason"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("feed_stale")));
    let ready = agent.http.get(format!("{}/readyz", agent.base)).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let probed = agent.http.get(format!("{}/readyz", agent.probes)).send().await.unwrap();
    assert_eq!(probed.status(), StatusCode::SERVICE_UNAVAILABLE, "the kubelet's probe sees it too");

    let () =
        redis::cmd("ACL").arg("SETUSER").arg("agent-svc").arg("on").query_async(&mut admin).await.unwrap();
    agent.wait_ready().await;
    assert_eq!(agent.validate(&kept).await.0, StatusCode::OK);
    assert_eq!(agent.reason(&revoked).await, "revoked", "the resync brought the missed revocation");
    let probe = |path: &str| agent.http.get(format!("{}{path}", agent.probes)).send();
    assert_eq!(probe("/readyz").await.unwrap().status(), StatusCode::OK);
    assert_eq!(probe("/healthz").await.unwrap().status(), StatusCode::OK);
    for path in ["/v1/token", "/v1/validate", "/metrics"] {
        assert_eq!(probe(path).await.unwrap().status(), StatusCode::NOT_FOUND, "{path}: probes only");
    }
}

#[tokio::test]
async fn a_new_signing_key_is_accepted_without_restart_and_a_removed_one_rejected() {
    let cluster = cluster().await;
    let (k1, k2) = (key_pem(), key_pem());
    let first = issuer_with(&cluster, key_set("k1", &[("k1", &k1)])).await;
    let options = Options { jwks_refresh: Duration::from_millis(300), ..Options::default() };
    let agent = start_agent(&cluster, &first.base, options).await;
    let old = first.svc_token(&[]).await;
    assert_eq!(agent.validate(&old).await.0, StatusCode::OK);

    // The issuer's keys change behind the same URL: the agent's JWKS URL
    // points at a listener whose issuer we swap.
    let (swap, rotated) = (first.base.clone(), key_set("k2", &[("k1", &k1), ("k2", &k2)]));
    drop(first);
    let second = rebind(&cluster, &swap, rotated).await;
    let new = second.svc_token(&[]).await;
    assert_eq!(agent.validate(&new).await.0, StatusCode::OK, "new kid fetched on first sight");
    assert_eq!(agent.validate(&old).await.0, StatusCode::OK, "old key still published");
    let beat = heartbeat_holding(&cluster, "k2").await;
    assert_eq!(
        (beat.issuer.as_str(), beat.kids.as_slice()),
        (swap.as_str(), ["k1".to_owned(), "k2".into()].as_slice())
    );

    drop(second);
    let _third = rebind(&cluster, &swap, key_set("k2", &[("k2", &k2)])).await;
    until_rejected(&agent, &old, "unknown_key", Instant::now()).await;
    assert_eq!(agent.validate(&new).await.0, StatusCode::OK);
}

/// The svc agent's heartbeat, once it reports holding `kid` (it beats
/// every `HEARTBEAT_INTERVAL_SECS`).
async fn heartbeat_holding(cluster: &RedisCluster, kid: &str) -> storage::VerifierHeartbeat {
    let mut conn = cluster.admin_connection(&cluster.master_addr().await.unwrap()).await.unwrap();
    let key =
        storage::verifier(&storage::agent_verifier("svc.team", &tokenplane_sidecar::heartbeat::instance()));
    let deadline = Instant::now() + Duration::from_secs(storage::HEARTBEAT_INTERVAL_SECS + 5);
    loop {
        let raw: Option<String> = redis::AsyncCommands::get(&mut conn, &key).await.unwrap();
        let beat = raw.map(|r| serde_json::from_str::<storage::VerifierHeartbeat>(&r).unwrap());
        match beat {
            Some(beat) if beat.kids.iter().any(|k| k == kid) => {
                let ttl: i64 = redis::AsyncCommands::ttl(&mut conn, &key).await.unwrap();
                assert!(
                    ttl > 0 && ttl <= storage::HEARTBEAT_TTL_SECS as i64,
                    "a heartbeat expires: ttl {ttl}"
                );
                return beat;
            }
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("no heartbeat holding {kid} in {key}: {other:?}"),
        }
    }
}

/// Starts an issuer on the address another one just left.
async fn rebind(cluster: &RedisCluster, base: &str, keys: KeySet) -> TestIssuer {
    let addr = base.trim_start_matches("https://");
    let started = Instant::now();
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) if started.elapsed() < Duration::from_secs(15) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{addr} stays busy: {e}"),
        }
    };
    support::start_at(store(cluster), &support::manifests(), listener, Some(keys)).await
}

#[tokio::test]
async fn a_thousand_concurrent_callers_cause_one_issuer_request() {
    let cluster = cluster().await;
    let issuer = issuer_with_fresh_key(&cluster).await;
    let agent = start_agent(&cluster, &issuer.base, Options::default()).await;
    let issued = || async {
        let metrics = issuer.get("/metrics").await.text().await.unwrap();
        metrics
            .lines()
            .find(|l| {
                l.starts_with("tokenplane_issuer_tokens_issued_total{grant_type=\"client_credentials\"}")
            })
            .map_or(0, |l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
    };
    let before = issued().await;
    let calls = (0..1000).map(|_| {
        let req = http::Request::get(format!("/v1/token?audience={API}&scope=read"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        agent.agent.handle(req)
    });
    let replies = futures::future::join_all(calls).await;
    assert!(replies.iter().all(|r| r.status() == StatusCode::OK));
    assert_eq!(issued().await - before, 1, "one issuer request for 1,000 callers");
    let vended =
        agent.http.get(format!("{}/v1/token?audience={API}&scope=read", agent.base)).send().await.unwrap();
    let vended: Value = vended.json().await.unwrap();
    let (status, claims) = agent.validate(vended["access_token"].as_str().unwrap()).await;
    assert_eq!((status, claims["claims"]["scope"].as_str()), (StatusCode::OK, Some("read")));

    // Revoked at the issuer: the agent stops handing it out.
    let revoked = vended["access_token"].as_str().unwrap().to_owned();
    let r = issuer.post("/oauth2/revoke", Auth::Basic("svc.team", SVC_SECRET), &[("token", &revoked)]).await;
    assert_eq!(r.status, StatusCode::OK);
    until_rejected(&agent, &revoked, "revoked", Instant::now()).await;
    let again =
        agent.http.get(format!("{}/v1/token?audience={API}&scope=read", agent.base)).send().await.unwrap();
    let again: Value = again.json().await.unwrap();
    assert_ne!(again["access_token"].as_str(), Some(revoked.as_str()), "a revoked token is not vended");
    assert_eq!(agent.validate(again["access_token"].as_str().unwrap()).await.0, StatusCode::OK);

    // A wrong secret in the mounted Secret: the next token request fails with the issuer's own error.
    std::fs::write(agent.dir.path().join("client_secret"), "wrong").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = agent.http.get(format!("{}/v1/token?audience={API}", agent.base)).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(refused.json::<Value>().await.unwrap()["error"], "invalid_client");
}

/// The agent's `/v1/token` (a fresh token: the scope is new to it).
async fn vend(agent: &TestAgent, scope: &str) -> (StatusCode, Value) {
    let url = format!("{}/v1/token?audience={API}&scope={scope}", agent.base);
    let reply = agent.http.get(url).send().await.unwrap();
    (reply.status(), reply.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_new_ca_in_the_bundle_is_trusted_without_restart_when_the_issuer_moves_to_it() {
    let cluster = cluster().await;
    let issuer = issuer_with_fresh_key(&cluster).await;
    let bundle_dir = tempfile::tempdir().unwrap();
    let bundle = bundle_dir.path().join("ca.crt");
    std::fs::write(&bundle, support::pki().ca.pem()).unwrap();
    let options = Options { issuer_ca_file: Some(bundle.clone()), ..Options::default() };
    let agent = start_agent(&cluster, &issuer.base, options).await;
    assert_eq!(vend(&agent, "read").await.0, StatusCode::OK);

    // The operator's order: the new CA joins the bundle, the agent re-reads
    // it; only then does the issuer serve a certificate the new CA signed.
    let next = TestCa::new("next tokenplane CA");
    std::fs::write(&bundle, format!("{}{}", next.pem(), support::pki().ca.pem())).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    next.loopback(Usage::Server).write(issuer.dir.path(), "tls").unwrap();
    issuer.tls.reload();

    let (status, vended) = vend(&agent, "write").await;
    assert_eq!(status, StatusCode::OK, "the agent trusts the new CA: {vended}");
    let (status, claims) = agent.validate(vended["access_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{claims}");

    let old_bundle = bundle_dir.path().join("old.crt");
    std::fs::write(&old_bundle, support::pki().ca.pem()).unwrap();
    let stale = Options { issuer_ca_file: Some(old_bundle), ..Options::default() };
    let stale = launch_agent(&cluster, &issuer.base, stale).await;
    let (status, body) = vend(&stale, "read").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "without the new CA the issuer is unreachable: {body}");
}
