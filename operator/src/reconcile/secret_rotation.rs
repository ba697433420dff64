//! Client secret rotation, planned as a pure function of the client, what
//! its credentials Secret records about the secret it holds, the
//! registration in Redis and the time.
//!
//! A rotation issues a new secret into the Secret and keeps the old one's
//! hash in the registration, expiring after the grace period; issuers
//! accept both until then. The credentials Secret holds only the current
//! secret. Its annotations record when that secret was issued (the
//! schedule counts from there) and which rotation request it answers:
//! a client's `tokenplane.io/rotate-secret` annotation is an opaque value,
//! and a value the Secret has not recorded yet asks for one rotation.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use tokenplane_api::OAuth2Client;
use tokenplane_api::client::{ClientRecord, SecretHash};
use tokenplane_api::oauth2client::SecretRotation;

use super::oauth2client::{Credentials, Desired};
use super::rfc3339;

/// On an OAuth2Client: set it to a new value to rotate the secret once. On
/// the credentials Secret: the value the current secret answers.
pub const ROTATE_ANNOTATION: &str = "tokenplane.io/rotate-secret";

/// On the credentials Secret: when its client secret was issued (RFC 3339).
pub const ISSUED_AT_ANNOTATION: &str = "tokenplane.io/secret-issued-at";

/// What a credentials Secret records about the secret it holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    pub issued_at: Option<u64>,
    pub request: Option<String>,
}

impl Recorded {
    /// Reads the annotations; an unreadable time counts as unknown (the
    /// schedule starts afresh rather than rotating at once).
    pub fn of(secret: &Secret) -> Self {
        let annotations = secret.metadata.annotations.as_ref();
        let get = |key| annotations.and_then(|a| a.get(key)).cloned();
        Self {
            issued_at: get(ISSUED_AT_ANNOTATION).and_then(|t| parse_rfc3339(&t)),
            request: get(ROTATE_ANNOTATION),
        }
    }
}

/// Why a secret is rotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// `spec.secretRotation.interval` has passed since the secret was issued.
    Schedule,
    /// The client's rotation annotation holds a new value.
    Request,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Schedule => "on schedule",
            Self::Request => "on request (annotation tokenplane.io/rotate-secret)",
        }
    }
}

/// The secret state a reconcile leaves behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Issue a new secret now, and why.
    pub rotate: Option<Trigger>,
    /// When the current secret (the new one, when rotating) was issued.
    pub issued_at: u64,
    /// The previous secret's hash while it still works, with its expiry.
    pub previous: Option<SecretHash>,
    /// When something is next due: the previous secret's expiry or the
    /// next scheduled rotation.
    pub wake_at: Option<u64>,
}

/// The client's rotation request, if any.
fn requested(client: &OAuth2Client) -> Option<&str> {
    client.metadata.annotations.as_ref()?.get(ROTATE_ANNOTATION).map(String::as_str)
}

/// Plans the secret of a confidential client (`None` for a public one).
/// `reused`: `credentials` are those the Secret held and Redis confirmed;
/// otherwise they were just generated and are not rotated again.
pub fn plan(
    client: &OAuth2Client,
    recorded: &Recorded,
    credentials: &Credentials,
    registration: Option<&ClientRecord>,
    reused: bool,
    now: u64,
) -> Option<Plan> {
    let secret = credentials.client_secret.as_deref()?;
    let rotation = client.spec.secret_rotation.clone().unwrap_or_default();
    let issued_at = recorded.issued_at.unwrap_or(now);
    let trigger = reused.then(|| due(client, recorded, &rotation, issued_at, now)).flatten();
    let (issued_at, previous) = match (reused, trigger) {
        // Fresh credentials (a new client, or a hand-edited Secret repaired): nothing old survives.
        (false, _) => (now, None),
        (true, Some(_)) => (now, retire(secret, &rotation, now)),
        (true, None) => (issued_at, live_previous(registration, secret, now)),
    };
    let next_rotation = rotation.interval.map(|i| issued_at + i.as_secs());
    let wake_at = previous.as_ref().and_then(|p| p.expires_at).into_iter().chain(next_rotation).min();
    Some(Plan { rotate: trigger, issued_at, previous, wake_at })
}

fn due(
    client: &OAuth2Client,
    recorded: &Recorded,
    rotation: &SecretRotation,
    issued_at: u64,
    now: u64,
) -> Option<Trigger> {
    let request = requested(client);
    if request.is_some() && request != recorded.request.as_deref() {
        return Some(Trigger::Request);
    }
    rotation.interval.filter(|i| now >= issued_at + i.as_secs()).map(|_| Trigger::Schedule)
}

/// The hash of the secret being replaced, working for the grace period
/// (not at all with a grace period of zero).
fn retire(secret: &str, rotation: &SecretRotation, now: u64) -> Option<SecretHash> {
    let grace = rotation.grace_period.as_secs();
    (grace > 0).then(|| SecretHash { expires_at: Some(now + grace), ..SecretHash::of(secret) })
}

/// The registration's previous secret while it still works. A rotation
/// during a grace period ends the older one at once: two secrets at most.
fn live_previous(registration: Option<&ClientRecord>, current: &str, now: u64) -> Option<SecretHash> {
    let current = SecretHash::of(current);
    registration?
        .secrets
        .iter()
        .filter(|h| h.sha256 != current.sha256 && h.expires_at.is_some_and(|t| now < t))
        .max_by_key(|h| h.expires_at)
        .cloned()
}

/// Puts `plan` into what is applied: the previous hash beside the current
/// one in the registration, and on the Secret when its secret was issued
/// and which rotation request it answers.
pub fn record(plan: &Plan, client: &OAuth2Client, desired: &mut Desired) {
    desired.registration.secrets.extend(plan.previous.clone());
    let mut annotations = BTreeMap::from([(ISSUED_AT_ANNOTATION.to_owned(), rfc3339(plan.issued_at))]);
    if let Some(request) = requested(client) {
        annotations.insert(ROTATE_ANNOTATION.to_owned(), request.to_owned());
    }
    desired.secret.metadata.annotations.get_or_insert_default().extend(annotations);
}

/// What the status says about the client secret; times only, never a
/// secret or its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretStatus {
    pub issued_at: u64,
    pub previous_expires_at: Option<u64>,
    /// When an issuer last accepted the previous secret.
    pub previous_last_used_at: Option<u64>,
}

/// Type of the condition telling whether workloads still use the previous secret.
pub const PREVIOUS_SECRET_IN_USE: &str = "PreviousSecretInUse";

impl SecretStatus {
    /// The status of `plan`, given when issuers last accepted its previous secret.
    pub fn of(plan: &Plan, previous_last_used_at: Option<u64>) -> Self {
        Self {
            issued_at: plan.issued_at,
            previous_expires_at: plan.previous.as_ref().and_then(|p| p.expires_at),
            previous_last_used_at: previous_last_used_at.filter(|_| plan.previous.is_some()),
        }
    }

    /// Status, reason and message of the `PreviousSecretInUse` condition:
    /// in use when an issuer accepted it after the rotation (issuers
    /// write a use at most once a minute, so this lags by up to a minute).
    pub fn condition(&self) -> (&'static str, &'static str, String) {
        let Some(expires) = self.previous_expires_at else {
            return ("False", "NoPreviousSecret", "only the current client secret works".into());
        };
        let (rotated, expires) = (rfc3339(self.issued_at), rfc3339(expires));
        match self.previous_last_used_at.filter(|t| *t >= self.issued_at) {
            Some(used) => (
                "True",
                "UsedSinceRotation",
                format!(
                    "the previous client secret was accepted at {} after the rotation at {rotated}; \
                     it stops working at {expires}: move what still uses it to the current secret",
                    rfc3339(used)
                ),
            ),
            None => (
                "False",
                "UnusedSinceRotation",
                format!(
                    "the previous client secret has not been accepted since the rotation at {rotated}; \
                     it stops working at {expires}"
                ),
            ),
        }
    }
}

fn parse_rfc3339(text: &str) -> Option<u64> {
    let t: Timestamp = text.parse().ok()?;
    u64::try_from(t.as_second()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::oauth2client::desired;
    use crate::reconcile::redis_password::Credentials as RedisCredentials;

    const NOW: u64 = 1_900_000_000;
    const HOUR: u64 = 3600;

    fn client(rotation: &str, annotation: Option<&str>) -> OAuth2Client {
        let annotations =
            annotation.map_or(String::new(), |v| format!(", annotations: {{{ROTATE_ANNOTATION}: '{v}'}}"));
        let mut client: OAuth2Client = serde_norway::from_str(&format!(
            "apiVersion: tokenplane.io/v1alpha1\nkind: OAuth2Client\n\
             metadata: {{name: orders, namespace: shop{annotations}}}\n\
             spec: {{policyRef: {{name: default}}, audiences: [https://orders]{rotation}}}\n"
        ))
        .expect("fixture parses");
        client.metadata.uid = Some("uid-1".into());
        client
    }

    const MONTHLY: &str = ", secretRotation: {interval: 720h, gracePeriod: 24h}";

    fn credentials(secret: &str) -> Credentials {
        Credentials { client_secret: Some(secret.into()), redis: RedisCredentials::new("pw".into(), 0) }
    }

    fn recorded(issued_at: u64, request: Option<&str>) -> Recorded {
        Recorded { issued_at: Some(issued_at), request: request.map(Into::into) }
    }

    fn registration(secrets: Vec<SecretHash>) -> ClientRecord {
        ClientRecord::new("orders.shop".into(), &client("", None).spec, secrets)
    }

    fn expiring(secret: &str, at: u64) -> SecretHash {
        SecretHash { expires_at: Some(at), ..SecretHash::of(secret) }
    }

    fn plan_at(client: &OAuth2Client, recorded: &Recorded, now: u64) -> Plan {
        let registration = registration(vec![SecretHash::of("current")]);
        plan(client, recorded, &credentials("current"), Some(&registration), true, now).unwrap()
    }

    #[test]
    fn a_scheduled_rotation_is_due_once_the_interval_has_passed() {
        let c = client(MONTHLY, None);
        let issued = NOW - 720 * HOUR;
        let early = plan_at(&c, &recorded(issued, None), NOW - 1);
        assert_eq!(
            early,
            Plan { rotate: None, issued_at: issued, previous: None, wake_at: Some(NOW) },
            "not yet due: wakes up when it is"
        );
        let due = plan_at(&c, &recorded(issued, None), NOW);
        assert_eq!(due.rotate, Some(Trigger::Schedule));
        assert_eq!(due.issued_at, NOW, "the new secret's schedule starts now");
        assert_eq!(
            due.previous,
            Some(expiring("current", NOW + 24 * HOUR)),
            "the old one works for the grace"
        );
        assert_eq!(due.wake_at, Some(NOW + 24 * HOUR), "woken to drop it at its expiry");
        let never = plan_at(&client("", None), &recorded(0, None), NOW);
        assert_eq!(never.rotate, None, "no interval: on request only");
    }

    #[test]
    fn a_new_annotation_value_rotates_once() {
        let c = client("", Some("2026-01-01"));
        let first = plan_at(&c, &recorded(NOW - 60, None), NOW);
        assert_eq!(first.rotate, Some(Trigger::Request));
        assert_eq!(first.previous, Some(expiring("current", NOW + 24 * HOUR)), "the default grace is 24h");
        let answered = plan_at(&c, &recorded(NOW, Some("2026-01-01")), NOW + 60);
        assert_eq!(answered.rotate, None, "the Secret records the request it answered");
        let changed = client("", Some("2026-01-02"));
        assert_eq!(plan_at(&changed, &recorded(NOW, Some("2026-01-01")), NOW).rotate, Some(Trigger::Request));
        let removed = client("", None);
        assert_eq!(plan_at(&removed, &recorded(NOW, Some("2026-01-01")), NOW).rotate, None);
    }

    #[test]
    fn the_previous_secret_is_kept_until_its_expiry_then_dropped() {
        let c = client(MONTHLY, None);
        let held = registration(vec![SecretHash::of("current"), expiring("old", NOW + 10)]);
        let during = plan(&c, &recorded(NOW - 100, None), &credentials("current"), Some(&held), true, NOW);
        let during = during.unwrap();
        assert_eq!((during.previous, during.wake_at), (Some(expiring("old", NOW + 10)), Some(NOW + 10)));
        let after =
            plan(&c, &recorded(NOW - 100, None), &credentials("current"), Some(&held), true, NOW + 10);
        assert_eq!(after.unwrap().previous, None, "expired: gone from the registration");
        let again = plan(
            &client("", Some("x")),
            &Recorded::default(),
            &credentials("current"),
            Some(&held),
            true,
            NOW,
        );
        assert_eq!(
            again.unwrap().previous,
            Some(expiring("current", NOW + 24 * HOUR)),
            "a rotation during the grace ends the older secret at once"
        );
    }

    #[test]
    fn fresh_credentials_public_clients_and_zero_grace_never_keep_an_old_secret() {
        let c = client(MONTHLY, Some("x"));
        let held = registration(vec![SecretHash::of("edited"), expiring("old", NOW + 10)]);
        let fresh = plan(&c, &recorded(0, None), &credentials("new"), Some(&held), false, NOW).unwrap();
        assert_eq!(
            fresh,
            Plan { rotate: None, issued_at: NOW, previous: None, wake_at: Some(NOW + 720 * HOUR) }
        );
        let public = Credentials { client_secret: None, redis: RedisCredentials::new("pw".into(), 0) };
        assert_eq!(plan(&c, &recorded(0, None), &public, None, true, NOW), None, "no secret, no rotation");
        let instant = client(", secretRotation: {gracePeriod: 0s}", Some("x"));
        let rotated = plan_at(&instant, &Recorded::default(), NOW);
        assert_eq!((rotated.rotate, rotated.previous), (Some(Trigger::Request), None));
        let unknown = plan_at(&client(MONTHLY, None), &Recorded::default(), NOW);
        assert_eq!((unknown.rotate, unknown.issued_at), (None, NOW), "no record: the schedule starts now");
    }

    #[test]
    fn the_plan_lands_in_the_registration_and_the_secret_annotations() {
        let c = client("", Some("r1"));
        let policy = serde_norway::from_str(
            "apiVersion: tokenplane.io/v1alpha1\nkind: TokenPolicy\nmetadata: {name: default, namespace: shop}\n\
             spec: {lifetimes: {accessToken: 15m}}\n",
        )
        .unwrap();
        let plan = plan_at(&c, &recorded(NOW - 60, None), NOW);
        let since_7 = Credentials { redis: RedisCredentials::new("pw".into(), 7), ..credentials("next") };
        let mut d = desired(&c, Some(&policy), &since_7).unwrap();
        record(&plan, &c, &mut d);
        assert!(d.registration.secret_matches("next", NOW) && d.registration.secret_matches("current", NOW));
        assert!(!d.registration.secret_matches("current", NOW + 24 * HOUR), "until the grace ends");
        let back = Recorded::of(&d.secret);
        assert_eq!(back, recorded(NOW, Some("r1")), "read back on the next reconcile");
        let annotations = format!("{:?}", d.secret.metadata.annotations);
        assert!(!annotations.contains("current") && !annotations.contains("next"), "{annotations}");
        let redis = RedisCredentials::read(&d.secret, &crate::reconcile::redis_password::OWNED_KEYS, 0);
        assert_eq!(redis, Some(RedisCredentials::new("pw".into(), 7)), "the Redis password's times stay");
    }

    #[test]
    fn the_condition_says_whether_the_previous_secret_is_still_used() {
        let plan =
            Plan { rotate: None, issued_at: NOW, previous: Some(expiring("old", NOW + HOUR)), wake_at: None };
        let used = SecretStatus::of(&plan, Some(NOW + 5)).condition();
        assert_eq!((used.0, used.1), ("True", "UsedSinceRotation"));
        assert!(used.2.contains(&rfc3339(NOW + 5)) && used.2.contains(&rfc3339(NOW + HOUR)), "{}", used.2);
        let before = SecretStatus::of(&plan, Some(NOW - 5)).condition();
        assert_eq!((before.0, before.1), ("False", "UnusedSinceRotation"), "a use before the rotation");
        assert_eq!(SecretStatus::of(&plan, None).condition().1, "UnusedSinceRotation");
        let settled = Plan { previous: None, ..plan };
        let status = SecretStatus::of(&settled, Some(NOW + 5));
        assert_eq!(status.previous_last_used_at, None, "nothing to report without a previous secret");
        assert_eq!(status.condition().1, "NoPreviousSecret");
        let hash = expiring("old", 0).sha256;
        assert!(!used.2.contains(&hash), "no hash in the message");
        assert_eq!(rfc3339(NOW), "2030-03-17T17:46:40Z");
        assert_eq!(parse_rfc3339(&rfc3339(NOW)), Some(NOW));
    }
}
