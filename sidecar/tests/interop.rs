//! Standard clients and libraries that know nothing of tokenplane: the
//! `oauth2` crate gets tokens, `jwt-simple` verifies them with the JWKS.

mod support;

use std::collections::HashSet;

use aws_lc_rs::signature::Ed25519KeyPair;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_simple::prelude::*;
use oauth2::basic::BasicClient;
use oauth2::{ClientId, ClientSecret, Scope, TokenResponse, TokenUrl};
use serde_json::Value;
use support::{SVC_SECRET, TestIssuer, manifests, start, start_with};

#[derive(Serialize, Deserialize)]
struct Extra {
    client_id: String,
    scope: Option<String>,
}

fn b64(v: &Value) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(v.as_str().unwrap()).unwrap()
}

/// Verifies `token` with the key the JWKS publishes under its kid.
async fn verify_with_jwks(issuer: &TestIssuer, token: &str) -> Result<JWTClaims<Extra>, jwt_simple::Error> {
    let jwks: Value = issuer.get("/.well-known/jwks.json").await.json().await.unwrap();
    let kid = Token::decode_metadata(token).unwrap().key_id().unwrap().to_owned();
    let jwk =
        jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid.as_str()).expect("kid in JWKS");
    let options = VerificationOptions {
        required_signature_type: Some("at+jwt".into()),
        required_key_id: Some(kid),
        allowed_issuers: Some(HashSet::from([issuer.base.clone()])),
        allowed_audiences: Some(HashSet::from(["https://api.test".to_owned()])),
        ..Default::default()
    };
    match jwk["kty"].as_str().unwrap() {
        "OKP" => Ed25519PublicKey::from_bytes(&b64(&jwk["x"])).unwrap().verify_token(token, Some(options)),
        "EC" => {
            let point = [vec![4], b64(&jwk["x"]), b64(&jwk["y"])].concat();
            ES256PublicKey::from_bytes(&point).unwrap().verify_token(token, Some(options))
        }
        "RSA" => RS256PublicKey::from_components(&b64(&jwk["n"]), &b64(&jwk["e"]))
            .unwrap()
            .verify_token(token, Some(options)),
        other => panic!("unexpected kty {other}"),
    }
}

fn with_algorithm(alg: &str) -> String {
    manifests().replacen("  lifetimes: {accessToken: 5m}\n", &format!("  signing: {{algorithm: {alg}}}\n"), 1)
}

#[tokio::test]
async fn tokens_of_every_algorithm_verify_with_the_published_jwks() {
    for alg in ["EdDSA", "ES256", "RS256"] {
        let issuer = start_with(&with_algorithm(alg)).await;
        let token = issuer.svc_token(&[("scope", "read write")]).await;
        let claims = verify_with_jwks(&issuer, &token).await.expect("token verifies with the published key");
        assert_eq!(claims.subject.as_deref(), Some("svc.team"), "{alg}");
        assert_eq!(claims.custom.client_id, "svc.team", "{alg}");
        assert_eq!(claims.custom.scope.as_deref(), Some("read write"), "{alg}");
        assert!(claims.jwt_id.is_some(), "{alg}");
        let lifetime = claims.expires_at.unwrap().as_secs() - claims.issued_at.unwrap().as_secs();
        assert_eq!(lifetime, 15 * 60, "{alg}: default access lifetime");
    }
}

#[tokio::test]
async fn a_tampered_token_fails_independent_verification() {
    let issuer = start().await;
    let token = issuer.svc_token(&[]).await;
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    claims["scope"] = "read write".into();
    parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    let forged = parts.join(".");
    assert!(verify_with_jwks(&issuer, &forged).await.is_err(), "forged token verified");
    assert_eq!(issuer.introspect(&forged).await["active"], false);
}

#[tokio::test]
async fn the_oauth2_crate_gets_a_token_with_client_credentials() {
    let issuer = start().await;
    let client = BasicClient::new(ClientId::new("svc.team".into()))
        .set_client_secret(ClientSecret::new(SVC_SECRET.into()))
        .set_token_uri(TokenUrl::new(format!("{}/oauth2/token", issuer.base)).unwrap());
    let http = support::https_client().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let response = client
        .exchange_client_credentials()
        .add_scope(Scope::new("write".into()))
        .request_async(&http)
        .await
        .expect("token request succeeds");
    assert_eq!(response.scopes().unwrap(), &vec![Scope::new("write".into())]);
    assert_eq!(response.expires_in().unwrap().as_secs(), 300);
    let claims = issuer.introspect(response.access_token().secret()).await;
    assert_eq!(claims["active"], true);

    let wrong = BasicClient::new(ClientId::new("svc.team".into()))
        .set_client_secret(ClientSecret::new("wrong".into()))
        .set_token_uri(TokenUrl::new(format!("{}/oauth2/token", issuer.base)).unwrap());
    let err = wrong.exchange_client_credentials().request_async(&http).await.unwrap_err();
    assert!(
        err.to_string().contains("invalid_client") || format!("{err:?}").contains("InvalidClient"),
        "{err:?}"
    );
}

fn pem_of(pair_pkcs8: &[u8]) -> String {
    pem::encode(&pem::Pem::new("PRIVATE KEY", pair_pkcs8.to_vec()))
}

#[tokio::test]
async fn signing_keys_come_from_the_policy_secret() {
    let old = Ed25519KeyPair::generate().unwrap().to_pkcs8v1().unwrap();
    let new = Ed25519KeyPair::generate().unwrap().to_pkcs8v1().unwrap();
    let indent = |pem: String| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let secret = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: main-signing-keys, namespace: team}}\nstringData:\n  \
         active: key-2\n  key-1.pem: |\n{}  key-2.pem: |\n{}",
        indent(pem_of(old.as_ref())),
        indent(pem_of(new.as_ref()))
    );
    let issuer = start_with(&format!("{}{secret}", manifests())).await;
    let jwks: Value = issuer.get("/.well-known/jwks.json").await.json().await.unwrap();
    let kids: Vec<&str> =
        jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, ["key-1", "key-2"], "both keys are published");
    let token = issuer.svc_token(&[]).await;
    assert_eq!(Token::decode_metadata(&token).unwrap().key_id(), Some("key-2"), "the active key signs");
    verify_with_jwks(&issuer, &token).await.expect("verifies with key-2");
}
