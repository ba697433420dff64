//! The issuer's Service, PodDisruptionBudget and HorizontalPodAutoscaler.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokenplane_api::TokenPolicy;

use super::{issuer_labels, issuer_meta, selector};

pub(super) fn service(policy: &TokenPolicy, labels: &BTreeMap<String, String>) -> Service {
    Service {
        metadata: issuer_meta(policy, labels),
        spec: Some(ServiceSpec {
            selector: Some(labels.clone()),
            ports: Some(vec![ServicePort {
                name: Some("https".into()),
                port: 443,
                target_port: Some(IntOrString::String("https".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub(super) fn pdb(policy: &TokenPolicy, labels: &BTreeMap<String, String>) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: issuer_meta(policy, labels),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(labels)),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

pub(super) fn hpa(policy: &TokenPolicy) -> HorizontalPodAutoscaler {
    let shape = policy.spec.issuer_deployment.clone().unwrap_or_default();
    let labels = issuer_labels(policy.metadata.name.as_deref().unwrap_or_default());
    let meta = issuer_meta(policy, &labels);
    HorizontalPodAutoscaler {
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: meta.name.clone().unwrap_or_default(),
            },
            min_replicas: Some(shape.replicas),
            max_replicas: shape.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(70),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        metadata: meta,
        ..HorizontalPodAutoscaler::default()
    }
}
