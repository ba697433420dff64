//! The HTTPS client for the issuer (JWKS, token vending), trusting the CA
//! bundle of `--issuer-ca-file` and following it: the operator adds a new
//! CA to the bundle before anything is signed with it, so the agent must
//! pick up a changed file without a restart. A bundle that stops parsing
//! leaves the client as it was.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::AgentError;

pub struct IssuerClient {
    client: ArcSwap<reqwest::Client>,
    ca_file: Option<PathBuf>,
    /// The bundle the client was built from.
    loaded: std::sync::Mutex<Vec<u8>>,
}

/// A client trusting the CAs of `pem` (the system's roots without one).
fn build(ca: Option<(&Path, &[u8])>) -> Result<reqwest::Client, AgentError> {
    let mut builder =
        reqwest::Client::builder().connect_timeout(Duration::from_secs(2)).timeout(Duration::from_secs(5));
    if let Some((path, pem)) = ca {
        let ca_error = |reason: String| AgentError::IssuerCa { path: path.to_owned(), reason };
        let roots = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| ca_error(e.to_string()))?;
        if roots.is_empty() {
            return Err(ca_error("it holds no certificate".into()));
        }
        builder = roots
            .into_iter()
            .fold(builder.tls_built_in_root_certs(false), |b, root| b.add_root_certificate(root));
    }
    Ok(builder.build()?)
}

fn read(path: &Path) -> Result<Vec<u8>, AgentError> {
    std::fs::read(path).map_err(|e| AgentError::IssuerCa { path: path.to_owned(), reason: e.to_string() })
}

impl IssuerClient {
    /// The client for `ca_file`'s CAs, or the system's roots without one.
    pub fn load(ca_file: Option<&Path>) -> Result<Self, AgentError> {
        let pem = ca_file.map(read).transpose()?.unwrap_or_default();
        let client = build(ca_file.map(|path| (path, pem.as_slice())))?;
        Ok(Self {
            client: ArcSwap::from_pointee(client),
            ca_file: ca_file.map(Path::to_owned),
            loaded: std::sync::Mutex::new(pem),
        })
    }

    /// The client as of the last bundle that parsed.
    pub fn current(&self) -> Arc<reqwest::Client> {
        self.client.load_full()
    }

    /// Rebuilds the client if the bundle changed; whether it did.
    pub fn reload(&self) -> Result<bool, AgentError> {
        let Some(path) = &self.ca_file else { return Ok(false) };
        let pem = read(path)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *loaded == pem {
            return Ok(false);
        }
        self.client.store(Arc::new(build(Some((path, &pem)))?));
        *loaded = pem;
        Ok(true)
    }

    /// Re-reads the bundle every `interval`.
    pub async fn follow(self: Arc<Self>, interval: Duration) {
        if self.ca_file.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.reload() {
                Ok(true) => {
                    tracing::info!(file = ?self.ca_file, "issuer CA bundle changed: trusting the new one")
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "issuer CA bundle unreadable; keeping the previous one"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_bundle_is_taken_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        let first = tokenplane_testkit::pki::TestCa::new("first");
        std::fs::write(&path, first.pem()).unwrap();
        let client = IssuerClient::load(Some(&path)).unwrap();
        assert!(!client.reload().unwrap(), "unchanged");
        let before = client.current();
        let second = tokenplane_testkit::pki::TestCa::new("second");
        std::fs::write(&path, format!("{}{}", second.pem(), first.pem())).unwrap();
        assert!(client.reload().unwrap(), "a new CA in the bundle");
        assert!(!Arc::ptr_eq(&before, &client.current()));
        let after = client.current();
        std::fs::write(&path, "not a certificate").unwrap();
        assert!(client.reload().is_err());
        assert!(Arc::ptr_eq(&after, &client.current()), "a broken bundle keeps the client");
    }
}
