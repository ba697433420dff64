//! The admin API a login app calls, as with Ory Hydra: the issuer parks an
//! authorization request under a login challenge; the login app
//! authenticates the person however it likes and accepts (with a subject)
//! or rejects; then the same for consent, which first-party clients and
//! remembered consents skip. Every call needs the admin bearer token, and
//! each challenge works once.

use http::{HeaderMap, Method, StatusCode};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokenplane_api::grant::{CodeGrant, PendingAuthorization};

use super::authorize::{Callback, with_query};
use super::form::Form;
use super::{Issuer, Reply, json_reply};
use crate::clock::unix_now;
use crate::oauth_error::OAuthError;
use crate::opaque;
use crate::store::Store;

/// How long a remembered consent lasts.
const CONSENT_MEMORY: u64 = 30 * 24 * 3600;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Login,
    Consent,
}

impl Phase {
    fn param(self) -> &'static str {
        match self {
            Self::Login => "login_challenge",
            Self::Consent => "consent_challenge",
        }
    }

    /// A login challenge has no subject yet; a consent challenge has one.
    fn holds(self, pending: &PendingAuthorization) -> bool {
        pending.subject.is_some() == (self == Self::Consent)
    }
}

#[derive(Serialize)]
struct ChallengeInfo<'a> {
    challenge: &'a str,
    client_id: &'a str,
    requested_scope: &'a [String],
    requested_audience: &'a tokenplane_api::claims::Audience,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
}

#[derive(Deserialize)]
struct AcceptLogin {
    subject: String,
}

#[derive(Deserialize, Default)]
struct AcceptConsent {
    /// Scopes the person granted; all requested when absent.
    grant_scope: Option<Vec<String>>,
    #[serde(default)]
    remember: bool,
}

#[derive(Deserialize, Default)]
struct Reject {
    error_description: Option<String>,
}

#[derive(Serialize)]
struct RedirectTo {
    redirect_to: String,
}

/// Serves `/admin/...`. `body` is the request's JSON body, if any.
pub(super) async fn handle<S: Store>(
    issuer: &Issuer<S>,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Reply, OAuthError> {
    authorize_admin(issuer, headers)?;
    let (phase, action) = match path.strip_prefix("/admin/") {
        Some("login") => (Phase::Login, None),
        Some("consent") => (Phase::Consent, None),
        Some(rest) => match rest.split_once('/') {
            Some(("login", action)) => (Phase::Login, Some(action)),
            Some(("consent", action)) => (Phase::Consent, Some(action)),
            _ => return Err(OAuthError::not_found()),
        },
        None => return Err(OAuthError::not_found()),
    };
    let query = Form::parse(query.as_bytes(), &[])?;
    let challenge = query.require(phase.param())?;
    let expected = if action.is_some() { Method::POST } else { Method::GET };
    if *method != expected {
        return Err(OAuthError::method_not_allowed(if action.is_some() { "POST" } else { "GET, HEAD" }));
    }
    match action {
        None => info(issuer, phase, challenge).await,
        Some("accept") => accept(issuer, phase, challenge, body).await,
        Some("reject") => reject(issuer, phase, challenge, body).await,
        Some(_) => Err(OAuthError::not_found()),
    }
}

fn authorize_admin<S>(issuer: &Issuer<S>, headers: &HeaderMap) -> Result<(), OAuthError> {
    let Some(expected) = &issuer.current().settings.admin_token_hash else {
        return Err(OAuthError::not_found());
    };
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(opaque::hash)
        .unwrap_or_default();
    if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(OAuthError::invalid_client("the admin API needs the admin bearer token"))
    }
}

fn unknown_challenge() -> OAuthError {
    OAuthError::new(StatusCode::NOT_FOUND, "invalid_request", "unknown, expired or already used challenge")
}

async fn info<S: Store>(issuer: &Issuer<S>, phase: Phase, challenge: &str) -> Result<Reply, OAuthError> {
    let pending = issuer
        .store
        .pending(&opaque::hash(challenge))
        .await?
        .filter(|p| phase.holds(p))
        .ok_or_else(unknown_challenge)?;
    Ok(json_reply(&ChallengeInfo {
        challenge,
        client_id: &pending.client_id,
        requested_scope: &pending.scopes,
        requested_audience: &pending.audience,
        subject: pending.subject.as_deref(),
    }))
}

/// Uses up a challenge of the right phase.
async fn take<S: Store>(
    issuer: &Issuer<S>,
    phase: Phase,
    challenge: &str,
) -> Result<PendingAuthorization, OAuthError> {
    // Look before taking, so a consent challenge sent to the login API
    // stays usable where it belongs.
    let key = opaque::hash(challenge);
    issuer.store.pending(&key).await?.filter(|p| phase.holds(p)).ok_or_else(unknown_challenge)?;
    issuer.store.take_pending(&key).await?.ok_or_else(unknown_challenge)
}

fn parse<'a, T: Deserialize<'a> + Default>(body: &'a [u8]) -> Result<T, OAuthError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| OAuthError::invalid_request(format!("invalid JSON body: {e}")))
}

async fn accept<S: Store>(
    issuer: &Issuer<S>,
    phase: Phase,
    challenge: &str,
    body: &[u8],
) -> Result<Reply, OAuthError> {
    let now = unix_now();
    let redirect_to = match phase {
        Phase::Login => {
            let AcceptLogin { subject } = serde_json::from_slice(body).map_err(|e| {
                OAuthError::invalid_request(format!("expected {{\"subject\": \"...\"}}: {e}"))
            })?;
            if subject.is_empty() {
                return Err(OAuthError::invalid_request("subject must not be empty"));
            }
            let mut pending = take(issuer, phase, challenge).await?;
            pending.subject = Some(subject);
            pending.auth_time = Some(now);
            after_login(issuer, pending, now).await?
        }
        Phase::Consent => {
            let consent: AcceptConsent = parse(body)?;
            let mut pending = take(issuer, phase, challenge).await?;
            if let Some(granted) = consent.grant_scope {
                if let Some(extra) = granted.iter().find(|s| !pending.scopes.contains(s)) {
                    return Err(OAuthError::invalid_request(format!("scope {extra} was not requested")));
                }
                pending.scopes = granted;
            }
            if consent.remember {
                let subject = pending.subject.as_deref().unwrap_or_default();
                let scopes = &pending.scopes;
                issuer
                    .store
                    .remember_consent(subject, &pending.client_id, scopes, now + CONSENT_MEMORY)
                    .await?;
            }
            issue_code(issuer, pending, now).await?
        }
    };
    Ok(json_reply(&RedirectTo { redirect_to }))
}

/// After login: straight to the client when consent is not needed, else to
/// the consent page under a new challenge.
async fn after_login<S: Store>(
    issuer: &Issuer<S>,
    pending: PendingAuthorization,
    now: u64,
) -> Result<String, OAuthError> {
    let client = issuer.client(&pending.client_id).await?;
    let client =
        client.filter(|c| !c.disabled).ok_or_else(|| OAuthError::access_denied("the client is gone"))?;
    let subject = pending.subject.as_deref().unwrap_or_default();
    let remembered = issuer.store.consented_scopes(subject, &client.client_id).await?;
    if client.first_party || pending.scopes.iter().all(|s| remembered.contains(s)) {
        return issue_code(issuer, pending, now).await;
    }
    let live = issuer.current();
    let consent_url = live.settings.consent_url.as_deref().or(live.settings.login_url.as_deref());
    let consent_url = consent_url.ok_or_else(|| OAuthError::server_error("no consent URL configured"))?;
    let challenge = opaque::secret();
    issuer
        .store
        .put_pending(&opaque::hash(&challenge), &pending, now + super::authorize::LOGIN_WINDOW)
        .await?;
    Ok(with_query(consent_url, &[("consent_challenge", &challenge)]))
}

/// Issues the authorization code and returns the client's redirect URL.
async fn issue_code<S: Store>(
    issuer: &Issuer<S>,
    pending: PendingAuthorization,
    now: u64,
) -> Result<String, OAuthError> {
    let code = opaque::secret();
    let callback = Callback { redirect_uri: pending.redirect_uri.clone(), state: pending.state.clone() };
    let grant = CodeGrant {
        client_id: pending.client_id,
        redirect_uri: pending.redirect_uri,
        subject: pending.subject.unwrap_or_default(),
        auth_time: pending.auth_time.unwrap_or(now),
        scope: Some(pending.scopes.join(" ")).filter(|s| !s.is_empty()),
        audience: pending.audience,
        code_challenge: pending.code_challenge,
    };
    issuer.store.put_code(&opaque::hash(&code), &grant, now + issuer.current().settings.code_ttl).await?;
    Ok(callback.url(issuer, &[("code", &code)]))
}

async fn reject<S: Store>(
    issuer: &Issuer<S>,
    phase: Phase,
    challenge: &str,
    body: &[u8],
) -> Result<Reply, OAuthError> {
    let Reject { error_description } = parse(body)?;
    let pending = take(issuer, phase, challenge).await?;
    let callback = Callback { redirect_uri: pending.redirect_uri, state: pending.state };
    let why = error_description.unwrap_or_else(|| "the request was denied".into());
    Ok(json_reply(&RedirectTo { redirect_to: callback.error_url(issuer, &OAuthError::access_denied(why)) }))
}
