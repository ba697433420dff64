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
/// The hash of the role's other valid password while a rotation overlaps
/// (the next one, then the previous one); empty otherwise. Pods create the
/// user with both.
pub const ALSO_HASH: &str = "also_sha256";
/// The password a rotation is about to make current.
pub const NEXT_PASSWORD: &str = "next_password";
/// When `password` became current (unix seconds).
pub const SINCE: &str = "tokenplane.io/password-since";
/// When the previous password stops working (unix seconds).
pub const PREVIOUS_UNTIL: &str = "tokenplane.io/previous-password-until";

/// One role's passwords, as its Secret holds them.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub password: String,
    /// The password about to replace it: already accepted everywhere it
    /// could be added, used by nobody yet.
    pub next: Option<String>,
    /// The hash of the password it replaced, accepted until the time given.
    pub previous: Option<(String, u64)>,
    /// When `password` became current (unix seconds).
    pub since: u64,
}

impl Credentials {
    pub fn new(password: String, since: u64) -> Self {
        Self { password, next: None, previous: None, since }
    }

    /// Every hash the role's user accepts now.
    pub fn hashes(&self) -> Vec<String> {
        let mut hashes = vec![password_hash(&self.password)];
        hashes.extend(self.also_hash());
        hashes
    }

    /// The other accepted password's hash, during a rotation.
    fn also_hash(&self) -> Option<String> {
        self.next.as_deref().map(password_hash).or_else(|| self.previous.as_ref().map(|(h, _)| h.clone()))
    }

    /// What the role's Secret holds (`None` when it holds no password); a
    /// Secret that does not say since when counts from `now`.
    pub fn read(secret: &Secret, now: u64) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let text = |key: &str| {
            data.get(key).and_then(|v| String::from_utf8(v.0.clone()).ok()).filter(|v| !v.is_empty())
        };
        let annotations = secret.metadata.annotations.as_ref();
        let time = |key: &str| annotations.and_then(|a| a.get(key)).and_then(|v| v.parse::<u64>().ok());
        let next = text(NEXT_PASSWORD);
        let previous = match (next.is_none(), text(ALSO_HASH), time(PREVIOUS_UNTIL)) {
            (true, Some(hash), Some(until)) => Some((hash, until)),
            _ => None,
        };
        Some(Self { password: text(PASSWORD)?, next, previous, since: time(SINCE).unwrap_or(now) })
    }
}

/// Never prints a password, should one reach a log line.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("next", &self.next.is_some())
            .field("previous_until", &self.previous.as_ref().map(|(_, until)| until))
            .field("since", &self.since)
            .finish_non_exhaustive()
    }
}

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
            let data = BTreeMap::from([
                (USERNAME.to_owned(), bytes(username(role))),
                (PASSWORD.to_owned(), bytes(&c.password)),
                (HASH.to_owned(), bytes(&password_hash(&c.password))),
                // Empty rather than absent: every key stays this field manager's.
                (ALSO_HASH.to_owned(), bytes(&c.also_hash().unwrap_or_default())),
                (NEXT_PASSWORD.to_owned(), bytes(c.next.as_deref().unwrap_or_default())),
            ]);
            let until = c.previous.as_ref().map(|(_, until)| until.to_string()).unwrap_or_default();
            let mut metadata = meta(rsc, names.role_secret(role), &labels);
            let times = [(SINCE.to_owned(), c.since.to_string()), (PREVIOUS_UNTIL.to_owned(), until)];
            metadata.annotations.get_or_insert_default().extend(times);
            Secret { metadata, type_: Some("Opaque".into()), data: Some(data), ..Secret::default() }
        })
        .collect()
}
