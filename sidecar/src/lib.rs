//! tokenplane's data plane: the issuer (authorization server) and the
//! workload agent, served by one small hyper binary.
#![forbid(unsafe_code)]

pub mod agent;
pub mod backup;
pub mod cleanup;
pub mod clock;
pub mod heartbeat;
pub mod issuer;
pub mod keys;
pub mod manifests;
pub mod oauth_error;
pub mod opaque;
pub mod redis_node;
pub mod reply;
pub mod server;
pub mod store;
pub mod tls;
