//! Rotation of a Redis user's passwords without downtime, on a
//! RedisSentinelCluster's `spec.acl` schedule, in three steps, each written
//! to the user's Secret as it is taken:
//!
//! 1. **Begin** (`passwordRotationInterval` after the current one became
//!    current): a next password joins the user on every node and Sentinel
//!    (and the Secret, where a pod that starts meanwhile creates the user
//!    with both); nobody logs in with it yet.
//! 2. **Promote**, once every member accepts it: it becomes the Secret's
//!    current password, the one consumers log in with from their next
//!    connection on; the old one is still accepted for `passwordOverlap`,
//!    the time for mounted Secrets to update and for running jobs to end.
//!    Cluster roles that log in from a running configuration switch first
//!    (`masterauth`, the Sentinels' `auth-pass` and `sentinel-pass`).
//! 3. **Retire**: the old password leaves the Secret and every member.
//!    Connections open with it stay: Redis keeps them.
//!
//! The cluster's controller rotates its roles' users; the TokenPolicy and
//! OAuth2Client controllers rotate their issuers' and agents' users on a
//! cluster, with that cluster's settings.

use tokenplane_api::redis::Acl;

use tokenplane_api::acl::password_hash;

use super::Credentials;
use crate::reconcile::rfc3339;

/// The step a user's passwords take now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Begin,
    Promote,
    Retire,
}

impl Step {
    /// The reason of its event.
    pub fn reason(self) -> &'static str {
        match self {
            Step::Begin => "PasswordRotationBegun",
            Step::Promote => "PasswordRotated",
            Step::Retire => "PreviousPasswordRetired",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Begin => "begin",
            Step::Promote => "promote",
            Step::Retire => "retire",
        }
    }
}

/// What is due for `c` at `now`. `spread`: every member accepts the next
/// password (the ACL sync reached them all).
pub fn due(c: &Credentials, acl: &Acl, now: u64, spread: bool) -> Option<Step> {
    match (&c.next, &c.previous) {
        (Some(_), _) => spread.then_some(Step::Promote),
        (None, Some((_, until))) => (now >= *until).then_some(Step::Retire),
        (None, None) => {
            (now >= c.since.saturating_add(acl.password_rotation_interval.as_secs())).then_some(Step::Begin)
        }
    }
}

/// `c` with `next` joining it.
pub fn begin(c: &Credentials, next: String) -> Credentials {
    Credentials { next: Some(next), ..c.clone() }
}

/// `c` with its next password current from `now`, the old one accepted
/// for the overlap.
pub fn promote(c: &Credentials, acl: &Acl, now: u64) -> Credentials {
    let Some(next) = c.next.clone() else { return c.clone() };
    let until = now.saturating_add(acl.password_overlap.as_secs());
    let previous = Some((tokenplane_api::acl::password_hash(&c.password), until));
    Credentials { password: next, next: None, previous, since: now }
}

/// `c` without its previous password.
pub fn retire(c: &Credentials) -> Credentials {
    Credentials { previous: None, ..c.clone() }
}

/// `c` after `step`; `generate` makes the next password of a begin.
pub fn take(
    step: Step,
    c: &Credentials,
    acl: &Acl,
    now: u64,
    generate: impl FnOnce() -> String,
) -> Credentials {
    match step {
        Step::Begin => begin(c, generate()),
        Step::Promote => promote(c, acl, now),
        Step::Retire => retire(c),
    }
}

/// An issuer's or agent's passwords: `kept` (its Secret's) while its
/// user accepts the current one or does not exist yet (`accepted`: the
/// hashes on the master, which their owner's reconcile sets on every member
/// at once), else a fresh one, as a hand-edited Secret is not adopted. On a
/// cluster (`acl`), with the step due at `now` taken.
pub fn owned(
    kept: Option<Credentials>,
    accepted: Option<&[String]>,
    acl: Option<&Acl>,
    now: u64,
    mut generate: impl FnMut() -> String,
) -> (Credentials, Option<Step>) {
    let accepts = |password: &str| accepted.is_none_or(|a| a.contains(&password_hash(password)));
    let c = kept.filter(|c| accepts(&c.password)).unwrap_or_else(|| Credentials::new(generate(), now));
    let Some(acl) = acl else { return (c, None) };
    let spread = c.next.as_deref().is_some_and(|next| accepted.is_some() && accepts(next));
    match due(&c, acl, now, spread) {
        Some(step) => (take(step, &c, acl, now, generate), Some(step)),
        None => (c, None),
    }
}

/// When an owned user's passwords need a look next: at once after a step
/// (the next one may be due), soon while a next password waits to spread.
pub fn owned_wake_at(c: &Credentials, acl: Option<&Acl>, stepped: bool, now: u64) -> u64 {
    match (acl, stepped) {
        (None, _) => u64::MAX,
        (Some(_), true) => now + 1,
        (Some(acl), false) => wake_at(c, acl).unwrap_or(now + 5),
    }
}

/// What an event says of `step` for `user`'s credentials `c` (after it).
pub fn note(user: &str, step: Step, c: &Credentials) -> String {
    match step {
        Step::Begin => format!("a new password of the {user} user is being added to every node and Sentinel"),
        Step::Promote => format!(
            "the {user} user's new password is current; the previous one works until {}",
            c.previous.as_ref().map(|(_, until)| rfc3339(*until)).unwrap_or_default()
        ),
        Step::Retire => format!("the {user} user's previous password no longer works"),
    }
}

/// When `c` is due next without any change: the next rotation, or the end
/// of an overlap; `None` while a next password waits to spread.
pub fn wake_at(c: &Credentials, acl: &Acl) -> Option<u64> {
    match (&c.next, &c.previous) {
        (Some(_), _) => None,
        (None, Some((_, until))) => Some(*until),
        (None, None) => Some(c.since.saturating_add(acl.password_rotation_interval.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600;

    fn acl() -> Acl {
        serde_json::from_value(
            serde_json::json!({"passwordRotationInterval": "720h", "passwordOverlap": "1h"}),
        )
        .unwrap()
    }

    #[test]
    fn a_rotation_begins_spreads_promotes_overlaps_and_retires() {
        let acl = acl();
        let start = Credentials::new("old".into(), 1000);
        assert_eq!(due(&start, &acl, 1000 + 720 * HOUR - 1, true), None, "not yet due");
        let at = 1000 + 720 * HOUR;
        assert_eq!(wake_at(&start, &acl), Some(at));
        assert_eq!(due(&start, &acl, at, true), Some(Step::Begin));
        let begun = begin(&start, "new".into());
        assert_eq!((begun.password.as_str(), begun.next.as_deref()), ("old", Some("new")));
        assert_eq!(begun.hashes().len(), 2, "both accepted while the next one spreads");
        assert_eq!(due(&begun, &acl, at + 10 * HOUR, false), None, "waits until every member has it");
        assert_eq!(wake_at(&begun, &acl), None);

        let promoted = promote(&begun, &acl, at + 5);
        assert_eq!(
            (promoted.password.as_str(), promoted.next.as_deref(), promoted.since),
            ("new", None, at + 5)
        );
        let old_hash = tokenplane_api::acl::password_hash("old");
        assert_eq!(promoted.previous, Some((old_hash.clone(), at + 5 + HOUR)));
        assert_eq!(promoted.hashes(), [tokenplane_api::acl::password_hash("new"), old_hash]);
        assert_eq!(due(&promoted, &acl, at + 5 + HOUR - 1, true), None, "the overlap");
        assert_eq!(due(&promoted, &acl, at + 5 + HOUR, true), Some(Step::Retire));

        let retired = retire(&promoted);
        assert_eq!(retired, Credentials::new("new".into(), at + 5));
        assert_eq!(retired.hashes().len(), 1, "only the new one");
        assert_eq!(wake_at(&retired, &acl), Some(at + 5 + 720 * HOUR));
    }

    #[test]
    fn an_owned_user_promotes_only_once_the_master_accepts_the_next_password() {
        let acl = acl();
        let at = 720 * HOUR;
        let current = Credentials::new("old".into(), 0);
        let fresh = || "new".to_owned();
        let none = || unreachable!("no password is generated");
        let hashes = current.hashes();
        let (begun, step) = owned(Some(current.clone()), Some(&hashes), Some(&acl), at, fresh);
        assert_eq!((step, begun.next.as_deref()), (Some(Step::Begin), Some("new")));
        assert_eq!(owned_wake_at(&begun, Some(&acl), true, at), at + 1);
        let waiting = owned(Some(begun.clone()), Some(&hashes), Some(&acl), at + 1, none);
        assert_eq!(waiting, (begun.clone(), None), "the master does not have it yet");
        assert_eq!(owned_wake_at(&begun, Some(&acl), false, at + 1), at + 6);
        let (promoted, step) = owned(Some(begun.clone()), Some(&begun.hashes()), Some(&acl), at + 1, none);
        assert_eq!((step, promoted.password.as_str()), (Some(Step::Promote), "new"));
        assert!(note("issuer", Step::Promote, &promoted).ends_with("works until 1970-01-31T01:00:01Z"));
        let (retired, step) =
            owned(Some(promoted.clone()), Some(&promoted.hashes()), Some(&acl), at + 1 + HOUR, none);
        assert_eq!((step, retired), (Some(Step::Retire), Credentials::new("new".into(), at + 1)));
    }

    #[test]
    fn an_owned_password_redis_does_not_accept_is_replaced_and_never_rotated_off_a_cluster() {
        let acl = acl();
        let edited = Credentials::new("typed by hand".into(), 0);
        let other = [tokenplane_api::acl::password_hash("what Redis has")];
        let (c, step) = owned(Some(edited.clone()), Some(&other), Some(&acl), 1, || "fresh".into());
        assert_eq!((c, step), (Credentials::new("fresh".into(), 1), None));
        let (c, step) = owned(Some(edited.clone()), None, Some(&acl), 1, || unreachable!());
        assert_eq!((c, step), (edited.clone(), None), "a user not made yet takes the Secret's");
        let (c, step) = owned(Some(edited.clone()), None, None, 720 * HOUR * 10, || unreachable!());
        assert_eq!((&c, step), (&edited, None), "a Redis the operator does not run: no rotation");
        assert_eq!(owned_wake_at(&c, None, false, 0), u64::MAX);
    }
}
