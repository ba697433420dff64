//! `RedisSentinelCluster`: the highly available store behind the issuers and agents.

use crate::duration::Duration;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The Redis users the operator creates, one per role, each with its own
/// password Secret and the least ACL its role needs. Each OAuth2Client gets a
/// further user of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AclRole {
    Operator,
    Issuer,
    Monitor,
    Cleanup,
    Backup,
    Replication,
    Sentinel,
}

/// Whether `name` can be the name Sentinels monitor the master under: it
/// goes into sentinel.conf lines, so 1 to 64 letters, digits, `-`, `_` or
/// `.` and nothing that could start another directive.
pub fn valid_master_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Durable storage of each Redis node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Persistence {
    /// Keep data on a PersistentVolume (append-only file); without it a
    /// restarted node resyncs from the master.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Volume size per node.
    #[serde(default = "default_size")]
    pub size: Quantity,
    /// Storage class; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// `appendfsync`: `always` loses nothing on a node crash, `everysec` up to a second
    /// (acknowledged writes also wait for a replica, see `minReplicasToAcknowledge`).
    #[serde(default = "default_fsync")]
    #[x_kube(validation = Rule::new("self in ['always', 'everysec']").message("appendFsync is always or everysec"))]
    #[schemars(length(max = 16))]
    pub append_fsync: String,
}

fn yes() -> bool {
    true
}
fn default_size() -> Quantity {
    Quantity("1Gi".into())
}
fn default_fsync() -> String {
    "everysec".into()
}

impl Default for Persistence {
    fn default() -> Self {
        Self { enabled: true, size: default_size(), storage_class_name: None, append_fsync: default_fsync() }
    }
}

/// TLS between clients, replicas and Sentinels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tls {
    #[serde(default)]
    pub enabled: bool,
    /// A `kubernetes.io/tls` Secret (e.g. from cert-manager) with `tls.crt`,
    /// `tls.key` and `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

/// Rotation of the ACL users' passwords.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Acl {
    /// How often every role's password is replaced.
    #[serde(default = "default_password_rotation")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1h')").message("passwords rotate at most once an hour"))]
    pub password_rotation_interval: Duration,
    /// How long old and new passwords both work, so every pod picks up the new Secret.
    #[serde(default = "default_overlap")]
    pub password_overlap: Duration,
}

fn default_password_rotation() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn default_overlap() -> Duration {
    Duration::from_secs(3600)
}

impl Default for Acl {
    fn default() -> Self {
        Self { password_rotation_interval: default_password_rotation(), password_overlap: default_overlap() }
    }
}

const CRON_RULE: &str = r"self.matches('^(@(hourly|daily|weekly|monthly)|(\\S+\\s+){4}\\S+)$')";

/// The CronJob that removes what Redis TTLs cannot (index entries of expired records).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
pub struct Cleanup {
    /// Cron schedule.
    #[serde(default = "default_cleanup_schedule")]
    #[x_kube(validation = Rule::new(CRON_RULE).message("schedule is a five-field cron expression or @hourly/@daily/@weekly/@monthly"))]
    #[schemars(length(max = 128))]
    pub schedule: String,
}

fn default_cleanup_schedule() -> String {
    "*/15 * * * *".into()
}

impl Default for Cleanup {
    fn default() -> Self {
        Self { schedule: default_cleanup_schedule() }
    }
}

/// Periodic RDB snapshots copied to a volume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backup {
    /// Cron schedule.
    #[x_kube(validation = Rule::new(CRON_RULE).message("schedule is a five-field cron expression or @hourly/@daily/@weekly/@monthly"))]
    #[schemars(length(max = 128))]
    pub schedule: String,
    /// Snapshots kept.
    #[serde(default = "default_retain")]
    #[schemars(range(min = 1, max = 365))]
    pub retain: i32,
    /// Size of the backup volume.
    #[serde(default = "default_backup_size")]
    pub size: Quantity,
}

fn default_retain() -> i32 {
    7
}
fn default_backup_size() -> Quantity {
    Quantity("5Gi".into())
}

/// A Redis master with replicas, watched by Sentinels.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "tokenplane.io",
    version = "v1alpha1",
    kind = "RedisSentinelCluster",
    plural = "redissentinelclusters",
    shortname = "rsc",
    category = "tokenplane",
    namespaced,
    status = "RedisSentinelClusterStatus",
    doc = "A Redis master, its replicas and three or more Sentinels, with one ACL user per role.",
    printcolumn(name = "Master", type_ = "string", json_path = ".status.master"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self.minReplicasToAcknowledge < self.replicas").message("minReplicasToAcknowledge must be below replicas: the master does not count").field_path(".minReplicasToAcknowledge"))]
#[serde(rename_all = "camelCase")]
pub struct RedisSentinelClusterSpec {
    /// Redis image (also runs the Sentinels).
    #[serde(default = "default_image")]
    pub image: String,
    /// Redis nodes, the master included.
    #[serde(default = "default_nodes")]
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,
    /// Sentinels; an odd number, three or more, so a majority can elect.
    #[serde(default = "default_sentinels")]
    #[schemars(range(min = 3, max = 9))]
    #[x_kube(validation = Rule::new("self % 2 == 1").message("use an odd number of Sentinels"))]
    pub sentinels: i32,
    /// The name Sentinels monitor the master under.
    #[serde(default = "default_master_name")]
    pub master_name: String,
    /// Replicas that must confirm a revocation or rotation (`WAIT`) before it is acknowledged.
    #[serde(default = "default_ack")]
    #[schemars(range(min = 0, max = 8))]
    pub min_replicas_to_acknowledge: i32,
    #[serde(default)]
    pub persistence: Persistence,
    /// Resources of each Redis container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Resources of each Sentinel container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel_resources: Option<ResourceRequirements>,
    #[serde(default)]
    pub tls: Tls,
    #[serde(default)]
    pub acl: Acl,
    #[serde(default)]
    pub cleanup: Cleanup,
    /// Snapshots; none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Backup>,
}

fn default_image() -> String {
    "docker.io/library/redis:7.4".into()
}
fn default_nodes() -> i32 {
    3
}
fn default_sentinels() -> i32 {
    3
}
fn default_master_name() -> String {
    "tokenplane".into()
}
fn default_ack() -> i32 {
    1
}

/// One role's Redis user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AclUserStatus {
    pub role: AclRole,
    pub username: String,
    /// Secret with the `username` and `password` keys.
    pub secret_name: String,
    /// When the password last rotated (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<String>,
}

/// Observed state of a RedisSentinelCluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisSentinelClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Pod currently master, as the Sentinels agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// When the operator last saw another pod become master (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover_time: Option<String>,
    #[serde(default)]
    pub ready_replicas: i32,
    #[serde(default)]
    pub ready_sentinels: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acl_users: Vec<AclUserStatus>,
}
