//! redis.conf and sentinel.conf, without secrets and without the parts only
//! a starting pod knows (who it is, who the master is): the start-up step
//! (`tokenplane-sidecar redis-node start`) writes the final file from
//! these, the master the Sentinels name and the mounted role passwords.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use tokenplane_api::RedisSentinelCluster;

use super::tls::TLS_MOUNT;
use super::{Names, REDIS_PORT, SENTINEL_PORT, labels, meta};
use crate::reconcile::ca::{BUNDLE_KEY, TLS_CRT, TLS_KEY};

pub const REDIS_CONF: &str = "redis.conf";
pub const SENTINEL_CONF: &str = "sentinel.conf";

/// How long a master may be silent before a Sentinel calls it down, and
/// the bound of one failover attempt.
const DOWN_AFTER_MS: u32 = 5_000;
const FAILOVER_TIMEOUT_MS: u32 = 60_000;
/// How far behind (seconds) a replica may be and still count for
/// `min-replicas-to-write`: a master cut off from its replicas stops
/// taking writes after this long.
const MAX_LAG_SECS: u32 = 10;

pub(super) fn config_map(rsc: &RedisSentinelCluster, names: &Names) -> ConfigMap {
    ConfigMap {
        metadata: meta(rsc, names.config(), &labels(&names.cluster, "config")),
        data: Some(BTreeMap::from([
            (REDIS_CONF.to_owned(), redis_conf(rsc, names)),
            (SENTINEL_CONF.to_owned(), sentinel_conf(rsc, names)),
        ])),
        ..ConfigMap::default()
    }
}

/// A data node's settings.
pub(super) fn redis_conf(rsc: &RedisSentinelCluster, names: &Names) -> String {
    let spec = &rsc.spec;
    let persistence = &spec.persistence;
    let mut conf = format!(
        "# RedisSentinelCluster {}/{}, written by tokenplane. The start-up step adds\n\
         # replicaof, replica-announce-ip/port, masterauth and the users.\n\
         {}\
         bind * -::*\n\
         # Every connection authenticates: the default user is off.\n\
         protected-mode no\n\
         dir /data\n\
         masteruser replication\n\
         replica-read-only yes\n\
         # Revocations and spent codes must never be evicted to make room.\n\
         maxmemory-policy noeviction\n\
         min-replicas-to-write {}\n\
         min-replicas-max-lag {MAX_LAG_SECS}\n\
         acl-pubsub-default resetchannels\n\
         enable-debug-command no\n\
         enable-module-command no\n\
         enable-protected-configs no\n\
         save \"\"\n",
        names.namespace,
        names.cluster,
        listen(rsc, REDIS_PORT),
        spec.min_replicas_to_acknowledge,
    );
    if persistence.enabled {
        conf.push_str(&format!("appendonly yes\nappendfsync {}\n", persistence.append_fsync));
    } else {
        conf.push_str("appendonly no\n");
    }
    conf
}

/// A Sentinel's settings after its `sentinel monitor` line, which the
/// start-up step writes first (it names the master it found).
pub(super) fn sentinel_conf(rsc: &RedisSentinelCluster, names: &Names) -> String {
    let name = &rsc.spec.master_name;
    format!(
        "# RedisSentinelCluster {}/{}, written by tokenplane. The start-up step adds\n\
         # sentinel monitor, announce-ip/port, the passwords and the users.\n\
         {}\
         dir /data\n\
         protected-mode no\n\
         sentinel resolve-hostnames yes\n\
         sentinel announce-hostnames yes\n\
         sentinel deny-scripts-reconfig yes\n\
         sentinel sentinel-user sentinel\n\
         sentinel down-after-milliseconds {name} {DOWN_AFTER_MS}\n\
         sentinel failover-timeout {name} {FAILOVER_TIMEOUT_MS}\n\
         sentinel parallel-syncs {name} 1\n\
         sentinel auth-user {name} sentinel\n",
        names.namespace,
        names.cluster,
        listen(rsc, SENTINEL_PORT),
    )
}

/// Where a member listens: `port`, or with TLS that port for TLS only, and
/// TLS to its master, replicas and peers (a Sentinel's `tls-replication`
/// covers the nodes it monitors). Clients authenticate by password, not
/// certificate.
fn listen(rsc: &RedisSentinelCluster, port: i32) -> String {
    if !rsc.spec.tls.enabled {
        return format!("port {port}\n");
    }
    format!(
        "port 0\n\
         tls-port {port}\n\
         tls-cert-file {TLS_MOUNT}/{TLS_CRT}\n\
         tls-key-file {TLS_MOUNT}/{TLS_KEY}\n\
         tls-ca-cert-file {TLS_MOUNT}/{BUNDLE_KEY}\n\
         tls-replication yes\n\
         tls-auth-clients no\n"
    )
}
