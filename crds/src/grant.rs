//! Records of the authorization code and refresh token grants, as the issuer
//! keeps them in its store. Codes and refresh tokens are stored under the
//! SHA-256 of their value, never the value itself.

use serde::{Deserialize, Serialize};

use crate::claims::Audience;

/// An authorization request (RFC 6749 §4.1.1) waiting for the login app, then
/// for consent. Stored under its one-time challenge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAuthorization {
    pub client_id: String,
    pub redirect_uri: String,
    /// Scopes asked for, each registered for the client.
    pub scopes: Vec<String>,
    pub audience: Audience,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// PKCE S256 challenge (RFC 7636 §4.2).
    pub code_challenge: String,
    /// Set when the login app accepted: whom the person logged in as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When the person logged in (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<u64>,
}

/// What an authorization code stands for, bound to its client, redirect URI
/// and PKCE challenge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeGrant {
    pub client_id: String,
    pub redirect_uri: String,
    pub subject: String,
    pub auth_time: u64,
    /// Granted scopes, space separated; `None` when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub audience: Audience,
    pub code_challenge: String,
}

/// The tokens one redemption or rotation produced, so that a replay can
/// revoke them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// Access token id and expiry.
    pub jti: String,
    pub exp: u64,
    /// The refresh-token family started, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
}

/// All refresh tokens descended from one authorization code. Only `current`
/// works; presenting any earlier one is reuse, and revokes the family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshFamily {
    pub id: String,
    pub client_id: String,
    pub subject: String,
    pub auth_time: u64,
    /// The scopes originally granted: a refresh may narrow, never widen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub audience: Audience,
    /// Hash of the refresh token that works now.
    pub current: String,
    /// When the current refresh token expires (unix seconds).
    pub current_expires_at: u64,
    /// Absolute end of the family, whatever its rotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    pub revoked: bool,
    /// Access tokens issued from this family, revoked with it.
    pub access_tokens: Vec<(String, u64)>,
}
