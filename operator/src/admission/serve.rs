//! The webhooks over HTTPS: `POST /mutate-pods`, `POST /validate`,
//! `GET /healthz` and `GET /metrics`, on the data plane's hardened HTTP edge (the sidecar's
//! server: header and handshake timeouts, HTTP/1.1 and h2, a serving pair
//! that follows its files). A body that is not an AdmissionReview gets a
//! 400 saying why; one over [`MAX_BODY`] a 413.

use std::time::Instant;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use kube::core::admission::AdmissionResponse;

use super::review::{self, MAX_BODY, Review};
use super::{Admission, Catalog};

impl<C: Catalog> tokenplane_sidecar::server::Handler for Admission<C> {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let (webhook, answer): (_, fn(&Self, &Review) -> AdmissionResponse) =
            match (req.method(), req.uri().path()) {
                (&Method::POST, "/mutate-pods") => ("mutate-pods", Self::mutate),
                (&Method::POST, "/validate") => ("validate", Self::validate),
                (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n".into()),
                (&Method::GET, "/metrics") => return metrics(&self.metrics),
                _ => return text(StatusCode::NOT_FOUND, "POST /mutate-pods or /validate\n".into()),
            };
        let (reply, outcome) = self.answer(req, answer).await;
        self.metrics.admitted(webhook, outcome, started.elapsed().as_secs_f64());
        tracing::debug!(webhook, outcome, took = ?started.elapsed(), "admission");
        reply
    }
}

impl<C: Catalog> Admission<C> {
    /// The reply to a review, and how it ended.
    async fn answer(
        &self,
        req: Request<Incoming>,
        answer: fn(&Self, &Review) -> AdmissionResponse,
    ) -> (Response<Full<Bytes>>, &'static str) {
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                let message =
                    format!("the body is over {MAX_BODY} bytes: no AdmissionReview is that large\n");
                return (text(StatusCode::PAYLOAD_TOO_LARGE, message), "bad_request");
            }
            Err(e) => {
                return (
                    text(StatusCode::BAD_REQUEST, format!("the body could not be read: {e}\n")),
                    "bad_request",
                );
            }
        };
        let review = match review::read(&body) {
            Ok(review) => review,
            Err(why) => return (text(StatusCode::BAD_REQUEST, format!("{why}\n")), "bad_request"),
        };
        let response = answer(self, &review);
        let outcome = match (response.allowed, response.patch.is_some()) {
            (false, _) => "denied",
            (true, true) => "patched",
            (true, false) => "allowed",
        };
        let mut reply = Response::new(Full::new(Bytes::from(review::write(response))));
        reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        (reply, outcome)
    }
}

fn metrics(metrics: &crate::metrics::Metrics) -> Response<Full<Bytes>> {
    let mut reply = Response::new(Full::new(Bytes::from(metrics.encode())));
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    reply
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    reply
}
