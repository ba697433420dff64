//! The ACL sync of a RedisSentinelCluster (see
//! `reconcile::redissentinelcluster::acl_sync`): read every member's users,
//! then what Kubernetes wants, then make the difference.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::future::join_all;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use tokenplane_api::credentials::REDIS_PASSWORD;
use tokenplane_api::{OAuth2Client, RedisSentinelCluster, TokenPolicy};

use super::Context;
use crate::error::Error;
use crate::reconcile::password_hash;
use crate::reconcile::redissentinelcluster::acl_sync::{self, Hashes, MemberUsers, Step, Wanted};
use crate::reconcile::redissentinelcluster::{Names, Passwords};
use crate::redis::{Member, RedisAdmin};

/// What a sync found and did.
pub(super) struct Synced {
    /// The issuers' and agents' users the cluster should have.
    pub wanted: usize,
    /// Changes made, role users' included.
    /// Users set or removed on some member.
    pub changes: usize,
    /// Pods that did not answer (restarting, or gone); they are synced
    /// when they are back.
    pub unreachable: Vec<String>,
}

/// Brings every node and Sentinel of `cluster` in line with `passwords`
/// (the role Secrets) and the policies and clients that use it; `master`
/// is the master's stable address.
pub(super) async fn sync(
    cluster: &RedisSentinelCluster,
    (names, passwords): (&Names, &Passwords),
    redis: &RedisAdmin,
    master: &str,
    ctx: &Context,
) -> Result<Synced, Error> {
    let (members, unreachable) = read_members(cluster, names, redis).await;
    // Kubernetes is read after Redis: a user seen above was made by a
    // reconcile of a policy or client that already existed, so the lists
    // below hold it and it is not taken for a leftover.
    let policies = Api::<TokenPolicy>::namespaced(ctx.kube.clone(), &names.namespace)
        .list(&ListParams::default())
        .await?
        .items;
    let clients = Api::<OAuth2Client>::all(ctx.kube.clone()).list(&ListParams::default()).await?.items;
    let mut wanted = acl_sync::role_users(passwords);
    let owned = acl_sync::wanted(cluster, &policies, &clients);
    let owned_count = owned.len();
    wanted.extend(owned);
    let hashes = hashes(&wanted, members.iter().find(|m| m.addr == master), ctx).await?;
    let steps = acl_sync::plan(&wanted, &hashes, &members);
    for step in &steps {
        match step {
            Step::Set { addr, sentinel, name, hashes, rules } => {
                redis.set_hashed_user(member(addr, *sentinel), name, hashes, rules).await?;
                tracing::info!(cluster = %names.cluster, pod = Names::pod_of(addr), user = %name, "ACL user brought in line");
            }
            Step::Delete { addr, sentinel, name } => {
                redis.delete_user_on(member(addr, *sentinel), name).await?;
                tracing::info!(cluster = %names.cluster, pod = Names::pod_of(addr), user = %name, "leftover ACL user removed");
            }
        }
    }
    Ok(Synced { wanted: owned_count, changes: steps.len(), unreachable })
}

fn member(addr: &str, sentinel: bool) -> Member<'_> {
    if sentinel { Member::Sentinel(addr) } else { Member::Node(addr) }
}

/// Every member's users, asked at once; the pods that did not answer.
async fn read_members(
    cluster: &RedisSentinelCluster,
    names: &Names,
    redis: &RedisAdmin,
) -> (Vec<MemberUsers>, Vec<String>) {
    let nodes = names.node_addrs(cluster.spec.replicas).into_iter().map(|a| (a, false));
    let sentinels = names.sentinel_addrs(cluster.spec.sentinels).into_iter().map(|a| (a, true));
    let all: Vec<(String, bool)> = nodes.chain(sentinels).collect();
    let lists = join_all(all.iter().map(|(addr, sentinel)| redis.acl_list(member(addr, *sentinel)))).await;
    let mut members = Vec::new();
    let mut unreachable = Vec::new();
    for ((addr, sentinel), list) in all.into_iter().zip(lists) {
        match list {
            Ok(lines) => members.push(MemberUsers { users: acl_sync::listed(&lines), addr, sentinel }),
            Err(error) => {
                tracing::debug!(cluster = %names.cluster, %addr, %error, "not synced now");
                unreachable.push(Names::pod_of(&addr).to_owned());
            }
        }
    }
    (members, unreachable)
}

/// The password hashes each wanted user should have: a role user's from
/// its Secret; an issuer's or agent's from the master, which its owner's
/// reconcile writes first, or for a user the master lacks (it restarted
/// too) from the owner's Secret.
async fn hashes(
    wanted: &[Wanted],
    master: Option<&MemberUsers>,
    ctx: &Context,
) -> Result<BTreeMap<String, BTreeSet<String>>, Error> {
    let mut hashes = BTreeMap::new();
    for w in wanted {
        let known = match &w.hashes {
            Hashes::Role(known) => known.clone(),
            Hashes::Owned(namespace, secret) => {
                match master.and_then(|m| m.users.get(&w.name)).filter(|u| u.enabled) {
                    Some(user) => user.hashes.clone(),
                    None => from_secret(namespace, secret, ctx).await?.into_iter().collect(),
                }
            }
        };
        hashes.insert(w.name.clone(), known);
    }
    Ok(hashes)
}

async fn from_secret(namespace: &str, name: &str, ctx: &Context) -> Result<Option<String>, Error> {
    let secret = Api::<Secret>::namespaced(ctx.kube.clone(), namespace).get_opt(name).await?;
    Ok(secret
        .and_then(|s| s.data?.remove(REDIS_PASSWORD))
        .and_then(|p| String::from_utf8(p.0).ok())
        .filter(|p| !p.is_empty())
        .map(|p| password_hash(&p)))
}
