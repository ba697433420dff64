//! How grants are laid out in Redis: a code's state as JSON, a refresh
//! family as a hash with its access tokens in a sorted set.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tokenplane_api::claims::Audience;
use tokenplane_api::grant::{CodeGrant, Issued, RefreshFamily};

use super::corrupt;
use crate::store::Result;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum CodeState {
    Unspent(CodeGrant),
    Spent(Issued),
}

/// Field names and values of a family's hash.
pub(super) fn family_fields(f: &RefreshFamily) -> Vec<(&'static str, String)> {
    vec![
        ("id", f.id.clone()),
        ("client_id", f.client_id.clone()),
        ("subject", f.subject.clone()),
        ("auth_time", f.auth_time.to_string()),
        ("scope", f.scope.clone().unwrap_or_default()),
        ("audience", serde_json::to_string(&f.audience).expect("audience serializes")),
        ("current", f.current.clone()),
        ("current_expires_at", f.current_expires_at.to_string()),
        ("expires_at", f.expires_at.map(|t| t.to_string()).unwrap_or_default()),
        ("revoked", if f.revoked { "1" } else { "0" }.to_owned()),
    ]
}

pub(super) fn family_from(
    mut fields: HashMap<String, String>,
    access: Vec<(String, u64)>,
) -> Result<Option<RefreshFamily>> {
    if fields.is_empty() {
        return Ok(None);
    }
    let mut take = |k: &str| fields.remove(k).unwrap_or_default();
    let number = |v: String| v.parse::<u64>().map_err(|e| corrupt("refresh family", e));
    let audience: Audience =
        serde_json::from_str(&take("audience")).map_err(|e| corrupt("refresh family", e))?;
    let expires_at = Some(take("expires_at")).filter(|s| !s.is_empty()).map(number).transpose()?;
    Ok(Some(RefreshFamily {
        id: take("id"),
        client_id: take("client_id"),
        subject: take("subject"),
        auth_time: number(take("auth_time"))?,
        scope: Some(take("scope")).filter(|s| !s.is_empty()),
        audience,
        current: take("current"),
        current_expires_at: number(take("current_expires_at"))?,
        expires_at,
        revoked: take("revoked") == "1",
        access_tokens: access,
    }))
}
