//! The authorization code flow with PKCE, driven by the `oauth2` crate and
//! the example login app over real HTTP; refresh rotation and reuse detection.

mod support;

use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope, TokenResponse, TokenUrl,
};
use reqwest::StatusCode;
use serde_json::Value;
use support::{Auth, TestIssuer, WEB_CALLBACK, WEB_SECRET, start};

fn query(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// The authorization URL for the `web` client, and the verifier of its challenge.
fn authorize_url(issuer: &TestIssuer, scopes: &[&str]) -> (String, PkceCodeVerifier, CsrfToken) {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let client = BasicClient::new(ClientId::new("web.team".into()))
        .set_auth_uri(AuthUrl::new(format!("{}/oauth2/authorize", issuer.base)).unwrap())
        .set_redirect_uri(RedirectUrl::new(WEB_CALLBACK.into()).unwrap());
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(scopes.iter().map(|s| Scope::new((*s).into())))
        .set_pkce_challenge(challenge)
        .url();
    (url.to_string(), verifier, state)
}

/// Runs the browser part of the flow and returns the code.
async fn code(issuer: &TestIssuer, scopes: &[&str]) -> (String, PkceCodeVerifier) {
    let (url, verifier, state) = authorize_url(issuer, scopes);
    let callback = issuer.browse(&url).await;
    assert!(callback.as_str().starts_with(WEB_CALLBACK), "{callback}");
    assert_eq!(query(&callback, "state").as_deref(), Some(state.secret().as_str()), "state round trip");
    assert_eq!(query(&callback, "iss").as_deref(), Some(issuer.base.as_str()), "RFC 9207 iss");
    (query(&callback, "code").expect("a code"), verifier)
}

/// Redeems `code` for the web client with `verifier`.
async fn redeem(issuer: &TestIssuer, code: &str, verifier: &str) -> support::Reply {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", WEB_CALLBACK),
        ("code_verifier", verifier),
    ];
    issuer.post("/oauth2/token", Auth::Basic("web.team", WEB_SECRET), &form).await
}

async fn refresh(issuer: &TestIssuer, token: &str, scope: Option<&str>) -> support::Reply {
    let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", token)];
    form.extend(scope.map(|s| ("scope", s)));
    issuer.post("/oauth2/token", Auth::Basic("web.team", WEB_SECRET), &form).await
}

fn oauth2_client(
    issuer: &TestIssuer,
) -> oauth2::basic::BasicClient<
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
> {
    BasicClient::new(ClientId::new("web.team".into()))
        .set_client_secret(ClientSecret::new(WEB_SECRET.into()))
        .set_token_uri(TokenUrl::new(format!("{}/oauth2/token", issuer.base)).unwrap())
        .set_redirect_uri(RedirectUrl::new(WEB_CALLBACK.into()).unwrap())
}

#[tokio::test]
async fn full_flow_with_pkce_refresh_rotation_and_reuse_detection() {
    let issuer = start().await;
    let (code, verifier) = code(&issuer, &["read", "write"]).await;
    assert_eq!(*issuer.login.consents_shown.lock().unwrap(), 1);

    let client = oauth2_client(&issuer);
    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request_async(&issuer.http)
        .await
        .expect("code exchange");
    let claims = issuer.introspect(tokens.access_token().secret()).await;
    assert_eq!(claims["active"], true);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["client_id"], "web.team");
    assert_eq!(claims["scope"], "read write");
    assert!(claims["auth_time"].is_u64());

    let first_refresh = tokens.refresh_token().expect("a refresh token").clone();
    let rotated =
        client.exchange_refresh_token(&first_refresh).request_async(&issuer.http).await.expect("refresh");
    let second_refresh = rotated.refresh_token().expect("rotated refresh token").clone();
    assert_ne!(first_refresh.secret(), second_refresh.secret(), "refresh tokens rotate");
    assert_eq!(issuer.introspect(rotated.access_token().secret()).await["sub"], "alice");

    // The first refresh token was rotated: presenting it again is reuse.
    let reuse = refresh(&issuer, first_refresh.secret(), None).await;
    assert_eq!(reuse.json["error"], "invalid_grant", "{}", reuse.json);
    for (what, token) in [("first", &tokens), ("rotated", &rotated)] {
        let claims = issuer.introspect(token.access_token().secret()).await;
        assert_eq!(claims["active"], false, "{what} access token survived family revocation");
    }
    let after = refresh(&issuer, second_refresh.secret(), None).await;
    assert_eq!(after.json["error"], "invalid_grant", "the family is revoked: {}", after.json);
}

#[tokio::test]
async fn wrong_or_missing_verifier_is_refused() {
    let issuer = start().await;
    let (code_a, _) = code(&issuer, &["read"]).await;
    let wrong = redeem(&issuer, &code_a, &"x".repeat(43)).await;
    assert_eq!(
        (wrong.status, wrong.json["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    let (code_b, verifier) = code(&issuer, &["read"]).await;
    let form =
        [("grant_type", "authorization_code"), ("code", code_b.as_str()), ("redirect_uri", WEB_CALLBACK)];
    let missing = issuer.post("/oauth2/token", Auth::Basic("web.team", WEB_SECRET), &form).await;
    assert_eq!(missing.json["error"], "invalid_request", "{}", missing.json);
    let short = redeem(&issuer, &code_b, "too-short").await;
    assert_eq!(short.json["error"], "invalid_request", "{}", short.json);
    let ok = redeem(&issuer, &code_b, verifier.secret()).await;
    assert_eq!(ok.status, StatusCode::OK, "malformed attempts do not spend the code: {}", ok.json);
}

#[tokio::test]
async fn a_reused_code_fails_and_revokes_what_it_produced() {
    let issuer = start().await;
    let (code, verifier) = code(&issuer, &["read"]).await;
    let first = redeem(&issuer, &code, verifier.secret()).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.json);
    let second = redeem(&issuer, &code, verifier.secret()).await;
    assert_eq!(second.json["error"], "invalid_grant");
    let access = first.json["access_token"].as_str().unwrap();
    assert_eq!(issuer.introspect(access).await["active"], false);
    let rt = first.json["refresh_token"].as_str().unwrap();
    assert_eq!(refresh(&issuer, rt, None).await.json["error"], "invalid_grant");
}

#[tokio::test]
async fn concurrent_redemptions_of_one_code_have_one_winner() {
    let issuer = start().await;
    let (code, verifier) = code(&issuer, &["read"]).await;
    let attempts = (0..8).map(|_| redeem(&issuer, &code, verifier.secret()));
    let replies = futures::future::join_all(attempts).await;
    let winners: Vec<&support::Reply> = replies.iter().filter(|r| r.status == StatusCode::OK).collect();
    assert_eq!(winners.len(), 1, "{:?}", replies.iter().map(|r| &r.json).collect::<Vec<_>>());
    assert!(
        replies.iter().filter(|r| r.status != StatusCode::OK).all(|r| r.json["error"] == "invalid_grant")
    );
    // The replays revoked what the winner got.
    let winner = &winners[0].json;
    assert_eq!(issuer.introspect(winner["access_token"].as_str().unwrap()).await["active"], false);
    let rt = winner["refresh_token"].as_str().unwrap();
    assert_eq!(refresh(&issuer, rt, None).await.json["error"], "invalid_grant");
}

#[tokio::test]
async fn redirect_uris_match_exactly_and_near_misses_get_an_error_page() {
    let issuer = start().await;
    let authorize = |redirect: &str| {
        let (url, _, _) = authorize_url(&issuer, &["read"]);
        url.replace(
            &format!("redirect_uri={}", urlencode(WEB_CALLBACK)),
            &format!("redirect_uri={}", urlencode(redirect)),
        )
    };
    for near_miss in [
        "https://web.test/cb/",
        "https://WEB.test/cb",
        "https://web.test/CB",
        "https://web.test/cb/extra",
        "https://user@web.test/cb",
        "https://web.test:8443/cb",
        "https://evil.test/cb",
    ] {
        let resp = issuer.http.get(authorize(near_miss)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{near_miss}");
        assert!(resp.headers().get("location").is_none(), "{near_miss}: redirected");
        assert!(resp.text().await.unwrap().contains("redirect_uri is not registered"), "{near_miss}");
    }
    // Only the port of a loopback redirect URI may vary (RFC 8252 §7.3).
    let loopback = issuer.browse(&authorize("http://127.0.0.1:43123/cb")).await;
    assert_eq!(loopback.port(), Some(43123));
    assert!(query(&loopback, "code").is_some());

    // The code is bound to the redirect URI it was issued for.
    let (code, verifier) = code(&issuer, &["read"]).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", "http://127.0.0.1/cb"),
        ("code_verifier", verifier.secret().as_str()),
    ];
    let r = issuer.post("/oauth2/token", Auth::Basic("web.team", WEB_SECRET), &form).await;
    assert_eq!(r.json["error"], "invalid_grant", "{}", r.json);
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn bad_authorization_requests_go_back_with_an_error_or_stay_on_a_page() {
    let issuer = start().await;
    let (good, _, _) = authorize_url(&issuer, &["read"]);
    let cases = [
        ("code_challenge_method=S256", "code_challenge_method=plain", "invalid_request"),
        ("response_type=code", "response_type=token", "unsupported_response_type"),
        ("scope=read", "scope=read+delete", "invalid_scope"),
    ];
    for (from, to, error) in cases {
        let url = good.replace(from, to);
        let resp = issuer.http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FOUND, "{to}");
        let location = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
        assert!(location.as_str().starts_with(WEB_CALLBACK), "{to}: {location}");
        assert_eq!(query(&location, "error").as_deref(), Some(error), "{to}");
        assert!(query(&location, "state").is_some() && query(&location, "iss").is_some(), "{to}");
    }
    let no_pkce: String =
        good.split('&').filter(|p| !p.starts_with("code_challenge")).collect::<Vec<_>>().join("&");
    let location = issuer.browse(&no_pkce).await;
    assert_eq!(query(&location, "error").as_deref(), Some("invalid_request"));

    let unknown =
        issuer.http.get(good.replace("client_id=web.team", "client_id=nobody")).send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    assert!(unknown.headers().get("location").is_none());
}

#[tokio::test]
async fn denied_login_and_consent_return_access_denied() {
    let issuer = start().await;
    issuer.login.person.lock().unwrap().subject = None;
    let (url, _, state) = authorize_url(&issuer, &["read"]);
    let callback = issuer.browse(&url).await;
    assert_eq!(query(&callback, "error").as_deref(), Some("access_denied"));
    assert_eq!(query(&callback, "state").as_deref(), Some(state.secret().as_str()));

    *issuer.login.person.lock().unwrap() = support::login_app::Person { deny: true, ..Default::default() };
    let (url, _, _) = authorize_url(&issuer, &["read"]);
    assert_eq!(query(&issuer.browse(&url).await, "error").as_deref(), Some("access_denied"));
}

#[tokio::test]
async fn consent_can_narrow_scope_and_be_remembered() {
    let issuer = start().await;
    *issuer.login.person.lock().unwrap() = support::login_app::Person {
        grant_scope: Some(vec!["read".into()]),
        remember: true,
        ..Default::default()
    };
    let (code_a, verifier) = code(&issuer, &["read", "write"]).await;
    let tokens = redeem(&issuer, &code_a, verifier.secret()).await;
    assert_eq!(tokens.json["scope"], "read", "the person granted only read");
    assert_eq!(*issuer.login.consents_shown.lock().unwrap(), 1);

    code(&issuer, &["read"]).await;
    assert_eq!(*issuer.login.consents_shown.lock().unwrap(), 1, "remembered consent is not asked again");
    code(&issuer, &["read", "write"]).await;
    assert_eq!(
        *issuer.login.consents_shown.lock().unwrap(),
        2,
        "a scope beyond the remembered one asks again"
    );
}

#[tokio::test]
async fn first_party_public_clients_skip_consent() {
    let issuer = start().await;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let url = format!(
        "{}/oauth2/authorize?response_type=code&client_id=app.team&redirect_uri=http%3A%2F%2F127.0.0.1%3A5555%2Fcb\
         &code_challenge={}&code_challenge_method=S256&scope=read",
        issuer.base,
        challenge.as_str()
    );
    let callback = issuer.browse(&url).await;
    assert_eq!(*issuer.login.consents_shown.lock().unwrap(), 0);
    let code = query(&callback, "code").unwrap();
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", "app.team"),
        ("code", code.as_str()),
        ("redirect_uri", "http://127.0.0.1:5555/cb"),
        ("code_verifier", verifier.secret().as_str()),
    ];
    let r = issuer.post("/oauth2/token", Auth::None, &form).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", "app.team"),
        ("refresh_token", r.json["refresh_token"].as_str().unwrap()),
    ];
    let refreshed = issuer.post("/oauth2/token", Auth::None, &form).await;
    assert_eq!(refreshed.status, StatusCode::OK, "public clients refresh with rotation: {}", refreshed.json);
}

#[tokio::test]
async fn refresh_narrows_scope_and_never_widens_it() {
    let issuer = start().await;
    let (code, verifier) = code(&issuer, &["read", "write"]).await;
    let tokens = redeem(&issuer, &code, verifier.secret()).await;
    let rt = tokens.json["refresh_token"].as_str().unwrap();
    let wider = refresh(&issuer, rt, Some("read admin")).await;
    assert_eq!(wider.json["error"], "invalid_scope", "{}", wider.json);
    let narrower = refresh(&issuer, rt, Some("read")).await;
    assert_eq!(narrower.status, StatusCode::OK, "{}", narrower.json);
    assert_eq!(narrower.json["scope"], "read");
    // Narrowing once does not shrink the grant: the next refresh may ask for all of it.
    let next = narrower.json["refresh_token"].as_str().unwrap();
    assert_eq!(refresh(&issuer, next, Some("read write")).await.json["scope"], "read write");
}

#[tokio::test]
async fn revoking_a_refresh_token_revokes_its_family() {
    let issuer = start().await;
    let (code, verifier) = code(&issuer, &["read"]).await;
    let tokens = redeem(&issuer, &code, verifier.secret()).await;
    let (access, rt) =
        (tokens.json["access_token"].as_str().unwrap(), tokens.json["refresh_token"].as_str().unwrap());
    let r = issuer
        .post(
            "/oauth2/revoke",
            Auth::Basic("web.team", WEB_SECRET),
            &[("token", rt), ("token_type_hint", "refresh_token")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(refresh(&issuer, rt, None).await.json["error"], "invalid_grant");
    assert_eq!(issuer.introspect(access).await["active"], false);
}

#[tokio::test]
async fn the_admin_api_needs_its_token_and_challenges_work_once() {
    let issuer = start().await;
    let (url, _, _) = authorize_url(&issuer, &["read"]);
    let to_login = issuer.http.get(&url).send().await.unwrap();
    let login_url = url::Url::parse(to_login.headers()["location"].to_str().unwrap()).unwrap();
    let challenge = query(&login_url, "login_challenge").unwrap();
    let info = format!("{}/admin/login?login_challenge={challenge}", issuer.base);
    assert_eq!(issuer.http.get(&info).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        issuer.http.get(&info).bearer_auth("wrong").send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let ok: Value =
        issuer.http.get(&info).bearer_auth(support::ADMIN_TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!(ok["client_id"], "web.team");
    assert_eq!(ok["requested_scope"], serde_json::json!(["read"]));

    let consent_api = format!("{}/admin/consent?consent_challenge={challenge}", issuer.base);
    let wrong_phase = issuer.http.get(&consent_api).bearer_auth(support::ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(wrong_phase.status(), StatusCode::NOT_FOUND, "a login challenge is not a consent challenge");

    let accept = format!("{}/admin/login/accept?login_challenge={challenge}", issuer.base);
    let body = serde_json::json!({"subject": "bob"});
    let first = issuer.http.post(&accept).bearer_auth(support::ADMIN_TOKEN).json(&body).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let again = issuer.http.post(&accept).bearer_auth(support::ADMIN_TOKEN).json(&body).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND, "a challenge works once");
}

#[tokio::test]
async fn parallel_uses_of_one_refresh_token_give_one_token_and_revoke_the_family() {
    let issuer = start().await;
    let (code, verifier) = code(&issuer, &["read"]).await;
    let tokens = redeem(&issuer, &code, verifier.secret()).await;
    let rt = tokens.json["refresh_token"].as_str().unwrap();
    let replies = futures::future::join_all((0..8).map(|_| refresh(&issuer, rt, None))).await;
    let winners: Vec<&support::Reply> = replies.iter().filter(|r| r.status == StatusCode::OK).collect();
    assert_eq!(winners.len(), 1);
    let next = winners[0].json["refresh_token"].as_str().unwrap();
    assert_eq!(refresh(&issuer, next, None).await.json["error"], "invalid_grant", "the family is revoked");
}
