//! Why a reconcile failed. Below both the controllers and the metrics,
//! which count failures by their class.

use kube::runtime::finalizer;

use crate::redis::RedisError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error(
        "the CA Secret {0}: fix or delete it (a new CA is then made, and every serving certificate re-issued)"
    )]
    CertificateAuthority(String),
    #[error("the object has no namespace; tokenplane resources are namespaced")]
    NotNamespaced,
    #[error("the admission webhooks: {0}")]
    Webhooks(String),
}
