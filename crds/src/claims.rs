//! Claims of the JWT access tokens (RFC 9068) the issuer signs and agents verify.

use serde::{Deserialize, Serialize};

/// The JOSE `typ` of an access token (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// `aud`: one audience is written as a string, several as an array (RFC 7519 §4.1.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, aud: &str) -> bool {
        match self {
            Self::One(a) => a == aud,
            Self::Many(all) => all.iter().any(|a| a == aud),
        }
    }
}

/// The claims of an access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    pub iss: String,
    /// The resource owner; the client id itself for client_credentials.
    pub sub: String,
    pub aud: Audience,
    pub exp: u64,
    pub iat: u64,
    /// Unique id, the handle revocations name.
    pub jti: String,
    pub client_id: String,
    /// Space-separated granted scopes; absent when none were granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// When the person logged in; absent for client_credentials tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<u64>,
}
