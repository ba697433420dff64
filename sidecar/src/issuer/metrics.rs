//! Issuer metrics. Labels come from fixed sets (endpoint names, RFC error
//! codes), never from request data, and never carry secrets or tokens.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::server::RequestLatency;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrantLabels {
    grant_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    endpoint: &'static str,
    error: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    issued: Family<GrantLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: RequestLatency,
    revocations: Counter,
    replays: Family<GrantLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tokenplane_issuer");
        let issued = Family::default();
        registry.register("tokens_issued", "Access tokens issued, by grant type", issued.clone());
        let errors = Family::default();
        registry.register(
            "oauth_errors",
            "OAuth2 error responses, by endpoint and error code",
            errors.clone(),
        );
        let latency = RequestLatency::register(&mut registry, latency_histogram);
        let revocations = Counter::default();
        registry.register(
            "revocations",
            "Tokens revoked through the revocation endpoint",
            revocations.clone(),
        );
        let replays = Family::default();
        registry.register(
            "grant_replays",
            "Authorization codes redeemed twice and rotated refresh tokens reused: each revoked its grant",
            replays.clone(),
        );
        Self { registry, issued, errors, latency, revocations, replays }
    }
}

impl Metrics {
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn issued(&self, grant_type: &'static str) {
        self.issued.get_or_create(&GrantLabels { grant_type }).inc();
    }

    pub fn error(&self, endpoint: &'static str, error: &'static str) {
        self.errors.get_or_create(&ErrorLabels { endpoint, error }).inc();
    }

    pub fn request(&self, endpoint: &'static str, status: u16, seconds: f64) {
        self.latency.observe(endpoint, status, seconds);
    }

    pub fn replayed(&self, grant_type: &'static str) {
        self.replays.get_or_create(&GrantLabels { grant_type }).inc();
    }

    pub fn revoked(&self) {
        self.revocations.inc();
    }

    /// OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
