//! The RedisSentinelCluster apply layer: the role Secrets (passwords read
//! back, generated once), then the configuration, Services, StatefulSets,
//! budgets, NetworkPolicy and CronJobs, and a status from the
//! StatefulSets. Nothing outside Kubernetes is created yet (the ACL sync of
//! the other users is to come), so no finalizer: owner references take
//! everything with the resource; the StatefulSets' volumes stay, as
//! Kubernetes keeps PersistentVolumeClaims of a deleted StatefulSet.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokenplane_api::RedisSentinelCluster;
use tokenplane_api::acl::username;
use tokenplane_api::redis::AclUserStatus;

use super::{CONCURRENCY, Context, apply, error_policy, log, managed};
use crate::error::Error;
use crate::reconcile::redissentinelcluster::{self, CLUSTER_ROLES, Desired, Names, Passwords};
use crate::reconcile::{Invalid, MANAGED_BY};

/// The longest a cluster goes unexamined once ready, and while it starts.
const RESYNC: Duration = Duration::from_secs(300);
const STARTING: Duration = Duration::from_secs(10);

/// Runs the controller until a shutdown signal.
pub(super) async fn run(ctx: Arc<Context>) {
    Controller::new(Api::<RedisSentinelCluster>::all(ctx.kube.clone()), watcher::Config::default())
        .owns(Api::<Secret>::all(ctx.kube.clone()), managed())
        .owns(Api::<StatefulSet>::all(ctx.kube.clone()), managed())
        .with_config(ControllerConfig::default().concurrency(CONCURRENCY).debounce(Duration::from_secs(1)))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| log("RedisSentinelCluster", result))
        .await;
}

/// One reconcile of `cluster`, counted and timed.
pub async fn reconcile(cluster: Arc<RedisSentinelCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.measure("RedisSentinelCluster", apply_cluster(&cluster, &ctx)).await
}

async fn apply_cluster(cluster: &RedisSentinelCluster, ctx: &Context) -> Result<Action, Error> {
    let namespace = cluster.namespace().ok_or(Error::NotNamespaced)?;
    let names = match Names::of(cluster, &ctx.clusters.cluster_domain) {
        Ok(names) => names,
        Err(invalid) => return refuse(cluster, ctx, &invalid).await,
    };
    let existing = passwords(&names, ctx).await?;
    let desired = match redissentinelcluster::desired(cluster, &ctx.clusters, &existing, ctx.generate) {
        Ok(desired) => desired,
        Err(invalid) => return refuse(cluster, ctx, &invalid).await,
    };
    let sets: Api<StatefulSet> = Api::namespaced(ctx.kube.clone(), &namespace);
    if let Some(invalid) = sets
        .get_opt(&desired.names.redis())
        .await?
        .and_then(|running| redissentinelcluster::unsafe_change(&running, &desired.redis))
    {
        return refuse(cluster, ctx, &invalid).await;
    }
    // Secrets before the pods that mount them, the ConfigMap before the
    // pods that read it.
    for secret in &desired.role_secrets {
        apply(&ctx.kube, secret).await?;
    }
    apply(&ctx.kube, &desired.config).await?;
    for service in &desired.services {
        apply(&ctx.kube, service).await?;
    }
    apply(&ctx.kube, &desired.sentinel).await?;
    apply(&ctx.kube, &desired.redis).await?;
    for budget in &desired.budgets {
        apply(&ctx.kube, budget).await?;
    }
    apply(&ctx.kube, &desired.network_policy).await?;
    apply(&ctx.kube, &desired.cleanup).await?;
    match &desired.backup {
        Some((claim, job)) => {
            apply(&ctx.kube, claim).await?;
            apply(&ctx.kube, job).await?;
        }
        // Backups turned off: the job goes, the volume and its snapshots stay.
        None => drop_backup_job(ctx, &namespace, &desired.names).await?,
    }
    let ready = set_status(cluster, ctx, Ok(&desired)).await?;
    Ok(Action::requeue(if ready { RESYNC } else { STARTING }))
}

async fn drop_backup_job(ctx: &Context, namespace: &str, names: &Names) -> Result<(), Error> {
    let jobs: Api<CronJob> = Api::namespaced(ctx.kube.clone(), namespace);
    match jobs.delete(&format!("{}-redis-backup", names.cluster), &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The passwords the role Secrets hold now; a Secret without one (or not
/// there) gets a new password.
async fn passwords(names: &Names, ctx: &Context) -> Result<Passwords, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &names.namespace);
    let mut passwords = Passwords::default();
    for role in CLUSTER_ROLES {
        let Some(secret) = secrets.get_opt(&names.role_secret(role)).await? else { continue };
        let password = secret.data.as_ref().and_then(|d| d.get(redissentinelcluster::PASSWORD));
        if let Some(password) = password.and_then(|p| String::from_utf8(p.0.clone()).ok()) {
            passwords.0.insert(username(role).to_owned(), password);
        }
    }
    Ok(passwords)
}

async fn refuse(cluster: &RedisSentinelCluster, ctx: &Context, invalid: &Invalid) -> Result<Action, Error> {
    tracing::info!(cluster = %cluster.name_any(), reason = invalid.reason, "not reconciled: {}", invalid.message);
    super::event(cluster, ctx, EventType::Warning, invalid.reason, &invalid.message).await;
    set_status(cluster, ctx, Err(invalid)).await?;
    Ok(Action::await_change())
}

/// What of the spec this operator version does not act on yet, said on
/// the resource rather than ignored.
fn not_acted_on(cluster: &RedisSentinelCluster) -> String {
    let mut fields = vec!["acl (password rotation)"];
    if cluster.spec.tls.enabled {
        fields.push("tls");
    }
    format!(
        "not acted on yet: {}; the issuers' and agents' users are not set on the nodes yet, and \
         TokenPolicies with this redisRef still get the operator's Redis",
        fields.join(", ")
    )
}

/// Ready pods of a StatefulSet as it reports them.
async fn ready(ctx: &Context, namespace: &str, name: &str) -> Result<i32, Error> {
    let sets: Api<StatefulSet> = Api::namespaced(ctx.kube.clone(), namespace);
    Ok(sets.get_opt(name).await?.and_then(|s| s.status).and_then(|s| s.ready_replicas).unwrap_or(0))
}

/// `Ready` once every node and Sentinel is ready, the users and their
/// Secrets, by server-side apply on the status (only the leader gets
/// here). Whether the cluster is ready.
async fn set_status(
    cluster: &RedisSentinelCluster,
    ctx: &Context,
    desired: Result<&Desired, &Invalid>,
) -> Result<bool, Error> {
    let namespace = cluster.namespace().ok_or(Error::NotNamespaced)?;
    let generation = cluster.meta().generation;
    let previous = cluster.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    let condition =
        |status, reason, message| super::condition(previous, generation, "Ready", status, reason, message);
    let mut status = json!({"observedGeneration": generation});
    let mut is_ready = false;
    match desired {
        Err(invalid) => {
            status["conditions"] = json!([condition(false, invalid.reason, invalid.message.clone())])
        }
        Ok(d) => {
            let nodes = ready(ctx, &namespace, &d.names.redis()).await?;
            let sentinels = ready(ctx, &namespace, &d.names.sentinel_peers()).await?;
            let (want_nodes, want_sentinels) = (cluster.spec.replicas, cluster.spec.sentinels);
            is_ready = nodes >= want_nodes && sentinels >= want_sentinels;
            let message =
                format!("{nodes} of {want_nodes} nodes and {sentinels} of {want_sentinels} Sentinels ready");
            let reason = if is_ready { "Ready" } else { "Starting" };
            let pending = super::condition(
                previous,
                generation,
                "Complete",
                false,
                "NotYetActedOn",
                not_acted_on(cluster),
            );
            status["conditions"] = json!([condition(is_ready, reason, message), pending]);
            status["readyReplicas"] = nodes.into();
            status["readySentinels"] = sentinels.into();
            let users: Vec<AclUserStatus> = CLUSTER_ROLES
                .into_iter()
                .map(|role| AclUserStatus {
                    role,
                    username: username(role).into(),
                    secret_name: d.names.role_secret(role),
                    rotated_at: None,
                })
                .collect();
            status["aclUsers"] = json!(users);
        }
    }
    let api: Api<RedisSentinelCluster> = Api::namespaced(ctx.kube.clone(), &namespace);
    let patch =
        json!({"apiVersion": "tokenplane.io/v1alpha1", "kind": "RedisSentinelCluster", "status": status});
    api.patch_status(&cluster.name_any(), &PatchParams::apply(MANAGED_BY).force(), &Patch::Apply(patch))
        .await?;
    Ok(is_ready)
}
