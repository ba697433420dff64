//! Signing keys as the keys Secret holds them (PKCS#8 PEM, one per kid)
//! and as verifiers see them (JWK): the operator generates and publishes
//! them, the issuer signs with them.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RSA_PKCS1_SHA256,
    RsaKeyPair, RsaPublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters, EllipticCurveKeyType,
    Jwk, KeyAlgorithm, OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse, RSAKeyParameters, RSAKeyType,
    ThumbprintHash,
};

use crate::tokenpolicy::SigningAlgorithm;

/// The keys Secret's entry naming the kid that signs; every other key is
/// a `<kid>.pem` entry.
pub const ACTIVE: &str = "active";

/// The entry of a key in the keys Secret.
pub fn pem_entry(kid: &str) -> String {
    format!("{kid}.pem")
}

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

    /// The key as a PKCS#8 PEM (`BEGIN PRIVATE KEY`), as the keys Secret holds it.
    pub fn to_pem(&self) -> String {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
        let der = match self {
            Self::Ed25519(k) => k.to_pkcs8v1().map(|d| d.as_ref().to_vec()),
            Self::Es256(k) => k.to_pkcs8v1().map(|d| d.as_ref().to_vec()),
            Self::Rs256(k) => AsDer::<Pkcs8V1Der>::as_der(k).map(|d| d.as_ref().to_vec()),
        }
        .expect("a key pair we hold exports as PKCS#8");
        pem::encode(&pem::Pem::new("PRIVATE KEY", der))
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Ed25519(_) => Algorithm::EdDSA,
            Self::Es256(_) => Algorithm::ES256,
            Self::Rs256(_) => Algorithm::RS256,
        }
    }

    /// The raw signature of `msg` (JWS signing input).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
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
    pub fn public_jwk(&self, kid: Option<String>) -> Jwk {
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
