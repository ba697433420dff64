//! Signing keys: parsed once into aws-lc-rs key pairs (jsonwebtoken's
//! `encode` re-parses the key on every call, 1.5 to 1.8 times the cost of an
//! Ed25519 signature), published as a JWKS, and used to verify our own tokens.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jsonwebtoken::jwk::{JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Serialize;
use tokenplane_api::claims::{ACCESS_TOKEN_TYP, AccessTokenClaims};
pub use tokenplane_api::signing::{KeyError, KeyPair};
use tokenplane_api::tokenpolicy::SigningAlgorithm;

struct Verifier {
    key: DecodingKey,
    validation: Validation,
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

/// Public keys by kid, each bound to its own algorithm: a token whose
/// header names another algorithm (`none`, or HS256 keyed with the public
/// key) fails, whatever its signature.
pub struct PublicKeys {
    verifiers: HashMap<String, Verifier>,
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
            verifiers.insert(kid, Verifier { key, validation: validation(alg, checks) });
        }
        Ok(Self { verifiers })
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
    /// own algorithm, `typ`, expiry, and the checks the keys were built with.
    pub fn verify(&self, token: &str) -> Result<AccessTokenClaims, InvalidToken> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| InvalidToken::Malformed)?;
        if header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            return Err(InvalidToken::WrongType);
        }
        let v = header.kid.and_then(|kid| self.verifiers.get(&kid)).ok_or(InvalidToken::UnknownKey)?;
        jsonwebtoken::decode(token, &v.key, &v.validation).map(|d| d.claims).map_err(InvalidToken::Rejected)
    }
}

fn validation(alg: Algorithm, checks: &Checks) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = checks.leeway;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    match &checks.issuer {
        Some(iss) => validation.set_issuer(&[iss]),
        None => validation.iss = None,
    }
    if checks.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&checks.audiences);
    }
    validation
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
    UnknownKey,
    #[error("typ is not at+jwt")]
    WrongType,
    #[error("{0}")]
    Rejected(jsonwebtoken::errors::Error),
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

    #[test]
    fn tampered_expired_and_foreign_tokens_fail() {
        let keys = KeySet::generate(SigningAlgorithm::EdDSA).unwrap();
        let token = keys.sign(&claims(u64::MAX / 2));
        let (head, sig) = token.rsplit_once('.').unwrap();
        let forged = format!(
            "{head}.{}",
            if sig.starts_with('A') { sig.replacen('A', "B", 1) } else { sig.replacen(&sig[..1], "A", 1) }
        );
        assert!(matches!(keys.verify(&forged), Err(InvalidToken::Rejected(_))));
        assert!(matches!(keys.verify(&keys.sign(&claims(10))), Err(InvalidToken::Rejected(_))));
        let other = KeySet::generate(SigningAlgorithm::EdDSA).unwrap();
        assert!(matches!(other.verify(&token), Err(InvalidToken::UnknownKey)));
        assert!(matches!(keys.verify("abc"), Err(InvalidToken::Malformed)));
    }
}
