//! The Redis ACL rules of every identity of a RedisSentinelCluster, on the
//! data nodes and on the Sentinels: each role gets the commands it sends
//! and the keys and channels it touches, nothing else. The issuer's and the
//! agents' rules are with the keys they read ([`crate::storage`]). The test
//! harness starts its clusters with these same rules, so the integration
//! tests prove them command by command.

use crate::redis::AclRole;
use crate::storage;

/// Rules that leave `default` unusable: a connection that does not `AUTH`
/// can run no command (`NOAUTH`), and `AUTH default ...` fails.
pub const DEFAULT_OFF: &str = "off resetkeys resetchannels -@all";

/// What a replica sends to its master (Redis docs, "ACL rules for Sentinel
/// and Replicas"), and the master's pod pausing writes while it hands over
/// (`CLIENT PAUSE WRITE`).
pub const REPLICATION: &str =
    "resetkeys resetchannels -@all +psync +replconf +ping +client|pause +client|unpause";

/// What Sentinel 7 sends to data nodes: PING and INFO to monitor them,
/// CLIENT SETNAME on its links, SUBSCRIBE and PUBLISH on its hello channel,
/// and the failover transaction `MULTI; SLAVEOF; CONFIG REWRITE; CLIENT KILL;
/// EXEC`; SCRIPT KILL when a node answers BUSY. The hello channel must be
/// granted explicitly: Redis 7 denies all channels by default
/// (`acl-pubsub-default resetchannels`), and without it Sentinels silently
/// never discover each other.
pub const SENTINEL_ON_NODE: &str = "resetkeys resetchannels &__sentinel__:hello -@all \
     +ping +info +client|setname +client|kill +subscribe +publish +multi +exec +slaveof \
     +config|rewrite +script|kill";

/// What a Sentinel sends to its peers: PING, `SENTINEL is-master-down-by-addr`
/// (votes), PUBLISH of its hello message, CLIENT SETNAME.
pub const SENTINEL_ON_SENTINEL: &str = "resetkeys resetchannels &__sentinel__:hello -@all \
     +ping +publish +client|setname +sentinel|is-master-down-by-addr";

/// What every client of the Sentinels needs: discovery (what the redis
/// crate's Sentinel client and others send) and the event channels
/// (`+switch-master`, ...). Issuers, agents, the operator and the jobs each
/// log in to the Sentinels as themselves with these rules.
pub const SENTINEL_CLIENT: &str = "resetkeys resetchannels &* -@all +ping +hello +command \
     +role +client|setname +client|getname +client|id +sentinel|get-master-addr-by-name \
     +sentinel|master +sentinel|masters +sentinel|replicas +sentinel|slaves +sentinel|sentinels \
     +sentinel|myid +subscribe +psubscribe +unsubscribe +punsubscribe";

/// The data nodes' own identity on the Sentinels: discovery, and the
/// coordinated `SENTINEL FAILOVER` a master's pod asks for before it stops
/// (its preStop step), so that deleting or evicting the master loses
/// nothing acknowledged.
pub const REPLICATION_ON_SENTINEL: &str = "resetkeys resetchannels -@all +ping +hello +role \
     +client|setname +sentinel|get-master-addr-by-name +sentinel|replicas +sentinel|failover";

/// The operator on the data nodes: registrations, policy records and
/// not-before marks under `auth:`, the revocation channel, heartbeat scans,
/// ACL administration, and `CONFIG SET masterauth` when the replication
/// password rotates. `ACL SETUSER` can grant anything, so this user is as
/// powerful as an administrator: its Secret is readable only by the
/// operator's ServiceAccount.
pub const OPERATOR: &str = "resetkeys resetchannels ~auth:* &auth:revocations -@all \
     +acl|setuser +acl|deluser +acl|getuser +acl|list +get +set +mget +del +hset +hget +hgetall \
     +hdel +scan +publish +ping +role +hello +client|setname +info +config|set";

/// The operator on the Sentinels: discovery, its ACL administration (ACLs
/// live on every Sentinel too), the coordinated `SENTINEL FAILOVER`, and
/// the Sentinels' own passwords when the sentinel password rotates
/// (`SENTINEL SET ... auth-pass`, `SENTINEL CONFIG SET sentinel-pass`).
pub const OPERATOR_ON_SENTINEL: &str = "resetkeys resetchannels &* -@all +ping +hello +command \
     +role +client|setname +sentinel|get-master-addr-by-name +sentinel|master +sentinel|masters \
     +sentinel|replicas +sentinel|slaves +sentinel|sentinels +sentinel|myid +sentinel|failover \
     +sentinel|set +sentinel|config +acl|setuser +acl|deluser +acl|getuser +acl|list +subscribe \
     +unsubscribe";

/// The Prometheus exporter (oliver006/redis_exporter), the readiness probe
/// and the pods' start-up step (`ROLE`): server statistics only, no key and
/// no channel.
pub const MONITOR: &str = "resetkeys resetchannels -@all +ping +info +role +config|get +client|list \
     +slowlog|get +slowlog|len +latency|latest +latency|histogram +dbsize +select +cluster|info \
     +hello +client|setname +memory|stats";

/// The cleanup job: prunes what TTLs cannot (expired members of the sorted
/// sets and hashes under `auth:`), in SCAN batches.
pub const CLEANUP: &str = "resetkeys resetchannels ~auth:* -@all +ping +hello +role +scan +type \
     +zremrangebyscore +zcard +zscan +hscan +hdel +hlen +client|setname";

/// The backup job: an RDB snapshot over the replication protocol
/// (`redis-cli --rdb`), which needs no key permission.
pub const BACKUP: &str = "resetkeys resetchannels -@all +ping +hello +role +sync +psync +replconf \
     +client|setname";

/// A role's Redis username.
pub fn username(role: AclRole) -> &'static str {
    match role {
        AclRole::Operator => "operator",
        AclRole::Issuer => "issuer",
        AclRole::Monitor => "monitor",
        AclRole::Cleanup => "cleanup",
        AclRole::Backup => "backup",
        AclRole::Replication => "replication",
        AclRole::Sentinel => "sentinel",
    }
}

/// The role whose user is `name`.
pub fn role_named(name: &str) -> Option<AclRole> {
    use AclRole::*;
    [Operator, Issuer, Monitor, Cleanup, Backup, Replication, Sentinel]
        .into_iter()
        .find(|r| username(*r) == name)
}

/// A password as `ACL GETUSER` shows it and `#<hash>` sets it: SHA-256 in
/// lowercase hex. A pod that only creates a user gets this, never the password.
pub fn password_hash(password: &str) -> String {
    sha256_hex(password.as_bytes())
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A role's rules on the data nodes.
pub fn node_rules(role: AclRole) -> &'static str {
    match role {
        AclRole::Operator => OPERATOR,
        AclRole::Issuer => storage::ISSUER_ACL,
        AclRole::Monitor => MONITOR,
        AclRole::Cleanup => CLEANUP,
        AclRole::Backup => BACKUP,
        AclRole::Replication => REPLICATION,
        AclRole::Sentinel => SENTINEL_ON_NODE,
    }
}

/// A role's rules on the Sentinels. The monitor user also starts the pods
/// (it asks the Sentinels who the master is); the replication user hands
/// the master over before its pod stops.
pub fn sentinel_rules(role: AclRole) -> Option<&'static str> {
    match role {
        AclRole::Operator => Some(OPERATOR_ON_SENTINEL),
        AclRole::Issuer | AclRole::Cleanup | AclRole::Monitor | AclRole::Backup => Some(SENTINEL_CLIENT),
        AclRole::Sentinel => Some(SENTINEL_ON_SENTINEL),
        AclRole::Replication => Some(REPLICATION_ON_SENTINEL),
    }
}

/// Splits rules on whitespace, keeping a selector `(...)` in one piece:
/// the arguments of `ACL SETUSER`.
pub fn split_rules(rules: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    for c in rules.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if c.is_whitespace() && depth == 0 {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_split_on_whitespace_but_not_inside_selectors() {
        assert_eq!(
            split_rules("  ~tp:* +get\t(+set ~w:*)  +ping "),
            ["~tp:*", "+get", "(+set ~w:*)", "+ping"]
        );
        assert!(split_rules(" ").is_empty());
    }

    #[test]
    fn password_hashes_are_what_redis_shows() {
        // `ACL SETUSER u on >pw` then `ACL GETUSER u` shows this for "pw".
        assert_eq!(password_hash("pw"), "30c952fab122c3f9759f02a6d95c3758b246b4fee239957b2d4fee46e26170c4");
        assert_eq!(role_named("replication"), Some(AclRole::Replication));
        assert_eq!(role_named("root"), None);
    }

    #[test]
    fn every_rule_set_starts_from_nothing() {
        use AclRole::*;
        for role in [Operator, Issuer, Monitor, Cleanup, Backup, Replication, Sentinel] {
            let rules = [Some(node_rules(role)), sentinel_rules(role)];
            for rules in rules.into_iter().flatten() {
                assert!(rules.contains("-@all"), "{role:?}: {rules}");
                assert!(
                    !rules.contains("+@all") && !rules.contains("~*") && !rules.contains("allkeys"),
                    "{role:?}"
                );
            }
        }
    }
}
