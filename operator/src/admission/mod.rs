//! Admission: the mutating webhook that injects the agent into annotated
//! pods (`inject`) and the validating webhook for the three kinds
//! (`validate`), both pure over a [`Catalog`] of the custom resources; the
//! AdmissionReview wire format (`review`); and the HTTPS server that
//! answers `POST /mutate-pods` and `POST /validate` (`serve`), in a cluster
//! or standalone from manifest files.

pub mod catalog;
pub mod cluster;
pub mod configuration;
pub mod inject;
pub mod review;
pub mod serve;
pub mod validate;

pub use catalog::{Catalog, Manifests};

use kube::core::admission::AdmissionResponse;
use tokenplane_api::OAuth2Client;

use inject::{Found, Outcome};
use review::Review;

/// Everything the handlers need: where the custom resources come from, and
/// how agents are injected.
pub struct Admission<C> {
    pub catalog: C,
    pub inject: inject::Settings,
    /// The RedisSentinelClusters' builders, for their update checks.
    pub clusters: crate::reconcile::redissentinelcluster::Environment,
    /// Where admissions are counted (the operator's `/metrics`).
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl<C: Catalog> Admission<C> {
    /// `POST /mutate-pods`: the agent for a pod that asks for it.
    pub fn mutate(&self, review: &Review) -> AdmissionResponse {
        let request = &review.request;
        let response = AdmissionResponse::from(request);
        if request.kind.kind != "Pod" {
            return response
                .deny(format!("this webhook injects Pods, not {}: send it Pods only", request.kind.kind));
        }
        let Some(raw) = &review.object else { return response };
        let pod = match serde_json::from_value(raw.clone()) {
            Ok(pod) => pod,
            Err(e) => return response.deny(format!("the object is not a Pod: {e}")),
        };
        let namespace = request.namespace.as_deref().unwrap_or("default");
        let client = match inject::requested(&pod, namespace, &self.inject.env) {
            None => return response,
            Some(Err(why)) => return response.deny(why),
            Some(Ok(client)) => client,
        };
        let found = self.found(namespace, &client);
        match inject::inject(raw, &pod, (namespace, &client), &found.as_found(), &self.inject) {
            Outcome::Unchanged(warning) => {
                let mut response = response;
                response.warnings = warning.map(|w| vec![w]);
                response
            }
            Outcome::Deny(why) => response.deny(why),
            Outcome::Patch(patch) => match response.clone().with_patch(patch) {
                Ok(patched) => patched,
                Err(e) => response.deny(format!("the patch could not be written: {e}")),
            },
        }
    }

    /// `POST /validate`: the controllers' checks, at apply time.
    pub fn validate(&self, review: &Review) -> AdmissionResponse {
        let response = AdmissionResponse::from(&review.request);
        match validate::check(review, &self.catalog, &self.clusters) {
            Ok(warnings) if warnings.is_empty() => response,
            Ok(warnings) => {
                let mut response = response;
                response.warnings = Some(warnings);
                response
            }
            Err(why) => response.deny(why),
        }
    }

    fn found(&self, namespace: &str, client: &str) -> Looked {
        let client = self.catalog.client(namespace, client);
        let policy = client.as_deref().and_then(|c| {
            let r = &c.spec.policy_ref;
            self.catalog.policy(r.namespace.as_deref().unwrap_or(namespace), &r.name)
        });
        let cluster = policy.as_deref().and_then(|p| {
            let name = p.spec.redis_ref.as_deref()?;
            self.catalog.cluster(p.metadata.namespace.as_deref().unwrap_or(namespace), name)
        });
        let ready = client.as_deref().is_some_and(|c| self.catalog.ready(c));
        Looked { client, ready, policy, cluster }
    }
}

/// What the catalog holds for a pod's client, kept while it is used.
struct Looked {
    client: Option<std::sync::Arc<OAuth2Client>>,
    ready: bool,
    policy: Option<std::sync::Arc<tokenplane_api::TokenPolicy>>,
    cluster: Option<std::sync::Arc<tokenplane_api::RedisSentinelCluster>>,
}

impl Looked {
    fn as_found(&self) -> Found<'_> {
        Found {
            client: self.client.as_deref(),
            ready: self.ready,
            policy: self.policy.as_deref(),
            cluster: self.cluster.as_deref(),
        }
    }
}
