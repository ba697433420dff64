//! Where the issuer keeps its state. The in-memory store serves standalone
//! mode; a Redis Sentinel store implements the same trait for production.

use std::future::Future;
use std::sync::Arc;

use tokenplane_api::client::ClientRecord;

mod memory;

pub use memory::MemoryStore;

/// The store could not answer. Callers fail closed: nothing is issued or
/// acknowledged that the store did not record.
#[derive(Debug, thiserror::Error)]
#[error("token store unavailable: {0}")]
pub struct StoreError(pub String);

/// The issuer's state. Every method is atomic on its own.
pub trait Store: Send + Sync + 'static {
    /// A client registration by client id.
    fn client(
        &self,
        client_id: &str,
    ) -> impl Future<Output = Result<Option<Arc<ClientRecord>>, StoreError>> + Send;

    /// Creates or replaces a registration.
    fn put_client(&self, record: ClientRecord) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Marks a token id revoked until `expires_at` (unix seconds), after which
    /// the token is dead anyway and the mark may go.
    fn revoke(&self, jti: &str, expires_at: u64) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn is_revoked(&self, jti: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Whether the store answers; drives `/readyz`.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
