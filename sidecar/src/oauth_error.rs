//! OAuth2 error responses (RFC 6749 §5.2), the only error shape on the wire.

use std::borrow::Cow;

use http::StatusCode;

/// An error the client is told about: a code from the RFCs, a description a
/// developer can act on, and the HTTP status that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub status: StatusCode,
    pub code: &'static str,
    pub description: Cow<'static, str>,
    /// The methods a 405 names in `Allow`.
    pub allow: Option<&'static str>,
    /// Seconds a 429 or 503 asks the client to wait (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl OAuthError {
    pub fn new(status: StatusCode, code: &'static str, description: impl Into<Cow<'static, str>>) -> Self {
        Self { status, code, description: description.into(), allow: None, retry_after: None }
    }

    pub fn invalid_request(d: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", d)
    }

    /// 401; the response carries `WWW-Authenticate` (RFC 6749 §5.2).
    pub fn invalid_client(d: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", d)
    }

    pub fn invalid_grant(d: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", d)
    }

    pub fn unauthorized_client(d: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unauthorized_client", d)
    }

    pub fn unsupported_grant_type(d: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unsupported_grant_type", d)
    }

    pub fn unsupported_response_type(d: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unsupported_response_type", d)
    }

    /// The person or the login app said no (RFC 6749 §4.1.2.1).
    pub fn access_denied(d: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "access_denied", d)
    }

    pub fn invalid_scope(d: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_scope", d)
    }

    /// RFC 8707 §2: a `resource` the client may not get tokens for.
    pub fn invalid_target(d: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_target", d)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            format!("request body exceeds {limit} bytes"),
        )
    }

    pub fn method_not_allowed(allowed: &'static str) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            format!("this endpoint only accepts {allowed}"),
        );
        e.allow = Some(allowed);
        e
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint; see /.well-known/oauth-authorization-server",
        )
    }

    /// The store could not answer; nothing was issued or changed.
    pub fn temporarily_unavailable(d: impl Into<Cow<'static, str>>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", d);
        e.retry_after = Some(1);
        e
    }

    /// Over a rate limit: 429 with the wait in `Retry-After`. RFC 6749 has no
    /// code for it; `temporarily_unavailable` is the registered one closest.
    pub fn rate_limited(what: &str, wait: std::time::Duration) -> Self {
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "temporarily_unavailable",
            format!("rate limit of this {what} exceeded; retry in {seconds} s"),
        );
        e.retry_after = Some(seconds);
        e
    }

    pub fn server_error(d: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", d)
    }

    pub fn body(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: &'a str,
            error_description: &'a str,
        }
        serde_json::to_vec(&Body { error: self.code, error_description: &self.description })
            .expect("error body serializes")
    }
}
