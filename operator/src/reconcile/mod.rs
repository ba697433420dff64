//! Reconcile logic as pure builders: custom resource in, desired objects
//! out. One module per kind; the apply layer (server-side apply, Redis)
//! comes on top.

pub mod oauth2client;
pub mod secret_rotation;
pub mod signing;

/// The field manager and `app.kubernetes.io/managed-by` of everything the
/// operator writes.
pub const MANAGED_BY: &str = "tokenplane";

/// Why a resource cannot be reconciled as it is: the reason and message of
/// its `Ready=False` condition. Nothing is applied until it changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn spec(message: String) -> Self {
        Self { reason: "InvalidSpec", message }
    }

    pub fn policy(message: String) -> Self {
        Self { reason: "PolicyNotFound", message }
    }
}
