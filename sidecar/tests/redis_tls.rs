//! The issuer on a real Redis Sentinel cluster that serves TLS only (every
//! node and Sentinel on `tls-port`, replication and Sentinel links over
//! TLS): tokens over TLS, with and without a client certificate, clear
//! errors for a wrong CA or a missing certificate, and a failover.

mod support;

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use reqwest::StatusCode;
use support::redis::{issuer_config, store, tls, tls_cluster};
use support::{Auth, SVC_SECRET, TestIssuer};
use tokenplane_api::redis_tls::RedisTls;
use tokenplane_api::storage;
use tokenplane_sidecar::store::{RedisConfig, RedisStore};
use tokenplane_testkit::pki::TestCa;
use tokenplane_testkit::{ClientAuth, RedisCluster};

async fn issuer_with(store: RedisStore) -> TestIssuer {
    support::start_on(store, &support::manifests()).await
}

fn svc() -> Auth<'static> {
    Auth::Basic("svc.team", SVC_SECRET)
}

/// A token, introspected, revoked, and introspected again.
async fn token_lifecycle(issuer: &TestIssuer) {
    let access = issuer.svc_token(&[]).await;
    assert_eq!(issuer.introspect(&access).await["active"], true);
    let r = issuer.post("/oauth2/revoke", svc(), &[("token", &access)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(issuer.introspect(&access).await["active"], false);
}

/// What a store configured as `config` answers on `cluster`, within 10 s.
async fn first_answer(config: RedisConfig) -> Result<(), String> {
    let store = RedisStore::new(config).map_err(|e| e.0)?;
    let answer = tokio::time::timeout(Duration::from_secs(10), store.policy("auth/default")).await;
    answer.expect("an answer, not a hang").map(drop).map_err(|e| e.0)
}

#[tokio::test]
async fn the_issuer_works_over_tls_with_a_client_certificate_and_fails_over() {
    let cluster = tls_cluster(ClientAuth::Required).await;
    let issuer = issuer_with(store(&cluster)).await;
    token_lifecycle(&issuer).await;

    let old = cluster.kill_master().await.unwrap();
    let new = cluster.wait_for_failover(&old, Duration::from_secs(15)).await.unwrap();
    let mut on_new = cluster.admin_connection(&new).await.unwrap();
    let revoked_before: u64 = on_new.zcard(storage::REVOKED).await.unwrap();
    // A revocation is a durable write (WAIT for a replica): once one is
    // acknowledged, the issuer writes to the new master, over TLS.
    let killed = Instant::now();
    let revoked = loop {
        assert!(killed.elapsed() < Duration::from_secs(30), "no recovery after 30 s\n{}", cluster.logs());
        let r = issuer.post("/oauth2/token", svc(), &[("grant_type", "client_credentials")]).await;
        if let Some(access) = r.json["access_token"].as_str()
            && issuer.post("/oauth2/revoke", svc(), &[("token", access)]).await.status == StatusCode::OK
        {
            break access.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("revocations acknowledged over TLS {:?} after the failover", killed.elapsed());
    let revoked_after: u64 = on_new.zcard(storage::REVOKED).await.unwrap();
    assert_eq!(revoked_after, revoked_before + 1, "the revocation went to the new master {new}");
    assert_eq!(issuer.introspect(&revoked).await["active"], false);
    token_lifecycle(&issuer).await;
    assert_eq!(issuer.get("/readyz").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_client_certificate_may_be_left_out_where_redis_makes_it_optional() {
    let cluster = tls_cluster(ClientAuth::Optional).await;
    let config = RedisConfig { tls: Some(tls(&cluster, false)), ..issuer_config(&cluster) };
    token_lifecycle(&issuer_with(RedisStore::new(config).unwrap()).await).await;
}

/// What the issuer answers on `cluster` with TLS settings `tls`.
async fn answer_with(cluster: &RedisCluster, tls: RedisTls) -> Result<(), String> {
    first_answer(RedisConfig { tls: Some(tls), ..issuer_config(cluster) }).await
}

#[tokio::test]
async fn a_wrong_ca_or_a_missing_client_certificate_is_a_clear_error() {
    let cluster = tls_cluster(ClientAuth::Required).await;
    answer_with(&cluster, tls(&cluster, true)).await.expect("the right CA and certificate work");

    let other = TestCa::new("another CA");
    let wrong_ca = RedisTls { ca_bundle: Some(other.pem().as_bytes().to_vec()), ..tls(&cluster, true) };
    let error = answer_with(&cluster, wrong_ca).await.unwrap_err();
    println!("wrong CA: {error}");
    assert!(error.contains("no Redis master \"tokenplane\" found through the Sentinels"), "{error}");
    assert!(error.contains("UnknownIssuer"), "says the server's certificate is not trusted: {error}");

    let error = answer_with(&cluster, tls(&cluster, false)).await.unwrap_err();
    println!("no client certificate: {error}");
    assert!(error.contains("no Redis master \"tokenplane\" found through the Sentinels"), "{error}");
    assert!(error.to_lowercase().contains("certificate"), "says a certificate was missing: {error}");

    let plain = RedisConfig { tls: None, ..issuer_config(&cluster) };
    let error = first_answer(plain).await.unwrap_err();
    println!("plain TCP to TLS: {error}");
}
