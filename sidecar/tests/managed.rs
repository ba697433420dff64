//! An issuer as the operator runs it (managed mode), on a real Redis
//! Sentinel cluster: its policy from the record in Redis, its keys from a
//! mounted Secret folder, both changed while it serves; only its policy's
//! clients; its heartbeat.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::redis::{cluster, store};
use support::{Auth, SVC_SECRET, TestIssuer};
use tokenplane_api::client::{ClientRecord, SecretHash};
use tokenplane_api::signing::KeyPair;
use tokenplane_api::storage;
use tokenplane_api::tokenpolicy::{PolicyRecord, SigningAlgorithm};
use tokenplane_testkit::RedisCluster;

const POLICY: &str = "main.team";

async fn put(cluster: &RedisCluster, key: String, value: &impl serde::Serialize) {
    let mut conn = cluster.admin_connection(&cluster.master_addr().await.unwrap()).await.unwrap();
    let json = serde_json::to_string(value).unwrap();
    let () = redis::AsyncCommands::set(&mut conn, key, json).await.unwrap();
}

fn record(issuer: &str, access_token: &str) -> PolicyRecord {
    let spec = serde_json::from_value(json!({"lifetimes": {"accessToken": access_token}})).unwrap();
    PolicyRecord { issuer: issuer.into(), spec }
}

/// A registration of `client_id` with the svc secret, served by `policy`.
fn registration(client_id: &str, policy: &str) -> ClientRecord {
    let spec = serde_json::from_value(json!({"policyRef": {"name": "x"}, "audiences": ["https://api.test"]}))
        .unwrap();
    ClientRecord {
        policy: Some(policy.into()),
        ..ClientRecord::new(client_id.into(), &spec, vec![SecretHash::of(SVC_SECRET)])
    }
}

fn write_keys(dir: &std::path::Path, keys: &[(&str, &KeyPair)], active: &str) {
    for (kid, key) in keys {
        std::fs::write(dir.join(format!("{kid}.pem")), key.to_pem()).unwrap();
    }
    std::fs::write(dir.join("active"), active).unwrap();
}

fn claims(token: &str) -> (String, Value) {
    use base64::Engine;
    let header = jsonwebtoken::decode_header(token).unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap();
    (header.kid.unwrap(), serde_json::from_slice(&payload).unwrap())
}

async fn until<F: AsyncFn() -> bool>(what: &str, within: Duration, check: F) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn lifetime_and_kid(issuer: &TestIssuer) -> (u64, String) {
    let (kid, claims) = claims(&issuer.svc_token(&[]).await);
    (claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), kid)
}

#[tokio::test]
async fn a_managed_issuer_follows_its_policy_and_keys_and_reports_them() {
    let cluster = cluster().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = support::base_url(&listener);
    put(&cluster, storage::policy(POLICY), &record(&base, "5m")).await;
    put(&cluster, storage::client("svc.team"), &registration("svc.team", POLICY)).await;
    put(
        &cluster,
        storage::client("stranger.elsewhere"),
        &registration("stranger.elsewhere", "other.elsewhere"),
    )
    .await;
    let keys = tempfile::tempdir().unwrap();
    let (k1, k2) = (
        KeyPair::generate(SigningAlgorithm::EdDSA).unwrap(),
        KeyPair::generate(SigningAlgorithm::ES256).unwrap(),
    );
    write_keys(keys.path(), &[("k1", &k1)], "k1");
    let reload = Duration::from_millis(200);
    let issuer = support::start_managed(store(&cluster), POLICY, keys.path(), listener, reload).await;

    assert_eq!(lifetime_and_kid(&issuer).await, (300, "k1".into()));
    let stranger = issuer
        .post(
            "/oauth2/token",
            Auth::Basic("stranger.elsewhere", SVC_SECRET),
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(
        (stranger.status, stranger.json["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client")),
        "a client of another policy is unknown here"
    );

    put(&cluster, storage::policy(POLICY), &record(&base, "10m")).await;
    until("the new access-token lifetime", Duration::from_secs(5), async || {
        lifetime_and_kid(&issuer).await.0 == 600
    })
    .await;

    write_keys(keys.path(), &[("k2", &k2)], "k2");
    until("signing with k2", Duration::from_secs(5), async || lifetime_and_kid(&issuer).await.1 == "k2")
        .await;
    let jwks: Value =
        issuer.http.get(format!("{base}/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let kids: Vec<&str> =
        jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, ["k1", "k2"], "the retiring key stays published");

    std::fs::write(keys.path().join("active"), "missing").unwrap();
    tokio::time::sleep(reload * 3).await;
    assert_eq!(
        lifetime_and_kid(&issuer).await.1,
        "k2",
        "unusable keys are not taken: the issuer keeps its own"
    );

    let key =
        storage::verifier(&storage::issuer_verifier(POLICY, &tokenplane_sidecar::heartbeat::instance()));
    let mut conn = cluster.admin_connection(&cluster.master_addr().await.unwrap()).await.unwrap();
    let beat_within = Duration::from_secs(storage::HEARTBEAT_INTERVAL_SECS + 5);
    until("a heartbeat holding k1 and k2", beat_within, async || {
        let raw: Option<String> = redis::AsyncCommands::get(&mut conn.clone(), &key).await.unwrap();
        raw.and_then(|r| serde_json::from_str::<storage::VerifierHeartbeat>(&r).ok())
            .is_some_and(|b| b.issuer == base && b.kids == ["k1", "k2"] && b.signing.as_deref() == Some("k2"))
    })
    .await;
    let ttl: i64 = redis::AsyncCommands::ttl(&mut conn, &key).await.unwrap();
    assert!(ttl > 0, "a heartbeat expires");

    // The operator withdraws k2 (compromised) from the published JWKS: the
    // issuer stops signing with it and serving it before its mount catches up.
    std::fs::write(keys.path().join("active"), "k2").unwrap();
    put(&cluster, storage::jwks(POLICY), &json!({"keys": [k1.public_jwk(Some("k1".into()))]})).await;
    until("k2 withdrawn", Duration::from_secs(5), async || {
        let r = issuer
            .post(
                "/oauth2/token",
                Auth::Basic("svc.team", SVC_SECRET),
                &[("grant_type", "client_credentials")],
            )
            .await;
        r.status == StatusCode::SERVICE_UNAVAILABLE && r.json["error"] == "temporarily_unavailable"
    })
    .await;
    let jwks: Value =
        issuer.http.get(format!("{base}/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "only k1 is served: {jwks}");
    assert!(cluster.acl_denials().await.unwrap().is_empty(), "the issuer needs only its ACL");
}
