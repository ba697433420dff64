//! The cluster's own NetworkPolicy: deny by default. Its pods reach each
//! other (replication, Sentinel links), the operator reaches them all, and
//! the exporter's port is open to namespaces labelled for scraping. Each
//! TokenPolicy whose `redisRef` names the cluster adds its issuers and its
//! clients' workloads (`tokenpolicy/network_policy.rs`): NetworkPolicies
//! add up.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokenplane_api::RedisSentinelCluster;

use super::{EXPORTER_PORT, REDIS_PORT, SENTINEL_PORT, meta, pod_labels, selector};

/// The namespace label that lets Prometheus there scrape the exporters.
pub const SCRAPE_LABEL: &str = "tokenplane.io/scrape-redis";

pub(super) fn network_policy(rsc: &RedisSentinelCluster, operator_namespace: &str) -> NetworkPolicy {
    let cluster = rsc.metadata.name.clone().unwrap_or_default();
    let pods = pod_labels(&cluster);
    let namespace = |labels: BTreeMap<String, String>| NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector { match_labels: Some(labels), ..LabelSelector::default() }),
        ..NetworkPolicyPeer::default()
    };
    let operator = namespace(BTreeMap::from([(
        "kubernetes.io/metadata.name".to_owned(),
        operator_namespace.to_owned(),
    )]));
    let scrapers = namespace(BTreeMap::from([(SCRAPE_LABEL.to_owned(), "true".to_owned())]));
    let own = NetworkPolicyPeer { pod_selector: Some(selector(&pods)), ..NetworkPolicyPeer::default() };
    let rule = |from: Vec<NetworkPolicyPeer>, ports: &[i32]| NetworkPolicyIngressRule {
        from: Some(from),
        ports: Some(
            ports
                .iter()
                .map(|p| NetworkPolicyPort {
                    port: Some(IntOrString::Int(*p)),
                    protocol: Some("TCP".into()),
                    ..NetworkPolicyPort::default()
                })
                .collect(),
        ),
    };
    NetworkPolicy {
        metadata: meta(rsc, format!("{cluster}-redis"), &pods),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(&pods)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                rule(vec![own, operator], &[REDIS_PORT, SENTINEL_PORT]),
                rule(vec![scrapers], &[EXPORTER_PORT]),
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}
