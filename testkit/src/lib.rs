//! Test-only helpers for tokenplane's test suites. Add it as a
//! dev-dependency; nothing here belongs in a shipped binary.
//!
//! [`redis`] starts a real Redis Sentinel cluster (one master, replicas and
//! three Sentinels as child processes, ACLs on, no usable default user) and
//! injects failures into it: kill, restart, pause and resume processes. No
//! mocks: the tests talk to the same `redis-server` and `redis-sentinel`
//! binaries production runs. See `docs/testing.md`.
//!
//! [`pki`] is a throwaway certificate authority for TLS under test.
#![forbid(unsafe_code)]

pub mod pki;
pub mod redis;

pub use crate::redis::{
    ClientAuth, ClusterTls, Credentials, HarnessError, RedisCluster, RedisClusterOptions, free_port,
};
