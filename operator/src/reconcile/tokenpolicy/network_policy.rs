//! The NetworkPolicies that fence a policy's issuer and, with a `redisRef`,
//! its Redis.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokenplane_api::{OAuth2Client, TokenPolicy};

use super::{ISSUER_PORT, SENTINEL_PORT, selector};
use crate::reconcile::managed_meta;

const REDIS_PORT: i32 = 6379;

/// The pods of each client's `workloadSelector`, in the client's namespace.
/// A client without one selects nothing: deny by default.
fn workloads(clients: &[OAuth2Client]) -> Vec<NetworkPolicyPeer> {
    clients
        .iter()
        .filter_map(|c| {
            let namespace = c.metadata.namespace.clone()?;
            Some(NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("kubernetes.io/metadata.name".into(), namespace)])),
                    ..LabelSelector::default()
                }),
                pod_selector: Some(c.spec.workload_selector.clone()?),
                ..NetworkPolicyPeer::default()
            })
        })
        .collect()
}

/// A rule admitting `from` on `ports`; none without sources, since a rule
/// with an empty `from` admits every source.
fn ingress(from: Vec<NetworkPolicyPeer>, ports: &[i32]) -> Vec<NetworkPolicyIngressRule> {
    if from.is_empty() {
        return Vec::new();
    }
    let ports = ports
        .iter()
        .map(|p| NetworkPolicyPort {
            port: Some(IntOrString::Int(*p)),
            protocol: Some("TCP".into()),
            ..NetworkPolicyPort::default()
        })
        .collect();
    vec![NetworkPolicyIngressRule { from: Some(from), ports: Some(ports) }]
}

/// Only the clients' workloads reach the issuer. With a `redisRef`, only
/// they, the issuers, the Redis set itself and the operator reach Redis.
/// NetworkPolicies add up: a platform's own policy can let an ingress
/// controller reach the issuer for the browser-facing code flow.
pub(super) fn network_policies(
    policy: &TokenPolicy,
    clients: &[OAuth2Client],
    operator_namespace: &str,
    issuer: &BTreeMap<String, String>,
) -> Vec<NetworkPolicy> {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let netpol = |suffix: &str, pods: LabelSelector, rules| NetworkPolicy {
        metadata: managed_meta(policy, format!("{name}-{suffix}"), [("tokenplane.io/policy", name.clone())]),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(rules),
            ..NetworkPolicySpec::default()
        }),
    };
    let mut policies = vec![netpol("issuer", selector(issuer), ingress(workloads(clients), &[ISSUER_PORT]))];
    if let Some(cluster) = &policy.spec.redis_ref {
        let redis = crate::reconcile::redissentinelcluster::pod_labels(cluster);
        let operator = NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".into(),
                    operator_namespace.to_owned(),
                )])),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        };
        let pods = |labels| NetworkPolicyPeer {
            pod_selector: Some(selector(labels)),
            ..NetworkPolicyPeer::default()
        };
        let mut from = workloads(clients);
        from.extend([pods(issuer), pods(&redis), operator]);
        policies.push(netpol("redis", selector(&redis), ingress(from, &[REDIS_PORT, SENTINEL_PORT])));
    }
    policies
}

#[cfg(test)]
mod tests {
    use crate::reconcile::redis_password::Credentials;
    use crate::reconcile::tokenpolicy::fixtures::{
        DEFAULT, client, env, new_key, policy, reconcile, serving,
    };
    use crate::reconcile::tokenpolicy::{Inputs, Keys, desired};

    #[test]
    fn only_the_clients_selected_workloads_reach_the_issuer_and_redis() {
        let d = reconcile(&policy(DEFAULT), None, &[], 0);
        assert_eq!(d.network_policies.len(), 1, "no redisRef: Redis is not ours to fence");
        let rule = &d.network_policies[0].spec.as_ref().unwrap().ingress.as_ref().unwrap()[0];
        let from = rule.from.as_ref().unwrap();
        assert_eq!(from.len(), 1, "the client without a workloadSelector gets no access");
        let ns = from[0].namespace_selector.as_ref().unwrap().match_labels.as_ref().unwrap();
        assert_eq!(ns["kubernetes.io/metadata.name"], "shop");
        assert_eq!(from[0].pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["app"], "orders");

        let env = env();
        let nobody = Inputs {
            policy: &policy(DEFAULT),
            keys: Keys::default(),
            heartbeats: &[],
            clients: &[client("batch", "jobs", None)],
            cluster: None,
            cluster_ca: None,
            issuer_redis: &Credentials::new("x".into(), 0),
            env: &env,
            serving: serving(),
            now: 0,
        };
        let closed = desired(nobody, new_key).unwrap().network_policies.remove(0).spec.unwrap();
        assert_eq!(
            closed.ingress,
            Some(vec![]),
            "no workload selected: nothing admitted (an empty from admits all)"
        );

        let with_redis = policy(&format!("{DEFAULT}  redisRef: tokens\n"));
        let d = reconcile(&with_redis, None, &[], 0);
        let redis = d.network_policies[1].spec.as_ref().unwrap();
        assert_eq!(
            redis.pod_selector.as_ref().unwrap().match_labels.as_ref(),
            Some(&crate::reconcile::redissentinelcluster::pod_labels("tokens")),
            "the cluster's pods, as its StatefulSets label them"
        );
        let from = redis.ingress.as_ref().unwrap()[0].from.as_ref().unwrap();
        assert_eq!(from.len(), 4, "the workload, the issuers, the Redis set, the operator: {from:?}");
        let args =
            d.deployment.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap().join(" ");
        assert!(args.contains("--redis-sentinels tokens-sentinel.auth.svc:26379"), "{args}");
    }
}
