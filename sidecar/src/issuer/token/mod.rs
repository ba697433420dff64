//! The token endpoint (RFC 6749 §3.2): client authentication, then one
//! module per grant. Minting and the shared checks of scope and audience
//! live here.

mod client_credentials;
mod code;
mod refresh;

use http::HeaderMap;
use tokenplane_api::claims::{AccessTokenClaims, Audience};
use tokenplane_api::client::ClientRecord;
use tokenplane_api::oauth2client::GrantType;

use super::form::Form;
use super::{Issuer, Reply, auth, no_store};
use crate::clock::unix_now;
use crate::oauth_error::OAuthError;
use crate::store::Store;

/// Who and what an access token is for.
pub(super) struct Grant {
    pub subject: String,
    pub auth_time: Option<u64>,
    pub scope: Option<String>,
    pub audience: Audience,
}

pub(super) async fn handle<S: Store>(
    issuer: &Issuer<S>,
    headers: &HeaderMap,
    form: &Form<'_>,
    peer: Option<std::net::IpAddr>,
) -> Result<Reply, OAuthError> {
    let grant = form.require("grant_type")?;
    let live = issuer.current();
    if !live.keys.can_sign() {
        return Err(OAuthError::temporarily_unavailable(
            "the signing key was withdrawn; the new key reaches this issuer shortly",
        ));
    }
    let now = unix_now();
    let client = match auth::credentials(headers, form) {
        Ok(creds) => auth::authenticate(issuer, &creds, now).await,
        Err(e) => Err(e),
    };
    // Every request counts against its source address, failed ones too, so
    // guessing secrets is limited; only authenticated ones count against a
    // client, so nobody can spend another client's budget. One store call.
    let settings = &live.settings;
    issuer
        .limit([
            settings.per_address.zip(peer).map(|(rate, ip)| (rate, format!("addr:{ip}"), "source address")),
            settings
                .per_client
                .zip(client.as_ref().ok())
                .map(|(rate, c)| (rate, format!("client:{}", c.client_id), "client")),
        ])
        .await?;
    let client = client?;
    let grant_type = match grant {
        "client_credentials" => GrantType::ClientCredentials,
        "authorization_code" => GrantType::AuthorizationCode,
        "refresh_token" => GrantType::RefreshToken,
        "password" | "implicit" => {
            return Err(OAuthError::unsupported_grant_type(format!(
                "the {grant} grant is forbidden by RFC 9700; use client_credentials, or authorization_code with PKCE"
            )));
        }
        other => {
            return Err(OAuthError::unsupported_grant_type(format!(
                "grant_type {other} is not supported; supported: client_credentials, authorization_code, refresh_token"
            )));
        }
    };
    if !client.allows(grant_type) {
        return Err(OAuthError::unauthorized_client(format!(
            "this client is not registered for the {grant} grant"
        )));
    }
    match grant_type {
        GrantType::ClientCredentials => client_credentials::grant(issuer, &client, form, now),
        GrantType::AuthorizationCode => code::redeem(issuer, &client, form, now).await,
        GrantType::RefreshToken => refresh::rotate(issuer, &client, form, now).await,
    }
}

/// Signs an access token for `grant` with id `jti`, and the reply carrying
/// it (and `refresh_token`, if any). Counts the issue under `grant_type`.
pub(super) fn reply<S: Store>(
    issuer: &Issuer<S>,
    client_id: &str,
    grant: Grant,
    jti: String,
    now: u64,
    refresh_token: Option<&str>,
    grant_type: GrantType,
) -> Reply {
    let live = issuer.current();
    let ttl = live.settings.access_token_ttl;
    let claims = AccessTokenClaims {
        iss: live.settings.issuer.clone(),
        sub: grant.subject,
        aud: grant.audience,
        exp: now + ttl,
        iat: now,
        nbf: None,
        jti,
        client_id: client_id.to_owned(),
        scope: grant.scope,
        auth_time: grant.auth_time,
    };
    let access_token = live.keys.sign(&claims);
    issuer.metrics.issued(grant_type.as_str());
    no_store(token_response(&access_token, ttl, claims.scope.as_deref(), refresh_token))
}

/// The token response body (RFC 6749 §5.1). A compact JWS is base64url and
/// dots, which JSON needs no escaping for: it is copied in as it is, not
/// scanned byte by byte by the serializer (a few percent of a token's CPU).
fn token_response(access_token: &str, ttl: u64, scope: Option<&str>, refresh_token: Option<&str>) -> Vec<u8> {
    debug_assert!(access_token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    let mut body = Vec::with_capacity(access_token.len() + 128);
    body.extend_from_slice(br#"{"access_token":""#);
    body.extend_from_slice(access_token.as_bytes());
    body.extend_from_slice(br#"","token_type":"Bearer","expires_in":"#);
    body.extend_from_slice(ttl.to_string().as_bytes());
    for (name, value) in [("scope", scope), ("refresh_token", refresh_token)] {
        if let Some(value) = value {
            body.extend_from_slice(format!(r#","{name}":"#).as_bytes());
            serde_json::to_writer(&mut body, value).expect("writing to a Vec");
        }
    }
    body.push(b'}');
    body
}

/// The scopes to grant: those requested, each registered, or the client's
/// defaults. `None` when nothing is granted.
pub(super) fn granted_scope(
    requested: Option<&str>,
    client: &ClientRecord,
) -> Result<Option<String>, OAuthError> {
    match requested {
        None => Ok(Some(client.default_scopes.join(" ")).filter(|s| !s.is_empty())),
        Some(requested) => select_scopes(
            requested,
            |s| client.scopes.iter().any(|r| r == s),
            |s| OAuthError::invalid_scope(format!("scope {s} is not registered for this client")),
        ),
    }
}

/// The space-separated `requested` scopes, deduplicated in order, each
/// `allowed`; the first that is not gives `refused(scope)`.
pub(super) fn select_scopes(
    requested: &str,
    allowed: impl Fn(&str) -> bool,
    refused: impl Fn(&str) -> OAuthError,
) -> Result<Option<String>, OAuthError> {
    let mut granted: Vec<&str> = Vec::new();
    for scope in requested.split(' ').filter(|s| !s.is_empty()) {
        if !allowed(scope) {
            return Err(refused(scope));
        }
        if !granted.contains(&scope) {
            granted.push(scope);
        }
    }
    Ok(Some(granted.join(" ")).filter(|s| !s.is_empty()))
}

/// The `aud` of the token: the requested resources (RFC 8707), each
/// registered, or the client's only audience.
pub(super) fn audience<'a>(
    requested: impl Iterator<Item = &'a str>,
    client: &ClientRecord,
) -> Result<Audience, OAuthError> {
    let mut auds: Vec<String> = Vec::new();
    for resource in requested {
        if !client.audiences.iter().any(|a| a == resource) {
            return Err(OAuthError::invalid_target(format!(
                "resource {resource} is not a registered audience of this client"
            )));
        }
        if !auds.iter().any(|a| a == resource) {
            auds.push(resource.to_owned());
        }
    }
    match (auds.len(), client.audiences.as_slice()) {
        (0, [only]) => Ok(Audience::One(only.clone())),
        (0, _) => Err(OAuthError::invalid_target(
            "this client has several audiences: name one with the resource parameter (RFC 8707)",
        )),
        (1, _) => Ok(Audience::One(auds.remove(0))),
        _ => Ok(Audience::Many(auds)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenplane_api::OAuth2ClientSpec;

    fn client(scopes: &[&str], defaults: &[&str], audiences: &[&str]) -> ClientRecord {
        let spec: OAuth2ClientSpec = serde_json::from_value(serde_json::json!({
            "scopes": scopes, "defaultScopes": defaults, "audiences": audiences,
            "policyRef": {"name": "p"},
        }))
        .unwrap();
        ClientRecord::new("c.ns".into(), &spec, vec![])
    }

    #[test]
    fn the_token_response_is_json_with_its_optional_fields() {
        let body = token_response("a.b-_", 900, Some("read \"x\""), None);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"access_token": "a.b-_", "token_type": "Bearer", "expires_in": 900, "scope": "read \"x\""})
        );
        let body = token_response("t", 60, None, Some("r"));
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["refresh_token"], "r");
        assert!(value.get("scope").is_none());
    }

    #[test]
    fn scopes_are_checked_deduplicated_and_defaulted() {
        let c = client(&["read", "write"], &["read"], &["a"]);
        assert_eq!(granted_scope(Some("write read write"), &c).unwrap().as_deref(), Some("write read"));
        assert_eq!(granted_scope(None, &c).unwrap().as_deref(), Some("read"));
        assert_eq!(granted_scope(Some("admin"), &c).unwrap_err().code, "invalid_scope");
        let none = client(&["read"], &[], &["a"]);
        assert_eq!(granted_scope(None, &none).unwrap(), None);
    }

    #[test]
    fn audience_comes_from_resource_or_the_only_registration() {
        let one = client(&[], &[], &["https://a"]);
        assert_eq!(audience(std::iter::empty(), &one).unwrap(), Audience::One("https://a".into()));
        let two = client(&[], &[], &["https://a", "https://b"]);
        assert_eq!(audience(std::iter::empty(), &two).unwrap_err().code, "invalid_target");
        assert_eq!(
            audience(["https://b", "https://a", "https://b"].into_iter(), &two).unwrap(),
            Audience::Many(vec!["https://b".into(), "https://a".into()])
        );
        assert_eq!(audience(["https://c"].into_iter(), &two).unwrap_err().code, "invalid_target");
    }
}
