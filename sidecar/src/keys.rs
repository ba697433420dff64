//! Signing keys: parsed once into aws-lc-rs key pairs (jsonwebtoken's
//! `encode` re-parses the key on every call, 1.5 to 1.8 times the cost of an
//! Ed25519 signature), published as a JWKS, and used to verify our own tokens.

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jsonwebtoken::jwk::{JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use tokenplane_api::claims::{ACCESS_TOKEN_TYP, AccessTokenClaims};
pub use tokenplane_api::signing::{KeyError, KeyPair};
use tokenplane_api::tokenpolicy::SigningAlgorithm;

use crate::clock::unix_now;

/// A public key bound to the one algorithm it verifies.
struct Verifier {
    key: DecodingKey,
    alg: Algorithm,
}

/// What a token must carry beyond a valid signature.
#[derive(Clone, Debug, Default)]
pub struct Checks {
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub leeway: u64,
    /// The required `iss`, if checked.
    pub issuer: Option<String>,
    /// `aud` must name one of these; unchecked when empty.
    pub audiences: Vec<String>,
}

/// The JOSE header fields a verifier reads (RFC 7515 §4.1). Duplicate
/// fields fail to parse.
#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(default, borrow)]
    typ: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    kid: Option<Cow<'a, str>>,
    /// Extensions the token says must be understood: we understand none.
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

/// Longest JOSE header read; ours is about 60 bytes.
const MAX_HEADER: usize = 512;

/// Public keys by kid, each bound to its own algorithm: a token whose
/// header names another algorithm (`none`, or HS256 keyed with the public
/// key) fails, whatever its signature.
pub struct PublicKeys {
    verifiers: HashMap<String, Verifier>,
    checks: Checks,
}

impl PublicKeys {
    /// Verifiers for every key of `set`; each must have a `kid` and an
    /// asymmetric `alg` we sign with.
    pub fn from_jwks(set: &JwkSet, checks: &Checks) -> Result<Self, KeyError> {
        let mut verifiers = HashMap::new();
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            let invalid = |reason: String| KeyError::Invalid { kid: kid.clone(), reason };
            if kid.is_empty() {
                return Err(invalid("a JWKS key has no kid".into()));
            }
            let alg = match jwk.common.key_algorithm {
                Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
                Some(KeyAlgorithm::ES256) => Algorithm::ES256,
                Some(KeyAlgorithm::RS256) => Algorithm::RS256,
                other => return Err(invalid(format!("alg {other:?} is not EdDSA, ES256 or RS256"))),
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(e.to_string()))?;
            verifiers.insert(kid, Verifier { key, alg });
        }
        Ok(Self { verifiers, checks: checks.clone() })
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.verifiers.contains_key(kid)
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.verifiers.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.verifiers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.verifiers.is_empty()
    }

    /// Verifies an access token: signature by one of these keys with its
    /// own algorithm, `typ`, `exp`/`nbf`, and the checks the keys were built
    /// with. One pass: the header and the claims are each decoded once.
    pub fn verify(&self, token: &str) -> Result<AccessTokenClaims, InvalidToken> {
        let (signed, signature) = token.rsplit_once('.').ok_or(InvalidToken::Malformed)?;
        let (header, payload) = signed.split_once('.').ok_or(InvalidToken::Malformed)?;
        if payload.contains('.') {
            return Err(InvalidToken::Malformed);
        }
        let mut json = [0; MAX_HEADER];
        let len = URL_SAFE_NO_PAD.decode_slice(header, &mut json).map_err(|_| InvalidToken::Malformed)?;
        let header: Header = serde_json::from_slice(&json[..len]).map_err(|_| InvalidToken::Malformed)?;
        if header.crit.is_some() {
            return Err(InvalidToken::Critical);
        }
        if header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            return Err(InvalidToken::WrongType);
        }
        let kid = header.kid.ok_or(InvalidToken::UnknownKey { kid: None })?;
        let v = self
            .verifiers
            .get(kid.as_ref())
            .ok_or_else(|| InvalidToken::UnknownKey { kid: Some(kid.into()) })?;
        if Algorithm::from_str(&header.alg).ok() != Some(v.alg) {
            return Err(InvalidToken::Algorithm);
        }
        match jsonwebtoken::crypto::verify(signature, signed.as_bytes(), &v.key, v.alg) {
            Ok(true) => {}
            Ok(false) => return Err(InvalidToken::Signature),
            Err(_) => return Err(InvalidToken::Malformed),
        }
        let claims = decode_payload(payload)?;
        self.checks.apply(&claims, unix_now())?;
        Ok(claims)
    }
}

impl Checks {
    /// The registered claims' checks (RFC 7519 §4.1) at `now`.
    fn apply(&self, claims: &AccessTokenClaims, now: u64) -> Result<(), InvalidToken> {
        if claims.exp.saturating_add(self.leeway) <= now {
            return Err(InvalidToken::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now.saturating_add(self.leeway)) {
            return Err(InvalidToken::NotYetValid);
        }
        if self.issuer.as_ref().is_some_and(|iss| *iss != claims.iss) {
            return Err(InvalidToken::Issuer);
        }
        if !self.audiences.is_empty() && !self.audiences.iter().any(|a| claims.aud.contains(a)) {
            return Err(InvalidToken::Audience);
        }
        Ok(())
    }
}

/// The claims of a compact JWS's payload, unverified.
pub fn decode_payload(payload: &str) -> Result<AccessTokenClaims, InvalidToken> {
    let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| InvalidToken::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| InvalidToken::Malformed)
}
/// The keys one issuer holds: one signs, all verify, all are published.
pub struct KeySet {
    active: KeyPair,
    active_kid: String,
    /// The active key was withdrawn (compromised): nothing may be signed.
    withdrawn: bool,
    /// base64url of the active key's JOSE header, computed once.
    header_b64: String,
    public: PublicKeys,
    jwks: Bytes,
}

/// Why a token did not verify. Introspection only says "inactive"; the
/// reason goes to debug logs.
#[derive(Debug, thiserror::Error)]
pub enum InvalidToken {
    #[error("not a JWT")]
    Malformed,
    #[error("unknown kid")]
    UnknownKey { kid: Option<String> },
    #[error("typ is not at+jwt")]
    WrongType,
    #[error("the header names critical extensions")]
    Critical,
    #[error("alg is not the key's algorithm")]
    Algorithm,
    #[error("the signature does not verify")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("not valid yet (nbf)")]
    NotYetValid,
    #[error("iss is not the expected issuer")]
    Issuer,
    #[error("aud names none of the expected audiences")]
    Audience,
}

impl KeySet {
    /// Builds a key set from (kid, key) pairs; `active` names the signer.
    pub fn new(active: &str, keys: Vec<(String, KeyPair)>) -> Result<Self, KeyError> {
        let mut jwks = JwkSet { keys: vec![] };
        let mut signer = None;
        for (kid, pair) in keys {
            jwks.keys.push(pair.public_jwk(Some(kid.clone())));
            if kid == active {
                signer = Some((kid, pair));
            }
        }
        let public = PublicKeys::from_jwks(&jwks, &Checks::default())?;
        let (kid, active) = signer.ok_or_else(|| KeyError::NoActive(active.into()))?;
        let mut header = jsonwebtoken::Header::new(active.algorithm());
        header.typ = Some(ACCESS_TOKEN_TYP.into());
        header.kid = Some(kid.clone());
        let header_b64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("header serializes"));
        let jwks = Bytes::from(serde_json::to_vec(&jwks).expect("JWKS serializes"));
        Ok(Self { active, active_kid: kid, withdrawn: false, header_b64, public, jwks })
    }

    /// The keys of a keys Secret's entries (or its mounted files): one
    /// `<kid>.pem` per key, and `active` naming the kid that signs.
    pub fn from_entries(entries: &std::collections::BTreeMap<String, Vec<u8>>) -> Result<Self, KeyError> {
        let active = entries
            .get(tokenplane_api::signing::ACTIVE)
            .map(|a| String::from_utf8_lossy(a).trim().to_owned())
            .unwrap_or_default();
        let pairs = entries
            .iter()
            .filter_map(|(k, pem)| Some((k.strip_suffix(".pem")?.to_owned(), pem)))
            .map(|(kid, pem)| KeyPair::from_pem(&kid, pem).map(|pair| (kid, pair)))
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(&active, pairs)
    }

    /// One fresh key, named by its thumbprint.
    pub fn generate(alg: SigningAlgorithm) -> Result<Self, KeyError> {
        let pair = KeyPair::generate(alg)?;
        let kid = pair.thumbprint();
        Self::new(&kid.clone(), vec![(kid, pair)])
    }

    pub fn algorithm(&self) -> Algorithm {
        self.active.algorithm()
    }

    /// The key id that signs.
    pub fn active_kid(&self) -> &str {
        &self.active_kid
    }

    /// These keys without those `published` does not name: the operator
    /// withdrew them from the JWKS (a compromised key) before this issuer's
    /// mounted Secret caught up. A withdrawn key neither verifies nor is
    /// served, and a withdrawn active key signs nothing.
    pub fn within(self, published: &[String]) -> Result<Self, KeyError> {
        let mut set: JwkSet = serde_json::from_slice(&self.jwks).expect("our own JWKS parses");
        set.keys.retain(|k| k.common.key_id.as_ref().is_some_and(|kid| published.contains(kid)));
        let public = PublicKeys::from_jwks(&set, &Checks::default())?;
        let jwks = Bytes::from(serde_json::to_vec(&set).expect("JWKS serializes"));
        Ok(Self { withdrawn: !published.contains(&self.active_kid), public, jwks, ..self })
    }

    /// Whether the active key may sign.
    pub fn can_sign(&self) -> bool {
        !self.withdrawn
    }

    /// Every key id held (signing or not).
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.public.kids()
    }

    /// Signs `claims` as a compact JWS with the active key.
    pub fn sign<C: Serialize>(&self, claims: &C) -> String {
        let payload = serde_json::to_vec(claims).expect("claims serialize");
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 100);
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = self.active.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        token
    }

    /// Verifies one of our access tokens: signature by a key of this set,
    /// `typ`, algorithm bound to the key, and expiry.
    pub fn verify(&self, token: &str) -> Result<AccessTokenClaims, InvalidToken> {
        self.public.verify(token)
    }

    /// The JWKS document (RFC 7517) of every key.
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenplane_api::claims::Audience;

    fn claims(exp: u64) -> AccessTokenClaims {
        AccessTokenClaims {
            iss: "https://issuer.test".into(),
            sub: "c".into(),
            aud: Audience::One("https://api".into()),
            exp,
            iat: 1,
            nbf: None,
            jti: "j".into(),
            client_id: "c".into(),
            scope: None,
            auth_time: None,
        }
    }

    #[test]
    fn every_algorithm_signs_what_it_verifies() {
        for alg in [SigningAlgorithm::EdDSA, SigningAlgorithm::ES256, SigningAlgorithm::RS256] {
            let keys = KeySet::generate(alg).unwrap();
            let token = keys.sign(&claims(u64::MAX / 2));
            assert_eq!(keys.verify(&token).unwrap(), claims(u64::MAX / 2), "{alg:?}");
            let jwks: serde_json::Value = serde_json::from_slice(&keys.jwks()).unwrap();
            assert_eq!(jwks["keys"][0]["alg"], alg.as_str());
        }
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token with this header and these claims, signed by `pair`.
    fn signed(pair: &KeyPair, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        format!("{input}.{}", b64(&pair.sign(input.as_bytes())))
    }

    fn one_key(checks: &Checks) -> (KeyPair, PublicKeys) {
        let pair = KeyPair::generate(SigningAlgorithm::EdDSA).unwrap();
        let jwks = JwkSet { keys: vec![pair.public_jwk(Some("k1".into()))] };
        let public = PublicKeys::from_jwks(&jwks, checks).unwrap();
        (pair, public)
    }

    fn header() -> serde_json::Value {
        serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k1"})
    }

    fn claims_json(edit: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
        let mut c = serde_json::to_value(claims(unix_now() + 600)).unwrap();
        edit(&mut c);
        c
    }

    #[test]
    fn tampered_expired_and_foreign_tokens_fail() {
        let keys = KeySet::generate(SigningAlgorithm::EdDSA).unwrap();
        let token = keys.sign(&claims(u64::MAX / 2));
        let (head, sig) = token.rsplit_once('.').unwrap();
        let forged = format!(
            "{head}.{}",
            if sig.starts_with('A') { sig.replacen('A', "B", 1) } else { sig.replacen(&sig[..1], "A", 1) }
        );
        assert!(matches!(keys.verify(&forged), Err(InvalidToken::Signature)));
        assert!(matches!(keys.verify(&keys.sign(&claims(10))), Err(InvalidToken::Expired)));
        let other = KeySet::generate(SigningAlgorithm::EdDSA).unwrap();
        assert!(matches!(other.verify(&token), Err(InvalidToken::UnknownKey { kid: Some(_) })));
        assert!(matches!(keys.verify("abc"), Err(InvalidToken::Malformed)));
    }

    #[test]
    fn the_header_is_read_strictly() {
        let (pair, keys) = one_key(&Checks::default());
        let ok = claims_json(|_| {});
        assert!(keys.verify(&signed(&pair, &header(), &ok)).is_ok());
        let with = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut h = header();
            edit(&mut h);
            keys.verify(&signed(&pair, &h, &ok))
        };
        assert!(matches!(with(&|h| h["alg"] = "none".into()), Err(InvalidToken::Algorithm)));
        assert!(matches!(with(&|h| h["alg"] = "ES256".into()), Err(InvalidToken::Algorithm)));
        assert!(matches!(with(&|h| h["typ"] = "JWT".into()), Err(InvalidToken::WrongType)));
        assert!(matches!(with(&|h| h["crit"] = serde_json::json!(["exp"])), Err(InvalidToken::Critical)));
        assert!(
            matches!(with(&|h| h["kid"] = "k2".into()), Err(InvalidToken::UnknownKey { kid: Some(k) }) if k == "k2")
        );
        assert!(matches!(
            with(&|h| drop(h.as_object_mut().unwrap().remove("kid"))),
            Err(InvalidToken::UnknownKey { kid: None })
        ));
        // The same field twice is ambiguous, whichever copy a parser keeps.
        let twice = r#"{"alg":"EdDSA","typ":"at+jwt","kid":"k1","kid":"k2"}"#;
        let input = format!("{}.{}", b64(twice.as_bytes()), b64(ok.to_string().as_bytes()));
        let token = format!("{input}.{}", b64(&pair.sign(input.as_bytes())));
        assert!(matches!(keys.verify(&token), Err(InvalidToken::Malformed)));
    }

    #[test]
    fn the_token_has_exactly_three_unpadded_parts() {
        let (pair, keys) = one_key(&Checks::default());
        let token = signed(&pair, &header(), &claims_json(|_| {}));
        assert!(matches!(keys.verify(&format!("{token}.x")), Err(InvalidToken::Malformed)));
        let (input, sig) = token.rsplit_once('.').unwrap();
        assert!(matches!(keys.verify(&format!("{input}.{sig}==")), Err(InvalidToken::Malformed)));
        assert!(matches!(
            keys.verify(&format!("{input}.")),
            Err(InvalidToken::Malformed | InvalidToken::Signature)
        ));
        // A signature over other claims does not move to these.
        let other = signed(&pair, &header(), &claims_json(|c| c["sub"] = "someone else".into()));
        let (_, other_sig) = other.rsplit_once('.').unwrap();
        assert!(matches!(keys.verify(&format!("{input}.{other_sig}")), Err(InvalidToken::Signature)));
    }

    #[test]
    fn registered_claims_are_checked_with_the_leeway() {
        let checks = Checks {
            leeway: 30,
            issuer: Some("https://issuer.test".into()),
            audiences: vec!["https://other".into(), "https://api".into()],
        };
        let (pair, keys) = one_key(&checks);
        let now = unix_now();
        let verify = |edit: &dyn Fn(&mut serde_json::Value)| {
            keys.verify(&signed(&pair, &header(), &claims_json(edit)))
        };
        assert!(verify(&|c| c["exp"] = (now - 10).into()).is_ok(), "expired within the leeway");
        assert!(matches!(verify(&|c| c["exp"] = (now - 31).into()), Err(InvalidToken::Expired)));
        assert!(verify(&|c| c["nbf"] = (now + 10).into()).is_ok(), "not before, within the leeway");
        assert!(matches!(verify(&|c| c["nbf"] = (now + 60).into()), Err(InvalidToken::NotYetValid)));
        assert!(matches!(verify(&|c| c["iss"] = "https://evil.test".into()), Err(InvalidToken::Issuer)));
        assert!(matches!(verify(&|c| c["aud"] = "https://elsewhere".into()), Err(InvalidToken::Audience)));
        assert!(verify(&|c| c["aud"] = serde_json::json!(["https://x", "https://api"])).is_ok());
        assert!(matches!(verify(&|c| c["aud"] = serde_json::json!([])), Err(InvalidToken::Audience)));
        assert!(matches!(
            verify(&|c| drop(c.as_object_mut().unwrap().remove("exp"))),
            Err(InvalidToken::Malformed)
        ));
        assert!(matches!(verify(&|c| c["aud"] = 7.into()), Err(InvalidToken::Malformed)));
    }
}
