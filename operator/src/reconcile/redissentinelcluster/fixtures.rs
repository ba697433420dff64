//! The sample cluster of config/samples and a reconcile of it.

use tokenplane_api::RedisSentinelCluster;

use super::{Desired, Environment, Passwords, desired};
use crate::reconcile::Invalid;
use crate::reconcile::ca::{self, ServingInputs};

pub const SAMPLE: &str = include_str!("../../../../config/samples/redissentinelcluster.yaml");

pub fn cluster(edit: impl FnOnce(&mut serde_json::Value)) -> RedisSentinelCluster {
    let mut value: serde_json::Value = serde_norway::from_str(SAMPLE).expect("the sample parses");
    value["metadata"]["namespace"] = "prod".into();
    value["metadata"]["uid"] = "0b6f3c1e-cluster".into();
    edit(&mut value);
    serde_json::from_value(value).expect("a RedisSentinelCluster")
}

pub fn env() -> Environment {
    Environment {
        tokenplane_image: "ghcr.io/tokenplane/tokenplane-sidecar:test".into(),
        exporter_image: "docker.io/oliver006/redis_exporter:test".into(),
        cluster_domain: "cluster.local".into(),
        operator_namespace: "tokenplane-system".into(),
    }
}

/// Reconciles `rsc` with `existing` passwords; new ones are numbered.
pub fn reconcile(rsc: &RedisSentinelCluster, existing: &Passwords) -> Result<Desired, Invalid> {
    reconcile_tls(rsc, existing, None)
}

/// Reconciles `rsc` with `existing` passwords and `served` as the TLS
/// Secret it has (the operator's or `spec.tls.secretName`).
pub fn reconcile_tls(
    rsc: &RedisSentinelCluster,
    existing: &Passwords,
    served: Option<&k8s_openapi::api::core::v1::Secret>,
) -> Result<Desired, Invalid> {
    let mut n = 0;
    let numbered = || {
        n += 1;
        format!("generated-{n}")
    };
    let tls = ServingInputs { cas: ca::test_authorities(), existing: served, lifetime: 30 * 86_400 };
    desired(rsc, &env(), (existing, tls), (numbered, 0))
}
