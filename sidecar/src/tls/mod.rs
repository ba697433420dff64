//! HTTPS for both roles: rustls with the aws-lc-rs provider, TLS 1.2 and
//! 1.3 only, ALPN `h2` and `http/1.1`, and a serving pair that follows its
//! files (a mounted Secret is swapped atomically by the kubelet) without a
//! restart. A pair that fails its checks is never served: the old one stays.

mod pair;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::{CryptoProvider, aws_lc_rs};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{ServerConfig, version};

use pair::{Fingerprint, Pair};
pub use pair::{PairError, PairFiles};

/// ALPN protocols offered, preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The process's TLS provider: aws-lc-rs, which the project already carries
/// for signing.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// Makes [`provider`] the process's default, which the redis crate's TLS
/// connections take: rustls cannot choose one itself when, as here, both
/// aws-lc-rs and ring are linked (reqwest brings ring), and would panic.
/// Idempotent: a provider installed already stays.
pub fn install_default_provider() {
    let _ = aws_lc_rs::default_provider().install_default();
}

/// The serving side of TLS: the acceptor, the pair it serves, and the task
/// that keeps the pair current.
pub struct ServingTls {
    files: PairFiles,
    provider: Arc<CryptoProvider>,
    current: Arc<Current>,
    metrics: Metrics,
}

/// The pair being served, read by every handshake.
#[derive(Debug)]
struct Current {
    certified: ArcSwap<CertifiedKey>,
    /// Fingerprint of the files last tried, good or bad: a bad pair is
    /// reported once, not at every poll.
    tried: Mutex<Fingerprint>,
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified.load_full())
    }
}

impl ServingTls {
    /// Loads the pair; an unreadable, mismatched or expired pair is an error.
    pub fn load(files: PairFiles) -> Result<Self, PairError> {
        let provider = provider();
        let pair = files.load(&provider, unix_now())?;
        let metrics = Metrics::default();
        metrics.expiry.set(pair.not_after);
        let current =
            Current { certified: ArcSwap::new(pair.certified), tried: Mutex::new(pair.fingerprint) };
        Ok(Self { files, provider, current: Arc::new(current), metrics })
    }

    /// An acceptor serving the current pair, whatever it becomes.
    pub fn acceptor(&self) -> TlsAcceptor {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])
            .expect("aws-lc-rs supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.current.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(config))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Re-reads the files every `interval` and serves a changed pair once it
    /// passes the checks `load` makes.
    pub async fn follow(self: Arc<Self>, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.reload();
        }
    }

    /// One poll: nothing when the files are as last tried.
    pub fn reload(&self) {
        let fingerprint = match self.files.read() {
            Ok((_, _, fingerprint)) => fingerprint,
            Err(e) => return self.failed(None, &e),
        };
        if *self.current.tried.lock().expect("tls state lock") == fingerprint {
            return;
        }
        match self.files.load(&self.provider, unix_now()) {
            Ok(pair) => self.serve(pair),
            Err(e) => self.failed(Some(fingerprint), &e),
        }
    }

    fn serve(&self, pair: Pair) {
        self.current.certified.store(pair.certified);
        *self.current.tried.lock().expect("tls state lock") = pair.fingerprint;
        self.metrics.expiry.set(pair.not_after);
        self.metrics.reloaded("success");
        tracing::info!(cert = %self.files.cert.display(), not_after = pair.not_after, "serving a new TLS certificate");
    }

    /// Keeps the old pair. Unreadable files are reported at every poll (a
    /// mount gone away); a bad pair once per change of the files.
    fn failed(&self, fingerprint: Option<Fingerprint>, error: &PairError) {
        if let Some(fingerprint) = fingerprint {
            *self.current.tried.lock().expect("tls state lock") = fingerprint;
        }
        self.metrics.reloaded("failure");
        tracing::warn!(error = %error, "TLS certificate reload failed; still serving the previous certificate");
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// What a TLS listener reports: when its certificate expires, how reloads
/// went, and how many handshakes failed.
#[derive(Clone, Default)]
pub struct Metrics {
    expiry: Gauge,
    reloads: Family<ReloadLabels, Counter>,
    handshake_failures: Counter,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the certificate being served expires (its notAfter), unix seconds",
            self.expiry.clone(),
        );
        registry.register(
            "tls_certificate_reloads",
            "Certificate reloads after the files changed, by result (a failure keeps the old certificate)",
            self.reloads.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out (plain HTTP to the TLS port, a client refusing the certificate)",
            self.handshake_failures.clone(),
        );
    }

    fn reloaded(&self, result: &'static str) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    pub fn handshake_failed(&self) {
        self.handshake_failures.inc();
    }
}

fn unix_now() -> i64 {
    i64::try_from(crate::clock::unix_now()).unwrap_or(i64::MAX)
}
