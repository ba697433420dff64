//! The "what does HTTP alone cost" baseline for hack/bench.sh: a hyper
//! HTTP/1.1 server set up like the issuer's (src/server.rs: http1 builder with
//! keep-alive and a header read timeout, TCP_NODELAY, tokio multi-thread
//! runtime) that reads each request body and answers 200 with a fixed JSON
//! body the size of a token response. Issuer CPU per token minus this
//! server's CPU per request is what the OAuth2 work costs.
//!
//! `cargo run --release -p tokenplane-sidecar --example bare_hyper -- 127.0.0.1:8081`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, PRAGMA};
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// Length of the EdDSA access token the standalone issuer signs for the
/// sample client: the reply below is then byte for byte as long as its (548).
const TOKEN_LEN: usize = 468;

async fn reply(req: Request<Incoming>, body: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
    let _ = req.into_body().collect().await;
    let mut reply = Response::new(Full::new(body));
    let h = reply.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(reply)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args().nth(1).context("usage: bare_hyper ADDR")?.parse()?;
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let body = Bytes::from(format!(
        r#"{{"access_token":"{}","token_type":"Bearer","expires_in":900,"scope":"orders.read"}}"#,
        "x".repeat(TOKEN_LEN)
    ));
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let body = body.clone();
        let conn =
            builder.serve_connection(TokioIo::new(stream), service_fn(move |r| reply(r, body.clone())));
        tokio::spawn(conn);
    }
}
