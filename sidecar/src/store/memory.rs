//! The standalone store: everything in process memory, gone at exit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tokenplane_api::client::ClientRecord;

use super::{Store, StoreError};
use crate::clock::unix_now;

#[derive(Default)]
pub struct MemoryStore {
    clients: RwLock<HashMap<String, Arc<ClientRecord>>>,
    revoked: Mutex<Revoked>,
}

/// Revoked token ids with their expiry. Expired marks are swept when the map
/// has doubled since the last sweep, so memory stays bounded by live tokens.
#[derive(Default)]
struct Revoked {
    until: HashMap<String, u64>,
    sweep_at: usize,
}

impl Revoked {
    fn insert(&mut self, jti: &str, expires_at: u64, now: u64) {
        self.until.insert(jti.to_owned(), expires_at);
        if self.until.len() > self.sweep_at {
            self.until.retain(|_, exp| *exp > now);
            self.sweep_at = (self.until.len() * 2).max(1024);
        }
    }
}

impl Store for MemoryStore {
    async fn client(&self, client_id: &str) -> Result<Option<Arc<ClientRecord>>, StoreError> {
        Ok(self.clients.read().expect("client map lock").get(client_id).cloned())
    }

    async fn put_client(&self, record: ClientRecord) -> Result<(), StoreError> {
        let mut clients = self.clients.write().expect("client map lock");
        clients.insert(record.client_id.clone(), Arc::new(record));
        Ok(())
    }

    async fn revoke(&self, jti: &str, expires_at: u64) -> Result<(), StoreError> {
        self.revoked.lock().expect("revocation lock").insert(jti, expires_at, unix_now());
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        Ok(self.revoked.lock().expect("revocation lock").until.contains_key(jti))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_revocations_are_swept_once_the_map_doubles() {
        let mut r = Revoked::default();
        for i in 0..1025 {
            r.insert(&format!("old{i}"), 10, 5);
        }
        // The 1025th insert swept nothing: all marks were still live at t=5.
        assert_eq!(r.until.len(), 1025);
        for i in 0..1100 {
            r.insert(&format!("new{i}"), 1000, 20);
        }
        assert!(r.until.keys().all(|k| k.starts_with("new")), "old marks outlived their tokens");
        assert!(r.until.len() <= 1100);
    }
}
