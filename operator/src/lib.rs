//! The tokenplane operator. So far: generation of the CRD manifests from the
//! types in `tokenplane-api`, the pure builders of what an OAuth2Client
//! needs, `render`, which prints them offline, and the Redis side effects
//! (registrations, agent ACL users, not-before marks). The controllers
//! that apply them are next.
#![forbid(unsafe_code)]

pub mod controller;
pub mod crdgen;
pub mod error;
pub mod metrics;
pub mod reconcile;
pub mod redis;
pub mod render;
pub mod serve;
