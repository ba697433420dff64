//! The authorization_code grant (RFC 6749 §4.1.3) with PKCE (RFC 7636). A
//! code works once; a replay revokes everything the first redemption issued.

use subtle::ConstantTimeEq;
use tokenplane_api::client::ClientRecord;
use tokenplane_api::grant::{CodeGrant, Issued, RefreshFamily};
use tokenplane_api::oauth2client::GrantType;

use super::{Grant, reply};
use crate::issuer::form::Form;
use crate::issuer::{Issuer, Reply};
use crate::oauth_error::OAuthError;
use crate::opaque;
use crate::store::{Redemption, Store};

pub(super) async fn redeem<S: Store>(
    issuer: &Issuer<S>,
    client: &ClientRecord,
    form: &Form<'_>,
    now: u64,
) -> Result<Reply, OAuthError> {
    let code = form.require("code")?;
    let redirect_uri = form.require("redirect_uri")?;
    let verifier = form.require("code_verifier")?;
    if !is_verifier(verifier) {
        return Err(OAuthError::invalid_request(
            "code_verifier must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~ (RFC 7636 §4.1)",
        ));
    }
    let plan = Issued {
        jti: opaque::id(),
        exp: now + issuer.current().settings.access_token_ttl,
        family: client.allows(GrantType::RefreshToken).then(opaque::id),
    };
    let grant = match issuer.store.redeem_code(&opaque::hash(code), &plan).await? {
        Redemption::Granted(grant) => grant,
        Redemption::Unknown => {
            return Err(OAuthError::invalid_grant("authorization code is invalid or expired"));
        }
        Redemption::Replayed(first) => {
            revoke(issuer, &first).await?;
            issuer.metrics.replayed(GrantType::AuthorizationCode.as_str());
            tracing::warn!(client_id = %client.client_id, "authorization code replayed: revoked what it produced");
            return Err(OAuthError::invalid_grant(
                "authorization code was already used; the tokens it produced are revoked",
            ));
        }
    };
    check_binding(&grant, client, redirect_uri, verifier)?;
    let refresh_token = match &plan.family {
        Some(id) => Some(start_family(issuer, id, &grant, &plan, now).await?),
        None => None,
    };
    // A replay racing this redemption has revoked (or will revoke) `plan`:
    // these tokens are then dead on arrival.
    let subject = Grant {
        subject: grant.subject,
        auth_time: Some(grant.auth_time),
        scope: grant.scope,
        audience: grant.audience,
    };
    let kind = GrantType::AuthorizationCode;
    Ok(reply(issuer, &client.client_id, subject, plan.jti, now, refresh_token.as_deref(), kind))
}

/// The code must come back from the client it was issued to, with the same
/// redirect URI, and with the verifier of its challenge.
fn check_binding(
    grant: &CodeGrant,
    client: &ClientRecord,
    redirect_uri: &str,
    verifier: &str,
) -> Result<(), OAuthError> {
    if grant.client_id != client.client_id {
        return Err(OAuthError::invalid_grant("authorization code was issued to another client"));
    }
    if grant.redirect_uri != redirect_uri {
        return Err(OAuthError::invalid_grant(
            "redirect_uri differs from the one of the authorization request",
        ));
    }
    // The S256 challenge (RFC 7636 §4.2) is base64url SHA-256, the form
    // bearer values are stored in.
    if !bool::from(opaque::hash(verifier).as_bytes().ct_eq(grant.code_challenge.as_bytes())) {
        return Err(OAuthError::invalid_grant("code_verifier does not match the code_challenge"));
    }
    Ok(())
}

/// Starts the refresh-token family of this grant; returns its first token.
async fn start_family<S: Store>(
    issuer: &Issuer<S>,
    id: &str,
    grant: &CodeGrant,
    plan: &Issued,
    now: u64,
) -> Result<String, OAuthError> {
    let token = opaque::secret();
    let expires_at = issuer.current().settings.refresh_family_ttl.map(|ttl| now + ttl);
    let current_expires_at =
        (now + issuer.current().settings.refresh_token_ttl).min(expires_at.unwrap_or(u64::MAX));
    let family = RefreshFamily {
        id: id.to_owned(),
        client_id: grant.client_id.clone(),
        subject: grant.subject.clone(),
        auth_time: grant.auth_time,
        scope: grant.scope.clone(),
        audience: grant.audience.clone(),
        current: opaque::hash(&token),
        current_expires_at,
        expires_at,
        revoked: false,
        access_tokens: vec![(plan.jti.clone(), plan.exp)],
    };
    issuer.store.create_family(&family).await?;
    Ok(token)
}

async fn revoke<S: Store>(issuer: &Issuer<S>, issued: &Issued) -> Result<(), OAuthError> {
    issuer.store.revoke(&issued.jti, issued.exp).await?;
    if let Some(family) = &issued.family {
        issuer.store.revoke_family(family).await?;
    }
    Ok(())
}

/// `code-verifier` of RFC 7636 §4.1.
fn is_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_is_the_rfc_7636_example() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert!(is_verifier(verifier));
        assert_eq!(opaque::hash(verifier), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn verifiers_outside_rfc_7636_are_refused() {
        assert!(!is_verifier(&"a".repeat(42)));
        assert!(!is_verifier(&"a".repeat(129)));
        assert!(!is_verifier(&format!("{}+", "a".repeat(42))));
        assert!(is_verifier(&format!("{}-._~", "a".repeat(39))));
    }
}
