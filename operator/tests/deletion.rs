//! Deleting an OAuth2Client while its tokens are live (issue 6): once the
//! finalizer's Redis step (`RedisAdmin::remove_client`) has run, a token the
//! client got a moment before fails at a real agent within a second and at
//! a real issuer at once. Everything is real and as the operator makes it:
//! a Redis Sentinel cluster, the client's registration and agent ACL user
//! from `oauth2client::desired`, the issuer's ACL user, HTTP over loopback.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokenplane_api::TokenPolicy;
use tokenplane_api::acl::password_hash;
use tokenplane_operator::controller::generate_secret;
use tokenplane_operator::reconcile::oauth2client::{self, Credentials, Desired};
use tokenplane_operator::reconcile::redis_password::Credentials as RedisCredentials;
use tokenplane_operator::reconcile::tokenpolicy::issuer_user;
use tokenplane_operator::redis::{Nodes, RedisAdmin};
use tokenplane_sidecar::{agent, issuer, keys::KeySet, server, store};
use tokenplane_testkit::{RedisCluster, RedisClusterOptions};

/// Registers the client `name` as the reconcile does: fresh credentials,
/// then its registration and its agent's ACL user. Returns it and its secret.
async fn register(admin: &RedisAdmin, nodes: &Nodes, policy: &TokenPolicy, name: &str) -> (Desired, String) {
    let redis = RedisCredentials::new(generate_secret(), 0);
    let creds = Credentials { client_secret: Some(generate_secret()), redis };
    let desired = oauth2client::desired(&support::client(name), Some(policy), &creds).unwrap();
    let user = &desired.agent_user;
    admin.apply_client(nodes, &desired.registration, user, &creds.redis.hashes()).await.unwrap();
    (desired, creds.client_secret.unwrap())
}

/// A fresh loopback port, and its base URL.
async fn listen() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    (listener, base)
}

#[tokio::test]
async fn a_deleted_clients_live_token_fails_at_the_issuer_and_at_its_agent() {
    let cluster = RedisCluster::start(RedisClusterOptions::default()).await.unwrap();
    let (admin, policy) = (support::admin(&cluster), support::policy());
    let nodes = admin.nodes().await.unwrap();
    let (orders, orders_secret) = register(&admin, &nodes, &policy, "orders").await;
    // Introspection needs an authenticated client, and the deleted one no
    // longer is: a second client of the same policy asks about its token.
    let (billing, billing_secret) = register(&admin, &nodes, &policy, "billing").await;

    let sentinel = cluster.sentinel_credentials();
    let redis = store::RedisConfig {
        sentinel_username: Some(sentinel.username),
        sentinel_password: Some(sentinel.password.into()),
        timeout: Duration::from_millis(500),
        ..store::RedisConfig::new(cluster.sentinel_addrs(), cluster.master_name())
    };
    let policy_id = TokenPolicy::id_for("default", "auth");
    let (issuer_user, issuer_password) = (issuer_user(&policy_id), generate_secret());
    admin.set_user(&nodes, &issuer_user, &[password_hash(&issuer_password)]).await.unwrap();
    let issuer_redis = store::RedisConfig {
        username: Some(issuer_user.name),
        password: Some(issuer_password.into()),
        ..redis.clone()
    };
    let (listener, base) = listen().await;
    // Managed issuers serve their own policy's registrations only.
    let settings = issuer::Settings {
        policy: Some(policy_id),
        ..issuer::Settings::from_policy(base.clone(), &policy.spec)
    };
    let keys = KeySet::generate(policy.spec.signing.algorithm).unwrap();
    let store = store::RedisStore::new(issuer_redis).unwrap();
    let issuer = Arc::new(issuer::Issuer::new(store, keys, settings));
    tokio::spawn(server::serve(listener, issuer, std::future::pending()));

    // The agent's folder is the credentials Secret as the pod mounts it; its
    // Redis login is the client's own ACL user.
    let credentials = tempfile::tempdir().unwrap();
    for (file, value) in orders.secret.data.as_ref().unwrap() {
        std::fs::write(credentials.path().join(file), &value.0).unwrap();
    }
    let agent = agent::Agent::start(agent::Settings {
        issuer: base.clone(),
        audiences: orders.registration.audiences.clone(),
        clock_skew: Duration::from_secs(5),
        max_staleness: Duration::from_secs(10),
        jwks_refresh: Duration::from_secs(60),
        jwks_min_refresh: Duration::from_secs(1),
        cache_capacity: 1000,
        credentials_dir: credentials.path().into(),
        credentials_poll: Duration::from_secs(2),
        issuer_ca_file: None,
        redis,
    })
    .map(Arc::new)
    .unwrap();
    let (listener, agent_base) = listen().await;
    tokio::spawn(server::serve(listener, agent, std::future::pending()));

    let http = reqwest::Client::new();
    let started = Instant::now();
    while http.get(format!("{agent_base}/readyz")).send().await.unwrap().status() != StatusCode::OK {
        assert!(started.elapsed() < Duration::from_secs(10), "the agent never got ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let token_request = |id: &str, secret: &str| {
        let form = [("grant_type", "client_credentials")];
        http.post(format!("{base}/oauth2/token")).basic_auth(id, Some(secret)).form(&form).send()
    };
    let validate = |token: &str| http.post(format!("{agent_base}/v1/validate")).bearer_auth(token).send();
    let introspect = |token: &str| {
        let request = http.post(format!("{base}/oauth2/introspect")).form(&[("token", token)]);
        request.basic_auth(&billing.client_id, Some(&billing_secret)).send()
    };

    let reply = token_request(&orders.client_id, &orders_secret).await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    let token = reply.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(validate(&token).await.unwrap().status(), StatusCode::OK, "live at the agent");
    let live: Value = introspect(&token).await.unwrap().json().await.unwrap();
    assert_eq!(live["active"], true, "live at the issuer: {live}");

    // Deleted within the second the token was issued (the finalizer passes
    // the current second): the hard case for whole-second not-before marks.
    let now = live["iat"].as_u64().unwrap();
    let deleted = Instant::now();
    admin.remove_client(&nodes, &orders.client_id, &orders.agent_user, now).await.unwrap();
    let rejected = loop {
        let reply = validate(&token).await.unwrap();
        if reply.status() == StatusCode::UNAUTHORIZED {
            let body: Value = reply.json().await.unwrap();
            assert_eq!(body["reason"], "client_revoked", "{body}");
            break deleted.elapsed();
        }
        assert!(deleted.elapsed() < Duration::from_secs(1), "still {} at the agent", reply.status());
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    println!("the agent rejected the deleted client's token {rejected:?} after remove_client began");

    let reply = token_request(&orders.client_id, &orders_secret).await.unwrap();
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json::<Value>().await.unwrap()["error"], "invalid_client");
    let dead: Value = introspect(&token).await.unwrap().json().await.unwrap();
    assert_eq!(dead, serde_json::json!({"active": false}));

    // The agent of a deleted client loses its Redis user, so its feed's
    // reconnects fail authentication: wait for them, then check those are
    // the only denials (the issuer and the agent needed nothing else).
    let started = Instant::now();
    let denials = loop {
        let denials = cluster.acl_denials().await.unwrap();
        if !denials.is_empty() || started.elapsed() > Duration::from_secs(5) {
            break denials;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let user = format!(" by user {} ", orders.agent_user.name);
    let other: Vec<_> =
        denials.iter().filter(|d| !(d.contains(": auth denied: ") && d.contains(&user))).collect();
    assert!(!denials.is_empty() && other.is_empty(), "{denials:#?}");
}
