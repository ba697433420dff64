//! The RedisSentinelCluster apply layer: the role Secrets (passwords read
//! back, generated once), then the configuration, Services, StatefulSets,
//! budgets, NetworkPolicy and CronJobs; once pods run, the ACL sync of the
//! issuers' and agents' users and the master as the Sentinels see it (an
//! event when it changed); and a status from both. What the cluster holds
//! lives and dies with its pods, so no finalizer: owner references take
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
use tokenplane_api::redis::{AclRole, AclUserStatus};

use super::acl_sync::{self, Synced};
use super::password_rotation;
use super::{CONCURRENCY, Context, apply, error_policy, log, managed, unix_now};
use crate::error::Error;
use crate::reconcile::ca::{Authorities, ServingInputs};
use crate::reconcile::redis_password::rotation::{self, Step};
use crate::reconcile::redis_password::{Credentials, ROLE_KEYS};
use crate::reconcile::redissentinelcluster::{self, CLUSTER_ROLES, Desired, Names, Passwords, tls};
use crate::reconcile::{Invalid, MANAGED_BY, rfc3339};

/// The longest a cluster goes unexamined once ready and in sync (also the
/// longest a node restarted between two looks waits for the issuers' and
/// agents' users), and while it starts or a member is out of reach.
const RESYNC: Duration = Duration::from_secs(60);
const STARTING: Duration = Duration::from_secs(10);

/// Runs the controller until a shutdown signal.
pub(super) async fn run(ctx: Arc<Context>) {
    Controller::new(Api::<RedisSentinelCluster>::all(ctx.kube.clone()), watcher::Config::default())
        .owns(Api::<Secret>::all(ctx.kube.clone()), managed())
        .owns(Api::<StatefulSet>::all(ctx.kube.clone()), managed())
        .with_config(ControllerConfig::default().concurrency(CONCURRENCY).debounce(Duration::from_secs(1)))
        .reconcile_all_on(super::ca::changes(&ctx))
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
    let now = unix_now();
    let (passwords, stepped) = password_rotation::begin_and_retire(
        cluster,
        &credentials(&names, ctx, now).await?,
        now,
        ctx.generate,
    );
    let served = match tls::secret_name(cluster, &names) {
        Some(name) => Api::<Secret>::namespaced(ctx.kube.clone(), &namespace).get_opt(&name).await?,
        None => None,
    };
    let cas = ctx.ca.borrow().clone();
    let inputs = (&passwords, tls_inputs(ctx, &cas, served.as_ref()));
    let mut desired = match redissentinelcluster::desired(cluster, &ctx.clusters, inputs, (ctx.generate, now))
    {
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
    apply_objects(&desired, ctx, &namespace).await?;
    announce_steps(cluster, ctx, &stepped, &desired.passwords).await;
    let pods = Pods {
        nodes: ready(ctx, &namespace, &desired.names.redis()).await?,
        sentinels: ready(ctx, &namespace, &desired.names.sentinel_peers()).await?,
    };
    let live = if pods.nodes > 0 && pods.sentinels > 0 {
        look(cluster, &desired, ctx).await?
    } else {
        Live::NotRunning
    };
    if let Live::Seen { master, synced } = &live {
        announce_failover(cluster, ctx, master).await;
        if synced.unreachable.is_empty() {
            desired = promote(cluster, desired, (ctx, &cas), now).await?;
        }
    }
    let settled = set_status(cluster, ctx, Ok((&desired, &pods, &live))).await?;
    let rotating = CLUSTER_ROLES
        .into_iter()
        .filter_map(|role| desired.passwords.credentials(role))
        .map(|c| rotation::wake_at(c, &cluster.spec.acl));
    let renewal = desired.tls.as_ref().map(|t| Some(t.renew_at));
    let wake = rotating
        .chain(renewal)
        .map(|at| at.map_or(STARTING, |at| Duration::from_secs(at.saturating_sub(now).max(1))))
        .min();
    let idle = if settled { RESYNC } else { STARTING };
    Ok(Action::requeue(wake.map_or(idle, |w| w.min(idle))))
}

/// Secrets before the pods that mount them, the ConfigMap before the pods
/// that read it.
async fn apply_objects(desired: &Desired, ctx: &Context, namespace: &str) -> Result<(), Error> {
    for secret in desired.role_secrets.iter().chain(desired.tls.as_ref().and_then(|t| t.owned.as_ref())) {
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
            apply(&ctx.kube, job).await
        }
        // Backups turned off: the job goes, the volume and its snapshots stay.
        None => drop_backup_job(ctx, namespace, &desired.names).await,
    }
}

/// Makes every next password that all members accept current, then writes
/// the Secrets and the data nodes' StatefulSet (a new monitor password
/// restarts the exporters) again.
async fn promote(
    cluster: &RedisSentinelCluster,
    desired: Desired,
    (ctx, cas): (&Context, &Authorities),
    now: u64,
) -> Result<Desired, Error> {
    let password =
        desired.passwords.get(AclRole::Operator).expect("desired passwords hold every cluster role");
    let ca = desired.tls.as_ref().map(|t| t.ca_bundle.as_slice());
    let redis = ctx.cluster_logins.admin(cluster, &desired.names, (password, ca));
    let (passwords, promoted) =
        password_rotation::promote(cluster, &desired.passwords, (&redis, &desired.names), now).await;
    if promoted.is_empty() {
        return Ok(desired);
    }
    // The certificate just applied, kept.
    let served = desired.tls.as_ref().and_then(|t| t.owned.as_ref());
    let inputs = (&passwords, tls_inputs(ctx, cas, served));
    let after = redissentinelcluster::desired(cluster, &ctx.clusters, inputs, (ctx.generate, now))
        .expect("the spec was checked a moment ago");
    for secret in &after.role_secrets {
        apply(&ctx.kube, secret).await?;
    }
    apply(&ctx.kube, &after.redis).await?;
    let steps: Vec<(AclRole, Step)> = promoted.into_iter().map(|role| (role, Step::Promote)).collect();
    announce_steps(cluster, ctx, &steps, &after.passwords).await;
    Ok(after)
}

/// A log line and an event for each rotation step taken.
async fn announce_steps(
    cluster: &RedisSentinelCluster,
    ctx: &Context,
    steps: &[(AclRole, Step)],
    passwords: &Passwords,
) {
    for (role, step) in steps {
        let user = username(*role);
        let Some(c) = passwords.credentials(*role) else { continue };
        let note = rotation::note(user, *step, c);
        tracing::info!(cluster = %cluster.name_any(), user, step = step.as_str(), "password rotation");
        let action = format!("RotatePassword:{user}");
        super::event_of_action(cluster, ctx, (EventType::Normal, step.reason(), &action), &note).await;
    }
}

/// Ready pods of each StatefulSet.
struct Pods {
    nodes: i32,
    sentinels: i32,
}

/// What the running cluster says.
enum Live {
    /// No node or no Sentinel is ready yet.
    NotRunning,
    /// No Sentinel answered, or a member failed a change.
    Unreachable(String),
    /// The master's pod, and the ACL sync's outcome.
    Seen { master: String, synced: Synced },
}

/// Asks the Sentinels for the master, then syncs the ACL users.
async fn look(cluster: &RedisSentinelCluster, desired: &Desired, ctx: &Context) -> Result<Live, Error> {
    let password =
        desired.passwords.get(AclRole::Operator).expect("desired passwords hold every cluster role");
    let ca = desired.tls.as_ref().map(|t| t.ca_bundle.as_slice());
    let redis = ctx.cluster_logins.admin(cluster, &desired.names, (password, ca));
    let unreachable = |e: &dyn std::fmt::Display| Live::Unreachable(e.to_string());
    let nodes = match redis.nodes().await {
        Ok(nodes) => nodes,
        Err(e) => return Ok(unreachable(&e)),
    };
    let master = ctx.cluster_logins.dial().name_of(&nodes.master).to_owned();
    match acl_sync::sync(cluster, (&desired.names, &desired.passwords), &redis, &master, ctx).await {
        Ok(synced) => Ok(Live::Seen { master: Names::pod_of(&master).to_owned(), synced }),
        Err(Error::Redis(e)) => Ok(unreachable(&e)),
        Err(e) => Err(e),
    }
}

/// An event when the master is another pod than last seen.
async fn announce_failover(cluster: &RedisSentinelCluster, ctx: &Context, master: &str) {
    let Some(previous) = cluster.status.as_ref().and_then(|s| s.master.as_deref()) else { return };
    if previous != master {
        let note = format!("the Sentinels made {master} the master (it was {previous})");
        tracing::warn!(cluster = %cluster.name_any(), %master, %previous, "failover");
        let action = format!("Failover:{master}");
        super::event_of_action(cluster, ctx, (EventType::Warning, "Failover", &action), &note).await;
    }
}

async fn drop_backup_job(ctx: &Context, namespace: &str, names: &Names) -> Result<(), Error> {
    let jobs: Api<CronJob> = Api::namespaced(ctx.kube.clone(), namespace);
    match jobs.delete(&format!("{}-redis-backup", names.cluster), &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The credentials the role Secrets hold now; a role without a Secret (or
/// a password in it) gets a new password.
async fn credentials(names: &Names, ctx: &Context, now: u64) -> Result<Passwords, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &names.namespace);
    let mut passwords = Passwords::default();
    for role in CLUSTER_ROLES {
        let Some(secret) = secrets.get_opt(&names.role_secret(role)).await? else { continue };
        if let Some(credentials) = Credentials::read(&secret, &ROLE_KEYS, now) {
            passwords.0.insert(username(role).to_owned(), credentials);
        }
    }
    Ok(passwords)
}

async fn refuse(cluster: &RedisSentinelCluster, ctx: &Context, invalid: &Invalid) -> Result<Action, Error> {
    tracing::info!(cluster = %cluster.name_any(), reason = invalid.reason, "not reconciled: {}", invalid.message);
    super::event(cluster, ctx, EventType::Warning, invalid.reason, &invalid.message).await;
    set_status(cluster, ctx, Err(invalid)).await?;
    Ok(super::after_refusal(invalid))
}

/// What the cluster's certificate is made from: the operator's CA, and the
/// Secret the pods mount as it is now.
fn tls_inputs<'a>(ctx: &Context, cas: &'a Authorities, served: Option<&'a Secret>) -> ServingInputs<'a> {
    ServingInputs { cas, existing: served, lifetime: ctx.ca_settings.leaf_lifetime }
}

/// Ready pods of a StatefulSet as it reports them.
async fn ready(ctx: &Context, namespace: &str, name: &str) -> Result<i32, Error> {
    let sets: Api<StatefulSet> = Api::namespaced(ctx.kube.clone(), namespace);
    Ok(sets.get_opt(name).await?.and_then(|s| s.status).and_then(|s| s.ready_replicas).unwrap_or(0))
}

/// The `UsersSynced` condition's status, reason and message, and whether
/// every member is in line.
fn users_synced(live: &Live) -> (bool, &'static str, String) {
    match live {
        Live::NotRunning => (false, "Starting", "no node or no Sentinel is ready yet".into()),
        Live::Unreachable(error) => (false, "Unreachable", format!("the cluster did not answer: {error}")),
        Live::Seen { synced, .. } if !synced.unreachable.is_empty() => (
            false,
            "PodsUnreachable",
            format!(
                "{} did not answer; their users are synced when they are back",
                synced.unreachable.join(", ")
            ),
        ),
        Live::Seen { synced, .. } => (
            true,
            "Synced",
            format!(
                "the {} issuer and agent users are on every node and Sentinel ({} changes made)",
                synced.wanted, synced.changes
            ),
        ),
    }
}

/// `Ready` once every node and Sentinel is ready, `UsersSynced`, the
/// master and the users' Secrets, by server-side apply on the status
/// (only the leader gets here). Whether all is ready and in sync.
async fn set_status(
    cluster: &RedisSentinelCluster,
    ctx: &Context,
    outcome: Result<(&Desired, &Pods, &Live), &Invalid>,
) -> Result<bool, Error> {
    let namespace = cluster.namespace().ok_or(Error::NotNamespaced)?;
    let generation = cluster.meta().generation;
    let previous = cluster.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    let condition = |type_, status, reason, message| {
        super::condition(previous, generation, type_, status, reason, message)
    };
    let mut status = json!({"observedGeneration": generation});
    let mut settled = false;
    match outcome {
        Err(invalid) => {
            status["conditions"] = json!([condition("Ready", false, invalid.reason, invalid.message.clone())])
        }
        Ok((d, pods, live)) => {
            let (want_nodes, want_sentinels) = (cluster.spec.replicas, cluster.spec.sentinels);
            let is_ready = pods.nodes >= want_nodes && pods.sentinels >= want_sentinels;
            let message = format!(
                "{} of {want_nodes} nodes and {} of {want_sentinels} Sentinels ready",
                pods.nodes, pods.sentinels
            );
            let reason = if is_ready { "Ready" } else { "Starting" };
            let (synced, synced_reason, synced_message) = users_synced(live);
            settled = is_ready && synced;
            let conditions = vec![
                condition("Ready", is_ready, reason, message),
                condition("UsersSynced", synced, synced_reason, synced_message),
            ];
            status["conditions"] = json!(conditions);
            status["readyReplicas"] = pods.nodes.into();
            status["readySentinels"] = pods.sentinels.into();
            let seen = cluster.status.as_ref();
            if let Live::Seen { master, .. } = live {
                status["master"] = master.clone().into();
                let failed_over = seen.and_then(|s| s.master.as_deref()).is_some_and(|m| m != master);
                let last = if failed_over {
                    Some(k8s_openapi::jiff::Timestamp::now().to_string())
                } else {
                    seen.and_then(|s| s.last_failover_time.clone())
                };
                if let Some(at) = last {
                    status["lastFailoverTime"] = at.into();
                }
            }
            let users: Vec<AclUserStatus> = CLUSTER_ROLES
                .into_iter()
                .map(|role| AclUserStatus {
                    role,
                    username: username(role).into(),
                    secret_name: d.names.role_secret(role),
                    rotated_at: d
                        .passwords
                        .credentials(role)
                        .map(|c| c.since)
                        .filter(|s| *s > 0)
                        .map(rfc3339),
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
    Ok(settled)
}
