//! One Redis user per role of the cluster, each with its own Secret
//! (`username`, `password`). Issuers get theirs per TokenPolicy and agents
//! per OAuth2Client, from those kinds' controllers.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use tokenplane_api::RedisSentinelCluster;
use tokenplane_api::acl::{password_hash, username};
use tokenplane_api::redis::AclRole;

use super::{Names, labels, meta};
use crate::reconcile::redis_password::{Credentials, ROLE_KEYS};

/// The roles whose users the cluster's own controller makes.
pub const CLUSTER_ROLES: [AclRole; 6] = [
    AclRole::Operator,
    AclRole::Monitor,
    AclRole::Cleanup,
    AclRole::Backup,
    AclRole::Replication,
    AclRole::Sentinel,
];

pub const USERNAME: &str = "username";
pub const PASSWORD: &str = ROLE_KEYS.password;
/// The password's hash: what a pod that only creates the user mounts.
pub const HASH: &str = "sha256";
/// Pods create the user with this hash too, during a rotation.
pub const ALSO_HASH: &str = ROLE_KEYS.also_hash;

/// Each cluster role's credentials, by username.
#[derive(Clone, Debug, Default)]
pub struct Passwords(pub BTreeMap<String, Credentials>);

impl Passwords {
    /// The current password of `role`.
    pub fn get(&self, role: AclRole) -> Option<&str> {
        self.credentials(role).map(|c| c.password.as_str())
    }

    pub fn credentials(&self, role: AclRole) -> Option<&Credentials> {
        self.0.get(username(role))
    }

    /// These passwords, and a new one (current since `now`) for every
    /// cluster role without one.
    pub(super) fn completed(&self, mut new_password: impl FnMut() -> String, now: u64) -> Self {
        let mut all = self.0.clone();
        for role in CLUSTER_ROLES {
            all.entry(username(role).to_owned()).or_insert_with(|| Credentials::new(new_password(), now));
        }
        Self(all)
    }
}

pub(super) fn role_secrets(rsc: &RedisSentinelCluster, names: &Names, passwords: &Passwords) -> Vec<Secret> {
    let labels = labels(&names.cluster, "credentials");
    CLUSTER_ROLES
        .into_iter()
        .map(|role| {
            let c = passwords.credentials(role).expect("completed passwords hold every cluster role");
            let bytes = |text: &str| ByteString(text.as_bytes().to_vec());
            let (mut data, times) = c.written(&ROLE_KEYS);
            data.insert(USERNAME.to_owned(), bytes(username(role)));
            data.insert(HASH.to_owned(), bytes(&password_hash(&c.password)));
            let mut metadata = meta(rsc, names.role_secret(role), &labels);
            metadata.annotations.get_or_insert_default().extend(times);
            Secret { metadata, type_: Some("Opaque".into()), data: Some(data), ..Secret::default() }
        })
        .collect()
}
