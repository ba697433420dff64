//! The production store: Redis behind Sentinel, shared by every issuer
//! replica. Keys follow `tokenplane_api::storage`.
//!
//! The redis crate looks the master up only when a connection opens (its
//! connection manager would reconnect to the old address, redis-rs #1438),
//! so this store keeps one multiplexed connection to the master it resolved
//! through the Sentinels (which also checks `ROLE`), drops it on any error
//! that means "not the master any more" (I/O, timeout, READONLY, MASTERDOWN,
//! LOADING) and resolves again on the next call. Reads and idempotent writes
//! are retried once after such an error; redemption and rotation are not,
//! since they may have applied. Writes that must survive a failover wait for
//! `min_replicas` replicas (`WAIT`) before they count.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, ConnectionAddr, ErrorKind, RedisError, Script, ServerErrorKind, Value};
use serde::{Deserialize, Serialize};
use tokenplane_api::claims::Audience;
use tokenplane_api::client::ClientRecord;
use tokenplane_api::grant::{CodeGrant, Issued, PendingAuthorization, RefreshFamily};
use tokenplane_api::storage;
use tokio::sync::{Mutex, RwLock};

use super::{Rate, Redemption, Result, Rotation, Store, StoreError, rate};
use crate::clock::unix_now;

/// Where the Redis master is found and how to authenticate.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// Sentinel addresses, `host:port`.
    pub sentinels: Vec<String>,
    /// The name the Sentinels monitor the master under.
    pub master_name: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    pub tls: bool,
    /// Replicas that must confirm a revocation, redemption or rotation.
    pub min_replicas: usize,
    /// How long to wait for them, and for any reply.
    pub timeout: Duration,
}

pub struct RedisStore {
    config: RedisConfig,
    sentinel: Mutex<SentinelClient>,
    master: Arc<RwLock<Option<MultiplexedConnection>>>,
    redeem: Script,
    rotate: Script,
    revoke_family: Script,
    gcra: Script,
}

/// Lua shared by the scripts: revoke a family and every live access token
/// issued from it, announcing each; a family not created yet is marked
/// stillborn. Key prefixes are those of `tokenplane_api::storage`.
const REVOKE_FAMILY_FN: &str = r"
local function revoke_family(id, now)
  local fam = 'auth:family:' .. id
  if redis.call('EXISTS', fam) == 0 then
    redis.call('SET', 'auth:stillborn:' .. id, '1', 'EX', 3600)
    return
  end
  redis.call('HSET', fam, 'revoked', '1')
  local tokens = redis.call('ZRANGEBYSCORE', fam .. ':access', '(' .. now, '+inf', 'WITHSCORES')
  for i = 1, #tokens, 2 do
    redis.call('SET', 'auth:revoked:' .. tokens[i], '1', 'EXAT', tokens[i + 1])
    redis.call('PUBLISH', 'auth:revocations', 'jti ' .. tokens[i] .. ' ' .. tokens[i + 1])
  end
end
";

/// KEYS[1] the code; ARGV[1] the spent state, ARGV[2] its expiry. Returns
/// the state before.
const REDEEM: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return false end
if string.sub(v, 1, 10) == '{"unspent"' then
  redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[2])
end
return v
"#;

/// KEYS[1] the presented token's mapping; ARGV: presented hash, next hash,
/// next expiry, access jti, its expiry, now.
const ROTATE: &str = r"
local id = redis.call('GET', KEYS[1])
if not id then return {'unknown'} end
local fam = 'auth:family:' .. id
local state = redis.call('HMGET', fam, 'current', 'revoked')
if not state[1] then return {'unknown'} end
if state[2] == '1' or state[1] ~= ARGV[1] then
  revoke_family(id, ARGV[6])
  return {'reused', id}
end
local access = fam .. ':access'
redis.call('HSET', fam, 'current', ARGV[2], 'current_expires_at', ARGV[3])
redis.call('ZREMRANGEBYSCORE', access, '-inf', ARGV[6])
redis.call('ZADD', access, ARGV[5], ARGV[4])
redis.call('SET', 'auth:refresh:' .. ARGV[2], id, 'EXAT', ARGV[3])
for _, key in ipairs({KEYS[1], fam, access}) do
  redis.call('EXPIREAT', key, ARGV[3])
end
return {'rotated', id}
";

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum CodeState {
    Unspent(CodeGrant),
    Spent(Issued),
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError(e.to_string())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("unreadable {what} in Redis: {e}"))
}

/// Errors after which the connection may point at a node that is no
/// longer (or not yet) the master.
fn stale_master(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown | ServerErrorKind::BusyLoading
            )
        )
}

fn addr(spec: &str, tls: bool) -> std::result::Result<ConnectionAddr, StoreError> {
    let (host, port) = spec
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
        .ok_or_else(|| StoreError(format!("Sentinel address {spec:?} is not host:port")))?;
    Ok(if tls {
        ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None }
    } else {
        ConnectionAddr::Tcp(host, port)
    })
}

impl RedisStore {
    /// Prepares the store; nothing is contacted until the first call.
    pub fn new(config: RedisConfig) -> Result<Self> {
        let sentinels = config.sentinels.iter().map(|s| addr(s, config.tls)).collect::<Result<Vec<_>>>()?;
        let mut builder =
            SentinelClientBuilder::new(sentinels, &config.master_name, SentinelServerType::Master)
                .map_err(unavailable)?
                .set_client_to_redis_db(storage::AUTH_DB);
        if let Some(u) = &config.username {
            builder = builder.set_client_to_redis_username(u);
        }
        if let Some(p) = &config.password {
            builder = builder.set_client_to_redis_password(p);
        }
        if let Some(u) = &config.sentinel_username {
            builder = builder.set_client_to_sentinel_username(u);
        }
        if let Some(p) = &config.sentinel_password {
            builder = builder.set_client_to_sentinel_password(p);
        }
        if config.tls {
            builder = builder
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        }
        let master = Arc::new(RwLock::new(None));
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(follow_failovers(config.clone(), Arc::downgrade(&master)));
        }
        Ok(Self {
            sentinel: Mutex::new(builder.build().map_err(unavailable)?),
            master,
            redeem: Script::new(REDEEM),
            rotate: Script::new(&format!("{REVOKE_FAMILY_FN}{ROTATE}")),
            revoke_family: Script::new(&format!(
                "{REVOKE_FAMILY_FN}revoke_family(ARGV[1], ARGV[2])\nreturn 1"
            )),
            gcra: Script::new(rate::GCRA_LUA),
            config,
        })
    }

    /// The connection to the master, resolved through the Sentinels if none is open.
    async fn connection(&self) -> Result<MultiplexedConnection> {
        if let Some(conn) = self.master.read().await.as_ref() {
            return Ok(conn.clone());
        }
        let mut slot = self.master.write().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let client = self.sentinel.lock().await.async_get_client().await.map_err(|e| {
            StoreError(format!(
                "no Redis master {:?} found through the Sentinels: {e}",
                self.config.master_name
            ))
        })?;
        let limits = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.timeout))
            .set_response_timeout(Some(self.config.timeout));
        let conn = client.get_multiplexed_async_connection_with_config(&limits).await.map_err(unavailable)?;
        tracing::info!(master = ?client.get_connection_info().addr(), "connected to the Redis master");
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `op` on the master. After an error that means the master moved,
    /// the connection is dropped; `retry` runs `op` once more on the new one.
    async fn run<T, F, Fut>(&self, retry: bool, op: F) -> Result<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let mut attempts = if retry { 2 } else { 1 };
        loop {
            attempts -= 1;
            let conn = self.connection().await?;
            match op(conn).await {
                Ok(v) => return Ok(v),
                Err(e) if stale_master(&e) => {
                    tracing::warn!(error = %e, "lost the Redis master; resolving it again through the Sentinels");
                    *self.master.write().await = None;
                    if attempts == 0 {
                        return Err(unavailable(e));
                    }
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    /// Waits until `min_replicas` replicas hold every write made so far.
    async fn replicated(&self) -> Result<()> {
        let needed = self.config.min_replicas;
        if needed == 0 {
            return Ok(());
        }
        let timeout = u64::try_from(self.config.timeout.as_millis()).unwrap_or(u64::MAX);
        let acked: usize = self
            .run(false, |mut c| async move {
                redis::cmd("WAIT").arg(needed).arg(timeout).query_async(&mut c).await
            })
            .await?;
        if acked < needed {
            return Err(StoreError(format!(
                "only {acked} of {needed} Redis replicas confirmed the write in time"
            )));
        }
        Ok(())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, key: String, what: &str) -> Result<Option<T>> {
        let raw: Option<String> = self
            .run(true, |mut c| {
                let key = key.clone();
                async move { redis::cmd("GET").arg(key).query_async(&mut c).await }
            })
            .await?;
        raw.map(|v| serde_json::from_str(&v).map_err(|e| corrupt(what, e))).transpose()
    }

    async fn set_json<T: Serialize>(&self, key: String, value: &T, expires_at: Option<u64>) -> Result<()> {
        let json = serde_json::to_string(value).expect("records serialize");
        self.run(true, |mut c| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg(&json);
            if let Some(at) = expires_at {
                cmd.arg("EXAT").arg(at);
            }
            async move { cmd.query_async::<()>(&mut c).await }
        })
        .await
    }
}

type MasterSlot = RwLock<Option<MultiplexedConnection>>;

/// Follows the Sentinels' `+switch-master` announcements and drops the
/// connection as soon as the master moves, rather than at the next error
/// (an old master cut off from the others would otherwise keep taking
/// writes). Moves to the next Sentinel when one goes away; ends with the store.
async fn follow_failovers(config: RedisConfig, master: Weak<MasterSlot>) {
    for sentinel in config.sentinels.iter().cycle() {
        if master.strong_count() == 0 {
            return;
        }
        if let Err(e) = watch_sentinel(&config, sentinel, &master).await {
            tracing::debug!(sentinel, error = %e, "no failover announcements from this Sentinel; trying the next");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn watch_sentinel(
    config: &RedisConfig,
    sentinel: &str,
    master: &Weak<MasterSlot>,
) -> redis::RedisResult<()> {
    let mut auth = redis::RedisConnectionInfo::default();
    if let Some(u) = &config.sentinel_username {
        auth = auth.set_username(u);
    }
    if let Some(p) = &config.sentinel_password {
        auth = auth.set_password(p);
    }
    let addr = addr(sentinel, config.tls)
        .map_err(|e| RedisError::from((ErrorKind::InvalidClientConfig, "bad address", e.0)))?;
    let info = redis::IntoConnectionInfo::into_connection_info(addr)?.set_redis_settings(auth);
    let mut pubsub = redis::Client::open(info)?.get_async_pubsub().await?;
    pubsub.subscribe("+switch-master").await?;
    let mut events = pubsub.on_message();
    while let Some(event) = events.next().await {
        // "<master name> <old ip> <old port> <new ip> <new port>"
        let payload: String = event.get_payload()?;
        if payload.split(' ').next() != Some(config.master_name.as_str()) {
            continue;
        }
        let Some(slot) = master.upgrade() else { return Ok(()) };
        tracing::info!(%payload, "the Sentinels announced a new Redis master");
        *slot.write().await = None;
    }
    Ok(())
}

/// Field names and values of a family's hash.
fn family_fields(f: &RefreshFamily) -> Vec<(&'static str, String)> {
    vec![
        ("id", f.id.clone()),
        ("client_id", f.client_id.clone()),
        ("subject", f.subject.clone()),
        ("auth_time", f.auth_time.to_string()),
        ("scope", f.scope.clone().unwrap_or_default()),
        ("audience", serde_json::to_string(&f.audience).expect("audience serializes")),
        ("current", f.current.clone()),
        ("current_expires_at", f.current_expires_at.to_string()),
        ("expires_at", f.expires_at.map(|t| t.to_string()).unwrap_or_default()),
        ("revoked", if f.revoked { "1" } else { "0" }.to_owned()),
    ]
}

fn family_from(
    mut fields: std::collections::HashMap<String, String>,
    access: Vec<(String, u64)>,
) -> Result<Option<RefreshFamily>> {
    if fields.is_empty() {
        return Ok(None);
    }
    let mut take = |k: &str| fields.remove(k).unwrap_or_default();
    let number = |v: String| v.parse::<u64>().map_err(|e| corrupt("refresh family", e));
    let audience: Audience =
        serde_json::from_str(&take("audience")).map_err(|e| corrupt("refresh family", e))?;
    let expires_at = Some(take("expires_at")).filter(|s| !s.is_empty()).map(number).transpose()?;
    Ok(Some(RefreshFamily {
        id: take("id"),
        client_id: take("client_id"),
        subject: take("subject"),
        auth_time: number(take("auth_time"))?,
        scope: Some(take("scope")).filter(|s| !s.is_empty()),
        audience,
        current: take("current"),
        current_expires_at: number(take("current_expires_at"))?,
        expires_at,
        revoked: take("revoked") == "1",
        access_tokens: access,
    }))
}

impl RedisStore {
    async fn load_family(&self, id: &str) -> Result<Option<RefreshFamily>> {
        let (key, access_key) = (storage::family(id), storage::family_access(id));
        let (fields, access): (std::collections::HashMap<String, String>, Vec<(String, u64)>) = self
            .run(true, |mut c| {
                let mut pipe = redis::pipe();
                pipe.cmd("HGETALL").arg(&key).cmd("ZRANGE").arg(&access_key).arg(0).arg(-1).arg("WITHSCORES");
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        family_from(fields, access)
    }

    async fn revoke_family_now(&self, id: &str) -> Result<()> {
        let (id, now) = (id.to_owned(), unix_now());
        self.run(true, |mut c| {
            let mut call = self.revoke_family.prepare_invoke();
            call.arg(&id).arg(now);
            async move { call.invoke_async::<i64>(&mut c).await }
        })
        .await?;
        self.replicated().await
    }
}

impl Store for RedisStore {
    async fn client(&self, client_id: &str) -> Result<Option<Arc<ClientRecord>>> {
        Ok(self.get_json::<ClientRecord>(storage::client(client_id), "client record").await?.map(Arc::new))
    }

    async fn put_client(&self, record: ClientRecord) -> Result<()> {
        self.set_json(storage::client(&record.client_id), &record, None).await
    }

    async fn revoke(&self, jti: &str, expires_at: u64) -> Result<()> {
        if expires_at <= unix_now() {
            return Ok(());
        }
        let (key, note) = (storage::revoked(jti), format!("jti {jti} {expires_at}"));
        self.run(true, |mut c| {
            let mut pipe = redis::pipe();
            pipe.cmd("SET").arg(&key).arg(1).arg("EXAT").arg(expires_at).ignore();
            pipe.cmd("PUBLISH").arg(storage::REVOCATIONS).arg(&note).ignore();
            async move { pipe.query_async::<()>(&mut c).await }
        })
        .await?;
        self.replicated().await
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool> {
        let key = storage::revoked(jti);
        self.run(true, |mut c| {
            let key = key.clone();
            async move { redis::cmd("EXISTS").arg(key).query_async(&mut c).await }
        })
        .await
    }

    async fn set_not_before(&self, client_id: &str, at: u64) -> Result<()> {
        let (key, note) = (storage::not_before(client_id), format!("client {client_id} {at}"));
        self.run(true, |mut c| {
            let mut pipe = redis::pipe();
            pipe.cmd("SET").arg(&key).arg(at).ignore();
            pipe.cmd("PUBLISH").arg(storage::REVOCATIONS).arg(&note).ignore();
            async move { pipe.query_async::<()>(&mut c).await }
        })
        .await?;
        self.replicated().await
    }

    async fn not_before(&self, client_id: &str) -> Result<Option<u64>> {
        let key = storage::not_before(client_id);
        self.run(true, |mut c| {
            let key = key.clone();
            async move { redis::cmd("GET").arg(key).query_async(&mut c).await }
        })
        .await
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
        let key = storage::pending(challenge);
        let raw: Option<String> = self
            .run(false, |mut c| {
                let key = key.clone();
                async move { redis::cmd("GETDEL").arg(key).query_async(&mut c).await }
            })
            .await?;
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
        let key = storage::code(code_hash);
        let spent = serde_json::to_string(&CodeState::Spent(plan.clone())).expect("code state serializes");
        let before: Option<String> = self
            .run(false, |mut c| {
                let mut call = self.redeem.prepare_invoke();
                call.key(&key).arg(&spent).arg(plan.exp);
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        let Some(before) = before else { return Ok(Redemption::Unknown) };
        // Only a redemption the replicas hold may issue: otherwise a failover
        // could bring the code back unspent.
        self.replicated().await?;
        match serde_json::from_str(&before).map_err(|e| corrupt("authorization code", e))? {
            CodeState::Unspent(grant) => Ok(Redemption::Granted(grant)),
            CodeState::Spent(first) => Ok(Redemption::Replayed(first)),
        }
    }

    async fn create_family(&self, family: &RefreshFamily) -> Result<()> {
        let (key, access_key, mapping) = (
            storage::family(&family.id),
            storage::family_access(&family.id),
            storage::refresh(&family.current),
        );
        let exp = family.current_expires_at;
        let fields = family_fields(family);
        let stillborn: bool = self
            .run(true, |mut c| {
                let mut pipe = redis::pipe();
                pipe.atomic();
                pipe.cmd("HSET").arg(&key).arg(fields.clone()).ignore();
                pipe.cmd("EXPIREAT").arg(&key).arg(exp).ignore();
                for (jti, at) in &family.access_tokens {
                    pipe.cmd("ZADD").arg(&access_key).arg(at).arg(jti).ignore();
                }
                pipe.cmd("EXPIREAT").arg(&access_key).arg(exp).ignore();
                pipe.cmd("SET").arg(&mapping).arg(&family.id).arg("EXAT").arg(exp).ignore();
                pipe.cmd("EXISTS").arg(storage::stillborn(&family.id));
                async move { pipe.query_async::<(bool,)>(&mut c).await.map(|(s,)| s) }
            })
            .await?;
        if stillborn {
            return self.revoke_family_now(&family.id).await;
        }
        Ok(())
    }

    async fn family_of(&self, token_hash: &str) -> Result<Option<RefreshFamily>> {
        let key = storage::refresh(token_hash);
        let id: Option<String> = self
            .run(true, |mut c| {
                let key = key.clone();
                async move { redis::cmd("GET").arg(key).query_async(&mut c).await }
            })
            .await?;
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
        let key = storage::refresh(presented);
        let now = unix_now();
        let outcome: Vec<String> = self
            .run(false, |mut c| {
                let mut call = self.rotate.prepare_invoke();
                call.key(&key)
                    .arg(presented)
                    .arg(next)
                    .arg(next_expires_at)
                    .arg(access.0)
                    .arg(access.1)
                    .arg(now);
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        self.replicated().await?;
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

    async fn rate_limit(&self, subject: &str, limit: Rate) -> Result<Option<Duration>> {
        let key = storage::rate(subject);
        let interval = rate::interval_ms(limit);
        // Not retried: a count that may have landed must not land twice.
        let wait_ms: u64 = self
            .run(false, |mut c| {
                let mut call = self.gcra.prepare_invoke();
                call.key(&key).arg(interval).arg(limit.burst);
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }

    async fn ping(&self) -> Result<()> {
        let pong: Value =
            self.run(true, |mut c| async move { redis::cmd("PING").query_async(&mut c).await }).await?;
        match pong {
            Value::SimpleString(_) | Value::Okay => Ok(()),
            other => Err(StoreError(format!("unexpected PING reply {other:?}"))),
        }
    }
}
