//! The webhooks over HTTPS: `POST /mutate-pods`, `POST /validate` and
//! `GET /healthz`, on the data plane's hardened HTTP edge (the sidecar's
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
        let path = req.uri().path().to_owned();
        let reply = self.route(req).await;
        tracing::debug!(%path, status = reply.status().as_u16(), took = ?started.elapsed(), "admission");
        reply
    }
}

impl<C: Catalog> Admission<C> {
    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let answer: fn(&Self, &Review) -> AdmissionResponse = match (req.method(), req.uri().path()) {
            (&Method::POST, "/mutate-pods") => Self::mutate,
            (&Method::POST, "/validate") => Self::validate,
            (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n".into()),
            _ => return text(StatusCode::NOT_FOUND, "POST /mutate-pods or /validate\n".into()),
        };
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                let message =
                    format!("the body is over {MAX_BODY} bytes: no AdmissionReview is that large\n");
                return text(StatusCode::PAYLOAD_TOO_LARGE, message);
            }
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("the body could not be read: {e}\n")),
        };
        match review::read(&body) {
            Ok(review) => {
                let mut reply = Response::new(Full::new(Bytes::from(review::write(answer(self, &review)))));
                reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                reply
            }
            Err(why) => text(StatusCode::BAD_REQUEST, format!("{why}\n")),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    reply
}
