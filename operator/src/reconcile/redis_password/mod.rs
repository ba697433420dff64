//! A Redis user's passwords as its Secret holds them, and their rotation
//! without downtime (`rotation`): Redis users accept several passwords at
//! once, so a new one is added everywhere before anybody uses it and the
//! old one leaves only after every consumer moved on. The cluster roles'
//! Secrets and the issuers' and agents' Secrets keep the same state under
//! their own keys ([`Keys`]).

pub mod rotation;

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use tokenplane_api::acl::password_hash;

/// Where a Secret keeps each part of the state.
pub struct Keys {
    /// The current password: what consumers mount and log in with.
    pub password: &'static str,
    /// The hash of the other accepted password while a rotation overlaps
    /// (the next one, then the previous one); empty otherwise.
    pub also_hash: &'static str,
    /// The password a rotation is about to make current.
    pub next: &'static str,
    /// Annotation: when `password` became current (unix seconds).
    pub since: &'static str,
    /// Annotation: when the previous password stops working (unix seconds).
    pub previous_until: &'static str,
}

/// A RedisSentinelCluster's role Secrets (`password`, ...).
pub const ROLE_KEYS: Keys = Keys {
    password: "password",
    also_hash: "also_sha256",
    next: "next_password",
    since: "tokenplane.io/password-since",
    previous_until: "tokenplane.io/previous-password-until",
};

/// The issuer's Redis Secret and a client's credentials Secret, beside
/// other credentials (`redis_password`, ...).
pub const OWNED_KEYS: Keys = Keys {
    password: tokenplane_api::credentials::REDIS_PASSWORD,
    also_hash: "redis_also_sha256",
    next: "next_redis_password",
    since: "tokenplane.io/redis-password-since",
    previous_until: "tokenplane.io/previous-redis-password-until",
};

/// One user's passwords.
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

    /// Every hash the user accepts now.
    pub fn hashes(&self) -> Vec<String> {
        let mut hashes = vec![password_hash(&self.password)];
        hashes.extend(self.also_hash());
        hashes
    }

    /// The other accepted password's hash, during a rotation.
    pub fn also_hash(&self) -> Option<String> {
        self.next.as_deref().map(password_hash).or_else(|| self.previous.as_ref().map(|(h, _)| h.clone()))
    }

    /// What `secret` holds under `keys` (`None` when it holds no
    /// password); a Secret that does not say since when counts from `now`.
    pub fn read(secret: &Secret, keys: &Keys, now: u64) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let text = |key: &str| {
            data.get(key).and_then(|v| String::from_utf8(v.0.clone()).ok()).filter(|v| !v.is_empty())
        };
        let annotations = secret.metadata.annotations.as_ref();
        let time = |key: &str| annotations.and_then(|a| a.get(key)).and_then(|v| v.parse::<u64>().ok());
        let next = text(keys.next);
        let previous = match (next.is_none(), text(keys.also_hash), time(keys.previous_until)) {
            (true, Some(hash), Some(until)) => Some((hash, until)),
            _ => None,
        };
        Some(Self { password: text(keys.password)?, next, previous, since: time(keys.since).unwrap_or(now) })
    }

    /// The Secret data and annotations that hold these passwords under
    /// `keys`. Empty values rather than absent keys: every key stays the
    /// field manager's, so a server-side apply clears what it leaves out.
    pub fn written(&self, keys: &Keys) -> (BTreeMap<String, ByteString>, BTreeMap<String, String>) {
        let bytes = |text: &str| ByteString(text.as_bytes().to_vec());
        let data = BTreeMap::from([
            (keys.password.to_owned(), bytes(&self.password)),
            (keys.also_hash.to_owned(), bytes(&self.also_hash().unwrap_or_default())),
            (keys.next.to_owned(), bytes(self.next.as_deref().unwrap_or_default())),
        ]);
        let until = self.previous.as_ref().map(|(_, until)| until.to_string()).unwrap_or_default();
        let annotations = BTreeMap::from([
            (keys.since.to_owned(), self.since.to_string()),
            (keys.previous_until.to_owned(), until),
        ]);
        (data, annotations)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back_under_either_layout() {
        let rotating = Credentials {
            password: "new".into(),
            next: None,
            previous: Some((password_hash("old"), 99)),
            since: 42,
        };
        for keys in [&ROLE_KEYS, &OWNED_KEYS] {
            let begun = rotation::begin(&Credentials::new("current".into(), 3), "next".into());
            for c in [rotating.clone(), Credentials::new("only".into(), 7), begun] {
                let (data, annotations) = c.written(keys);
                let mut secret = Secret { data: Some(data), ..Secret::default() };
                secret.metadata.annotations = Some(annotations);
                assert_eq!(Credentials::read(&secret, keys, 0), Some(c), "{:?}", keys.password);
            }
        }
    }

    #[test]
    fn a_secret_without_times_counts_from_now() {
        let data = BTreeMap::from([(OWNED_KEYS.password.to_owned(), ByteString(b"pw".to_vec()))]);
        let secret = Secret { data: Some(data), ..Secret::default() };
        assert_eq!(Credentials::read(&secret, &OWNED_KEYS, 5), Some(Credentials::new("pw".into(), 5)));
        assert_eq!(Credentials::read(&secret, &ROLE_KEYS, 5), None, "no role password");
    }

    #[test]
    fn credentials_never_print_a_password() {
        let c = rotation::begin(&Credentials::new("old-secret".into(), 1), "next-secret".into());
        assert!(!format!("{c:?}").contains("secret"));
    }
}
