//! TLS to Redis and the Sentinels, as the issuer, the agent and the operator
//! all speak it: the CA bundle they verify the servers against and the
//! client certificate they present where Redis requires one
//! (`tls-auth-clients yes`). The PEM files are checked when the process
//! starts, so a wrong file is a start-up error naming its flag, not a failed
//! connection later. The caller passes the function that reads a file.
//! With the `clap` feature, [`RedisTlsArgs`] are the flags, the same in
//! both binaries.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The flags that name the files, in both binaries.
pub const CA_FILE_FLAG: &str = "--redis-ca-file";
pub const CLIENT_CERT_FILE_FLAG: &str = "--redis-client-cert-file";
pub const CLIENT_KEY_FILE_FLAG: &str = "--redis-client-key-file";

/// The flags (each with its environment variable); the files need
/// `--redis-tls`, and a client certificate its key.
#[cfg(feature = "clap")]
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RedisTlsArgs {
    /// Talk TLS to Redis and the Sentinels (Redis `tls-port`).
    #[arg(long, env = "TOKENPLANE_REDIS_TLS")]
    pub redis_tls: bool,
    /// PEM CA bundle to verify Redis and the Sentinels against; the
    /// system's roots without it.
    #[arg(long, env = "TOKENPLANE_REDIS_CA_FILE", requires = "redis_tls")]
    pub redis_ca_file: Option<PathBuf>,
    /// PEM client certificate chain to present to Redis and the Sentinels
    /// (for `tls-auth-clients yes`).
    #[arg(long, env = "TOKENPLANE_REDIS_CLIENT_CERT_FILE", requires_all = ["redis_tls", "redis_client_key_file"])]
    pub redis_client_cert_file: Option<PathBuf>,
    /// PEM private key of that client certificate.
    #[arg(long, env = "TOKENPLANE_REDIS_CLIENT_KEY_FILE", requires_all = ["redis_tls", "redis_client_cert_file"])]
    pub redis_client_key_file: Option<PathBuf>,
}

#[cfg(feature = "clap")]
impl RedisTlsArgs {
    /// The files to load, when `--redis-tls` is on.
    pub fn files(&self) -> Option<RedisTlsFiles> {
        let (cert, key) = (self.redis_client_cert_file.clone(), self.redis_client_key_file.clone());
        self.redis_tls.then(|| RedisTlsFiles::new(self.redis_ca_file.clone(), cert, key))
    }
}

/// Where the PEM files are, as given on the command line.
#[derive(Clone, Debug, Default)]
pub struct RedisTlsFiles {
    /// CA certificates; the system's roots when `None`.
    pub ca: Option<PathBuf>,
    /// Client certificate chain and its key, both or neither.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl RedisTlsFiles {
    /// The files the flags name; a certificate without its key, or a key
    /// without its certificate, is left out (the flags require both).
    pub fn new(ca: Option<PathBuf>, client_cert: Option<PathBuf>, client_key: Option<PathBuf>) -> Self {
        Self { ca, client: client_cert.zip(client_key) }
    }
}

/// A file that cannot serve, with its flag and what to give instead.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {}: {reason}", path.display())]
pub struct RedisTlsError {
    pub flag: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

/// What the files held, checked. `Debug` shows only which parts are set.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// CA certificates, PEM; the system's roots when `None`.
    pub ca_bundle: Option<Vec<u8>>,
    pub client: Option<ClientCertificate>,
}

/// A client certificate chain and its private key, PEM.
#[derive(Clone)]
pub struct ClientCertificate {
    pub cert_chain: Vec<u8>,
    pub key: Vec<u8>,
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |is: bool| if is { "set" } else { "none" };
        f.debug_struct("RedisTls")
            .field("ca_bundle", &set(self.ca_bundle.is_some()))
            .field("client", &set(self.client.is_some()))
            .finish()
    }
}

impl RedisTls {
    /// Reads the files with `read` (`|path| std::fs::read(path)`) and
    /// checks that each holds what its flag promises.
    pub fn load(
        files: &RedisTlsFiles,
        read: impl Fn(&Path) -> std::io::Result<Vec<u8>>,
    ) -> Result<Self, RedisTlsError> {
        let load = |flag: &'static str, path: &Path, check: fn(&[u8]) -> Result<(), String>| {
            let error = |reason| RedisTlsError { flag, path: path.to_owned(), reason };
            let pem = read(path).map_err(|e| error(format!("cannot read it: {e}")))?;
            check(&pem).map_err(error)?;
            Ok(pem)
        };
        let ca_bundle = files.ca.as_deref().map(|p| load(CA_FILE_FLAG, p, ca_certificates)).transpose()?;
        let client = match &files.client {
            None => None,
            Some((cert, key)) => Some(ClientCertificate {
                cert_chain: load(CLIENT_CERT_FILE_FLAG, cert, client_chain)?,
                key: load(CLIENT_KEY_FILE_FLAG, key, private_key)?,
            }),
        };
        Ok(Self { ca_bundle, client })
    }
}

fn certificates(pem: &[u8]) -> Result<usize, String> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>();
    certs.map(|c| c.len()).map_err(|e| format!("not PEM: {e}"))
}

/// Whether `pem` holds at least one certificate; `missing` says what to give.
fn holds_certificates(pem: &[u8], missing: &str) -> Result<(), String> {
    match certificates(pem)? {
        0 => Err(format!("holds no PEM certificate: {missing}")),
        _ => Ok(()),
    }
}

fn ca_certificates(pem: &[u8]) -> Result<(), String> {
    holds_certificates(
        pem,
        "give the CA certificates that signed the Redis and Sentinel server certificates (BEGIN CERTIFICATE blocks)",
    )
}

fn client_chain(pem: &[u8]) -> Result<(), String> {
    holds_certificates(pem, "give the client certificate chain, leaf first")
}

fn private_key(pem: &[u8]) -> Result<(), String> {
    PrivateKeyDer::from_pem_slice(pem).map(drop).map_err(|_| {
        "holds no PEM private key (PKCS#8, PKCS#1 or SEC1): give the client certificate's key".into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // A syntactically valid PEM block; nothing here parses X.509.
    const CERT: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";

    fn reader(path: &Path) -> std::io::Result<Vec<u8>> {
        match path.to_str() {
            Some("ca.crt" | "client.crt") => Ok(CERT.into()),
            Some("client.key") => Ok(KEY.into()),
            Some("empty") => Ok(Vec::new()),
            _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        }
    }

    fn files(ca: &str, client: Option<(&str, &str)>) -> RedisTlsFiles {
        RedisTlsFiles { ca: Some(ca.into()), client: client.map(|(c, k)| (c.into(), k.into())) }
    }

    #[test]
    fn good_files_load_and_debug_shows_no_pem() {
        let tls = RedisTls::load(&files("ca.crt", Some(("client.crt", "client.key"))), reader).unwrap();
        assert_eq!(tls.ca_bundle.as_deref(), Some(CERT.as_bytes()));
        assert_eq!(tls.client.as_ref().unwrap().key, KEY.as_bytes());
        assert_eq!(format!("{tls:?}"), r#"RedisTls { ca_bundle: "set", client: "set" }"#);
        assert!(RedisTls::load(&RedisTlsFiles::default(), reader).unwrap().ca_bundle.is_none());
    }

    #[test]
    fn a_bad_file_names_its_flag_and_path() {
        let error = |f| RedisTls::load(&f, reader).unwrap_err().to_string();
        let missing = error(files("nope.crt", None));
        assert!(missing.starts_with("--redis-ca-file nope.crt: cannot read it"), "{missing}");
        let empty = error(files("empty", None));
        assert!(empty.contains("--redis-ca-file empty: holds no PEM certificate"), "{empty}");
        let no_chain = error(files("ca.crt", Some(("client.key", "client.key"))));
        assert!(no_chain.starts_with("--redis-client-cert-file client.key: holds no PEM"), "{no_chain}");
        let no_key = error(files("ca.crt", Some(("client.crt", "client.crt"))));
        assert!(
            no_key.starts_with("--redis-client-key-file client.crt: holds no PEM private key"),
            "{no_key}"
        );
    }
}
