//! Authorization server metadata (RFC 8414).

use bytes::Bytes;
use serde_json::json;

/// The metadata document, built once at start.
pub fn document(issuer: &str) -> Bytes {
    let base = issuer.trim_end_matches('/');
    let auth_methods = ["client_secret_basic", "client_secret_post"];
    let doc = json!({
        "issuer": issuer,
        "token_endpoint": format!("{base}/oauth2/token"),
        "introspection_endpoint": format!("{base}/oauth2/introspect"),
        "revocation_endpoint": format!("{base}/oauth2/revoke"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "grant_types_supported": ["client_credentials"],
        // No authorization endpoint yet: no response type is supported.
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "access_token_signing_alg_values_supported": ["EdDSA", "ES256", "RS256"],
    });
    Bytes::from(serde_json::to_vec(&doc).expect("metadata serializes"))
}
