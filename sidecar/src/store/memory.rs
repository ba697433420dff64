//! The standalone store: everything in process memory, gone at exit. One
//! lock per concern; the grant state shares one so that redemption and
//! rotation are atomic.
//!
//! Grant state (revocations, codes, refresh families) lives in maps bounded
//! by expiry, never by size: evicting a revocation or a spent code to make
//! room would revive a token or allow a replay. Rate-limit state is the one
//! thing a caller can grow at will (one entry per source address), so it is
//! a size-bounded cache: an evicted subject merely starts with a full burst.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use tokenplane_api::client::{ClientRecord, SecretHash};
use tokenplane_api::grant::{CodeGrant, Issued, PendingAuthorization, RefreshFamily};

use super::{Limited, Rate, Redemption, Result, Rotation, Store, rate};
use crate::clock::unix_now;

/// A map whose entries die at their expiry. Expired entries are invisible at
/// once and swept when the map has doubled since the last sweep, so memory
/// stays bounded by live entries.
struct Expiring<K, V> {
    entries: HashMap<K, (V, u64)>,
    sweep_at: usize,
}

impl<K, V> Default for Expiring<K, V> {
    fn default() -> Self {
        Self { entries: HashMap::new(), sweep_at: 0 }
    }
}

impl<K: Eq + Hash, V> Expiring<K, V> {
    fn insert(&mut self, key: K, value: V, expires_at: u64, now: u64) {
        self.entries.insert(key, (value, expires_at));
        if self.entries.len() > self.sweep_at {
            self.entries.retain(|_, (_, exp)| *exp > now);
            self.sweep_at = (self.entries.len() * 2).max(1024);
        }
    }

    fn get<Q: Eq + Hash + ?Sized>(&self, key: &Q, now: u64) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.entries.get(key).filter(|(_, exp)| *exp > now).map(|(v, _)| v)
    }

    fn remove<Q: Eq + Hash + ?Sized>(&mut self, key: &Q, now: u64) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.entries.remove(key).filter(|(_, exp)| *exp > now).map(|(v, _)| v)
    }
}

/// How long a revocation of a family not yet created is remembered: longer
/// than any redemption takes.
const STILLBORN_MEMORY: u64 = 3600;

enum CodeState {
    Unspent(CodeGrant),
    Spent(Issued),
}

#[derive(Default)]
struct Grants {
    revoked: Expiring<String, ()>,
    pending: Expiring<String, PendingAuthorization>,
    consents: Expiring<(String, String), Vec<String>>,
    codes: Expiring<String, CodeState>,
    families: Expiring<String, RefreshFamily>,
    /// Families revoked before they were created (a code replay racing its
    /// first redemption): created revoked.
    stillborn: Expiring<String, ()>,
    /// Every refresh token hash of a live family, current or rotated.
    family_of: Expiring<String, String>,
}

/// Rate-limited subjects remembered at most; past this the least used are
/// forgotten.
const RATE_SUBJECTS: usize = 100_000;

impl Grants {
    fn revoke_family(&mut self, id: &str, now: u64) {
        let Some((family, _)) = self.families.entries.get_mut(id) else {
            self.stillborn.insert(id.to_owned(), (), now + STILLBORN_MEMORY, now);
            return;
        };
        family.revoked = true;
        for (jti, exp) in family.access_tokens.clone() {
            self.revoked.insert(jti, (), exp, now);
        }
    }
}

pub struct MemoryStore {
    clients: RwLock<HashMap<String, Arc<ClientRecord>>>,
    not_before: RwLock<HashMap<String, u64>>,
    grants: Mutex<Grants>,
    /// GCRA arrival time (ms since `started`) per rate-limited subject. A
    /// stale time needs no expiry: GCRA treats a time in the past as fresh.
    rates: Mutex<quick_cache::unsync::Cache<String, f64>>,
    started: Instant,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            clients: RwLock::default(),
            not_before: RwLock::default(),
            grants: Mutex::default(),
            rates: Mutex::new(quick_cache::unsync::Cache::new(RATE_SUBJECTS)),
            started: Instant::now(),
        }
    }
}

impl MemoryStore {
    fn grants(&self) -> MutexGuard<'_, Grants> {
        self.grants.lock().expect("grant state lock")
    }
}

impl Store for MemoryStore {
    async fn client(&self, client_id: &str) -> Result<Option<Arc<ClientRecord>>> {
        Ok(self.clients.read().expect("client map lock").get(client_id).cloned())
    }

    async fn put_client(&self, record: ClientRecord) -> Result<()> {
        let mut clients = self.clients.write().expect("client map lock");
        clients.insert(record.client_id.clone(), Arc::new(record));
        Ok(())
    }

    async fn revoke(&self, jti: &str, expires_at: u64) -> Result<()> {
        self.grants().revoked.insert(jti.to_owned(), (), expires_at, unix_now());
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool> {
        Ok(self.grants().revoked.get(jti, unix_now()).is_some())
    }

    async fn set_not_before(&self, client_id: &str, at: u64) -> Result<()> {
        self.not_before.write().expect("not-before lock").insert(client_id.to_owned(), at);
        Ok(())
    }

    async fn not_before(&self, client_id: &str) -> Result<Option<u64>> {
        Ok(self.not_before.read().expect("not-before lock").get(client_id).copied())
    }

    async fn put_pending(
        &self,
        challenge: &str,
        pending: &PendingAuthorization,
        expires_at: u64,
    ) -> Result<()> {
        self.grants().pending.insert(challenge.to_owned(), pending.clone(), expires_at, unix_now());
        Ok(())
    }

    async fn pending(&self, challenge: &str) -> Result<Option<PendingAuthorization>> {
        Ok(self.grants().pending.get(challenge, unix_now()).cloned())
    }

    async fn take_pending(&self, challenge: &str) -> Result<Option<PendingAuthorization>> {
        Ok(self.grants().pending.remove(challenge, unix_now()))
    }

    async fn consented_scopes(&self, subject: &str, client_id: &str) -> Result<Vec<String>> {
        let key = (subject.to_owned(), client_id.to_owned());
        Ok(self.grants().consents.get(&key, unix_now()).cloned().unwrap_or_default())
    }

    async fn remember_consent(
        &self,
        subject: &str,
        client_id: &str,
        scopes: &[String],
        expires_at: u64,
    ) -> Result<()> {
        let key = (subject.to_owned(), client_id.to_owned());
        self.grants().consents.insert(key, scopes.to_vec(), expires_at, unix_now());
        Ok(())
    }

    async fn put_code(&self, code_hash: &str, grant: &CodeGrant, expires_at: u64) -> Result<()> {
        let state = CodeState::Unspent(grant.clone());
        self.grants().codes.insert(code_hash.to_owned(), state, expires_at, unix_now());
        Ok(())
    }

    async fn redeem_code(&self, code_hash: &str, plan: &Issued) -> Result<Redemption> {
        let now = unix_now();
        let mut grants = self.grants();
        let Some((state, exp)) = grants.codes.entries.get_mut(code_hash).filter(|(_, exp)| *exp > now) else {
            return Ok(Redemption::Unknown);
        };
        // A spent code is remembered as long as the tokens it produced live.
        let spent = CodeState::Spent(plan.clone());
        Ok(match std::mem::replace(state, spent) {
            CodeState::Unspent(grant) => {
                *exp = plan.exp;
                Redemption::Granted(grant)
            }
            CodeState::Spent(first) => {
                *state = CodeState::Spent(first.clone());
                Redemption::Replayed(first)
            }
        })
    }

    async fn create_family(&self, family: &RefreshFamily) -> Result<()> {
        let now = unix_now();
        let mut grants = self.grants();
        let exp = family.current_expires_at;
        let mut family = family.clone();
        family.revoked |= grants.stillborn.get(&family.id, now).is_some();
        grants.family_of.insert(family.current.clone(), family.id.clone(), exp, now);
        grants.families.insert(family.id.clone(), family, exp, now);
        Ok(())
    }

    async fn family_of(&self, token_hash: &str) -> Result<Option<RefreshFamily>> {
        let now = unix_now();
        let grants = self.grants();
        let id = grants.family_of.get(token_hash, now);
        Ok(id.and_then(|id| grants.families.get(id, now)).cloned())
    }

    async fn rotate_refresh(
        &self,
        presented: &str,
        next: &str,
        next_expires_at: u64,
        access: (&str, u64),
    ) -> Result<Rotation> {
        let now = unix_now();
        let mut grants = self.grants();
        let Some(id) = grants.family_of.get(presented, now).cloned() else { return Ok(Rotation::Unknown) };
        let Some((family, _)) = grants.families.entries.get(&id) else { return Ok(Rotation::Unknown) };
        if family.revoked || family.current != presented {
            grants.revoke_family(&id, now);
            let family = grants.families.entries[&id].0.clone();
            return Ok(Rotation::Reused(family));
        }
        let mut family = family.clone();
        family.current = next.to_owned();
        family.current_expires_at = next_expires_at;
        family.access_tokens.retain(|(_, exp)| *exp > now);
        family.access_tokens.push((access.0.to_owned(), access.1));
        grants.family_of.insert(presented.to_owned(), id.clone(), next_expires_at, now);
        grants.family_of.insert(next.to_owned(), id.clone(), next_expires_at, now);
        grants.families.insert(id, family.clone(), next_expires_at, now);
        Ok(Rotation::Rotated(family))
    }

    async fn revoke_family(&self, family_id: &str) -> Result<()> {
        self.grants().revoke_family(family_id, unix_now());
        Ok(())
    }

    async fn rate_limit(&self, limits: &[(&str, Rate)]) -> Result<Option<Limited>> {
        let now_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let mut rates = self.rates.lock().expect("rate state lock");
        for (index, (subject, limit)) in limits.iter().enumerate() {
            match rate::admit(rates.get(*subject).copied(), now_ms, *limit) {
                Ok(next) => rates.insert((*subject).to_owned(), next),
                Err(wait) => return Ok(Some((index, wait))),
            }
        }
        Ok(None)
    }

    /// Standalone: no operator reads it, nothing rotates.
    async fn secret_used(&self, _: &str, _: &SecretHash, _: u64) {}

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_entries_are_invisible_and_swept_once_the_map_doubles() {
        let mut m: Expiring<String, ()> = Expiring::default();
        for i in 0..1025 {
            m.insert(format!("old{i}"), (), 10, 5);
        }
        assert_eq!(m.entries.len(), 1025, "nothing had expired at t=5");
        assert!(m.get("old1", 5).is_some());
        assert!(m.get("old1", 10).is_none(), "dead at its expiry");
        for i in 0..1100 {
            m.insert(format!("new{i}"), (), 1000, 20);
        }
        assert!(m.entries.keys().all(|k| k.starts_with("new")), "old entries outlived their expiry");
    }

    #[tokio::test]
    async fn a_flood_of_subjects_stays_bounded_and_a_busy_subject_stays_limited() {
        let store = MemoryStore::default();
        let tight = Rate { per_second: 1, burst: 1 };
        assert!(store.rate_limit(&[("busy", tight)]).await.unwrap().is_none());
        for i in 0..RATE_SUBJECTS + RATE_SUBJECTS / 2 {
            let subject = format!("address {i}");
            assert!(store.rate_limit(&[(&subject, tight)]).await.unwrap().is_none());
            if i % 1000 == 0 {
                let limited = store.rate_limit(&[("busy", tight)]).await.unwrap();
                assert!(limited.is_some(), "the busy subject was forgotten after {i} others");
            }
        }
        assert!(store.rates.lock().unwrap().len() <= RATE_SUBJECTS);
    }
}
