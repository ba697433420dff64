//! The RedisSentinelCluster apply layer against the in-memory API server:
//! what a new cluster gets, that its passwords survive every reconcile, its
//! status as its StatefulSets come up, and an invalid spec.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use serde_json::json;
use tokenplane_api::RedisSentinelCluster;
use tokenplane_operator::controller::{Context, generate_secret, redissentinelcluster};
use tokenplane_operator::reconcile::ca::{self, Authorities};

use support::api::ApiServer;

const SAMPLE: &str = include_str!("../../config/samples/redissentinelcluster.yaml");

async fn names<K>(kube: &kube::Client) -> Vec<String>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(kube.clone(), "data");
    let mut names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|o| o.meta().name.clone())
        .collect();
    names.sort();
    names
}

async fn passwords(kube: &kube::Client) -> Vec<Vec<u8>> {
    let api: Api<Secret> = Api::namespaced(kube.clone(), "data");
    let list = api.list(&ListParams::default()).await.unwrap();
    list.items.iter().map(|s| s.data.as_ref().unwrap()["password"].0.clone()).collect()
}

fn ready_condition(rsc: &RedisSentinelCluster) -> (String, String, String) {
    let c = rsc.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[tokio::test]
async fn a_cluster_gets_its_objects_keeps_its_passwords_and_reports_its_pods() {
    let server = ApiServer::default();
    let kube = server.client();
    let ctx = Arc::new(Context::new(kube.clone(), support::unused_redis(), generate_secret));
    let clusters: Api<RedisSentinelCluster> = Api::namespaced(kube.clone(), "data");
    let sample: RedisSentinelCluster = serde_norway::from_str(SAMPLE).unwrap();
    clusters.create(&PostParams::default(), &sample).await.unwrap();

    // The requests of the reconciles, not of the test's own setup.
    let operator_requests = std::sync::Mutex::new(Vec::new());
    let reconcile = async |rsc: RedisSentinelCluster| {
        let before = server.used().len();
        let run = tokio::spawn(redissentinelcluster::reconcile(Arc::new(rsc), ctx.clone()));
        let action = run.await.unwrap().unwrap();
        operator_requests.lock().unwrap().extend(server.used().split_off(before));
        action
    };
    let rsc = clusters.get("tokenplane").await.unwrap();
    let action = reconcile(rsc).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(10)), "looked at again while it starts");
    assert_eq!(names::<StatefulSet>(&kube).await, ["tokenplane-redis", "tokenplane-sentinel-peers"]);
    assert_eq!(
        names::<Service>(&kube).await,
        ["tokenplane-redis", "tokenplane-sentinel", "tokenplane-sentinel-peers"]
    );
    assert_eq!(names::<ConfigMap>(&kube).await, ["tokenplane-redis-config"]);
    assert_eq!(names::<PodDisruptionBudget>(&kube).await.len(), 2);
    assert_eq!(names::<NetworkPolicy>(&kube).await, ["tokenplane-redis"]);
    assert_eq!(names::<CronJob>(&kube).await, ["tokenplane-redis-cleanup"]);
    let first = passwords(&kube).await;
    assert_eq!(first.len(), 6, "a Secret per role");
    let mut distinct = first.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 6, "each role its own password");
    assert!(first.iter().all(|p| p.len() >= 43), "256-bit passwords");
    let rsc = clusters.get("tokenplane").await.unwrap();
    assert_eq!(
        ready_condition(&rsc),
        ("False".into(), "Starting".into(), "0 of 3 nodes and 0 of 3 Sentinels ready".into())
    );
    assert_eq!(rsc.status.as_ref().unwrap().acl_users.len(), 6);
    let users = &rsc.status.as_ref().unwrap().acl_users;
    assert!(users.iter().all(|u| u.rotated_at.is_some()), "each password current since its Secret was made");
    let conditions = &rsc.status.as_ref().unwrap().conditions;
    assert!(conditions.iter().all(|c| c.type_ != "Complete"), "everything of this spec is acted on");

    // The StatefulSets come up: Ready, and the passwords never change.
    let sets: Api<StatefulSet> = Api::namespaced(kube.clone(), "data");
    for name in ["tokenplane-redis", "tokenplane-sentinel-peers"] {
        let status = Patch::Merge(json!({"status": {"replicas": 3, "readyReplicas": 3}}));
        sets.patch_status(name, &PatchParams::default(), &status).await.unwrap();
    }
    let action = reconcile(rsc).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(10)), "no process runs: looked at again soon");
    assert_eq!(passwords(&kube).await, first, "the passwords stay as they were");
    let rsc = clusters.get("tokenplane").await.unwrap();
    assert_eq!(ready_condition(&rsc).0, "True");
    let synced = rsc.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "UsersSynced").unwrap();
    assert_eq!(
        (synced.status.as_str(), synced.reason.as_str()),
        ("False", "Unreachable"),
        "{}",
        synced.message
    );
    assert!(synced.message.contains("no Sentinel of"), "{}", synced.message);
    assert_eq!(
        (rsc.status.as_ref().unwrap().ready_replicas, rsc.status.as_ref().unwrap().ready_sentinels),
        (3, 3)
    );

    // Backups on, then off: the job comes and goes, the volume stays.
    let on = Patch::Merge(json!({"spec": {"backup": {"schedule": "@daily"}}}));
    clusters.patch("tokenplane", &PatchParams::default(), &on).await.unwrap();
    reconcile(clusters.get("tokenplane").await.unwrap()).await;
    assert_eq!(names::<CronJob>(&kube).await, ["tokenplane-redis-backup", "tokenplane-redis-cleanup"]);
    let off = Patch::Merge(json!({"spec": {"backup": null}}));
    clusters.patch("tokenplane", &PatchParams::default(), &off).await.unwrap();
    reconcile(clusters.get("tokenplane").await.unwrap()).await;
    assert_eq!(names::<CronJob>(&kube).await, ["tokenplane-redis-cleanup"]);
    assert_eq!(
        names::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(&kube).await,
        ["tokenplane-redis-backup"]
    );

    // A change the running cluster cannot take: refused, nothing applied.
    let grow = Patch::Merge(json!({"spec": {"persistence": {"size": "5Gi"}}}));
    clusters.patch("tokenplane", &PatchParams::default(), &grow).await.unwrap();
    assert_eq!(reconcile(clusters.get("tokenplane").await.unwrap()).await, Action::await_change());
    let (status, reason, message) = ready_condition(&clusters.get("tokenplane").await.unwrap());
    assert_eq!((status.as_str(), reason.as_str()), ("False", "UnsafeChange"), "{message}");
    let template = sets.get("tokenplane-redis").await.unwrap().spec.unwrap().volume_claim_templates.unwrap();
    let size =
        &template[0].spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"];
    assert_eq!(size.0, "1Gi", "the StatefulSet is left as it was");
    let back = Patch::Merge(json!({"spec": {"persistence": {"size": "1Gi"}}}));
    clusters.patch("tokenplane", &PatchParams::default(), &back).await.unwrap();
    assert_eq!(
        reconcile(clusters.get("tokenplane").await.unwrap()).await,
        Action::requeue(Duration::from_secs(10))
    );

    // TLS before the operator's CA is loaded: a condition, nothing rolled.
    let tls = Patch::Merge(json!({"spec": {"tls": {"enabled": true}}}));
    clusters.patch("tokenplane", &PatchParams::default(), &tls).await.unwrap();
    reconcile(clusters.get("tokenplane").await.unwrap()).await;
    let (status, reason, _) = ready_condition(&clusters.get("tokenplane").await.unwrap());
    assert_eq!((status.as_str(), reason.as_str()), ("False", "NoCertificateAuthority"));
    let template = |set: StatefulSet| set.spec.unwrap().template;
    let plain = template(sets.get("tokenplane-redis").await.unwrap());
    assert!(!serde_json::to_string(&plain).unwrap().contains("tls"), "the pods are left as they were");

    // With the CA: a certificate for every member, and the pods serve it.
    ctx.ca.send_replace(Authorities::first(&ctx.ca_settings, support::unix_now()));
    reconcile(clusters.get("tokenplane").await.unwrap()).await;
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), "data");
    let served = secrets.get("tokenplane-redis-tls").await.unwrap();
    assert_eq!(served.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = served.data.unwrap();
    let leaf = ca::leaf_info(&data["tls.crt"].0).unwrap();
    assert!(ctx.ca.borrow().signed_by_active(&leaf));
    assert!(
        leaf.dns_names.contains(&"tokenplane-redis-0.tokenplane-redis.data.svc.cluster.local".to_owned())
    );
    assert!(leaf.dns_names.contains(&"tokenplane-sentinel.data.svc".to_owned()));
    assert_eq!(data["ca.crt"].0, ctx.ca.borrow().bundle().as_bytes());
    let config =
        Api::<ConfigMap>::namespaced(kube.clone(), "data").get("tokenplane-redis-config").await.unwrap();
    let redis_conf = &config.data.unwrap()["redis.conf"];
    assert!(redis_conf.contains("\nport 0\n") && redis_conf.contains("tls-replication yes"), "{redis_conf}");
    let secure = template(sets.get("tokenplane-redis").await.unwrap());
    let fingerprint = &secure.metadata.unwrap().annotations.unwrap()["tokenplane.io/tls-fingerprint"];
    let pair = [data["tls.crt"].0.as_slice(), &data["ca.crt"].0].concat();
    assert!(tokenplane_api::acl::sha256_hex(&pair).starts_with(fingerprint.as_str()));
    let again = served.metadata.resource_version.clone();
    reconcile(clusters.get("tokenplane").await.unwrap()).await;
    let kept = secrets.get("tokenplane-redis-tls").await.unwrap();
    assert_eq!((kept.metadata.resource_version, &kept.data.unwrap()["tls.crt"]), (again, &data["tls.crt"]));
    let off = Patch::Merge(json!({"spec": {"tls": {"enabled": false}}}));
    clusters.patch("tokenplane", &PatchParams::default(), &off).await.unwrap();

    // A spec that cannot run safely: a condition, and nothing is touched.
    let even = Patch::Merge(json!({"spec": {"sentinels": 4}}));
    clusters.patch("tokenplane", &PatchParams::default(), &even).await.unwrap();
    let rsc = clusters.get("tokenplane").await.unwrap();
    let action = reconcile(rsc).await;
    assert_eq!(action, Action::await_change());
    let (status, reason, message) = ready_condition(&clusters.get("tokenplane").await.unwrap());
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(message.contains("sentinels is 4"), "{message}");
    let sentinels = sets.get("tokenplane-sentinel-peers").await.unwrap();
    assert_eq!(sentinels.spec.unwrap().replicas, Some(3), "the running cluster is left as it was");

    // The role allows what the reconciles did, and the controller's watches.
    let mut used = operator_requests.lock().unwrap().clone();
    used.extend(
        ["redissentinelclusters", "secrets", "statefulsets"]
            .iter()
            .flat_map(|r| [("list".into(), (*r).into()), ("watch".into(), (*r).into())]),
    );
    support::rbac::assert_role_allows(&used);
}
