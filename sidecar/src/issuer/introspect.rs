//! Token introspection (RFC 7662). Only authenticated confidential clients
//! may ask; any token that is not ours, valid and live is `{"active":false}`.

use http::HeaderMap;
use serde::Serialize;
use tokenplane_api::claims::AccessTokenClaims;

use super::form::Form;
use super::{Issuer, Reply, auth, no_store};
use crate::clock::unix_now;
use crate::oauth_error::OAuthError;
use crate::store::Store;

#[derive(Serialize)]
struct Active<'a> {
    active: bool,
    token_type: &'static str,
    #[serde(flatten)]
    claims: &'a AccessTokenClaims,
}

const INACTIVE: &[u8] = br#"{"active":false}"#;

pub(super) async fn handle<S: Store>(
    issuer: &Issuer<S>,
    headers: &HeaderMap,
    form: &Form<'_>,
) -> Result<Reply, OAuthError> {
    let creds = auth::credentials(headers, form)?;
    if creds.secret.is_none() {
        return Err(OAuthError::invalid_client("introspection requires client authentication with a secret"));
    }
    auth::authenticate(issuer, &creds, unix_now()).await?;
    let token = form.require("token")?;
    let body = match live_claims(issuer, token).await? {
        Some(claims) => serde_json::to_vec(&Active { active: true, token_type: "Bearer", claims: &claims })
            .expect("introspection response serializes"),
        None => INACTIVE.to_vec(),
    };
    Ok(no_store(body))
}

/// The claims of `token` if it is one of ours, unexpired, not revoked, not
/// older than its client's "not before" mark, and its client still exists
/// and is enabled.
pub(super) async fn live_claims<S: Store>(
    issuer: &Issuer<S>,
    token: &str,
) -> Result<Option<AccessTokenClaims>, OAuthError> {
    let claims = match issuer.current().keys.verify(token) {
        Ok(c) if c.iss == issuer.current().settings.issuer => c,
        Ok(_) => return Ok(None),
        Err(why) => {
            tracing::debug!(reason = %why, "inactive token");
            return Ok(None);
        }
    };
    if issuer.store.is_revoked(&claims.jti).await? {
        return Ok(None);
    }
    if issuer.store.not_before(&claims.client_id).await?.is_some_and(|t| claims.iat < t) {
        return Ok(None);
    }
    let client = issuer.client(&claims.client_id).await?;
    Ok(client.filter(|c| !c.disabled).map(|_| claims))
}
