//! The tokenplane operator. So far: generation of the CRD manifests from the
//! types in `tokenplane-api`.
#![forbid(unsafe_code)]

pub mod crdgen;
