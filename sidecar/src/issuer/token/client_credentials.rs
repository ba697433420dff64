//! The client_credentials grant (RFC 6749 §4.4): the client acts for itself,
//! and never gets a refresh token (§4.4.3).

use tokenplane_api::client::ClientRecord;
use tokenplane_api::oauth2client::GrantType;

use super::{Grant, audience, granted_scope, reply};
use crate::issuer::form::Form;
use crate::issuer::{Issuer, Reply};
use crate::oauth_error::OAuthError;
use crate::opaque;
use crate::store::Store;

pub(super) fn grant<S: Store>(
    issuer: &Issuer<S>,
    client: &ClientRecord,
    form: &Form<'_>,
    now: u64,
) -> Result<Reply, OAuthError> {
    let grant = Grant {
        subject: client.client_id.clone(),
        auth_time: None,
        scope: granted_scope(form.get("scope"), client)?,
        audience: audience(form.all("resource"), client)?,
    };
    Ok(reply(issuer, &client.client_id, grant, opaque::id(), now, None, GrantType::ClientCredentials))
}
