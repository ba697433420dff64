//! The signing keys: what the keys Secret records (each key's state and
//! since when), the rotation `signing::plan` makes of it, and what follows
//! from that: the keys Secret as it should be and the public JWKS.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde::{Deserialize, Serialize};
use tokenplane_api::TokenPolicy;
use tokenplane_api::signing::{self as keyfmt, KeyPair};
use tokenplane_api::storage;
use tokenplane_api::tokenpolicy::KeyState;

use super::Inputs;
use crate::reconcile::signing::{self, Key, Timing, Verifier};
use crate::reconcile::{Invalid, managed_meta};

/// Annotation of the keys Secret recording each key's state and since when
/// (JSON), so a rotation survives operator restarts.
const KEY_STATES: &str = "tokenplane.io/key-states";
/// Annotation of a TokenPolicy naming a compromised kid: it leaves the JWKS
/// at once and a new key signs at once.
const COMPROMISED_KEY: &str = "tokenplane.io/compromised-key";
/// How long past the access-token lifetime a key that stopped signing stays
/// published: the verifiers' clock skew (the agent's `--clock-skew`
/// default, 5 s), plus how late the operator can learn that the last issuer
/// stopped signing with it (a heartbeat interval, and the 30 s between looks
/// while an issuer still signs with a retiring key).
const RETIRE_MARGIN: u64 = 5 + storage::HEARTBEAT_INTERVAL_SECS + 30;

/// The keys as the keys Secret holds them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Keys {
    pub keys: Vec<Key>,
    pems: BTreeMap<String, Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct Recorded {
    kid: String,
    state: KeyState,
    since: u64,
}

impl Keys {
    /// Reads a keys Secret. Keys without a recorded state (a Secret made by
    /// hand, as the standalone issuer reads it) are adopted: `active` signs,
    /// the others retire. A state without its PEM is dropped.
    pub fn read(secret: Option<&Secret>, now: u64) -> Result<Self, Invalid> {
        let Some(secret) = secret else { return Ok(Self::default()) };
        let data = secret.data.clone().unwrap_or_default();
        let pems: BTreeMap<String, Vec<u8>> = data
            .iter()
            .filter_map(|(k, v)| Some((k.strip_suffix(".pem")?.to_owned(), v.0.clone())))
            .collect();
        for (kid, pem) in &pems {
            KeyPair::from_pem(kid, pem).map_err(|e| {
                Invalid::keys(format!(
                    "the keys Secret {}: {e}",
                    secret.metadata.name.as_deref().unwrap_or("")
                ))
            })?;
        }
        let recorded = secret.metadata.annotations.as_ref().and_then(|a| a.get(KEY_STATES));
        let keys = match recorded.and_then(|json| serde_json::from_str::<Vec<Recorded>>(json).ok()) {
            Some(recorded) => recorded
                .into_iter()
                .filter(|r| pems.contains_key(&r.kid))
                .map(|r| Key { kid: r.kid, state: r.state, since: r.since })
                .collect(),
            None => {
                let active =
                    data.get(keyfmt::ACTIVE).map(|a| String::from_utf8_lossy(&a.0).trim().to_owned());
                let state = |kid: &str| {
                    if Some(kid) == active.as_deref() { KeyState::Active } else { KeyState::Retiring }
                };
                pems.keys().map(|kid| Key { kid: kid.clone(), state: state(kid), since: now }).collect()
            }
        };
        Ok(Self { keys, pems })
    }
}

/// Where the signing keys are, for the status.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Rotation {
    pub keys: Vec<Key>,
    /// Live verifiers that do not hold the next key yet.
    pub lagging: Vec<String>,
    /// Live verifiers that do not hold the key that signs: they reject new
    /// tokens until they catch up.
    pub behind: Vec<String>,
    /// The key signing now was promoted before every verifier held it.
    pub forced: bool,
    /// A key dropped at once as compromised.
    pub compromised: Option<String>,
    pub next_at: u64,
    pub next_rotation_at: u64,
}

impl Rotation {
    pub fn active(&self) -> &str {
        self.keys.iter().find(|k| k.state == KeyState::Active).map_or("", |k| k.kid.as_str())
    }
}

/// Plans the keys (an emergency first, if a key is marked compromised) and
/// returns them with every PEM they need, fresh ones included.
pub(super) fn rotate(
    inputs: &Inputs<'_>,
    issuer_url: &str,
    mut new_key: impl FnMut() -> (String, Vec<u8>),
) -> (Rotation, BTreeMap<String, Vec<u8>>) {
    let now = inputs.now;
    let mut pems = inputs.keys.pems.clone();
    let mut new_kid = || {
        let (kid, pem) = new_key();
        pems.insert(kid.clone(), pem);
        kid
    };
    let marked = inputs.policy.metadata.annotations.as_ref().and_then(|a| a.get(COMPROMISED_KEY));
    let compromised = marked.filter(|kid| inputs.keys.keys.iter().any(|k| k.kid == **kid)).cloned();
    let keys = match &compromised {
        Some(kid) => signing::emergency(&inputs.keys.keys, kid, now, &mut new_kid),
        None => inputs.keys.keys.clone(),
    };
    let verifiers: Vec<Verifier> = inputs
        .heartbeats
        .iter()
        .filter(|(_, beat)| beat.issuer == issuer_url)
        .map(|(id, beat)| Verifier {
            id: id.clone(),
            seen_at: now,
            kids: beat.kids.clone(),
            signing: beat.signing.clone(),
        })
        .collect();
    let timing = Timing::of(&inputs.policy.spec, RETIRE_MARGIN, storage::HEARTBEAT_TTL_SECS);
    let plan = signing::plan(&keys, &verifiers, timing, now, &mut new_kid);
    pems.retain(|kid, _| plan.keys.iter().any(|k| k.kid == *kid));
    let mut rotation = Rotation {
        keys: plan.keys,
        lagging: plan.lagging,
        behind: Vec::new(),
        forced: plan.forced,
        compromised,
        next_at: plan.next_at,
        next_rotation_at: plan.next_rotation_at,
    };
    let active = rotation.active().to_owned();
    rotation.behind = verifiers.into_iter().filter(|v| !v.kids.contains(&active)).map(|v| v.id).collect();
    (rotation, pems)
}

pub(super) fn jwks(keys: &[Key], pems: &BTreeMap<String, Vec<u8>>) -> String {
    let jwks: Vec<_> = pems
        .iter()
        .filter(|(kid, _)| keys.iter().any(|k| k.kid == **kid))
        .map(|(kid, pem)| {
            KeyPair::from_pem(kid, pem).expect("PEMs were checked").public_jwk(Some(kid.clone()))
        })
        .collect();
    serde_json::json!({ "keys": jwks }).to_string()
}

pub(super) fn keys_secret(
    policy: &TokenPolicy,
    rotation: &Rotation,
    pems: &BTreeMap<String, Vec<u8>>,
) -> Secret {
    let mut data: BTreeMap<String, ByteString> =
        pems.iter().map(|(kid, pem)| (keyfmt::pem_entry(kid), ByteString(pem.clone()))).collect();
    data.insert(keyfmt::ACTIVE.into(), ByteString(rotation.active().as_bytes().to_vec()));
    let recorded: Vec<Recorded> = rotation
        .keys
        .iter()
        .map(|k| Recorded { kid: k.kid.clone(), state: k.state, since: k.since })
        .collect();
    let name = policy.metadata.name.clone().unwrap_or_default();
    let mut metadata = managed_meta(policy, policy.keys_secret_name(), [("tokenplane.io/policy", name)]);
    metadata.annotations =
        Some(BTreeMap::from([(KEY_STATES.to_owned(), serde_json::to_string(&recorded).expect("states"))]));
    Secret { metadata, type_: Some("Opaque".into()), data: Some(data), ..Secret::default() }
}

/// The public JWKS as the ConfigMap `<policy>-jwks`.
pub(super) fn jwks_config_map(policy: &TokenPolicy, jwks: &str) -> ConfigMap {
    let name = policy.metadata.name.clone().unwrap_or_default();
    ConfigMap {
        metadata: managed_meta(policy, format!("{name}-jwks"), [("tokenplane.io/policy", name)]),
        data: Some(BTreeMap::from([("jwks.json".to_owned(), jwks.to_owned())])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use tokenplane_api::storage::VerifierHeartbeat;

    use super::*;
    use crate::reconcile::tokenpolicy::fixtures::{
        DAY, DEFAULT, jwks_kids, new_key, policy, reconcile, states,
    };

    fn beat(issuer: &str, kids: &[&str]) -> VerifierHeartbeat {
        VerifierHeartbeat {
            issuer: issuer.into(),
            kids: kids.iter().map(|k| (*k).to_owned()).collect(),
            signing: None,
        }
    }

    #[test]
    fn a_rotation_publishes_then_promotes_once_every_verifier_of_this_issuer_holds_the_key() {
        let p = policy(DEFAULT);
        let first = reconcile(&p, None, &[], 0);
        let k1 = first.rotation.active().to_owned();
        let publish_at = 30 * DAY - 300;
        let published = reconcile(&p, Some(&first.keys_secret), &[], publish_at);
        assert_eq!(states(&published), [KeyState::Active, KeyState::Published]);
        let k2 = published.rotation.keys[1].kid.clone();
        assert_eq!(published.rotation.active(), k1, "the new key does not sign yet");
        assert_eq!(jwks_kids(&published).len(), 2, "but it is published");

        let issuer = "https://default-issuer.auth.svc";
        let lagging = [
            ("agent:a".to_owned(), beat(issuer, &[&k1, &k2])),
            ("agent:b".to_owned(), beat(issuer, &[&k1])),
            ("agent:other".to_owned(), beat("https://other.example", &[])),
        ];
        let due = reconcile(&p, Some(&published.keys_secret), &lagging, 30 * DAY);
        assert_eq!(due.rotation.active(), k1, "agent:b does not hold the new key yet");
        assert_eq!(due.rotation.lagging, ["agent:b"], "another issuer's verifiers are not waited for");
        assert!(due.rotation.next_at <= 30 * DAY + 30, "looks again soon");

        let forced = reconcile(&p, Some(&due.keys_secret), &lagging, publish_at + 600);
        assert_eq!(forced.rotation.active(), k2, "the propagation timeout bounds the wait");
        assert!(forced.rotation.forced);
        assert_eq!(forced.rotation.behind, ["agent:b"], "the one that cannot verify new tokens");

        let caught_up = [("agent:b".to_owned(), beat(issuer, &[&k1, &k2]))];
        let promoted = reconcile(&p, Some(&due.keys_secret), &caught_up, 30 * DAY + 20);
        assert_eq!(promoted.rotation.active(), k2);
        assert_eq!(states(&promoted), [KeyState::Retiring, KeyState::Active]);
        assert_eq!(promoted.keys_secret.data.as_ref().unwrap()["active"].0, k2.as_bytes());
        assert!(promoted.rotation.behind.is_empty() && !promoted.rotation.forced);

        let retired = reconcile(&p, Some(&promoted.keys_secret), &[], 30 * DAY + 20 + 900 + RETIRE_MARGIN);
        assert_eq!(jwks_kids(&retired), [k2.as_str()], "retired once every token it signed expired");
        assert!(!retired.keys_secret.data.as_ref().unwrap().contains_key(&format!("{k1}.pem")));
    }

    #[test]
    fn a_compromised_key_leaves_at_once_and_a_new_one_signs() {
        let mut p = policy(DEFAULT);
        let first = reconcile(&p, None, &[], 0);
        let k1 = first.rotation.active().to_owned();
        p.metadata.annotations = Some(BTreeMap::from([(COMPROMISED_KEY.to_owned(), k1.clone())]));
        let d = reconcile(&p, Some(&first.keys_secret), &[], 60);
        assert_eq!(d.rotation.compromised.as_deref(), Some(k1.as_str()));
        assert_ne!(d.rotation.active(), k1);
        assert!(!jwks_kids(&d).contains(&k1), "tokens it signed stop verifying");
        let again = reconcile(&p, Some(&d.keys_secret), &[], 120);
        assert_eq!(again.rotation.compromised, None, "handled once: the annotation names a key that is gone");
        assert_eq!(again.rotation.active(), d.rotation.active());
    }

    #[test]
    fn a_hand_made_keys_secret_is_adopted_and_a_broken_one_refused() {
        let (kid, pem) = new_key();
        let mut secret = Secret {
            data: Some(BTreeMap::from([
                (format!("{kid}.pem"), ByteString(pem)),
                ("active".into(), ByteString(kid.as_bytes().to_vec())),
            ])),
            ..Secret::default()
        };
        let d = reconcile(&policy(DEFAULT), Some(&secret), &[], 5);
        assert_eq!(d.rotation.active(), kid, "its active key keeps signing");
        secret.data.as_mut().unwrap().insert(format!("{kid}.pem"), ByteString(b"not a key".to_vec()));
        let invalid = Keys::read(Some(&secret), 5).unwrap_err();
        assert_eq!(invalid.reason, "InvalidKeys");
        assert!(invalid.message.contains(&kid), "{}", invalid.message);
    }
}
