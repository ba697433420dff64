//! The keys of a client's credentials Secret: the operator writes them, the
//! agent reads them (one file each where the Secret is mounted), standalone
//! manifests carry the first two.

pub const CLIENT_ID: &str = "client_id";
pub const CLIENT_SECRET: &str = "client_secret";
pub const ISSUER: &str = "issuer";
pub const TOKEN_ENDPOINT: &str = "token_endpoint";
/// The Redis ACL user of the client's agent, and its password.
pub const REDIS_USERNAME: &str = "redis_username";
pub const REDIS_PASSWORD: &str = "redis_password";
