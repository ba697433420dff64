//! The server loop: accept, serve with keep-alive, drain on shutdown. Plain
//! listeners speak HTTP/1.1; TLS listeners HTTP/2 or HTTP/1.1 by ALPN.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Time from request head to response by endpoint and status: the
/// `http_request_duration_seconds` histogram both roles expose.
#[derive(Clone)]
pub struct RequestLatency(Family<RequestLabels, Histogram, fn() -> Histogram>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: u16,
}

impl RequestLatency {
    /// Registers the histogram, with the buckets `histogram` makes.
    pub fn register(registry: &mut Registry, histogram: fn() -> Histogram) -> Self {
        let family = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time from request head to response, by endpoint and status",
            family.clone(),
        );
        Self(family)
    }

    pub fn observe(&self, endpoint: &'static str, status: u16, seconds: f64) {
        self.0.get_or_create(&RequestLabels { endpoint, status }).observe(seconds);
    }
}

/// What a server serves: every request gets a response, errors included.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request<Incoming>) -> impl Future<Output = Response<Full<Bytes>>> + Send;
}

/// The address a request came from, put in its extensions.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub std::net::IpAddr);

/// A client must send its request head within this time (slowloris guard),
/// and finish its TLS handshake.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may take to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound socket, and TLS when it serves HTTPS.
pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<Tls>,
}

impl Listener {
    /// HTTPS on `tcp`, serving whatever pair `tls` holds.
    pub fn https(tcp: TcpListener, tls: &crate::tls::ServingTls) -> Self {
        Self { tcp, tls: Some(Tls { acceptor: tls.acceptor(), metrics: tls.metrics().clone() }) }
    }
}

impl From<TcpListener> for Listener {
    fn from(tcp: TcpListener) -> Self {
        Self { tcp, tls: None }
    }
}

/// The acceptor and where to count failed handshakes.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub metrics: crate::tls::Metrics,
}

/// The protocol settings every connection shares.
#[derive(Clone)]
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Protocols {
    fn new() -> Self {
        let mut http1 = http1::Builder::new();
        http1.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new()).keep_alive_interval(Duration::from_secs(30));
        Self { http1, http2 }
    }
}

/// Serves `handler` on `listener` until `shutdown` resolves, then drains.
pub async fn serve<H: Handler>(
    listener: impl Into<Listener>,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) {
    let listener = listener.into();
    let graceful = GracefulShutdown::new();
    let protocols = Protocols::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.tcp.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection { handler: handler.clone(), peer, watcher: graceful.watcher() };
        match &listener.tls {
            None => connection.serve_plain(stream, &protocols.http1),
            Some(tls) => {
                tokio::spawn(connection.serve_tls(stream, tls.clone(), protocols.clone()));
            }
        }
    }
    tracing::info!("shutting down: draining open connections");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
}

/// One accepted connection.
struct Connection<H> {
    handler: Arc<H>,
    peer: std::net::SocketAddr,
    watcher: Watcher,
}

impl<H: Handler> Connection<H> {
    fn service(
        &self,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future: Send,
    > + Clone
    + use<H> {
        let (handler, ip) = (self.handler.clone(), self.peer.ip());
        service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(Peer(ip));
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler.handle(req).await) }
        })
    }

    fn serve_plain(self, stream: TcpStream, http1: &http1::Builder) {
        let service = self.service();
        let conn = self.watcher.watch(http1.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(report(conn, self.peer));
    }

    /// The handshake runs in the connection's task, so a slow client holds
    /// up only itself.
    async fn serve_tls(self, mut stream: TcpStream, tls: Tls, protocols: Protocols) {
        if !starts_with_handshake(&stream).await {
            refuse_plain(&mut stream).await;
            return handshake_failed(&tls, self.peer, "not a TLS handshake (plain HTTP?)");
        }
        let stream = match tokio::time::timeout(HEADER_TIMEOUT, tls.acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return handshake_failed(&tls, self.peer, &e.to_string()),
            Err(_) => return handshake_failed(&tls, self.peer, "timed out"),
        };
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        let service = self.service();
        match h2 {
            true => {
                report(self.watcher.watch(protocols.http2.serve_connection(io, service)), self.peer).await
            }
            false => {
                report(self.watcher.watch(protocols.http1.serve_connection(io, service)), self.peer).await
            }
        }
    }
}

/// First byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

/// Whether the client opens with a TLS handshake record; a client that sends
/// nothing in time is left to the handshake's own timeout.
async fn starts_with_handshake(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HEADER_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) => first[0] == TLS_HANDSHAKE,
        _ => true,
    }
}

/// A plain HTTP request to the TLS port gets an answer it can read, rather
/// than a TLS alert it would show as garbage.
async fn refuse_plain(stream: &mut TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BODY: &str =
        r#"{"error":"invalid_request","error_description":"this port serves HTTPS: use an https:// URL"}"#;
    let reply = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(HEADER_TIMEOUT, stream.write_all(reply.as_bytes())).await;
    let _ = stream.shutdown().await;
}

fn handshake_failed(tls: &Tls, peer: std::net::SocketAddr, error: &str) {
    tls.metrics.handshake_failed();
    tracing::debug!(%peer, error, "TLS handshake failed");
}

async fn report<E: std::fmt::Display>(conn: impl Future<Output = Result<(), E>>, peer: std::net::SocketAddr) {
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
