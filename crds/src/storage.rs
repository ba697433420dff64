//! The Redis key schema, written down once for the issuer, the agent and
//! the operator. Database 0 holds auth state, database 1 the service cache.
//! Every key either has a TTL or is owned by a custom resource (client
//! registrations and "not before" marks, removed by the operator with it).
//! Bearer values (codes, refresh tokens, challenges) appear only as their
//! base64url SHA-256.

/// Database of everything below.
pub const AUTH_DB: i64 = 0;
/// Database of the agents' service cache (`cache:{client}:*`).
pub const CACHE_DB: i64 = 1;

/// Pub/sub channel announcing revocations to agents: `jti <id> <exp>`,
/// `family <id>`, or `client <id> <not-before>`.
pub const REVOCATIONS: &str = "auth:revocations";

/// JSON [`crate::client::ClientRecord`]; owned by its OAuth2Client.
pub fn client(client_id: &str) -> String {
    format!("auth:client:{client_id}")
}

/// Hash: client id -> unix time before which every token of that client is
/// dead. One hash, so an agent resyncs every mark with one `HGETALL`; a
/// field is owned by its OAuth2Client and outlives it by the longest token
/// lifetime.
pub const NOT_BEFORE: &str = "auth:notbefore";

/// Sorted set of revoked access token ids scored by their `exp`: members
/// are trimmed once expired and the key expires with its last member. An
/// agent resyncs every live revocation with one `ZRANGEBYSCORE`.
pub const REVOKED: &str = "auth:revoked";

/// JSON [`crate::grant::PendingAuthorization`] under a login or consent
/// challenge's hash; TTL the login window.
pub fn pending(challenge_hash: &str) -> String {
    format!("auth:pending:{challenge_hash}")
}

/// JSON list of scopes a person let a client have; TTL the consent memory.
pub fn consent(client_id: &str, subject: &str) -> String {
    format!("auth:consent:{client_id}:{subject}")
}

/// JSON code state under the code's hash: `{"unspent": CodeGrant}`, then
/// `{"spent": Issued}` after redemption; TTL the code lifetime, then the
/// lifetime of what it issued.
pub fn code(code_hash: &str) -> String {
    format!("auth:code:{code_hash}")
}

/// Hash of a refresh-token family's fields; TTL its current token's expiry.
pub fn family(family_id: &str) -> String {
    format!("auth:family:{family_id}")
}

/// Sorted set of the family's access token ids, scored by their expiry.
pub fn family_access(family_id: &str) -> String {
    format!("auth:family:{family_id}:access")
}

/// A family revoked before it was created (a code replay racing the
/// redemption): created revoked. TTL one hour.
pub fn stillborn(family_id: &str) -> String {
    format!("auth:stillborn:{family_id}")
}

/// The family id of a refresh token's hash, current or rotated; TTL the family's.
pub fn refresh(token_hash: &str) -> String {
    format!("auth:refresh:{token_hash}")
}

/// Rate-limit state of one subject (`client:<id>` or `addr:<ip>`); TTL one window.
pub fn rate(subject: &str) -> String {
    format!("auth:rate:{subject}")
}

/// Hash of when issuers last accepted each secret of a client: secret hash
/// (base64url SHA-256, as in the registration) -> unix time. Written at most
/// once a minute per secret and issuer; TTL [`SECRET_USED_TTL_SECS`] from
/// the last write; the operator deletes it with the client and prunes the
/// fields of hashes no longer registered.
pub fn secret_used(client_id: &str) -> String {
    format!("auth:secretused:{client_id}")
}

/// Longer than the longest grace period (720h), so the last use of a
/// previous secret is known for as long as it works.
pub const SECRET_USED_TTL_SECS: u64 = 31 * 24 * 3600;

/// Redis ACL rules of an issuer's user: the `auth:` keys and the revocation
/// channel, with only the commands the issuer sends (the scripts' own
/// commands are checked against the same rules). `+role` lets it confirm it
/// reached the master, `hello`/`client|tracking|caching`/`pttl` serve the
/// client-side cache of registrations.
pub const ISSUER_ACL: &str = "~auth:* &auth:revocations -@all +get +set +getdel +exists +hset +hget \
     +hgetall +hmget +zadd +zscore +zrange +zrangebyscore +zremrangebyscore +expireat +publish +eval \
     +evalsha +script|load +wait +ping +multi +exec +role +time +hello +client|tracking +client|caching +pttl";

/// Redis ACL rules every agent shares: read the revocation set and the
/// not-before marks, listen on the revocation channel.
pub const AGENT_ACL: &str = "%R~auth:revoked %R~auth:notbefore &auth:revocations -@all +subscribe +ping \
     +hello +role +zscan +hgetall +set";

/// Redis ACL rules of the agent of `client_id`: [`AGENT_ACL`], and writing
/// its own replicas' heartbeats, nothing else.
pub fn agent_acl(client_id: &str) -> String {
    format!("{AGENT_ACL} %W~{}", verifier(&agent_verifier(client_id, "*")))
}

/// JSON [`crate::tokenpolicy::PolicyRecord`] of a TokenPolicy; owned by it.
/// Issuers re-read it, so lifetime and rate-limit changes apply live.
pub fn policy(policy_id: &str) -> String {
    format!("auth:policy:{policy_id}")
}

/// The public JWKS of a TokenPolicy, as its issuers serve it; owned by it.
pub fn jwks(policy_id: &str) -> String {
    format!("auth:jwks:{policy_id}")
}

/// JSON [`VerifierHeartbeat`] of one issuer or agent replica, refreshed
/// every [`HEARTBEAT_INTERVAL_SECS`]; TTL [`HEARTBEAT_TTL_SECS`].
pub fn verifier(verifier_id: &str) -> String {
    format!("auth:verifier:{verifier_id}")
}

/// Pattern of every heartbeat key, for SCAN.
pub const VERIFIERS: &str = "auth:verifier:*";

/// The verifier id of one agent replica of `client_id`.
pub fn agent_verifier(client_id: &str, instance: &str) -> String {
    format!("agent:{client_id}:{instance}")
}

/// The verifier id of one issuer replica of the policy `policy_id`.
pub fn issuer_verifier(policy_id: &str, instance: &str) -> String {
    format!("issuer:{policy_id}:{instance}")
}

pub const HEARTBEAT_INTERVAL_SECS: u64 = 10;
/// A verifier silent for longer is gone: key rotation stops waiting for it.
pub const HEARTBEAT_TTL_SECS: u64 = 30;

/// What a verifier reports: the issuer whose tokens it verifies and the key
/// ids it holds, so the operator promotes a new signing key only once every
/// live verifier can check its signatures; an issuer also reports the key
/// it signs with, so a key is retired only once no issuer signs with it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VerifierHeartbeat {
    pub issuer: String,
    pub kids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<String>,
}
