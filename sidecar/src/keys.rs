//! Signing keys: parsed once into aws-lc-rs key pairs (jsonwebtoken's
//! `encode` re-parses the key on every call, 1.5 to 1.8 times the cost of an
//! Ed25519 signature), published as a JWKS, and used to verify our own tokens.

use std::collections::HashMap;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RSA_PKCS1_SHA256,
    RsaKeyPair, RsaPublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters, EllipticCurveKeyType,
    Jwk, JwkSet, KeyAlgorithm, OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse, RSAKeyParameters,
    RSAKeyType, ThumbprintHash,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Serialize;
use tokenplane_api::claims::{ACCESS_TOKEN_TYP, AccessTokenClaims};
use tokenplane_api::tokenpolicy::SigningAlgorithm;

/// Why keys could not be loaded or generated.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key {kid}: {reason}")]
    Invalid { kid: String, reason: String },
    #[error("the active key {0:?} is not among the keys")]
    NoActive(String),
    #[error("could not generate a {0} key")]
    Generate(&'static str),
}

/// A private key pair, parsed once.
pub enum KeyPair {
    Ed25519(Ed25519KeyPair),
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

impl KeyPair {
    /// Parses a PKCS#8 PEM (`BEGIN PRIVATE KEY`), or a PKCS#1 RSA PEM.
    pub fn from_pem(kid: &str, text: &[u8]) -> Result<Self, KeyError> {
        let invalid = |reason: &str| KeyError::Invalid { kid: kid.into(), reason: reason.into() };
        let pem = pem::parse(text).map_err(|_| invalid("not a PEM document"))?;
        let der = pem.contents();
        match pem.tag() {
            "PRIVATE KEY" => Ed25519KeyPair::from_pkcs8(der)
                .map(Self::Ed25519)
                .or_else(|_| EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map(Self::Es256))
                .or_else(|_| RsaKeyPair::from_pkcs8(der).map(Self::Rs256))
                .map_err(|_| {
                    invalid("PKCS#8 key is neither Ed25519, ECDSA P-256 nor RSA (2048 bits or more)")
                }),
            "RSA PRIVATE KEY" => {
                RsaKeyPair::from_der(der).map(Self::Rs256).map_err(|_| invalid("unusable PKCS#1 RSA key"))
            }
            _ => Err(invalid("expected a PEM block BEGIN PRIVATE KEY (PKCS#8)")),
        }
    }

    pub fn generate(alg: SigningAlgorithm) -> Result<Self, KeyError> {
        let failed = || KeyError::Generate(alg.as_str());
        Ok(match alg {
            SigningAlgorithm::EdDSA => Self::Ed25519(Ed25519KeyPair::generate().map_err(|_| failed())?),
            SigningAlgorithm::ES256 => {
                Self::Es256(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(|_| failed())?)
            }
            SigningAlgorithm::RS256 => {
                Self::Rs256(RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(|_| failed())?)
            }
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Ed25519(_) => Algorithm::EdDSA,
            Self::Es256(_) => Algorithm::ES256,
            Self::Rs256(_) => Algorithm::RS256,
        }
    }

    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Self::Ed25519(k) => k.sign(msg).as_ref().to_vec(),
            Self::Es256(k) => k.sign(&rng, msg).expect("ECDSA signing cannot fail").as_ref().to_vec(),
            Self::Rs256(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &rng, msg, &mut sig).expect("RSA signing cannot fail");
                sig
            }
        }
    }

    fn public_parameters(&self) -> AlgorithmParameters {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        match self {
            Self::Ed25519(k) => AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: b64(k.public_key().as_ref()),
            }),
            Self::Es256(k) => {
                // Uncompressed SEC1 point: 0x04 || x || y.
                let point = k.public_key().as_ref();
                AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                    key_type: EllipticCurveKeyType::EC,
                    curve: EllipticCurve::P256,
                    x: b64(&point[1..33]),
                    y: b64(&point[33..65]),
                })
            }
            Self::Rs256(k) => {
                let c = RsaPublicKeyComponents::<Vec<u8>>::from(k.public_key());
                AlgorithmParameters::RSA(RSAKeyParameters {
                    key_type: RSAKeyType::RSA,
                    n: b64(&c.n),
                    e: b64(&c.e),
                })
            }
        }
    }

    /// The public JWK, with `kid` set.
    fn public_jwk(&self, kid: Option<String>) -> Jwk {
        let key_algorithm = match self.algorithm() {
            Algorithm::EdDSA => KeyAlgorithm::EdDSA,
            Algorithm::ES256 => KeyAlgorithm::ES256,
            _ => KeyAlgorithm::RS256,
        };
        Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(key_algorithm),
                key_id: kid,
                ..Default::default()
            },
            algorithm: self.public_parameters(),
        }
    }

    /// RFC 7638 thumbprint: a stable kid for a key that came without one.
    pub fn thumbprint(&self) -> String {
        self.public_jwk(None).thumbprint(ThumbprintHash::SHA256).expect("thumbprint of a public JWK")
    }
}

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
        header.kid = Some(kid);
        let header_b64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("header serializes"));
        let jwks = Bytes::from(serde_json::to_vec(&jwks).expect("JWKS serializes"));
        Ok(Self { active, header_b64, public, jwks })
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
