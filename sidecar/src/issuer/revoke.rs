//! Token revocation (RFC 7009). Public clients may revoke their own tokens.

use http::HeaderMap;

use super::error::OAuthError;
use super::form::Form;
use super::introspect::live_claims;
use super::{Issuer, Reply, auth, empty_no_store};
use crate::clock::unix_now;
use crate::store::Store;

pub(super) async fn handle<S: Store>(
    issuer: &Issuer<S>,
    headers: &HeaderMap,
    form: &Form<'_>,
) -> Result<Reply, OAuthError> {
    let creds = auth::credentials(headers, form)?;
    let client = auth::authenticate(&issuer.store, &creds, unix_now()).await?;
    let token = form.require("token")?;
    // token_type_hint is only a hint (RFC 7009 §2.1): every token is looked at.
    let Some(claims) = live_claims(issuer, token).await? else {
        // Unknown, expired or already revoked: nothing to do, and the caller
        // learns nothing (RFC 7009 §2.2).
        return Ok(empty_no_store());
    };
    if claims.client_id != client.client_id {
        return Err(OAuthError::unauthorized_client("this token was issued to another client"));
    }
    issuer.store.revoke(&claims.jti, claims.exp).await?;
    issuer.metrics.revoked();
    tracing::info!(client_id = %client.client_id, jti = %claims.jti, "token revoked");
    Ok(empty_no_store())
}
