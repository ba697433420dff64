//! The types both tokenplane binaries agree on: the custom resources (group
//! `tokenplane.io`, version `v1alpha1`), the validation rules the operator and
//! the standalone issuer apply to them, the records the issuer serves from its
//! store, and the claims of the access tokens it signs. No I/O lives here.
#![forbid(unsafe_code)]
// kube's `printcolumn(name = .., type_ = ..)` repeats keys across columns by design.
#![allow(clippy::duplicated_attributes)]

pub mod acl;
pub mod claims;
pub mod client;
pub mod credentials;
pub mod duration;
pub mod grant;
pub mod oauth2client;
pub mod redirect;
pub mod redis;
pub mod redis_tls;
pub mod signing;
pub mod storage;
pub mod tokenpolicy;
pub mod validation;

pub use oauth2client::{OAuth2Client, OAuth2ClientSpec, OAuth2ClientStatus};
pub use redis::{RedisSentinelCluster, RedisSentinelClusterSpec, RedisSentinelClusterStatus};
pub use tokenpolicy::{TokenPolicy, TokenPolicySpec, TokenPolicyStatus};

/// API group of every tokenplane custom resource.
pub const GROUP: &str = "tokenplane.io";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";

/// The CustomResourceDefinitions of every kind, with the file each is kept in under `crds/`.
pub fn crds() -> Vec<(
    &'static str,
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
)> {
    use kube::CustomResourceExt;
    vec![
        ("oauth2client.yaml", OAuth2Client::crd()),
        ("tokenpolicy.yaml", TokenPolicy::crd()),
        ("redissentinelcluster.yaml", RedisSentinelCluster::crd()),
    ]
}
