//! HTTP replies shared by the issuer and the agent: JSON, text, RFC 6749
//! error bodies, OpenMetrics, and bounded request bodies.

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, PRAGMA, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;

use crate::oauth_error::OAuthError;

/// Largest form body accepted; OAuth2 requests are a few hundred bytes.
pub const MAX_BODY: usize = 16 * 1024;

pub type Reply = Response<Full<Bytes>>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub fn only_get(get: bool) -> Result<(), OAuthError> {
    if get { Ok(()) } else { Err(OAuthError::method_not_allowed("GET, HEAD")) }
}

pub async fn read_body<B>(headers: &http::HeaderMap, body: B) -> Result<Bytes, OAuthError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(OAuthError::payload_too_large(MAX_BODY));
    }
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(OAuthError::payload_too_large(MAX_BODY)),
        Err(e) => Err(OAuthError::invalid_request(format!("could not read the request body: {e}"))),
    }
}

/// A JSON reply with the given `Cache-Control`.
pub fn json(status: StatusCode, body: Bytes, cache: &'static str) -> Reply {
    let mut reply = Response::new(Full::new(body));
    *reply.status_mut() = status;
    let h = reply.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    reply
}

/// A JSON reply of `value` that no cache may keep.
pub fn json_reply<T: serde::Serialize>(value: &T) -> Reply {
    no_store(serde_json::to_vec(value).expect("reply serializes"))
}

/// A JSON reply that no cache may keep (RFC 6749 §5.1).
pub fn no_store(body: Vec<u8>) -> Reply {
    let mut reply = json(StatusCode::OK, body.into(), "no-store");
    reply.headers_mut().insert(PRAGMA, HeaderValue::from_static("no-cache"));
    reply
}

/// An empty `200` that no cache may keep.
pub fn empty_no_store() -> Reply {
    let mut reply = Response::new(Full::new(Bytes::new()));
    reply.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    reply
}

pub fn text(status: StatusCode, body: Bytes) -> Reply {
    let mut reply = Response::new(Full::new(body));
    *reply.status_mut() = status;
    reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    reply
}

pub fn error_reply(e: &OAuthError) -> Reply {
    let mut reply = json(e.status, e.body().into(), "no-store");
    let h = reply.headers_mut();
    h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    if e.status == StatusCode::UNAUTHORIZED {
        h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"tokenplane\""));
    }
    if let Some(allow) = e.allow {
        h.insert(ALLOW, HeaderValue::from_static(allow));
    }
    if let Some(seconds) = e.retry_after {
        h.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    reply
}

/// The metrics page in the OpenMetrics text format.
pub fn openmetrics(body: String) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    reply.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    reply
}
