//! Authorization server metadata (RFC 8414).

use bytes::Bytes;
use serde_json::json;

/// The metadata document, built once at start.
pub fn document(issuer: &str) -> Bytes {
    let base = issuer.trim_end_matches('/');
    let auth_methods = ["client_secret_basic", "client_secret_post"];
    let with_public = ["client_secret_basic", "client_secret_post", "none"];
    let doc = json!({
        "issuer": issuer,
        "token_endpoint": format!("{base}/oauth2/token"),
        "introspection_endpoint": format!("{base}/oauth2/introspect"),
        "revocation_endpoint": format!("{base}/oauth2/revoke"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "authorization_endpoint": format!("{base}/oauth2/authorize"),
        "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
        "token_endpoint_auth_methods_supported": with_public,
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": with_public,
        "access_token_signing_alg_values_supported": ["EdDSA", "ES256", "RS256"],
    });
    Bytes::from(serde_json::to_vec(&doc).expect("metadata serializes"))
}
