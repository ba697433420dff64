//! The tokenplane operator: the OAuth2Client, TokenPolicy and
//! RedisSentinelCluster controllers (`controller`, leader-elected), which
//! apply the pure builders of `reconcile` to the cluster and, through
//! `redis`, to Redis (registrations, ACL users, policy records and JWKS,
//! not-before marks); the admission webhooks (`admission`: agent injection
//! and validation); `render`, which prints the builders' objects offline;
//! and generation of the CRD manifests (`crdgen`).
#![forbid(unsafe_code)]

pub mod admission;
pub mod controller;
pub mod crdgen;
pub mod error;
pub mod metrics;
pub mod reconcile;
pub mod redis;
pub mod render;
pub mod serve;
