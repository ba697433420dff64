//! Rotation of the cluster roles' passwords without downtime (Redis users
//! hold several passwords at once), in three steps, each written to the
//! role's Secret before anything uses it:
//!
//! 1. **Begin** (`spec.acl.passwordRotationInterval` after the current one
//!    became current): a next password joins the Secret; the ACL sync adds
//!    it to every node and Sentinel, and a pod that starts meanwhile
//!    creates the user with both.
//! 2. **Promote**, once every member accepts it: those that log in with it
//!    from a running configuration switch (`masterauth`, the Sentinels'
//!    `auth-pass` and `sentinel-pass`), then it becomes the Secret's
//!    `password`; the old one is still accepted for `passwordOverlap`, the
//!    time for mounted Secrets to update and for running jobs to end.
//! 3. **Retire**: the old password leaves the Secret, then every member.

use tokenplane_api::redis::Acl;

use super::users::Credentials;

/// The step a role's passwords take now.
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
}
