//! Operator metrics: reconciles by kind and outcome, failed ones by class
//! of error, how long they take, whether this replica leads, and the
//! admissions it answered. Labels come from fixed sets (resource kinds,
//! error classes, webhooks, outcomes), never from object content, so no
//! name, spec or secret can reach them.

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    webhook: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    webhook: &'static str,
}

/// An admission answers in well under a millisecond; the API server gives
/// up after the configuration's 5 s.
fn admission_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0])
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
    admissions: Family<AdmissionLabels, Counter>,
    admission_durations: Family<WebhookLabels, Histogram, fn() -> Histogram>,
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
        let admissions = Family::default();
        registry.register(
            "admissions",
            "Admission requests answered, by webhook (mutate-pods, validate) and outcome (allowed, patched, \
             denied, bad_request)",
            admissions.clone(),
        );
        let admission_durations =
            Family::<WebhookLabels, Histogram, fn() -> Histogram>::new_with_constructor(admission_histogram);
        registry.register(
            "admission_duration_seconds",
            "Time one admission takes, body read to answer written, by webhook",
            admission_durations.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            durations,
            leader,
            electing: AtomicBool::new(false),
            admissions,
            admission_durations,
        }
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

    /// Counts and times one admission.
    pub fn admitted(&self, webhook: &'static str, outcome: &'static str, seconds: f64) {
        self.admissions.get_or_create(&AdmissionLabels { webhook, outcome }).inc();
        self.admission_durations.get_or_create(&WebhookLabels { webhook }).observe(seconds);
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
