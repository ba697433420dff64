//! The sample cluster of config/samples and a reconcile of it.

use tokenplane_api::RedisSentinelCluster;

use super::{Desired, Environment, Passwords, desired};
use crate::reconcile::Invalid;

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
    let mut n = 0;
    let numbered = || {
        n += 1;
        format!("generated-{n}")
    };
    desired(rsc, &env(), existing, (numbered, 0))
}
