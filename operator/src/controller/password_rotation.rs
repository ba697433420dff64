//! The apply side of `reconcile::redissentinelcluster::rotation`: begin and
//! retire only change the role Secrets (the ACL sync carries them to every
//! member); promote first switches what logs in with the password from a
//! running configuration.

use tokenplane_api::RedisSentinelCluster;
use tokenplane_api::acl::username;
use tokenplane_api::redis::AclRole;

use crate::reconcile::redis_password::rotation::{self, Step};
use crate::reconcile::redissentinelcluster::{CLUSTER_ROLES, Names, Passwords};
use crate::redis::{Member, RedisAdmin, RedisError};

/// `passwords` after the begin and retire steps due at `now`, and the
/// steps taken.
pub(super) fn begin_and_retire(
    cluster: &RedisSentinelCluster,
    passwords: &Passwords,
    now: u64,
    mut generate: impl FnMut() -> String,
) -> (Passwords, Vec<(AclRole, Step)>) {
    let mut after = passwords.clone();
    let mut taken = Vec::new();
    for role in CLUSTER_ROLES {
        let Some(c) = passwords.credentials(role) else { continue };
        let Some(step @ (Step::Begin | Step::Retire)) = rotation::due(c, &cluster.spec.acl, now, false)
        else {
            continue;
        };
        after.0.insert(
            username(role).to_owned(),
            rotation::take(step, c, &cluster.spec.acl, now, &mut generate),
        );
        taken.push((role, step));
    }
    (after, taken)
}

/// `passwords` with every next password made current, once every member
/// accepts it; the roles promoted. A role whose switch failed stays as it
/// is, to be tried again.
pub(super) async fn promote(
    cluster: &RedisSentinelCluster,
    passwords: &Passwords,
    (redis, names): (&RedisAdmin, &Names),
    now: u64,
) -> (Passwords, Vec<AclRole>) {
    let mut after = passwords.clone();
    let mut promoted = Vec::new();
    for role in CLUSTER_ROLES {
        let Some(c) = passwords.credentials(role) else { continue };
        let (Some(Step::Promote), Some(next)) = (rotation::due(c, &cluster.spec.acl, now, true), &c.next)
        else {
            continue;
        };
        if let Err(error) = switch(cluster, role, next, (redis, names)).await {
            tracing::warn!(cluster = %names.cluster, role = username(role), %error, "the next password is not current yet; retrying");
            continue;
        }
        after.0.insert(username(role).to_owned(), rotation::promote(c, &cluster.spec.acl, now));
        promoted.push(role);
    }
    (after, promoted)
}

/// Switches the running configuration that logs in as `role`: the data
/// nodes' `masterauth` (replication), the Sentinels' `auth-pass` and
/// `sentinel-pass` (sentinel). Every other role's consumers read the
/// mounted Secret or start afresh.
async fn switch(
    cluster: &RedisSentinelCluster,
    role: AclRole,
    password: &str,
    (redis, names): (&RedisAdmin, &Names),
) -> Result<(), RedisError> {
    match role {
        AclRole::Replication => {
            for node in names.node_addrs(cluster.spec.replicas) {
                let mut set = redis::cmd("CONFIG");
                set.arg("SET").arg("masterauth").arg(password);
                redis.configure(Member::Node(&node), &set).await?;
            }
        }
        AclRole::Sentinel => {
            for sentinel in names.sentinel_addrs(cluster.spec.sentinels) {
                let mut auth = redis::cmd("SENTINEL");
                auth.arg("SET").arg(&cluster.spec.master_name).arg("auth-pass").arg(password);
                redis.configure(Member::Sentinel(&sentinel), &auth).await?;
                let mut peers = redis::cmd("SENTINEL");
                peers.arg("CONFIG").arg("SET").arg("sentinel-pass").arg(password);
                redis.configure(Member::Sentinel(&sentinel), &peers).await?;
            }
        }
        _ => {}
    }
    Ok(())
}
