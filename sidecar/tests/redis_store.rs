//! The issuer on a real Redis Sentinel cluster (1 master, 2 replicas, 3
//! Sentinels, ACL users only): the same flows as in memory, revocations that
//! survive a failover, and a store that recovers by itself.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use support::redis::{cluster, store};
use support::{Auth, SVC_SECRET, TestIssuer, WEB_CALLBACK, WEB_SECRET};
use tokenplane_api::client::{ClientRecord, SecretHash};
use tokenplane_api::storage;
use tokenplane_sidecar::clock::unix_now;
use tokenplane_testkit::RedisCluster;

async fn issuer_on(cluster: &RedisCluster) -> TestIssuer {
    support::start_on(store(cluster), &support::manifests()).await
}

/// Runs the browser part of the code flow for the web client; returns the
/// token request's form.
async fn code_for_web(issuer: &TestIssuer) -> Vec<(&'static str, String)> {
    let (challenge, verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
    let url = format!(
        "{}/oauth2/authorize?response_type=code&client_id=web.team&redirect_uri={}&scope=read\
         &code_challenge={}&code_challenge_method=S256",
        issuer.base,
        form_urlencoded::byte_serialize(WEB_CALLBACK.as_bytes()).collect::<String>(),
        challenge.as_str()
    );
    let callback = issuer.browse(&url).await;
    let code = callback.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    vec![
        ("grant_type", "authorization_code".into()),
        ("code", code),
        ("redirect_uri", WEB_CALLBACK.into()),
        ("code_verifier", verifier.secret().clone()),
    ]
}

async fn token(issuer: &TestIssuer) -> support::Reply {
    issuer
        .post("/oauth2/token", Auth::Basic("svc.team", SVC_SECRET), &[("grant_type", "client_credentials")])
        .await
}

#[tokio::test]
async fn the_issuer_works_on_redis_with_least_privilege() {
    let cluster = cluster().await;
    let issuer = issuer_on(&cluster).await;
    let access = issuer.svc_token(&[]).await;
    assert_eq!(issuer.introspect(&access).await["active"], true);
    let r = issuer.post("/oauth2/revoke", Auth::Basic("svc.team", SVC_SECRET), &[("token", &access)]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(issuer.introspect(&access).await["active"], false);

    // The code flow on Redis: a replayed code revokes, rotation detects reuse.
    let web = || Auth::Basic("web.team", WEB_SECRET);
    let redeem = code_for_web(&issuer).await;
    let form: Vec<(&str, &str)> = redeem.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let first = issuer.post("/oauth2/token", web(), &form).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.json);
    let replay = issuer.post("/oauth2/token", web(), &form).await;
    assert_eq!(replay.json["error"], "invalid_grant");
    assert_eq!(issuer.introspect(first.json["access_token"].as_str().unwrap()).await["active"], false);

    let redeem = code_for_web(&issuer).await;
    let form: Vec<(&str, &str)> = redeem.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let tokens = issuer.post("/oauth2/token", web(), &form).await;
    let rt = tokens.json["refresh_token"].as_str().unwrap().to_owned();
    let refresh = [("grant_type", "refresh_token"), ("refresh_token", rt.as_str())];
    let rotated = issuer.post("/oauth2/token", web(), &refresh).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.json);
    let reuse = issuer.post("/oauth2/token", web(), &refresh).await;
    assert_eq!(reuse.json["error"], "invalid_grant");
    let rotated_access = rotated.json["access_token"].as_str().unwrap();
    assert_eq!(issuer.introspect(rotated_access).await["active"], false, "reuse revoked the family's tokens");

    let denials = cluster.acl_denials().await.unwrap();
    assert!(denials.is_empty(), "the issuer needed more than its ACL: {denials:#?}");
}

/// Rotates `token` of the web client; the new refresh token when acknowledged.
async fn rotate(issuer: &TestIssuer, token: &str) -> Option<String> {
    let form = [("grant_type", "refresh_token"), ("refresh_token", token)];
    let r = issuer.post("/oauth2/token", Auth::Basic("web.team", WEB_SECRET), &form).await;
    (r.status == StatusCode::OK).then(|| r.json["refresh_token"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_failover_during_a_stream_loses_no_acknowledged_revocation_or_rotation() {
    let cluster = cluster().await;
    let issuer = Arc::new(issuer_on(&cluster).await);
    let redeem = code_for_web(&issuer).await;
    let form: Vec<(&str, &str)> = redeem.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let tokens = issuer.post("/oauth2/token", Auth::Basic("web.team", WEB_SECRET), &form).await;
    let mut refresh = tokens.json["refresh_token"].as_str().unwrap().to_owned();
    for _ in 0..5 {
        refresh = rotate(&issuer, &refresh).await.expect("rotation before the failover");
    }
    let unredeemed = code_for_web(&issuer).await;

    // A stream of token requests and revocations; every answer is a token,
    // an acknowledgement, or a clean 503.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = tokio::spawn({
        let (issuer, stop) = (issuer.clone(), stop.clone());
        async move {
            let mut acknowledged = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = token(&issuer).await;
                if r.status != StatusCode::OK {
                    assert_eq!(r.json["error"], "temporarily_unavailable", "{}", r.json);
                    continue;
                }
                let access = r.json["access_token"].as_str().unwrap().to_owned();
                let revoke = issuer
                    .post("/oauth2/revoke", Auth::Basic("svc.team", SVC_SECRET), &[("token", &access)])
                    .await;
                match revoke.status {
                    StatusCode::OK => acknowledged.push(access),
                    StatusCode::SERVICE_UNAVAILABLE => {}
                    other => panic!("revocation answered {other}: {}", revoke.json),
                }
            }
            acknowledged
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = cluster.kill_master().await.unwrap();
    let killed = Instant::now();
    while token(&issuer).await.status != StatusCode::OK {
        assert!(killed.elapsed() < Duration::from_secs(30), "no recovery after 30 s\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered = killed.elapsed();
    // Tokens need no master when the registration is cached: the stream
    // runs on until the Sentinels agree on the new one, and a while after.
    let new = cluster.wait_for_failover(&old, Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acknowledged = stream.await.unwrap();
    assert_ne!(old, new);
    println!(
        "issuer recovered {recovered:?} after the master was killed; {} revocations acknowledged",
        acknowledged.len()
    );
    assert!(acknowledged.len() > 10, "the stream made too little progress to mean anything");
    for access in &acknowledged {
        assert_eq!(issuer.introspect(access).await["active"], false, "an acknowledged revocation was lost");
    }
    assert!(rotate(&issuer, &refresh).await.is_some(), "the last acknowledged rotation was lost");
    // A code issued before the failover works once after it, and only once.
    let form: Vec<(&str, &str)> = unredeemed.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let web = || Auth::Basic("web.team", WEB_SECRET);
    assert_eq!(issuer.post("/oauth2/token", web(), &form).await.status, StatusCode::OK);
    assert_eq!(issuer.post("/oauth2/token", web(), &form).await.json["error"], "invalid_grant");
    assert_eq!(issuer.get("/readyz").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_unreachable_master_gives_503_and_not_ready_then_recovers() {
    let cluster = cluster().await;
    let issuer = issuer_on(&cluster).await;
    assert_eq!(token(&issuer).await.status, StatusCode::OK);
    let master = cluster.master_addr().await.unwrap();
    cluster.pause_node(&master).unwrap();
    // readyz waits out the reply timeout; by then the cached registration
    // is no longer trusted either.
    assert_eq!(issuer.get("/readyz").await.status(), StatusCode::SERVICE_UNAVAILABLE);
    let r = token(&issuer).await;
    assert_eq!(
        (r.status, r.json["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("temporarily_unavailable"))
    );
    assert!(r.headers.contains_key("retry-after"));
    cluster.resume_node(&master).unwrap();
    let started = Instant::now();
    while token(&issuer).await.status != StatusCode::OK {
        assert!(started.elapsed() < Duration::from_secs(30), "no recovery\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(issuer.get("/readyz").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn issuers_on_one_redis_share_rate_limits_and_refuse_double_redemption() {
    let cluster = cluster().await;
    let yaml = support::manifests().replacen(
        "  lifetimes: {accessToken: 5m}\n",
        "  lifetimes: {accessToken: 5m}\n  rateLimits: {perClient: {requestsPerSecond: 1, burst: 2}}\n",
        1,
    );
    let (a, b) =
        (support::start_on(store(&cluster), &yaml).await, support::start_on(store(&cluster), &yaml).await);
    assert_eq!(token(&a).await.status, StatusCode::OK);
    assert_eq!(token(&b).await.status, StatusCode::OK);
    let third = token(&a).await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS, "the budget is shared: {}", third.json);

    // One code, redeemed at two issuers at once: exactly one wins.
    let (a, b) = (issuer_on(&cluster).await, issuer_on(&cluster).await);
    let redeem = code_for_web(&a).await;
    let form: Vec<(&str, &str)> = redeem.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let web = || Auth::Basic("web.team", WEB_SECRET);
    let attempts = (0..8)
        .map(|i| if i % 2 == 0 { &a } else { &b })
        .map(|issuer| issuer.post("/oauth2/token", web(), &form));
    let replies = futures::future::join_all(attempts).await;
    assert_eq!(replies.iter().filter(|r| r.status == StatusCode::OK).count(), 1);
    assert!(
        replies.iter().filter(|r| r.status != StatusCode::OK).all(|r| r.json["error"] == "invalid_grant")
    );

    // One refresh token, used at both issuers at once: one new token, and the family is revoked.
    let redeem = code_for_web(&a).await;
    let form: Vec<(&str, &str)> = redeem.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let tokens = a.post("/oauth2/token", web(), &form).await;
    let rt = tokens.json["refresh_token"].as_str().unwrap().to_owned();
    let uses = (0..8).map(|i| if i % 2 == 0 { &a } else { &b }).map(|issuer| rotate(issuer, &rt));
    let rotated: Vec<String> = futures::future::join_all(uses).await.into_iter().flatten().collect();
    assert_eq!(rotated.len(), 1, "exactly one use rotates");
    assert!(rotate(&b, &rotated[0]).await.is_none(), "the race revoked the family");
    assert!(cluster.acl_denials().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_not_before_mark_kills_every_older_token_of_the_client_at_once() {
    let cluster = cluster().await;
    let issuer = issuer_on(&cluster).await;
    let old: Vec<String> = futures::future::join_all((0..5).map(|_| issuer.svc_token(&[]))).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    // The operator writes this one key when a client is deleted or disabled.
    let mut admin = cluster.admin_connection(&cluster.master_addr().await.unwrap()).await.unwrap();
    let () = redis::cmd("HSET")
        .arg(tokenplane_api::storage::NOT_BEFORE)
        .arg("svc.team")
        .arg(now + 1)
        .query_async(&mut admin)
        .await
        .unwrap();
    for token in &old {
        assert_eq!(issuer.introspect(token).await["active"], false);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = issuer.svc_token(&[]).await;
    assert_eq!(issuer.introspect(&fresh).await["active"], true, "tokens after the mark live");
}

/// How many times the Redis node has run `command` (lowercase).
async fn calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    let Some(line) = stats.lines().find(|l| l.starts_with(&prefix)) else { return 0 };
    line[prefix.len()..].split(',').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_registration_changed_in_redis_is_seen_at_once_despite_the_cache() {
    let cluster = cluster().await;
    let issuer = issuer_on(&cluster).await;
    assert_eq!(token(&issuer).await.status, StatusCode::OK, "the registration is now cached");
    let mut admin = cluster.admin_connection(&cluster.master_addr().await.unwrap()).await.unwrap();
    let gets_before = calls(&mut admin, "get").await;
    for _ in 0..10 {
        assert_eq!(token(&issuer).await.status, StatusCode::OK);
    }
    assert_eq!(calls(&mut admin, "get").await, gets_before, "tokens were served from the cache");
    let key = tokenplane_api::storage::client("svc.team");
    let record: String = redis::cmd("GET").arg(&key).query_async(&mut admin).await.unwrap();
    let mut disabled: serde_json::Value = serde_json::from_str(&record).unwrap();
    disabled["disabled"] = true.into();

    // What another writer (the operator) does reaches this issuer's cache.
    let () = redis::cmd("SET").arg(&key).arg(disabled.to_string()).query_async(&mut admin).await.unwrap();
    let seen = Instant::now();
    while token(&issuer).await.status == StatusCode::OK {
        assert!(seen.elapsed() < Duration::from_secs(1), "the disabled client still gets tokens");
    }
    assert_eq!(token(&issuer).await.json["error"], "invalid_client");
    let () = redis::cmd("SET").arg(&key).arg(&record).query_async(&mut admin).await.unwrap();
    while token(&issuer).await.status != StatusCode::OK {
        assert!(seen.elapsed() < Duration::from_secs(2), "the re-enabled client gets no tokens");
    }
    let () = redis::cmd("DEL").arg(&key).query_async(&mut admin).await.unwrap();
    while token(&issuer).await.status == StatusCode::OK {
        assert!(seen.elapsed() < Duration::from_secs(3), "the deleted client still gets tokens");
    }
    println!("cache invalidations seen within {:?} in all", seen.elapsed());
    assert!(cluster.acl_denials().await.unwrap().is_empty());
}

#[tokio::test]
async fn replicas_that_do_not_answer_delay_only_durable_writes() {
    let cluster = cluster().await;
    let issuer = issuer_on(&cluster).await;
    let access = issuer.svc_token(&[]).await;
    let master = cluster.master_addr().await.unwrap();
    let replicas: Vec<String> = cluster.node_addrs().into_iter().filter(|a| *a != master).collect();
    for replica in &replicas {
        cluster.pause_node(replica).unwrap();
    }
    let form = [("token", access.as_str())];
    let revoke = issuer.post("/oauth2/revoke", Auth::Basic("svc.team", SVC_SECRET), &form);
    let tokens = async {
        let mut served = 0;
        for _ in 0..5 {
            served += usize::from(token(&issuer).await.status == StatusCode::OK);
        }
        (served, Instant::now())
    };
    let (revoked, (served, tokens_done)) = tokio::join!(async { (revoke.await, Instant::now()) }, tokens);
    for replica in &replicas {
        cluster.resume_node(replica).unwrap();
    }
    let (revoked, revoke_done) = revoked;
    assert_eq!(served, 5, "tokens are served while a revocation waits for the replicas");
    assert!(tokens_done < revoke_done, "the tokens did not wait behind the revocation's WAIT");
    assert_eq!(
        (revoked.status, revoked.json["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("temporarily_unavailable")),
        "a revocation no replica confirmed is not acknowledged"
    );
}

/// The ids of the master's client connections logged in as the issuer.
async fn issuer_connections(cluster: &RedisCluster) -> Vec<String> {
    let mut conn = cluster.admin_connection(&cluster.master_addr().await.unwrap()).await.unwrap();
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut conn).await.unwrap();
    let mut ids: Vec<String> = list
        .lines()
        .filter(|l| l.split(' ').any(|f| f == "user=issuer"))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")).map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn replicas_slower_than_the_timeout_refuse_the_durable_write_but_keep_the_connections() {
    let cluster = cluster().await;
    let issuer = issuer_on(&cluster).await;
    let access = issuer.svc_token(&[]).await;
    let first = issuer.svc_token(&[]).await;
    let revoked =
        issuer.post("/oauth2/revoke", Auth::Basic("svc.team", SVC_SECRET), &[("token", &first)]).await;
    assert_eq!(revoked.status, StatusCode::OK);
    let before = issuer_connections(&cluster).await;
    assert_eq!(before.len(), 2, "one shared and one durable connection: {before:?}");

    let master = cluster.master_addr().await.unwrap();
    let replicas: Vec<String> = cluster.node_addrs().into_iter().filter(|a| *a != master).collect();
    for replica in &replicas {
        cluster.pause_node(replica).unwrap();
    }
    let started = Instant::now();
    let refused =
        issuer.post("/oauth2/revoke", Auth::Basic("svc.team", SVC_SECRET), &[("token", &access)]).await;
    let waited = started.elapsed();
    let served = token(&issuer).await.status;
    for replica in &replicas {
        cluster.resume_node(replica).unwrap();
    }
    assert_eq!(
        (refused.status, refused.json["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("temporarily_unavailable")),
        "a revocation no replica confirmed is not acknowledged"
    );
    assert!(waited >= Duration::from_millis(500), "WAIT had its whole timeout: {waited:?}");
    assert_eq!(served, StatusCode::OK);
    assert_eq!(issuer_connections(&cluster).await, before, "slow replicas are not a lost master");

    let again =
        issuer.post("/oauth2/revoke", Auth::Basic("svc.team", SVC_SECRET), &[("token", &access)]).await;
    assert_eq!(again.status, StatusCode::OK, "the kept durable connection serves once replicas answer");
    assert_eq!(issuer.introspect(&access).await["active"], false);
    assert_eq!(issuer_connections(&cluster).await, before);
}

const ROTATED_SECRET: &str = "svc-rotated-0123456789abcdefghijklmnopqrstu";

/// A token for the svc client with `secret`: its status and error.
async fn token_with(issuer: &TestIssuer, secret: &str) -> (StatusCode, Option<String>) {
    let r = issuer
        .post("/oauth2/token", Auth::Basic("svc.team", secret), &[("grant_type", "client_credentials")])
        .await;
    (r.status, r.json["error"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn a_rotated_out_secret_works_for_its_grace_and_its_use_is_recorded_once_a_minute() {
    let cluster = cluster().await;
    let issuer = issuer_on(&cluster).await;
    let mut admin = cluster.admin_connection(&cluster.master_addr().await.unwrap()).await.unwrap();
    let hsets_before = calls(&mut admin, "hset").await;

    // What the operator writes for a rotation: the new secret, and the old
    // one until the grace period ends.
    let key = storage::client("svc.team");
    let record: String = redis::cmd("GET").arg(&key).query_async(&mut admin).await.unwrap();
    let mut rotated: ClientRecord = serde_json::from_str(&record).unwrap();
    let started = unix_now();
    let grace_ends = started + 3;
    let old = SecretHash { expires_at: Some(grace_ends), ..SecretHash::of(SVC_SECRET) };
    rotated.secrets = vec![SecretHash::of(ROTATED_SECRET), old.clone()];
    let json = serde_json::to_string(&rotated).unwrap();
    let () = redis::cmd("SET").arg(&key).arg(json).query_async(&mut admin).await.unwrap();

    let written = Instant::now();
    while token_with(&issuer, ROTATED_SECRET).await.0 != StatusCode::OK {
        assert!(written.elapsed() < Duration::from_secs(1), "the rotated registration was not seen");
    }
    for _ in 0..10 {
        assert_eq!(
            token_with(&issuer, SVC_SECRET).await,
            (StatusCode::OK, None),
            "the old secret, during the grace"
        );
        assert_eq!(token_with(&issuer, ROTATED_SECRET).await, (StatusCode::OK, None), "the new secret");
    }
    let used = storage::secret_used("svc.team");
    let last_use = || async {
        let mut conn = cluster.admin_connection(&cluster.master_addr().await.unwrap()).await.unwrap();
        let at: Option<u64> =
            redis::cmd("HGET").arg(&used).arg(&old.sha256).query_async(&mut conn).await.unwrap();
        at
    };
    let waited = Instant::now();
    while last_use().await.is_none() {
        assert!(waited.elapsed() < Duration::from_secs(2), "the old secret's use was not recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at = last_use().await.unwrap();
    assert!((started..=unix_now()).contains(&at), "recorded at {at}, the test ran from {started}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        calls(&mut admin, "hset").await - hsets_before,
        2,
        "20 accepted requests, one write per secret within the minute"
    );
    let ttl: i64 = redis::cmd("TTL").arg(&used).query_async(&mut admin).await.unwrap();
    assert!(ttl > 30 * 24 * 3600, "the record outlives the longest grace period: {ttl}");

    while unix_now() < grace_ends {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        token_with(&issuer, SVC_SECRET).await,
        (StatusCode::UNAUTHORIZED, Some("invalid_client".into())),
        "the grace is over"
    );
    assert_eq!(token_with(&issuer, ROTATED_SECRET).await, (StatusCode::OK, None));
    assert!(
        cluster.acl_denials().await.unwrap().is_empty(),
        "recording needs nothing beyond the issuer's ACL"
    );
}
