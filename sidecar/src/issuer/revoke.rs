//! Token revocation (RFC 7009). Public clients may revoke their own tokens.
//! Revoking a refresh token revokes its whole family and the access tokens
//! issued from it.

use http::HeaderMap;

use super::form::Form;
use super::introspect::live_claims;
use super::{Issuer, Reply, auth, empty_no_store};
use crate::clock::unix_now;
use crate::oauth_error::OAuthError;
use crate::opaque;
use crate::store::Store;

pub(super) async fn handle<S: Store>(
    issuer: &Issuer<S>,
    headers: &HeaderMap,
    form: &Form<'_>,
) -> Result<Reply, OAuthError> {
    let creds = auth::credentials(headers, form)?;
    let client = auth::authenticate(issuer, &creds, unix_now()).await?;
    let token = form.require("token")?;
    let other_client = || OAuthError::unauthorized_client("this token was issued to another client");
    // token_type_hint is only a hint (RFC 7009 §2.1): both kinds are looked for.
    if let Some(claims) = live_claims(issuer, token).await? {
        if claims.client_id != client.client_id {
            return Err(other_client());
        }
        issuer.store.revoke(&claims.jti, claims.exp).await?;
        issuer.metrics.revoked();
        tracing::info!(client_id = %client.client_id, jti = %claims.jti, "access token revoked");
    } else if let Some(family) = issuer.store.family_of(&opaque::hash(token)).await? {
        if family.client_id != client.client_id {
            return Err(other_client());
        }
        issuer.store.revoke_family(&family.id).await?;
        issuer.metrics.revoked();
        tracing::info!(client_id = %client.client_id, family = %family.id, "refresh token family revoked");
    }
    // Unknown, expired or already revoked: nothing to do, and the caller
    // learns nothing (RFC 7009 §2.2).
    Ok(empty_no_store())
}
