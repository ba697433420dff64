//! Signing-key rotation of a TokenPolicy, as a pure planner: the keys as
//! they are, what the verifiers (issuers and agents) last reported, and the
//! time, in; the keys as they should be and when to look again, out. The
//! controller stores the result in the policy's status and keys Secret and
//! requeues, so a rotation survives operator restarts.
//!
//! A key is published first, promoted to signing once every live verifier
//! reports holding it (or, with a warning, once the propagation timeout has
//! passed), and kept published while it retires until the longest-lived
//! token it signed has expired: at no time can a valid token fail to verify
//! for want of its key.

use tokenplane_api::TokenPolicySpec;
use tokenplane_api::tokenpolicy::KeyState;

/// One signing key; times are unix seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    pub kid: String,
    pub state: KeyState,
    /// When the key entered its state.
    pub since: u64,
}

/// An issuer or agent, as its last heartbeat in Redis reported it.
#[derive(Clone, Debug, Default)]
pub struct Verifier {
    pub id: String,
    pub seen_at: u64,
    /// The kids it holds.
    pub kids: Vec<String>,
    /// The kid an issuer signs with (a mounted Secret reaches pods late, so
    /// an issuer may sign with a key after it was promoted away).
    pub signing: Option<String>,
}

/// The policy's clock, in seconds.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub rotation_interval: u64,
    pub propagation_timeout: u64,
    /// How long after it stops signing a key is still needed: the access
    /// token lifetime plus the verifiers' clock skew.
    pub longest_token: u64,
    /// A verifier silent for longer is gone and not waited for.
    pub heartbeat_ttl: u64,
}

impl Timing {
    pub fn of(spec: &TokenPolicySpec, clock_skew: u64, heartbeat_ttl: u64) -> Self {
        Self {
            rotation_interval: spec.signing.rotation_interval.as_secs(),
            propagation_timeout: spec.signing.propagation_timeout.as_secs(),
            longest_token: spec.lifetimes.access_token.as_secs() + clock_skew,
            heartbeat_ttl,
        }
    }
}

/// The keys as they should be now.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub keys: Vec<Key>,
    /// Live verifiers that do not hold the newest key yet.
    pub lagging: Vec<String>,
    /// A key was promoted although some live verifiers never reported it.
    pub forced: bool,
    /// When the next step is due (unix seconds).
    pub next_at: u64,
    /// When the next rotation starts.
    pub next_rotation_at: u64,
}

fn with_state(keys: &[Key], state: KeyState) -> Option<&Key> {
    keys.iter().filter(|k| k.state == state).max_by_key(|k| k.since)
}

/// The next keys. `new_kid` names a key to generate, if one is needed.
pub fn plan(
    keys: &[Key],
    verifiers: &[Verifier],
    t: Timing,
    now: u64,
    new_kid: impl FnOnce() -> String,
) -> Plan {
    let live: Vec<&Verifier> = verifiers.iter().filter(|v| now < v.seen_at + t.heartbeat_ttl).collect();
    let signs = |kid: &str| live.iter().any(|v| v.signing.as_deref() == Some(kid));
    let mut keys: Vec<Key> = keys.to_vec();
    let mut still_signed = false;
    for k in keys.iter_mut().filter(|k| k.state == KeyState::Retiring && signs(&k.kid)) {
        // Tokens it signs now live until now + their lifetime.
        (k.since, still_signed) = (now, true);
    }
    keys.retain(|k| !(k.state == KeyState::Retiring && now >= k.since + t.longest_token));
    let mut new_kid = Some(new_kid);
    let mut generate =
        |state| Key { kid: new_kid.take().map_or_else(String::new, |f| f()), state, since: now };
    if with_state(&keys, KeyState::Active).is_none() {
        // Nothing signs (a new policy): a key nobody can know yet is no
        // worse than none, so it signs at once.
        match keys.iter_mut().filter(|k| k.state == KeyState::Published).max_by_key(|k| k.since) {
            Some(next) => (next.state, next.since) = (KeyState::Active, now),
            None => keys.push(generate(KeyState::Active)),
        }
    }
    let active = with_state(&keys, KeyState::Active).expect("a key is active").clone();
    let due = active.since + t.rotation_interval;
    if with_state(&keys, KeyState::Published).is_none() && now + t.propagation_timeout >= due {
        keys.push(generate(KeyState::Published));
    }
    let mut lagging = Vec::new();
    let mut forced = false;
    if let Some(next) = with_state(&keys, KeyState::Published).cloned() {
        lagging = live.iter().filter(|v| !v.kids.contains(&next.kid)).map(|v| v.id.clone()).collect();
        let propagated = lagging.is_empty() || now >= next.since + t.propagation_timeout;
        if now >= due && propagated {
            forced = !lagging.is_empty();
            for k in &mut keys {
                if k.kid == active.kid {
                    (k.state, k.since) = (KeyState::Retiring, now);
                } else if k.kid == next.kid {
                    (k.state, k.since) = (KeyState::Active, now);
                }
            }
        }
    }
    let (next_at, next_rotation_at) = next_step(&keys, !lagging.is_empty() || still_signed, t, now);
    Plan { keys, lagging, forced, next_at, next_rotation_at }
}

/// When something is due next: a retiring key to drop, the next key to
/// publish or promote, or (while verifiers lag, or an issuer still signs
/// with a retiring key) another look at their heartbeats.
fn next_step(keys: &[Key], waiting: bool, t: Timing, now: u64) -> (u64, u64) {
    let active = with_state(keys, KeyState::Active).expect("a key is active");
    let rotation = active.since + t.rotation_interval;
    let mut at = vec![rotation.saturating_sub(t.propagation_timeout), rotation];
    at.extend(keys.iter().filter(|k| k.state == KeyState::Retiring).map(|k| k.since + t.longest_token));
    if let Some(next) = with_state(keys, KeyState::Published) {
        at.push(next.since + t.propagation_timeout);
    }
    if waiting {
        at.push(now + t.heartbeat_ttl.min(30));
    }
    (at.into_iter().filter(|a| *a > now).min().unwrap_or(now + t.heartbeat_ttl.max(1)), rotation)
}

/// Emergency rotation: `compromised` leaves the key set at once (every token
/// it signed stops verifying) and a new key signs at once, without waiting
/// for the verifiers (they fetch an unknown kid on first sight).
pub fn emergency(keys: &[Key], compromised: &str, now: u64, new_kid: impl FnOnce() -> String) -> Vec<Key> {
    let mut keys: Vec<Key> = keys.iter().filter(|k| k.kid != compromised).cloned().collect();
    for k in keys.iter_mut().filter(|k| k.state == KeyState::Active) {
        (k.state, k.since) = (KeyState::Retiring, now);
    }
    keys.push(Key { kid: new_kid(), state: KeyState::Active, since: now });
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        rotation_interval: 30 * 86_400,
        propagation_timeout: 600,
        longest_token: 905,
        heartbeat_ttl: 90,
    };

    fn kid_counter() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("k{n}")
        }
    }

    fn states(plan: &Plan) -> Vec<(&str, KeyState)> {
        plan.keys.iter().map(|k| (k.kid.as_str(), k.state)).collect()
    }

    #[test]
    fn a_new_policy_signs_at_once_and_publishes_the_next_key_ahead_of_the_rotation() {
        let p = plan(&[], &[], T, 1000, || "k1".into());
        assert_eq!(states(&p), [("k1", KeyState::Active)]);
        assert_eq!(p.next_rotation_at, 1000 + T.rotation_interval);
        assert_eq!(p.next_at, 1000 + T.rotation_interval - T.propagation_timeout, "wake to publish");
        let p = plan(&p.keys, &[], T, p.next_at, || "k2".into());
        assert_eq!(states(&p), [("k1", KeyState::Active), ("k2", KeyState::Published)]);
    }

    #[test]
    fn promotion_waits_for_every_live_verifier_or_the_timeout() {
        let keys = [
            Key { kid: "k1".into(), state: KeyState::Active, since: 0 },
            Key { kid: "k2".into(), state: KeyState::Published, since: T.rotation_interval - 100 },
        ];
        let now = T.rotation_interval;
        let verifier = |id: &str, kids: &[&str], seen_at| Verifier {
            id: id.into(),
            seen_at,
            kids: kids.iter().map(|k| (*k).to_owned()).collect(),
            signing: None,
        };
        let slow = |at| {
            [
                verifier("agent-a", &["k1", "k2"], at),
                verifier("agent-b", &["k1"], at),
                verifier("gone", &["k1"], 0),
            ]
        };
        let p = plan(&keys, &slow(now), T, now, || unreachable!());
        assert_eq!(states(&p), [("k1", KeyState::Active), ("k2", KeyState::Published)], "agent-b lags");
        assert_eq!(p.lagging, ["agent-b"], "a verifier silent past its heartbeat is not waited for");
        assert!(p.next_at <= now + 30);
        let caught_up = [verifier("agent-a", &["k2"], now), verifier("agent-b", &["k1", "k2"], now)];
        let p = plan(&keys, &caught_up, T, now, || unreachable!());
        assert_eq!(states(&p), [("k1", KeyState::Retiring), ("k2", KeyState::Active)]);
        assert!(!p.forced);
        let timeout = T.rotation_interval - 100 + T.propagation_timeout;
        let p = plan(&keys, &slow(timeout), T, timeout, || unreachable!());
        assert_eq!(states(&p), [("k1", KeyState::Retiring), ("k2", KeyState::Active)]);
        assert!(p.forced, "promoted without agent-b: a warning condition");
    }

    #[test]
    fn a_retiring_key_an_issuer_still_signs_with_is_kept_a_token_lifetime_past_its_last_use() {
        let keys = [
            Key { kid: "k1".into(), state: KeyState::Retiring, since: 1000 },
            Key { kid: "k2".into(), state: KeyState::Active, since: 1000 },
        ];
        let late = |at| Verifier {
            id: "issuer-0".into(),
            seen_at: at,
            signing: Some("k1".into()),
            ..Verifier::default()
        };
        let now = 1000 + T.longest_token;
        let p = plan(&keys, &[late(now)], T, now, || unreachable!());
        assert_eq!(
            p.keys[0],
            Key { kid: "k1".into(), state: KeyState::Retiring, since: now },
            "still in use"
        );
        assert!(p.next_at <= now + 30, "looks again soon to see the issuer switch");
        let p = plan(&p.keys, &[], T, now + T.longest_token, || unreachable!());
        assert_eq!(states(&p), [("k2", KeyState::Active)], "retired a token lifetime after its last use");
    }

    #[test]
    fn an_emergency_rotation_drops_the_compromised_key_and_signs_with_a_new_one() {
        let keys = [Key { kid: "k1".into(), state: KeyState::Active, since: 0 }];
        let keys = emergency(&keys, "k1", 50, || "k2".into());
        assert_eq!(keys, [Key { kid: "k2".into(), state: KeyState::Active, since: 50 }]);
    }

    /// A year of rotations, planned every minute (a controller reconciles on
    /// any event, not only when it asked to): every token signed stays
    /// verifiable until it expires, no key signs before the verifiers (an
    /// agent refreshing its JWKS every 5 minutes; an issuer whose mounted
    /// keys Secret lags 4 minutes, so it signs with a key after its
    /// promotion away) hold it or the timeout has passed, and the planned
    /// wake-ups come before anything is due.
    #[test]
    fn no_valid_token_ever_lacks_its_key() {
        let (mut keys, mut next_kid) = (Vec::new(), kid_counter());
        let (mut tokens, mut jwks_seen): (Vec<(String, u64)>, Vec<String>) = (Vec::new(), Vec::new());
        let mut mounted: Vec<Key> = Vec::new();
        let (mut now, mut rotations, mut plan_at) = (0u64, 0, u64::MAX);
        while now < 365 * 86_400 {
            let kids = |keys: &[Key]| keys.iter().map(|k| k.kid.clone()).collect::<Vec<_>>();
            if now % 300 == 0 {
                jwks_seen = kids(&keys);
            }
            if now % 240 == 0 {
                mounted = keys.clone();
            }
            let signing = with_state(&mounted, KeyState::Active).map(|k| k.kid.clone());
            let verifiers = [
                Verifier { id: "agent".into(), seen_at: now, kids: jwks_seen.clone(), signing: None },
                Verifier {
                    id: "issuer".into(),
                    seen_at: now,
                    kids: kids(&mounted),
                    signing: signing.clone(),
                },
            ];
            let before = with_state(&keys, KeyState::Active).map(|k| k.kid.clone());
            let p = plan(&keys, &verifiers, T, now, &mut next_kid);
            let active = with_state(&p.keys, KeyState::Active).unwrap().clone();
            if before.as_ref().is_some_and(|b| *b != active.kid) {
                rotations += 1;
                assert!(jwks_seen.contains(&active.kid) || p.forced, "signing with a key nobody holds");
                assert!(
                    plan_at <= now,
                    "the rotation at {now} came before the wake-up planned for {plan_at}"
                );
            }
            // A retiring key's clock restarting while an issuer still signs
            // with it is no change to wake for.
            let states = |keys: &[Key]| keys.iter().map(|k| (k.kid.clone(), k.state)).collect::<Vec<_>>();
            if states(&p.keys) != states(&keys) {
                assert!(
                    plan_at <= now || keys.is_empty(),
                    "keys changed at {now}, wake-up planned for {plan_at}"
                );
            }
            keys = p.keys;
            plan_at = if plan_at <= now || plan_at == u64::MAX { p.next_at } else { plan_at.min(p.next_at) };
            tokens.extend(signing.map(|kid| (kid, now + 900)));
            tokens.retain(|(_, exp)| *exp > now);
            for (kid, _) in &tokens {
                assert!(keys.iter().any(|k| k.kid == *kid), "a live token's key {kid} is gone at {now}");
            }
            now += 60;
        }
        assert_eq!(rotations, 12, "one rotation per 30 days");
        assert!(keys.len() <= 3, "retired keys are dropped: {keys:?}");
    }
}
