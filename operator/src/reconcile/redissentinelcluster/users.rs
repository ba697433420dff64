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
pub const PASSWORD: &str = "password";
/// The password's hash: what a pod that only creates the user mounts.
pub const HASH: &str = "sha256";

/// The current password of each role.
#[derive(Clone, Default)]
pub struct Passwords(pub BTreeMap<String, String>);

/// Never prints a password, should one reach a log line.
impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Passwords {
    pub fn get(&self, role: AclRole) -> Option<&str> {
        self.0.get(username(role)).map(String::as_str)
    }

    /// These passwords, and a new one for every cluster role without one.
    pub(super) fn completed(&self, mut new_password: impl FnMut() -> String) -> Self {
        let mut all = self.0.clone();
        for role in CLUSTER_ROLES {
            all.entry(username(role).to_owned()).or_insert_with(&mut new_password);
        }
        Self(all)
    }
}

pub(super) fn role_secrets(rsc: &RedisSentinelCluster, names: &Names, passwords: &Passwords) -> Vec<Secret> {
    let labels = labels(&names.cluster, "credentials");
    CLUSTER_ROLES
        .into_iter()
        .map(|role| {
            let password = passwords.get(role).expect("completed passwords hold every cluster role");
            Secret {
                metadata: meta(rsc, names.role_secret(role), &labels),
                type_: Some("Opaque".into()),
                data: Some(BTreeMap::from([
                    (USERNAME.to_owned(), ByteString(username(role).as_bytes().to_vec())),
                    (PASSWORD.to_owned(), ByteString(password.as_bytes().to_vec())),
                    (HASH.to_owned(), ByteString(password_hash(password).into_bytes())),
                ])),
                ..Secret::default()
            }
        })
        .collect()
}
