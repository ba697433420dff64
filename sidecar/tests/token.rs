//! The token endpoint over real HTTP: the happy paths and every error.

mod support;

use std::collections::HashSet;

use reqwest::StatusCode;
use support::{Auth, MULTI_SECRET, OFF_SECRET, POSTER_SECRET, SVC_SECRET, start};

const CC: (&str, &str) = ("grant_type", "client_credentials");

#[tokio::test]
async fn client_secret_basic_gets_a_token_that_is_never_cached() {
    let issuer = start().await;
    let r = issuer.post("/oauth2/token", Auth::Basic("svc.team", SVC_SECRET), &[CC]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.json["token_type"], "Bearer");
    assert_eq!(r.json["expires_in"], 300, "policy sets accessToken: 5m");
    assert_eq!(r.json["scope"], "read", "default scopes apply when none is asked");
}

#[tokio::test]
async fn client_secret_post_gets_a_token() {
    let issuer = start().await;
    let form = [CC, ("client_id", "poster.team"), ("client_secret", POSTER_SECRET), ("scope", "read")];
    let r = issuer.post("/oauth2/token", Auth::None, &form).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["scope"], "read");
}

#[tokio::test]
async fn requested_scopes_and_resource_shape_the_token() {
    let issuer = start().await;
    let token = issuer.svc_token(&[("scope", "write read"), ("resource", "https://api.test")]).await;
    let claims = issuer.introspect(&token).await;
    assert_eq!(claims["scope"], "write read");
    assert_eq!(claims["aud"], "https://api.test");
    let r = issuer
        .post(
            "/oauth2/token",
            Auth::Basic("multi.team", MULTI_SECRET),
            &[CC, ("resource", "https://a.test"), ("resource", "https://b.test")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let claims = issuer.introspect(r.json["access_token"].as_str().unwrap()).await;
    assert_eq!(claims["aud"], serde_json::json!(["https://a.test", "https://b.test"]));
}

/// What is wrong, the request, the expected status and error code.
type Case<'a> = (&'a str, Auth<'a>, Vec<(&'a str, &'a str)>, StatusCode, &'a str);

#[tokio::test]
async fn every_bad_request_gets_its_rfc_6749_error() {
    let issuer = start().await;
    let svc = || Auth::Basic("svc.team", SVC_SECRET);
    let cases: Vec<Case> = vec![
        (
            "wrong secret",
            Auth::Basic("svc.team", "nope"),
            vec![CC],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "unknown client",
            Auth::Basic("ghost.team", SVC_SECRET),
            vec![CC],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        ("no credentials", Auth::None, vec![CC], StatusCode::UNAUTHORIZED, "invalid_client"),
        (
            "basic client using post",
            Auth::None,
            vec![CC, ("client_id", "svc.team"), ("client_secret", SVC_SECRET)],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "post client using basic",
            Auth::Basic("poster.team", POSTER_SECRET),
            vec![CC],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "disabled client",
            Auth::Basic("off.team", OFF_SECRET),
            vec![CC],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "two auth methods",
            svc(),
            vec![CC, ("client_secret", SVC_SECRET)],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        ("no grant_type", svc(), vec![], StatusCode::BAD_REQUEST, "invalid_request"),
        (
            "repeated parameter",
            svc(),
            vec![CC, ("scope", "read"), ("scope", "write")],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "password grant",
            svc(),
            vec![("grant_type", "password")],
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            "unknown grant",
            svc(),
            vec![("grant_type", "urn:x")],
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            "public client",
            Auth::None,
            vec![CC, ("client_id", "spa.team")],
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
        ),
        (
            "unregistered scope",
            svc(),
            vec![CC, ("scope", "read admin")],
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            "unregistered resource",
            svc(),
            vec![CC, ("resource", "https://evil.test")],
            StatusCode::BAD_REQUEST,
            "invalid_target",
        ),
        (
            "ambiguous audience",
            Auth::Basic("multi.team", MULTI_SECRET),
            vec![CC],
            StatusCode::BAD_REQUEST,
            "invalid_target",
        ),
    ];
    for (what, auth, form, status, code) in cases {
        let r = issuer.post("/oauth2/token", auth, &form).await;
        assert_eq!((r.status, r.json["error"].as_str()), (status, Some(code)), "{what}: {}", r.json);
        assert!(r.json["error_description"].as_str().is_some_and(|d| !d.is_empty()), "{what}");
        assert_eq!(r.headers["cache-control"], "no-store", "{what}");
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(r.headers["www-authenticate"], "Basic realm=\"tokenplane\"", "{what}");
        }
    }
}

#[tokio::test]
async fn unknown_parameters_are_ignored() {
    let issuer = start().await;
    let r = issuer.post("/oauth2/token", Auth::Basic("svc.team", SVC_SECRET), &[CC, ("foo", "bar")]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
}

#[tokio::test]
async fn wrong_media_type_size_method_and_path() {
    let issuer = start().await;
    let url = format!("{}/oauth2/token", issuer.base);
    let json = issuer
        .http
        .post(&url)
        .basic_auth("svc.team", Some(SVC_SECRET))
        .json(&serde_json::json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json.json::<serde_json::Value>().await.unwrap()["error"], "invalid_request");

    let huge = format!("grant_type=client_credentials&pad={}", "x".repeat(20_000));
    let big = issuer
        .http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(big.json::<serde_json::Value>().await.unwrap()["error"], "invalid_request");

    let get = issuer.get("/oauth2/token").await;
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get.headers()["allow"], "POST");

    let missing = issuer.get("/nope").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.json::<serde_json::Value>().await.unwrap()["error"], "not_found");
}

#[tokio::test]
async fn concurrent_requests_all_succeed_with_unique_token_ids() {
    let issuer = start().await;
    let requests = (0..256).map(|_| issuer.svc_token(&[]));
    let tokens = futures::future::join_all(requests).await;
    let mut jtis = HashSet::new();
    for token in &tokens {
        let claims = issuer.introspect(token).await;
        assert_eq!(claims["active"], true);
        jtis.insert(claims["jti"].as_str().unwrap().to_owned());
    }
    assert_eq!(jtis.len(), tokens.len());
}

#[tokio::test]
async fn metadata_health_and_metrics() {
    let issuer = start().await;
    let meta: serde_json::Value =
        issuer.get("/.well-known/oauth-authorization-server").await.json().await.unwrap();
    assert_eq!(meta["issuer"], issuer.base);
    assert_eq!(meta["token_endpoint"], format!("{}/oauth2/token", issuer.base));
    assert_eq!(meta["jwks_uri"], format!("{}/.well-known/jwks.json", issuer.base));
    assert_eq!(issuer.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(issuer.get("/readyz").await.status(), StatusCode::OK);

    let token = issuer.svc_token(&[]).await;
    issuer.post("/oauth2/token", Auth::Basic("svc.team", "wrong"), &[CC]).await;
    let metrics = issuer.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("tokenplane_issuer_tokens_issued_total{grant_type=\"client_credentials\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("tokenplane_issuer_oauth_errors_total{endpoint=\"token\",error=\"invalid_client\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tokenplane_issuer_http_request_duration_seconds_bucket"), "{metrics}");
    assert!(!metrics.contains(SVC_SECRET) && !metrics.contains(&token), "metrics leak a secret");
}

fn with_rate_limits(limits: &str) -> String {
    support::manifests().replacen(
        "  lifetimes: {accessToken: 5m}\n",
        &format!("  lifetimes: {{accessToken: 5m}}\n  rateLimits: {limits}\n"),
        1,
    )
}

#[tokio::test]
async fn over_the_client_rate_limit_is_429_with_retry_after() {
    let issuer =
        support::start_with(&with_rate_limits("{perClient: {requestsPerSecond: 1, burst: 2}}")).await;
    let svc = || Auth::Basic("svc.team", SVC_SECRET);
    for _ in 0..2 {
        assert_eq!(issuer.post("/oauth2/token", svc(), &[CC]).await.status, StatusCode::OK);
    }
    let limited = issuer.post("/oauth2/token", svc(), &[CC]).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS, "{}", limited.json);
    assert_eq!(limited.json["error"], "temporarily_unavailable");
    assert_eq!(limited.headers["retry-after"], "1");
    // Another client has its own budget.
    let other = issuer
        .post("/oauth2/token", Auth::Basic("multi.team", MULTI_SECRET), &[CC, ("resource", "https://a.test")])
        .await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.json);
}

#[tokio::test]
async fn over_the_address_rate_limit_is_429_even_with_a_wrong_secret() {
    let issuer =
        support::start_with(&with_rate_limits("{perSourceAddress: {requestsPerSecond: 1, burst: 3}}")).await;
    for _ in 0..3 {
        let r = issuer.post("/oauth2/token", Auth::Basic("svc.team", "guess"), &[CC]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let limited = issuer.post("/oauth2/token", Auth::Basic("svc.team", SVC_SECRET), &[CC]).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS, "guessing spends the address's budget");
}
