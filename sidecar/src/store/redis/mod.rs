//! The production store: Redis behind Sentinel, shared by every issuer
//! replica. Keys follow `tokenplane_api::storage`.
//!
//! The redis crate looks the master up only when a connection opens (its
//! connection manager would reconnect to the old address, redis-rs #1438),
//! so this store keeps its own connections to the master it resolved
//! through the Sentinels (which also checks `ROLE`), drops them on any error
//! that means "not the master any more" (I/O, timeout, READONLY, MASTERDOWN,
//! LOADING) and resolves again on the next call. Reads and idempotent writes
//! are retried once after such an error; redemption and rotation are not,
//! since they may have applied.
//!
//! Two multiplexed connections: `shared` serves the token path, with client
//! registrations in a client-side cache that Redis keeps exact (RESP3 key
//! tracking pushes an invalidation on every write); `durable` carries the
//! writes that must survive a failover, each pipelined with a `WAIT` for
//! `min_replicas` replicas. `WAIT` blocks its connection until the replicas
//! answer, so a slow replica delays only other durable writes. A heartbeat
//! on `shared` bounds how long a cached registration can outlive a master
//! that went silent: past `timeout` without a reply, lookups go to Redis.

mod config;
mod link;
mod records;
mod scripts;
mod sentinel;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::{CommandCacheConfig, FromRedisValue, Pipeline, RedisError, Value};
use serde::Serialize;
use tokenplane_api::client::{ClientRecord, SecretHash};
use tokenplane_api::grant::{CodeGrant, Issued, PendingAuthorization, RefreshFamily};
use tokenplane_api::storage::{self, VerifierHeartbeat};
use tokenplane_api::tokenpolicy::PolicyRecord;

pub use config::{Password, RedisConfig};
use link::{Link, Links};
use records::{CodeState, family_fields, family_from};
use scripts::Scripts;
pub(crate) use sentinel::certificates;
pub(crate) use sentinel::sentinel_client;

use super::batch::Batcher;
use super::throttle::Throttle;
use super::{Limited, Rate, Redemption, Result, Rotation, Store, StoreError, rate};
use crate::clock::unix_now;

pub struct RedisStore {
    config: RedisConfig,
    links: Arc<Links>,
    batch: Batcher,
    scripts: Scripts,
    used: Throttle,
    decoded: quick_cache::sync::Cache<String, Arc<Decoded>>,
}

/// A client record with the JSON it was decoded from. The tracking cache
/// hands back the JSON on every lookup, and decoding it again was most of a
/// cached lookup's cost: the record is reused while the JSON is the same.
struct Decoded {
    json: String,
    record: Arc<ClientRecord>,
}

/// Client records kept decoded; more clients than this are decoded again
/// when looked up.
const DECODED_CLIENTS: usize = 4096;

/// How often at most each issuer writes the last use of one secret: the
/// operator's view of a rotated-out secret is that much behind.
const SECRET_USE_WINDOW_SECS: u64 = 60;

fn unavailable(e: RedisError) -> StoreError {
    StoreError(e.to_string())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("unreadable {what} in Redis: {e}"))
}

/// A client of the master the Sentinels name now.
async fn master_client(config: &RedisConfig) -> Result<redis::Client> {
    sentinel_client(config)?.async_get_client().await.map_err(unavailable)
}

/// One connection to the master the Sentinels name, for a one-off job
/// (`cleanup`) that needs none of the store's machinery.
pub async fn master_connection(config: &RedisConfig) -> Result<redis::aio::MultiplexedConnection> {
    let client = master_client(config).await?;
    let settings = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.timeout))
        .set_response_timeout(Some(config.timeout));
    client.get_multiplexed_async_connection_with_config(&settings).await.map_err(unavailable)
}

/// Where the master the Sentinels name is, `(host, port)`.
pub async fn master_address(config: &RedisConfig) -> Result<(String, u16)> {
    let client = master_client(config).await?;
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port) | redis::ConnectionAddr::TcpTls { host, port, .. } => {
            Ok((host.clone(), *port))
        }
        other => Err(StoreError(format!("the master is at {other}, not a plain TCP address"))),
    }
}

impl RedisStore {
    /// Prepares the store; nothing is contacted until the first call, but
    /// settings that cannot work (an unreadable password file) fail here.
    pub fn new(config: RedisConfig) -> Result<Self> {
        sentinel_client(&config)?;
        let links = Arc::new(Links::new());
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sentinel::follow_failovers(config.clone(), Arc::downgrade(&links)));
            tokio::spawn(link::heartbeat(Arc::downgrade(&links), config.timeout / 4));
        }
        Ok(Self {
            links,
            batch: Batcher::default(),
            scripts: Scripts::new(),
            used: Throttle::new(SECRET_USE_WINDOW_SECS),
            decoded: quick_cache::sync::Cache::new(DECODED_CLIENTS),
            config,
        })
    }

    /// Runs one command on the shared connection, batched with those of
    /// concurrent requests.
    async fn query<T: FromRedisValue>(&self, retry: bool, cmd: redis::Cmd) -> Result<T> {
        self.run(Link::Shared, retry, |c| {
            let cmd = cmd.clone();
            async move { self.batch.query(&c, cmd).await }
        })
        .await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, key: String, what: &str) -> Result<Option<T>> {
        let raw: Option<String> = self.query(true, redis::Cmd::get(key)).await?;
        raw.map(|v| serde_json::from_str(&v).map_err(|e| corrupt(what, e))).transpose()
    }

    /// The record of the TokenPolicy `policy_id`, as the operator wrote it.
    pub async fn policy(&self, policy_id: &str) -> Result<Option<PolicyRecord>> {
        self.get_json(storage::policy(policy_id), "policy record").await
    }

    /// The key ids of the policy's JWKS as the operator last published it.
    pub async fn published_kids(&self, policy_id: &str) -> Result<Option<Vec<String>>> {
        let set: Option<jsonwebtoken::jwk::JwkSet> = self.get_json(storage::jwks(policy_id), "JWKS").await?;
        Ok(set.map(|s| s.keys.into_iter().filter_map(|k| k.common.key_id).collect()))
    }

    /// Reports the keys this replica holds, for the operator's key rotation.
    pub async fn report(&self, verifier_id: &str, heartbeat: &VerifierHeartbeat) -> Result<()> {
        let expires_at = crate::clock::unix_now() + storage::HEARTBEAT_TTL_SECS;
        self.set_json(storage::verifier(verifier_id), heartbeat, Some(expires_at)).await
    }

    async fn set_json<T: Serialize>(&self, key: String, value: &T, expires_at: Option<u64>) -> Result<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(serde_json::to_string(value).expect("records serialize"));
        if let Some(at) = expires_at {
            cmd.arg("EXAT").arg(at);
        }
        self.query(true, cmd).await
    }
}

impl RedisStore {
    async fn load_family(&self, id: &str) -> Result<Option<RefreshFamily>> {
        let mut pipe = redis::pipe();
        pipe.hgetall(storage::family(id)).zrange_withscores(storage::family_access(id), 0, -1);
        let (fields, access): (HashMap<String, String>, Vec<(String, u64)>) = self
            .run(Link::Shared, true, |mut c| {
                let pipe = pipe.clone();
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        family_from(fields, access)
    }

    async fn revoke_family_now(&self, id: &str) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.invoke_script(self.scripts.revoke_family.arg(id).arg(unix_now()));
        self.durable::<i64>(true, pipe).await.map(drop)
    }

    /// Writes to the revocation state, announces `note` to the agents, and
    /// waits for the replicas.
    async fn announce(&self, mut pipe: Pipeline, note: String) -> Result<()> {
        pipe.publish(storage::REVOCATIONS, note);
        self.durable::<i64>(true, pipe).await.map(drop)
    }
}

impl Store for RedisStore {
    async fn client(&self, client_id: &str) -> Result<Option<Arc<ClientRecord>>> {
        let mut get = redis::Cmd::get(storage::client(client_id));
        let raw: Option<String> = if self.links.heard_within(self.config.timeout) {
            // Served from the cache when Redis has it tracked: no round trip.
            get.set_cache_config(CommandCacheConfig::new().set_enable_cache(true));
            self.run(Link::Shared, true, |mut c| {
                let get = get.clone();
                async move { get.query_async(&mut c).await }
            })
            .await?
        } else {
            self.query(true, get).await?
        };
        let Some(json) = raw else { return Ok(None) };
        if let Some(seen) = self.decoded.get(client_id)
            && seen.json == json
        {
            return Ok(Some(seen.record.clone()));
        }
        let record = Arc::new(serde_json::from_str(&json).map_err(|e| corrupt("client record", e))?);
        self.decoded.insert(client_id.to_owned(), Arc::new(Decoded { json, record: Arc::clone(&record) }));
        Ok(Some(record))
    }

    async fn put_client(&self, record: ClientRecord) -> Result<()> {
        self.set_json(storage::client(&record.client_id), &record, None).await
    }

    async fn revoke(&self, jti: &str, expires_at: u64) -> Result<()> {
        let now = unix_now();
        if expires_at <= now {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.zadd(storage::REVOKED, jti, expires_at).ignore();
        pipe.zrembyscore(storage::REVOKED, "-inf", now).ignore();
        pipe.cmd("EXPIREAT").arg(storage::REVOKED).arg(expires_at).arg("GT").ignore();
        self.announce(pipe, format!("jti {jti} {expires_at}")).await
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool> {
        let exp: Option<u64> = self.query(true, redis::Cmd::zscore(storage::REVOKED, jti)).await?;
        Ok(exp.is_some())
    }

    async fn set_not_before(&self, client_id: &str, at: u64) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.hset(storage::NOT_BEFORE, client_id, at).ignore();
        self.announce(pipe, format!("client {client_id} {at}")).await
    }

    async fn not_before(&self, client_id: &str) -> Result<Option<u64>> {
        self.query(true, redis::Cmd::hget(storage::NOT_BEFORE, client_id)).await
    }

    async fn put_pending(
        &self,
        challenge: &str,
        pending: &PendingAuthorization,
        expires_at: u64,
    ) -> Result<()> {
        self.set_json(storage::pending(challenge), pending, Some(expires_at)).await
    }

    async fn pending(&self, challenge: &str) -> Result<Option<PendingAuthorization>> {
        self.get_json(storage::pending(challenge), "pending authorization").await
    }

    async fn take_pending(&self, challenge: &str) -> Result<Option<PendingAuthorization>> {
        let raw: Option<String> = self.query(false, redis::Cmd::get_del(storage::pending(challenge))).await?;
        raw.map(|v| serde_json::from_str(&v).map_err(|e| corrupt("pending authorization", e))).transpose()
    }

    async fn consented_scopes(&self, subject: &str, client_id: &str) -> Result<Vec<String>> {
        Ok(self.get_json(storage::consent(client_id, subject), "consent").await?.unwrap_or_default())
    }

    async fn remember_consent(
        &self,
        subject: &str,
        client_id: &str,
        scopes: &[String],
        expires_at: u64,
    ) -> Result<()> {
        self.set_json(storage::consent(client_id, subject), &scopes, Some(expires_at)).await
    }

    async fn put_code(&self, code_hash: &str, grant: &CodeGrant, expires_at: u64) -> Result<()> {
        self.set_json(storage::code(code_hash), &CodeState::Unspent(grant.clone()), Some(expires_at)).await
    }

    async fn redeem_code(&self, code_hash: &str, plan: &Issued) -> Result<Redemption> {
        let spent = serde_json::to_string(&CodeState::Spent(plan.clone())).expect("code state serializes");
        let mut pipe = redis::pipe();
        pipe.invoke_script(self.scripts.redeem.key(storage::code(code_hash)).arg(spent).arg(plan.exp));
        // Only a redemption the replicas hold may issue: otherwise a failover
        // could bring the code back unspent.
        let before: Option<String> = self.durable(false, pipe).await?;
        let Some(before) = before else { return Ok(Redemption::Unknown) };
        match serde_json::from_str(&before).map_err(|e| corrupt("authorization code", e))? {
            CodeState::Unspent(grant) => Ok(Redemption::Granted(grant)),
            CodeState::Spent(first) => Ok(Redemption::Replayed(first)),
        }
    }

    async fn create_family(&self, family: &RefreshFamily) -> Result<()> {
        let fields = family_fields(family);
        let mut call = self.scripts.create_family.prepare_invoke();
        call.arg(&family.id).arg(&family.current).arg(family.current_expires_at).arg(unix_now());
        call.arg(fields.len() * 2).arg(fields);
        for (jti, at) in &family.access_tokens {
            call.arg(jti).arg(at);
        }
        let mut pipe = redis::pipe();
        pipe.invoke_script(&call);
        let revoked: bool = self.durable(true, pipe).await?;
        if revoked {
            tracing::info!(family = %family.id, "refresh family was revoked before it was created");
        }
        Ok(())
    }

    async fn family_of(&self, token_hash: &str) -> Result<Option<RefreshFamily>> {
        let id: Option<String> = self.query(true, redis::Cmd::get(storage::refresh(token_hash))).await?;
        match id {
            Some(id) => self.load_family(&id).await,
            None => Ok(None),
        }
    }

    async fn rotate_refresh(
        &self,
        presented: &str,
        next: &str,
        next_expires_at: u64,
        access: (&str, u64),
    ) -> Result<Rotation> {
        let mut pipe = redis::pipe();
        pipe.invoke_script(
            self.scripts
                .rotate
                .key(storage::refresh(presented))
                .arg(presented)
                .arg(next)
                .arg(next_expires_at)
                .arg(access.0)
                .arg(access.1)
                .arg(unix_now()),
        );
        let outcome: Vec<String> = self.durable(false, pipe).await?;
        let (Some(verdict), Some(id)) = (outcome.first(), outcome.get(1)) else {
            return Ok(Rotation::Unknown);
        };
        let family = self
            .load_family(id)
            .await?
            .ok_or_else(|| corrupt("refresh family", "vanished during rotation"))?;
        Ok(if verdict == "rotated" { Rotation::Rotated(family) } else { Rotation::Reused(family) })
    }

    async fn revoke_family(&self, family_id: &str) -> Result<()> {
        self.revoke_family_now(family_id).await
    }

    async fn rate_limit(&self, limits: &[(&str, Rate)]) -> Result<Option<Limited>> {
        let mut call = redis::cmd("EVALSHA");
        call.arg(self.scripts.gcra.get_hash()).arg(limits.len());
        for (subject, _) in limits {
            call.arg(storage::rate(subject));
        }
        for (_, limit) in limits {
            call.arg(rate::interval_ms(*limit)).arg(limit.burst);
        }
        // Not retried: a count that may have landed must not land twice.
        let (index, wait_ms): (usize, u64) = self.query(false, call).await?;
        Ok(index.checked_sub(1).map(|i| (i, Duration::from_millis(wait_ms))))
    }

    async fn secret_used(&self, client_id: &str, secret: &SecretHash, now: u64) {
        if !self.used.due(&secret.sha256, now) {
            return;
        }
        let key = storage::secret_used(client_id);
        let mut pipe = redis::pipe();
        pipe.hset(&key, &secret.sha256, now).ignore();
        pipe.cmd("EXPIREAT").arg(&key).arg(now + storage::SECRET_USED_TTL_SECS).ignore();
        let mut conn = match self.connection(Link::Shared).await {
            Ok(conn) => conn,
            Err(e) => return tracing::debug!(error = %e, client_id, "secret use not recorded"),
        };
        // Off the request path: the token does not wait for a bookkeeping write.
        let client_id = client_id.to_owned();
        tokio::spawn(async move {
            if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                tracing::debug!(error = %e, client_id, "secret use not recorded");
            }
        });
    }

    async fn ping(&self) -> Result<()> {
        match self.query(true, redis::cmd("PING")).await? {
            Value::SimpleString(_) | Value::Okay => Ok(()),
            other => Err(StoreError(format!("unexpected PING reply {other:?}"))),
        }
    }
}
