//! The Services and PodDisruptionBudgets. The headless Services publish
//! pods before they are ready: a starting pod must resolve its peers (and
//! itself) to find the master before any of them is ready.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokenplane_api::RedisSentinelCluster;

use super::{EXPORTER_PORT, Names, REDIS_PORT, SENTINEL_PORT, meta, selector};

pub(super) fn services(
    rsc: &RedisSentinelCluster,
    names: &Names,
    redis: &BTreeMap<String, String>,
    sentinel: &BTreeMap<String, String>,
) -> Vec<Service> {
    vec![
        headless(rsc, names.redis(), redis, vec![port("redis", REDIS_PORT), port("metrics", EXPORTER_PORT)]),
        headless(rsc, names.sentinel_peers(), sentinel, vec![port("sentinel", SENTINEL_PORT)]),
        Service {
            metadata: meta(rsc, names.sentinel(), sentinel),
            spec: Some(ServiceSpec {
                selector: Some(sentinel.clone()),
                ports: Some(vec![port("sentinel", SENTINEL_PORT)]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        },
    ]
}

fn headless(
    rsc: &RedisSentinelCluster,
    name: String,
    labels: &BTreeMap<String, String>,
    ports: Vec<ServicePort>,
) -> Service {
    Service {
        metadata: meta(rsc, name, labels),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(labels.clone()),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: number,
        target_port: Some(IntOrString::String(name.into())),
        ..ServicePort::default()
    }
}

/// One data node and one Sentinel at a time: a voluntary disruption never
/// takes the Sentinels below their quorum or two copies of the data.
pub(super) fn budgets(
    rsc: &RedisSentinelCluster,
    names: &Names,
    redis: &BTreeMap<String, String>,
    sentinel: &BTreeMap<String, String>,
) -> Vec<PodDisruptionBudget> {
    let budget = |name: String, labels: &BTreeMap<String, String>| PodDisruptionBudget {
        metadata: meta(rsc, name, labels),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(labels)),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };
    vec![budget(names.redis(), redis), budget(names.sentinel_peers(), sentinel)]
}
