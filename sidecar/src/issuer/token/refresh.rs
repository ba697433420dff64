//! The refresh_token grant (RFC 6749 §6). Every use rotates the token;
//! presenting a rotated one is reuse and revokes the whole family
//! (RFC 9700 §4.14.2).

use tokenplane_api::client::ClientRecord;
use tokenplane_api::oauth2client::GrantType;

use super::{Grant, reply, select_scopes};
use crate::issuer::form::Form;
use crate::issuer::{Issuer, Reply};
use crate::oauth_error::OAuthError;
use crate::opaque;
use crate::store::{Rotation, Store};

pub(super) async fn rotate<S: Store>(
    issuer: &Issuer<S>,
    client: &ClientRecord,
    form: &Form<'_>,
    now: u64,
) -> Result<Reply, OAuthError> {
    let presented = opaque::hash(form.require("refresh_token")?);
    let invalid = || OAuthError::invalid_grant("refresh token is invalid, expired or revoked");
    let family = issuer.store.family_of(&presented).await?.ok_or_else(invalid)?;
    if family.client_id != client.client_id {
        return Err(OAuthError::invalid_grant("refresh token was issued to another client"));
    }
    if family.revoked || family.expires_at.is_some_and(|end| end <= now) {
        return Err(invalid());
    }
    // The family began at login: a "not before" mark after it kills it too.
    if issuer.store.not_before(&client.client_id).await?.is_some_and(|t| family.auth_time < t) {
        return Err(invalid());
    }
    let scope = narrowed(form.get("scope"), family.scope.as_deref())?;
    let jti = opaque::id();
    let next = opaque::secret();
    let next_expires_at =
        (now + issuer.current().settings.refresh_token_ttl).min(family.expires_at.unwrap_or(u64::MAX));
    let access = (jti.as_str(), now + issuer.current().settings.access_token_ttl);
    let family = match issuer
        .store
        .rotate_refresh(&presented, &opaque::hash(&next), next_expires_at, access)
        .await?
    {
        Rotation::Rotated(family) => family,
        Rotation::Unknown => return Err(invalid()),
        Rotation::Reused(family) => {
            issuer.metrics.replayed(GrantType::RefreshToken.as_str());
            tracing::warn!(client_id = %client.client_id, family = %family.id, "refresh token reused: family revoked");
            return Err(OAuthError::invalid_grant(
                "refresh token was already used; every token of this grant is revoked",
            ));
        }
    };
    let grant = Grant {
        subject: family.subject,
        auth_time: Some(family.auth_time),
        scope,
        audience: family.audience,
    };
    Ok(reply(issuer, &client.client_id, grant, jti, now, Some(&next), GrantType::RefreshToken))
}

/// The scope of the refreshed token: what was asked, within what was granted.
fn narrowed(requested: Option<&str>, granted: Option<&str>) -> Result<Option<String>, OAuthError> {
    let Some(requested) = requested else { return Ok(granted.map(str::to_owned)) };
    let granted: Vec<&str> = granted.unwrap_or_default().split(' ').collect();
    select_scopes(
        requested,
        |s| granted.contains(&s),
        |s| {
            OAuthError::invalid_scope(format!(
                "scope {s} was not granted: a refresh may narrow the scope, never widen it"
            ))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::narrowed;

    #[test]
    fn refresh_narrows_and_never_widens() {
        assert_eq!(narrowed(None, Some("a b")).unwrap().as_deref(), Some("a b"));
        assert_eq!(narrowed(Some("b"), Some("a b")).unwrap().as_deref(), Some("b"));
        assert_eq!(narrowed(Some("b c"), Some("a b")).unwrap_err().code, "invalid_scope");
        assert_eq!(narrowed(Some("a"), None).unwrap_err().code, "invalid_scope");
    }
}
