//! Agent metrics. Labels come from fixed sets, never from tokens or claims.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::server::RequestLatency;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new([0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1, 1.0])
}

pub struct Metrics {
    registry: Registry,
    validations: Family<ResultLabels, Counter>,
    vends: Family<ResultLabels, Counter>,
    latency: RequestLatency,
    feed_staleness: Gauge<f64, std::sync::atomic::AtomicU64>,
    revoked: Gauge,
    verified: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tokenplane_agent");
        let validations = Family::default();
        registry.register(
            "validations",
            "Token validations, by result (valid or the rejection reason)",
            validations.clone(),
        );
        let vends = Family::default();
        registry.register("vended_tokens", "Token requests of the workload, by result", vends.clone());
        let latency = RequestLatency::register(&mut registry, latency_histogram);
        let feed_staleness = Gauge::default();
        registry.register(
            "revocation_feed_staleness_seconds",
            "Time since Redis last confirmed the revocation state (-1 before the first sync)",
            feed_staleness.clone(),
        );
        let revoked = Gauge::default();
        registry.register("revoked_tokens", "Revoked, unexpired tokens held in memory", revoked.clone());
        let verified = Gauge::default();
        registry.register(
            "verified_tokens",
            "Verified tokens remembered for fast revalidation",
            verified.clone(),
        );
        Self { registry, validations, vends, latency, feed_staleness, revoked, verified }
    }
}

impl Metrics {
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn validated(&self, result: &'static str) {
        self.validations.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn vended(&self, result: &'static str) {
        self.vends.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn request(&self, endpoint: &'static str, status: u16, seconds: f64) {
        self.latency.observe(endpoint, status, seconds);
    }

    /// OpenMetrics text exposition, with the state gauges as of now.
    pub fn encode(&self, staleness: Option<f64>, revoked: usize, verified: usize) -> String {
        self.feed_staleness.set(staleness.unwrap_or(-1.0));
        self.revoked.set(i64::try_from(revoked).unwrap_or(i64::MAX));
        self.verified.set(i64::try_from(verified).unwrap_or(i64::MAX));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
