//! Client authentication at the token, introspection and revocation
//! endpoints (RFC 6749 §2.3): `client_secret_basic`, `client_secret_post`,
//! or a public client naming itself with `client_id`.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use tokenplane_api::client::{ClientRecord, compare_decoy};
use tokenplane_api::oauth2client::AuthMethod;

use super::Issuer;
use super::form::Form;
use crate::oauth_error::OAuthError;
use crate::store::Store;

/// What the request presented, before it is checked.
#[derive(Debug, PartialEq, Eq)]
pub struct Credentials {
    pub client_id: String,
    /// `None` for a public client.
    pub secret: Option<String>,
    pub method: AuthMethod,
}

/// Reads the client's credentials from the `Authorization` header or the form.
pub fn credentials(headers: &HeaderMap, form: &Form<'_>) -> Result<Credentials, OAuthError> {
    let header = headers.get(http::header::AUTHORIZATION);
    let in_body = form.get("client_secret").is_some();
    match header {
        Some(_) if in_body => Err(OAuthError::invalid_request(
            "use one client authentication method, not both Authorization and client_secret (RFC 6749 §2.3)",
        )),
        Some(value) => basic(value.as_bytes(), form.get("client_id")),
        None => match (form.get("client_id"), form.get("client_secret")) {
            (Some(id), Some(secret)) => Ok(Credentials {
                client_id: id.to_owned(),
                secret: Some(secret.to_owned()),
                method: AuthMethod::ClientSecretPost,
            }),
            (Some(id), None) => {
                Ok(Credentials { client_id: id.to_owned(), secret: None, method: AuthMethod::None })
            }
            (None, _) => Err(OAuthError::invalid_client(
                "client authentication required: HTTP Basic with client id and secret, or client_id in the body",
            )),
        },
    }
}

fn basic(value: &[u8], body_client_id: Option<&str>) -> Result<Credentials, OAuthError> {
    let malformed = || {
        OAuthError::invalid_client(
            "malformed Authorization header: expected Basic with base64 of client_id:client_secret",
        )
    };
    let (scheme, encoded) = value.split_at(value.iter().position(|b| *b == b' ').ok_or_else(malformed)?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return Err(malformed());
    }
    let decoded = STANDARD.decode(encoded.trim_ascii()).map_err(|_| malformed())?;
    let colon = decoded.iter().position(|b| *b == b':').ok_or_else(malformed)?;
    // RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
    let unescape = |part: &[u8]| -> Result<String, OAuthError> {
        let text = std::str::from_utf8(part).map_err(|_| malformed())?;
        // Generated ids and secrets have nothing escaped: no decoding pass.
        if !part.iter().any(|b| matches!(b, b'%' | b'+')) {
            return Ok(text.to_owned());
        }
        Ok(form_urlencoded::parse(format!("x={text}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default())
    };
    let client_id = unescape(&decoded[..colon])?;
    if body_client_id.is_some_and(|id| id != client_id) {
        return Err(OAuthError::invalid_request(
            "client_id in the body differs from the Authorization header",
        ));
    }
    Ok(Credentials {
        client_id,
        secret: Some(unescape(&decoded[colon + 1..])?),
        method: AuthMethod::ClientSecretBasic,
    })
}

/// Checks credentials against the registration. Every failure looks the same
/// to the caller, and an unknown client costs as much as a wrong secret.
pub async fn authenticate<S: Store>(
    issuer: &Issuer<S>,
    creds: &Credentials,
    now: u64,
) -> Result<Arc<ClientRecord>, OAuthError> {
    let client = issuer.client(&creds.client_id).await?;
    let Some(client) = client else {
        if let Some(secret) = &creds.secret {
            compare_decoy(secret);
        }
        return Err(rejected());
    };
    let matched = creds.secret.as_deref().and_then(|secret| client.matching_secret(secret, now));
    let ok = match &creds.secret {
        Some(_) => matched.is_some() && client.auth_method == creds.method,
        None => client.auth_method == AuthMethod::None,
    };
    if !ok {
        return Err(rejected());
    }
    if client.disabled {
        return Err(OAuthError::invalid_client("this client is disabled"));
    }
    if let Some(secret) = matched {
        issuer.store().secret_used(&client.client_id, secret, now).await;
    }
    Ok(client)
}

fn rejected() -> OAuthError {
    OAuthError::invalid_client(
        "client authentication failed: unknown client, wrong secret, or not the registered authentication method",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        // "a%3Ab:s+1" -> id "a:b", secret "s 1"
        let value = format!("Basic {}", STANDARD.encode("a%3Ab:s+1"));
        let c = credentials(&headers(&value), &Form::default()).unwrap();
        assert_eq!(
            c,
            Credentials {
                client_id: "a:b".into(),
                secret: Some("s 1".into()),
                method: AuthMethod::ClientSecretBasic
            }
        );
    }

    #[test]
    fn both_methods_at_once_is_invalid_request() {
        let value = format!("Basic {}", STANDARD.encode("a:b"));
        let form = Form::parse(b"client_secret=x", &[]).unwrap();
        assert_eq!(credentials(&headers(&value), &form).unwrap_err().code, "invalid_request");
    }

    #[test]
    fn malformed_basic_is_invalid_client() {
        for bad in ["Basic", "Basic !!!", "Bearer abc", &format!("Basic {}", STANDARD.encode("nocolon"))] {
            assert_eq!(
                credentials(&headers(bad), &Form::default()).unwrap_err().code,
                "invalid_client",
                "{bad}"
            );
        }
    }

    #[test]
    fn no_credentials_is_invalid_client_and_id_alone_is_public() {
        assert_eq!(credentials(&HeaderMap::new(), &Form::default()).unwrap_err().code, "invalid_client");
        let form = Form::parse(b"client_id=spa.web", &[]).unwrap();
        assert_eq!(credentials(&HeaderMap::new(), &form).unwrap().method, AuthMethod::None);
    }
}
