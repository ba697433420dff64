//! Introspection (RFC 7662) and revocation (RFC 7009) over real HTTP.

mod support;

use reqwest::StatusCode;
use support::{Auth, POSTER_SECRET, SVC_SECRET, start};

#[tokio::test]
async fn a_revoked_token_introspects_inactive() {
    let issuer = start().await;
    let token = issuer.svc_token(&[]).await;
    let claims = issuer.introspect(&token).await;
    assert_eq!(claims["active"], true);
    assert_eq!(claims["client_id"], "svc.team");
    assert_eq!(claims["sub"], "svc.team");
    assert_eq!(claims["token_type"], "Bearer");

    let r = issuer
        .post(
            "/oauth2/revoke",
            Auth::Basic("svc.team", SVC_SECRET),
            &[("token", &token), ("token_type_hint", "access_token")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(issuer.introspect(&token).await, serde_json::json!({"active": false}));

    let again =
        issuer.post("/oauth2/revoke", Auth::Basic("svc.team", SVC_SECRET), &[("token", &token)]).await;
    assert_eq!(again.status, StatusCode::OK, "revoking twice is not an error");
}

#[tokio::test]
async fn another_clients_token_cannot_be_revoked() {
    let issuer = start().await;
    let token = issuer.svc_token(&[]).await;
    let form = [("token", token.as_str()), ("client_id", "poster.team"), ("client_secret", POSTER_SECRET)];
    let r = issuer.post("/oauth2/revoke", Auth::None, &form).await;
    assert_eq!((r.status, r.json["error"].as_str()), (StatusCode::BAD_REQUEST, Some("unauthorized_client")));
    assert_eq!(issuer.introspect(&token).await["active"], true, "the token must survive");
}

#[tokio::test]
async fn garbage_and_foreign_tokens_are_inactive_and_revocation_is_quiet() {
    let issuer = start().await;
    let other = support::start().await;
    let foreign = other.svc_token(&[]).await;
    for token in ["garbage", "a.b.c", foreign.as_str()] {
        assert_eq!(issuer.introspect(token).await, serde_json::json!({"active": false}), "{token}");
        let r = issuer.post("/oauth2/revoke", Auth::Basic("svc.team", SVC_SECRET), &[("token", token)]).await;
        assert_eq!(r.status, StatusCode::OK, "{token}");
    }
}

#[tokio::test]
async fn introspection_needs_an_authenticated_confidential_client() {
    let issuer = start().await;
    let token = issuer.svc_token(&[]).await;
    let anonymous = issuer.post("/oauth2/introspect", Auth::None, &[("token", &token)]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let public =
        issuer.post("/oauth2/introspect", Auth::None, &[("token", &token), ("client_id", "spa.team")]).await;
    assert_eq!(
        (public.status, public.json["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let wrong = issuer.post("/oauth2/introspect", Auth::Basic("svc.team", "x"), &[("token", &token)]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let missing = issuer.post("/oauth2/introspect", Auth::Basic("svc.team", SVC_SECRET), &[]).await;
    assert_eq!(
        (missing.status, missing.json["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
}
