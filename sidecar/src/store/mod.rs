//! Where the issuer keeps its state. The in-memory store serves standalone
//! mode; a Redis Sentinel store implements the same trait for production.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokenplane_api::client::{ClientRecord, SecretHash};
use tokenplane_api::grant::{CodeGrant, Issued, PendingAuthorization, RefreshFamily};

mod batch;
mod memory;
mod rate;
mod redis;
mod throttle;

pub use crate::issuer::Rate;
pub use memory::MemoryStore;
pub use redis::{Password, RedisConfig, RedisStore, master_address, master_connection};
pub(crate) use redis::{certificates, sentinel_client};

/// The store could not answer. Callers fail closed: nothing is issued or
/// acknowledged that the store did not record.
#[derive(Debug, thiserror::Error)]
#[error("token store unavailable: {0}")]
pub struct StoreError(pub String);

pub type Result<T> = std::result::Result<T, StoreError>;

/// What redeeming an authorization code found.
#[derive(Debug, PartialEq, Eq)]
pub enum Redemption {
    /// First use: the grant, now spent.
    Granted(CodeGrant),
    /// The code was redeemed before; these are the tokens that redemption
    /// produced (or is producing), to revoke.
    Replayed(Issued),
    Unknown,
}

/// What presenting a refresh token did.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// It was the family's current token; the family now points at the new one.
    Rotated(RefreshFamily),
    /// It had been rotated already (or lost a race): the family is now revoked.
    Reused(RefreshFamily),
    Unknown,
}

/// Which of the subjects given to [`Store::rate_limit`] is over its limit,
/// and for how long.
pub type Limited = (usize, Duration);

/// The issuer's state. Every method is atomic on its own; expiries are unix
/// seconds after which a record may be dropped.
pub trait Store: Send + Sync + 'static {
    /// A client registration by client id.
    fn client(&self, client_id: &str) -> impl Future<Output = Result<Option<Arc<ClientRecord>>>> + Send;

    /// Creates or replaces a registration.
    fn put_client(&self, record: ClientRecord) -> impl Future<Output = Result<()>> + Send;

    /// Marks an access token id revoked until `expires_at`, when the token is
    /// dead anyway.
    fn revoke(&self, jti: &str, expires_at: u64) -> impl Future<Output = Result<()>> + Send;

    fn is_revoked(&self, jti: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Kills every token of a client issued before `at` (unix seconds), in
    /// one write: for a client deleted, disabled or compromised.
    fn set_not_before(&self, client_id: &str, at: u64) -> impl Future<Output = Result<()>> + Send;

    fn not_before(&self, client_id: &str) -> impl Future<Output = Result<Option<u64>>> + Send;

    /// Stores an authorization request under the hash of a login or consent challenge.
    fn put_pending(
        &self,
        challenge: &str,
        pending: &PendingAuthorization,
        expires_at: u64,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Reads a pending request without using up its challenge.
    fn pending(&self, challenge: &str) -> impl Future<Output = Result<Option<PendingAuthorization>>> + Send;

    /// Reads and deletes a pending request: a challenge works once.
    fn take_pending(
        &self,
        challenge: &str,
    ) -> impl Future<Output = Result<Option<PendingAuthorization>>> + Send;

    /// Scopes `subject` has let `client_id` have, and asked to be remembered.
    fn consented_scopes(
        &self,
        subject: &str,
        client_id: &str,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;

    fn remember_consent(
        &self,
        subject: &str,
        client_id: &str,
        scopes: &[String],
        expires_at: u64,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Stores an authorization code grant under the code's hash.
    fn put_code(
        &self,
        code_hash: &str,
        grant: &CodeGrant,
        expires_at: u64,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Spends a code, atomically: the first caller gets the grant and records
    /// `plan`, the tokens it is about to issue; any later caller gets `plan`
    /// of the first.
    fn redeem_code(&self, code_hash: &str, plan: &Issued) -> impl Future<Output = Result<Redemption>> + Send;

    /// Starts a refresh-token family; `family.current` is the first token's hash.
    fn create_family(&self, family: &RefreshFamily) -> impl Future<Output = Result<()>> + Send;

    /// The family a refresh token (current or rotated) belongs to.
    fn family_of(&self, token_hash: &str) -> impl Future<Output = Result<Option<RefreshFamily>>> + Send;

    /// Replaces `presented` by `next` if `presented` is still current, and
    /// records the access token issued with it; otherwise revokes the family.
    fn rotate_refresh(
        &self,
        presented: &str,
        next: &str,
        next_expires_at: u64,
        access: (&str, u64),
    ) -> impl Future<Output = Result<Rotation>> + Send;

    /// Revokes a family and every access token issued from it; a family not
    /// created yet is created revoked.
    fn revoke_family(&self, family_id: &str) -> impl Future<Output = Result<()>> + Send;

    /// Counts one request against each `(subject, rate)` in turn, atomically
    /// (GCRA, shared by every issuer on the store). Stops at the first subject
    /// over its limit: `Some((its index, how long to wait))`.
    fn rate_limit(&self, limits: &[(&str, Rate)]) -> impl Future<Output = Result<Option<Limited>>> + Send;

    /// Notes that `secret`, one of the client's hashes, was accepted at
    /// `now`, so the operator can tell whether a rotated-out secret is still
    /// in use. Best effort and cheap: it never fails a request, and no
    /// request waits for the write.
    fn secret_used(&self, client_id: &str, secret: &SecretHash, now: u64) -> impl Future<Output = ()> + Send;

    /// Whether the store answers; drives `/readyz`.
    fn ping(&self) -> impl Future<Output = Result<()>> + Send;
}
