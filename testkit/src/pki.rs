//! A throwaway certificate authority: a CA and the leaf certificates it
//! signs (ECDSA P-256), as PEM, for TLS servers and clients under test.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

/// A certificate and its private key, PEM.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Where a [`Leaf`] was written.
#[derive(Clone, Debug)]
pub struct LeafFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Leaf {
    /// Writes `NAME.crt` and `NAME.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<LeafFiles> {
        let files = LeafFiles { cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) };
        std::fs::write(&files.cert, &self.cert_pem)?;
        std::fs::write(&files.key, &self.key_pem)?;
        Ok(files)
    }
}

/// What a leaf is for.
#[derive(Clone, Copy, Debug)]
pub enum Usage {
    Server,
    Client,
}

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl TestCa {
    /// A new CA named `name`, valid from an hour ago for a year.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("P-256 key generation");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty names are valid");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        (params.not_before, params.not_after) =
            window(Duration::from_secs(3600), Duration::from_secs(365 * 86400));
        let pem = params.self_signed(&key).expect("self-signing the CA").pem();
        Self { issuer: Issuer::new(params, key), pem }
    }

    /// The CA certificate, PEM: the bundle clients trust.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A leaf for `names` (DNS names or IP addresses), valid for a day.
    pub fn leaf(&self, names: &[&str], usage: Usage) -> Leaf {
        self.leaf_valid(names, usage, window(Duration::from_secs(60), Duration::from_secs(86400)))
    }

    /// A leaf for loopback (`localhost`, `127.0.0.1`, `::1`).
    pub fn loopback(&self, usage: Usage) -> Leaf {
        self.leaf(&["localhost", "127.0.0.1", "::1"], usage)
    }

    /// A leaf valid only between `not_before` and `not_after`.
    pub fn leaf_valid(
        &self,
        names: &[&str],
        usage: Usage,
        (not_before, not_after): (time::OffsetDateTime, time::OffsetDateTime),
    ) -> Leaf {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("P-256 key generation");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("valid subject names");
        params.distinguished_name.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        (params.not_before, params.not_after) = (not_before, not_after);
        let cert = params.signed_by(&key, &self.issuer).expect("signing the leaf");
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

/// From `before` ago until `after` from now.
pub fn window(before: Duration, after: Duration) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = SystemTime::now();
    ((now - before).into(), (now + after).into())
}
