//! Operator metrics: reconciles by kind and outcome, failed ones by class
//! of error, how long they take, and whether this replica leads. Labels
//! come from fixed sets (resource kinds, error classes), never from object
//! content, so no name, spec or secret can reach them.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use kube::runtime::controller::Action;
use kube::runtime::finalizer;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
    error: &'static str,
}

/// From a quick pass (a few API calls) to one stuck on Redis timeouts.
fn duration_histogram() -> Histogram {
    Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<OutcomeLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    durations: Family<KindLabels, Histogram, fn() -> Histogram>,
    leader: Gauge,
    /// Set once this replica takes part in leader election (see `ready`).
    electing: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tokenplane_operator");
        let reconciles = Family::default();
        registry.register("reconciles", "Reconciles, by resource kind and outcome", reconciles.clone());
        let errors = Family::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by resource kind and class of error",
            errors.clone(),
        );
        let durations =
            Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram);
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile takes, by resource kind",
            durations.clone(),
        );
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica holds the Lease and reconciles", leader.clone());
        Self { registry, reconciles, errors, durations, leader, electing: AtomicBool::new(false) }
    }
}

impl Metrics {
    /// Runs `reconcile`, counting and timing it under `kind`.
    pub async fn measure(
        &self,
        kind: &'static str,
        reconcile: impl Future<Output = Result<Action, Error>>,
    ) -> Result<Action, Error> {
        let started = Instant::now();
        let result = reconcile.await;
        self.durations.get_or_create(&KindLabels { kind }).observe(started.elapsed().as_secs_f64());
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.reconciles.get_or_create(&OutcomeLabels { kind, outcome }).inc();
        if let Err(e) = &result {
            self.errors.get_or_create(&ErrorLabels { kind, error: class(e) }).inc();
        }
        result
    }

    /// Records whether this replica holds the Lease.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
        self.electing.store(true, Ordering::Relaxed);
    }

    /// Ready once in leader election, leading or standing by: a standby
    /// replica is healthy and takes over within the Lease's duration, so
    /// it must not be reported as failing.
    pub fn ready(&self) -> bool {
        self.electing.load(Ordering::Relaxed)
    }

    /// OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// Where a reconcile failed, looking through the finalizer wrapper to the
/// apply or cleanup error inside.
fn class(error: &Error) -> &'static str {
    match error {
        Error::Kube(_) => "kube",
        Error::Redis(_) => "redis",
        Error::NotNamespaced => "invalid_object",
        Error::CertificateAuthority(_) => "certificate_authority",
        Error::Webhooks(_) => "webhooks",
        Error::Finalizer(e) => match e.as_ref() {
            finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => class(inner),
            _ => "finalizer",
        },
    }
}
