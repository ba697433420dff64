//! A certificate chain and its private key, read from PEM files and checked
//! before anything is served with them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::digest;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::sign::CertifiedKey;

/// Where the serving pair lives: the `tls.crt` and `tls.key` of a
/// Kubernetes TLS Secret, or any PEM files.
#[derive(Clone, Debug)]
pub struct PairFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PairError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0} holds no PEM certificate: give the certificate chain (tls.crt), leaf first")]
    NoCertificate(PathBuf),
    #[error("{0} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): give the key (tls.key)")]
    NoKey(PathBuf),
    #[error("cannot parse the certificate in {path}: {reason}")]
    Unparsable { path: PathBuf, reason: String },
    #[error("the certificate in {path} expired at unix time {not_after}: renew it")]
    Expired { path: PathBuf, not_after: i64 },
    #[error("the key in {key} does not belong to the certificate in {cert}, or cannot sign: {reason}")]
    Mismatch { cert: PathBuf, key: PathBuf, reason: String },
}

/// A pair that passed every check, ready for rustls.
pub struct Pair {
    pub certified: Arc<CertifiedKey>,
    /// The leaf's notAfter, unix seconds.
    pub not_after: i64,
    /// What the files held, to notice a change without keeping the key.
    pub fingerprint: Fingerprint,
}

pub type Fingerprint = [u8; 32];

impl PairFiles {
    /// Reads both files and their fingerprint, without parsing.
    pub fn read(&self) -> Result<(Vec<u8>, Vec<u8>, Fingerprint), PairError> {
        let cert = read(&self.cert)?;
        let key = read(&self.key)?;
        let mut hash = digest::Context::new(&digest::SHA256);
        hash.update(&cert);
        hash.update(&key);
        let fingerprint = hash.finish().as_ref().try_into().expect("SHA-256 has 32 bytes");
        Ok((cert, key, fingerprint))
    }

    /// Reads and checks the pair: a chain, a key that matches its leaf, and
    /// a leaf that has not expired at `now` (unix seconds).
    pub fn load(&self, provider: &CryptoProvider, now: i64) -> Result<Pair, PairError> {
        let (cert_pem, key_pem, fingerprint) = self.read()?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| self.unparsable(e.to_string()))?;
        let leaf = chain.first().ok_or_else(|| PairError::NoCertificate(self.cert.clone()))?;
        let not_after = not_after(leaf).map_err(|reason| self.unparsable(reason))?;
        if not_after <= now {
            return Err(PairError::Expired { path: self.cert.clone(), not_after });
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| PairError::NoKey(self.key.clone()))?;
        let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| PairError::Mismatch {
            cert: self.cert.clone(),
            key: self.key.clone(),
            reason: e.to_string(),
        })?;
        Ok(Pair { certified: Arc::new(certified), not_after, fingerprint })
    }

    fn unparsable(&self, reason: String) -> PairError {
        PairError::Unparsable { path: self.cert.clone(), reason }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, PairError> {
    std::fs::read(path).map_err(|source| PairError::Read { path: path.to_owned(), source })
}

fn not_after(leaf: &CertificateDer<'_>) -> Result<i64, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    Ok(cert.validity().not_after.timestamp())
}
