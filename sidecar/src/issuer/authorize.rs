//! The authorization endpoint (RFC 6749 §4.1.1 with PKCE, RFC 7636). The
//! issuer authenticates nobody itself: it hands the request to the policy's
//! login app under a one-time challenge (see `login.rs`).
//!
//! Until the client and redirect URI are known good, errors are shown as a
//! page and never redirected anywhere (no open redirect); after that they go
//! back to the client per §4.1.2.1, with `state` and `iss` (RFC 9207).

use std::sync::Arc;

use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use tokenplane_api::client::ClientRecord;
use tokenplane_api::grant::PendingAuthorization;
use tokenplane_api::oauth2client::GrantType;
use tokenplane_api::redirect;

use super::form::Form;
use super::token::{audience, granted_scope};
use super::{Issuer, Reply};
use crate::clock::unix_now;
use crate::oauth_error::OAuthError;
use crate::opaque;
use crate::store::Store;

/// How long a person has to log in and consent.
pub const LOGIN_WINDOW: u64 = 15 * 60;

/// Where an authorization response goes: the client's redirect URI, with
/// its `state`.
pub(super) struct Callback {
    pub redirect_uri: String,
    pub state: Option<String>,
}

pub(super) async fn handle<S: Store>(issuer: &Issuer<S>, query: &str) -> Reply {
    let form = match Form::parse(query.as_bytes(), &["resource"]) {
        Ok(form) => form,
        Err(e) => return error_page(&e.description),
    };
    let (client, callback) = match client_and_callback(issuer, &form).await {
        Ok(found) => found,
        Err(Failure::Page(message)) => return error_page(&message),
        Err(Failure::Store(e)) => return error_page(&e.description),
    };
    match start_login(issuer, &client, &callback, &form).await {
        Ok(login) => found(&login),
        Err(e) => callback.error(issuer, &e),
    }
}

enum Failure {
    Page(String),
    Store(OAuthError),
}

/// The client and the redirect URI to answer on, or why there is none.
async fn client_and_callback<S: Store>(
    issuer: &Issuer<S>,
    form: &Form<'_>,
) -> Result<(Arc<ClientRecord>, Callback), Failure> {
    let client_id = form.get("client_id").ok_or_else(|| Failure::Page("client_id is missing".into()))?;
    let client = issuer.client(client_id).await.map_err(|e| Failure::Store(e.into()))?;
    let client = client.ok_or_else(|| Failure::Page(format!("unknown client {client_id}")))?;
    let redirect_uri = match (form.get("redirect_uri"), client.redirect_uris.as_slice()) {
        (Some(presented), registered) => registered
            .iter()
            .any(|r| redirect::matches(r, presented))
            .then(|| presented.to_owned())
            .ok_or_else(|| Failure::Page("redirect_uri is not registered for this client".into()))?,
        (None, [only]) => only.clone(),
        (None, _) => {
            return Err(Failure::Page("redirect_uri is required: this client registered several".into()));
        }
    };
    let state = form.get("state").map(str::to_owned);
    Ok((client, Callback { redirect_uri, state }))
}

/// Checks the request and parks it for the login app; returns the login URL.
async fn start_login<S: Store>(
    issuer: &Issuer<S>,
    client: &ClientRecord,
    callback: &Callback,
    form: &Form<'_>,
) -> Result<String, OAuthError> {
    match form.get("response_type") {
        Some("code") => {}
        Some(other) => {
            return Err(OAuthError::unsupported_response_type(format!(
                "response_type {other} is not supported; use code"
            )));
        }
        None => return Err(OAuthError::invalid_request("response_type is missing; use code")),
    }
    if !client.allows(GrantType::AuthorizationCode) {
        return Err(OAuthError::unauthorized_client(
            "this client is not registered for the authorization_code grant",
        ));
    }
    let code_challenge = pkce_challenge(form)?;
    let scopes = granted_scope(form.get("scope"), client)?;
    let pending = PendingAuthorization {
        client_id: client.client_id.clone(),
        redirect_uri: callback.redirect_uri.clone(),
        scopes: scopes.map(|s| s.split(' ').map(str::to_owned).collect()).unwrap_or_default(),
        audience: audience(form.all("resource"), client)?,
        state: callback.state.clone(),
        code_challenge,
        subject: None,
        auth_time: None,
    };
    let live = issuer.current();
    let login_url = live.settings.login_url.as_deref().ok_or_else(|| {
        OAuthError::server_error("this issuer has no login app: set spec.login.loginUrl in its TokenPolicy")
    })?;
    let challenge = opaque::secret();
    issuer.store.put_pending(&opaque::hash(&challenge), &pending, unix_now() + LOGIN_WINDOW).await?;
    Ok(with_query(login_url, &[("login_challenge", &challenge)]))
}

/// The S256 challenge; `plain` and no PKCE at all are refused (RFC 9700 §2.1.1).
fn pkce_challenge(form: &Form<'_>) -> Result<String, OAuthError> {
    let challenge = form.get("code_challenge").ok_or_else(|| {
        OAuthError::invalid_request("PKCE is required: send code_challenge with code_challenge_method=S256")
    })?;
    if form.get("code_challenge_method") != Some("S256") {
        return Err(OAuthError::invalid_request("code_challenge_method must be S256; plain is refused"));
    }
    let well_formed = challenge.len() == 43
        && challenge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        return Err(OAuthError::invalid_request(
            "code_challenge must be the base64url SHA-256 of the code_verifier",
        ));
    }
    Ok(challenge.to_owned())
}

/// `url` with `pairs` appended to its query.
pub(super) fn with_query(url: &str, pairs: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(url).expect("login and redirect URLs are validated URLs");
    url.query_pairs_mut().extend_pairs(pairs);
    url.into()
}

impl Callback {
    /// The redirect URI with the response parameters, `state` and `iss`.
    pub(super) fn url<S>(&self, issuer: &Issuer<S>, params: &[(&str, &str)]) -> String {
        let live = issuer.current();
        let mut pairs = params.to_vec();
        if let Some(state) = &self.state {
            pairs.push(("state", state));
        }
        pairs.push(("iss", &live.settings.issuer));
        with_query(&self.redirect_uri, &pairs)
    }

    /// An error response (RFC 6749 §4.1.2.1), as a redirect.
    fn error<S>(&self, issuer: &Issuer<S>, e: &OAuthError) -> Reply {
        found(&self.error_url(issuer, e))
    }

    pub(super) fn error_url<S>(&self, issuer: &Issuer<S>, e: &OAuthError) -> String {
        self.url(issuer, &[("error", e.code), ("error_description", &e.description)])
    }
}

fn found(location: &str) -> Reply {
    let mut reply = Response::new(Full::default());
    *reply.status_mut() = StatusCode::FOUND;
    let h = reply.headers_mut();
    h.insert(LOCATION, HeaderValue::try_from(location).expect("URL is a valid header value"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    reply
}

/// A page for the person in front of the browser; nothing is redirected.
fn error_page(message: &str) -> Reply {
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>Authorization error</title>\
         <h1>This sign-in request cannot be completed</h1><p>{}</p>\
         <p>Go back to the application and try again.</p>\n",
        html_escape::encode_text(message)
    );
    let mut reply = Response::new(Full::new(html.into()));
    *reply.status_mut() = StatusCode::BAD_REQUEST;
    let h = reply.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("content-security-policy", HeaderValue::from_static("default-src 'none'"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    reply
}
