use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Container;

use super::config::{REDIS_CONF, SENTINEL_CONF};
use super::fixtures::{cluster, reconcile};
use super::users::{PASSWORD, USERNAME};
use super::*;
use crate::reconcile::redis_password::Credentials;

fn config(d: &Desired, key: &str) -> String {
    d.config.data.as_ref().unwrap()[key].clone()
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

fn pod(set: &StatefulSet) -> &k8s_openapi::api::core::v1::PodSpec {
    set.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn all_containers(set: &StatefulSet) -> Vec<&Container> {
    let spec = pod(set);
    spec.init_containers.iter().flatten().chain(&spec.containers).collect()
}

fn arg_after<'a>(c: &'a Container, flag: &str) -> &'a str {
    let args = c.args.as_ref().unwrap();
    let i = args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("{flag} in {args:?}"));
    &args[i + 1]
}

#[test]
fn the_sample_gets_a_user_per_role_and_keeps_the_passwords_it_has() {
    let existing =
        Passwords(BTreeMap::from([("replication".to_owned(), Credentials::new("kept".into(), 0))]));
    let d = reconcile(&cluster(|_| {}), &existing).unwrap();
    assert_eq!(d.role_secrets.len(), CLUSTER_ROLES.len());
    let mut passwords = Vec::new();
    for (secret, role) in d.role_secrets.iter().zip(CLUSTER_ROLES) {
        let data = secret.data.as_ref().unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some(d.names.role_secret(role).as_str()));
        assert_eq!(String::from_utf8_lossy(&data[USERNAME].0), tokenplane_api::acl::username(role));
        passwords.push(String::from_utf8(data[PASSWORD].0.clone()).unwrap());
    }
    assert!(passwords.contains(&"kept".to_owned()), "the existing password stays");
    passwords.sort();
    passwords.dedup();
    assert_eq!(passwords.len(), CLUSTER_ROLES.len(), "every role has its own password");
    assert!(d.role_secrets.iter().all(|s| s.metadata.owner_references.is_some()));
}

#[test]
fn no_password_reaches_the_config_map_or_a_plain_environment_variable() {
    let d = reconcile(&cluster(|_| {}), &Passwords::default()).unwrap();
    let configs = serde_json::to_string(&d.config).unwrap();
    assert!(!configs.contains("generated-"), "{configs}");
    for set in [&d.redis, &d.sentinel] {
        for c in all_containers(set) {
            for var in c.env.iter().flatten() {
                assert!(!var.value.as_deref().unwrap_or_default().contains("generated-"), "{}", var.name);
            }
            assert!(!c.args.iter().flatten().any(|a| a.contains("generated-")), "{}", c.name);
        }
    }
}

#[test]
fn redis_conf_carries_persistence_and_the_write_bound() {
    let d = reconcile(&cluster(|_| {}), &Passwords::default()).unwrap();
    let conf = config(&d, REDIS_CONF);
    for line in [
        "appendonly yes",
        "appendfsync everysec",
        "min-replicas-to-write 1",
        "min-replicas-max-lag 10",
        "maxmemory-policy noeviction",
        "masteruser replication",
        "port 6379",
    ] {
        assert!(lines(&conf).contains(&line), "{line:?} in\n{conf}");
    }
    let off = reconcile(
        &cluster(|c| {
            c["spec"]["persistence"] = serde_json::json!({"enabled": false});
            c["spec"]["minReplicasToAcknowledge"] = 2.into();
        }),
        &Passwords::default(),
    )
    .unwrap();
    let conf = config(&off, REDIS_CONF);
    assert!(lines(&conf).contains(&"appendonly no") && lines(&conf).contains(&"min-replicas-to-write 2"));
    let spec = off.redis.spec.as_ref().unwrap();
    assert!(spec.volume_claim_templates.is_none(), "no volume without persistence");
    assert!(pod(&off.redis).volumes.iter().flatten().any(|v| v.name == "data" && v.empty_dir.is_some()));
}

#[test]
fn sentinels_resolve_and_announce_stable_names() {
    let d = reconcile(&cluster(|_| {}), &Passwords::default()).unwrap();
    let conf = config(&d, SENTINEL_CONF);
    for line in [
        "sentinel resolve-hostnames yes",
        "sentinel announce-hostnames yes",
        "sentinel auth-user tokenplane sentinel",
        "sentinel down-after-milliseconds tokenplane 5000",
    ] {
        assert!(lines(&conf).contains(&line), "{line:?} in\n{conf}");
    }
    let start = &pod(&d.redis).init_containers.as_ref().unwrap()[0];
    assert_eq!(arg_after(start, "--announce-host"), "$(POD_NAME).tokenplane-redis.prod.svc.cluster.local");
    assert_eq!(
        arg_after(start, "--first-master"),
        "tokenplane-redis-0.tokenplane-redis.prod.svc.cluster.local:6379"
    );
    assert_eq!(arg_after(start, "--sentinels"), "tokenplane-sentinel-peers.prod.svc.cluster.local:26379");
    assert_eq!(arg_after(start, "--quorum"), "2");
    let sentinel_start = &pod(&d.sentinel).init_containers.as_ref().unwrap()[0];
    assert_eq!(arg_after(sentinel_start, "--kind"), "sentinel");
    assert_eq!(
        arg_after(sentinel_start, "--announce-host"),
        "$(POD_NAME).tokenplane-sentinel-peers.prod.svc.cluster.local"
    );
    let quorum_of = |n: i32| {
        let d = reconcile(&cluster(|c| c["spec"]["sentinels"] = n.into()), &Passwords::default()).unwrap();
        arg_after(&pod(&d.sentinel).init_containers.as_ref().unwrap()[0], "--quorum").to_owned()
    };
    assert_eq!((quorum_of(5), quorum_of(7)), ("3".to_owned(), "4".to_owned()));
}

#[test]
fn every_container_runs_restricted() {
    let d = reconcile(&cluster(|_| {}), &Passwords::default()).unwrap();
    for set in [&d.redis, &d.sentinel] {
        let spec = pod(set);
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.security_context.as_ref().unwrap().run_as_non_root, Some(true));
        for c in all_containers(set) {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
            assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_owned()][..]));
            assert!(c.resources.as_ref().unwrap().limits.is_some(), "{}", c.name);
        }
    }
}

#[test]
fn the_objects_are_named_as_token_policies_expect() {
    let d = reconcile(&cluster(|_| {}), &Passwords::default()).unwrap();
    let names: Vec<_> = d.services.iter().map(|s| s.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["tokenplane-redis", "tokenplane-sentinel-peers", "tokenplane-sentinel"]);
    let claim = &d.redis.spec.as_ref().unwrap().volume_claim_templates.as_ref().unwrap()[0];
    let size =
        &claim.spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"];
    assert_eq!(size.0, "1Gi");
    assert_eq!(d.redis.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(d.sentinel.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(d.budgets.len(), 2);
}

#[test]
fn a_spec_that_cannot_run_safely_builds_nothing() {
    let invalid = |edit: &dyn Fn(&mut serde_json::Value)| {
        reconcile(&cluster(edit), &Passwords::default()).err().map(|e| (e.reason, e.message))
    };
    for (edit, field) in [
        (
            &(|c: &mut serde_json::Value| c["spec"]["sentinels"] = 4.into())
                as &dyn Fn(&mut serde_json::Value),
            "sentinels",
        ),
        (&|c: &mut serde_json::Value| c["spec"]["sentinels"] = 1.into(), "sentinels"),
        (
            &|c: &mut serde_json::Value| c["spec"]["minReplicasToAcknowledge"] = 3.into(),
            "minReplicasToAcknowledge",
        ),
        (
            &|c: &mut serde_json::Value| c["spec"]["masterName"] = "x\nsentinel monitor evil".into(),
            "masterName",
        ),
        (&|c: &mut serde_json::Value| c["spec"]["persistence"]["appendFsync"] = "no".into(), "appendFsync"),
        (
            &|c: &mut serde_json::Value| {
                c["spec"]["acl"] = serde_json::json!({"passwordRotationInterval": "30m"})
            },
            "at most once an hour",
        ),
        (
            &|c: &mut serde_json::Value| c["spec"]["acl"] = serde_json::json!({"passwordOverlap": "30s"}),
            "acl.passwordOverlap",
        ),
        (
            &|c: &mut serde_json::Value| {
                c["spec"]["acl"] =
                    serde_json::json!({"passwordRotationInterval": "2h", "passwordOverlap": "2h"})
            },
            "less than passwordRotationInterval",
        ),
    ] {
        let (reason, message) = invalid(edit).expect("refused");
        assert_eq!(reason, "InvalidSpec");
        assert!(message.contains(field), "{message}");
    }
}

#[test]
fn only_the_cluster_itself_the_operator_and_scrapers_get_in_and_policies_add_the_rest() {
    let d = reconcile(&cluster(|_| {}), &Passwords::default()).unwrap();
    let spec = d.network_policy.spec.as_ref().unwrap();
    let pods = spec.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap();
    assert_eq!(pods, &pod_labels("tokenplane"));
    for set in [&d.redis, &d.sentinel] {
        let template =
            set.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert!(pods.iter().all(|(k, v)| template.get(k) == Some(v)), "the policy selects every pod");
    }
    let rules = spec.ingress.as_ref().unwrap();
    assert_eq!(rules.len(), 2);
    let ports = |i: usize| -> Vec<i32> {
        rules[i]
            .ports
            .iter()
            .flatten()
            .filter_map(|p| match p.port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => Some(n),
                _ => None,
            })
            .collect()
    };
    assert_eq!((ports(0), ports(1)), (vec![REDIS_PORT, SENTINEL_PORT], vec![EXPORTER_PORT]));
    let from = rules[0].from.as_ref().unwrap();
    assert_eq!(from[0].pod_selector.as_ref().unwrap().match_labels.as_ref(), Some(&pod_labels("tokenplane")));
    let operator = from[1].namespace_selector.as_ref().unwrap().match_labels.as_ref().unwrap();
    assert_eq!(operator["kubernetes.io/metadata.name"], "tokenplane-system");
}

#[test]
fn the_cleanup_job_runs_on_the_spec_schedule_as_the_cleanup_user_only() {
    let d =
        reconcile(&cluster(|c| c["spec"]["cleanup"]["schedule"] = "@hourly".into()), &Passwords::default())
            .unwrap();
    let spec = d.cleanup.spec.as_ref().unwrap();
    assert_eq!((spec.schedule.as_str(), spec.concurrency_policy.as_deref()), ("@hourly", Some("Forbid")));
    let pod = spec.job_template.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let container = &pod.containers[0];
    assert_eq!(arg_after(container, "--redis-username"), "cleanup");
    assert_eq!(
        arg_after(container, "--redis-sentinels"),
        "tokenplane-sentinel-peers.prod.svc.cluster.local:26379"
    );
    let volumes = pod.volumes.as_ref().unwrap();
    assert_eq!(volumes.len(), 1, "the cleanup Secret and nothing else");
    assert_eq!(volumes[0].secret.as_ref().unwrap().secret_name.as_deref(), Some("tokenplane-redis-cleanup"));
    assert_eq!(container.security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));
    let labels =
        spec.job_template.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert!(
        pod_labels("tokenplane").iter().all(|(k, v)| labels.get(k) == Some(v)),
        "the NetworkPolicy lets it in"
    );
}

#[test]
fn backups_get_a_volume_and_a_job_only_when_asked_for() {
    assert!(reconcile(&cluster(|_| {}), &Passwords::default()).unwrap().backup.is_none());
    let with = cluster(|c| {
        c["spec"]["backup"] = serde_json::json!({"schedule": "@daily", "retain": 3, "size": "2Gi"})
    });
    let (claim, job) = reconcile(&with, &Passwords::default()).unwrap().backup.unwrap();
    let size =
        &claim.spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"];
    assert_eq!(size.0, "2Gi");
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.schedule, "@daily");
    let pod = spec.job_template.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let container = &pod.containers[0];
    assert_eq!(container.args.as_ref().unwrap()[0], "backup");
    assert_eq!((arg_after(container, "--redis-username"), arg_after(container, "--retain")), ("backup", "3"));
    let volumes: Vec<_> = pod.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    assert_eq!(volumes, ["credentials", "backup"]);
    let claim_of = pod.volumes.as_ref().unwrap()[1].persistent_volume_claim.as_ref().unwrap();
    assert_eq!(Some(claim_of.claim_name.as_str()), claim.metadata.name.as_deref());
}
