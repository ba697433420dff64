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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::caching::{CacheConfig, CacheMode};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, CommandCacheConfig, ConnectionAddr, ErrorKind, FromRedisValue, Pipeline,
    ProtocolVersion, RedisError, Script, ServerErrorKind, Value,
};
use serde::{Deserialize, Serialize};
use tokenplane_api::claims::Audience;
use tokenplane_api::client::{ClientRecord, SecretHash};
use tokenplane_api::grant::{CodeGrant, Issued, PendingAuthorization, RefreshFamily};
use tokenplane_api::storage::{self, VerifierHeartbeat};
use tokenplane_api::tokenpolicy::PolicyRecord;
use tokio::sync::{Mutex, RwLock};

use super::batch::Batcher;
use super::throttle::Throttle;
use super::{Limited, Rate, Redemption, Result, Rotation, Store, StoreError, rate};
use crate::clock::unix_now;

/// Where the Redis master is found and how to authenticate.
#[derive(Clone)]
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
    /// How long to wait for any reply, and for the replicas (`WAIT`).
    pub timeout: Duration,
}

impl RedisConfig {
    /// The master `master_name` found through `sentinels`, without
    /// credentials or TLS, one replica confirming durable writes, 1 s timeout.
    pub fn new(sentinels: Vec<String>, master_name: impl Into<String>) -> Self {
        Self {
            sentinels,
            master_name: master_name.into(),
            username: None,
            password: None,
            sentinel_username: None,
            sentinel_password: None,
            tls: false,
            min_replicas: 1,
            timeout: Duration::from_secs(1),
        }
    }
}

/// Never prints a password, should one reach a log line.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .field("username", &self.username)
            .field("sentinel_username", &self.sentinel_username)
            .field("tls", &self.tls)
            .field("min_replicas", &self.min_replicas)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

pub struct RedisStore {
    config: RedisConfig,
    sentinel: Mutex<SentinelClient>,
    links: Arc<Links>,
    batch: Batcher,
    redeem: Script,
    create_family: Script,
    rotate: Script,
    revoke_family: Script,
    gcra: Script,
    used: Throttle,
}

/// How often at most each issuer writes the last use of one secret: the
/// operator's view of a rotated-out secret is that much behind.
const SECRET_USE_WINDOW_SECS: u64 = 60;

/// How long a cached registration may be served without Redis having
/// confirmed it, should an invalidation ever be missed.
const CLIENT_CACHE_TTL: Duration = Duration::from_secs(60);

type Slot = RwLock<Option<MultiplexedConnection>>;

/// The connections to the current master; empty until first use and after
/// the master moved. `last_reply` (ms after `epoch`) is when the master last
/// answered the heartbeat: cached registrations are trusted only while it is
/// recent, since invalidations cannot arrive from a master that went silent.
struct Links {
    shared: Slot,
    durable: Slot,
    epoch: Instant,
    last_reply: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Shared,
    Durable,
}

impl Links {
    fn new() -> Self {
        Self {
            shared: Slot::default(),
            durable: Slot::default(),
            epoch: Instant::now(),
            last_reply: AtomicU64::new(0),
        }
    }

    fn slot(&self, link: Link) -> &Slot {
        match link {
            Link::Shared => &self.shared,
            Link::Durable => &self.durable,
        }
    }

    async fn drop_all(&self) {
        *self.shared.write().await = None;
        *self.durable.write().await = None;
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn heard(&self) {
        self.last_reply.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Whether the master answered within `bound` (never, before the first reply).
    fn heard_within(&self, bound: Duration) -> bool {
        let last = self.last_reply.load(Ordering::Relaxed);
        last > 0 && self.now_ms().saturating_sub(last) < u64::try_from(bound.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Pings the master on the shared connection every `every`: keeps
/// `last_reply` current, and notices a silent master without waiting for a
/// request. Ends with the store.
async fn heartbeat(links: Weak<Links>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(links) = links.upgrade() else { return };
        let Some(mut conn) = links.shared.read().await.clone() else { continue };
        match redis::cmd("PING").query_async::<Value>(&mut conn).await {
            Ok(_) => links.heard(),
            Err(e) if stale_master(&e) => {
                tracing::warn!(error = %e, "the Redis master stopped answering; resolving it again through the Sentinels");
                links.drop_all().await;
            }
            Err(e) => tracing::warn!(error = %e, "Redis heartbeat failed"),
        }
    }
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
    redis.call('ZADD', 'auth:revoked', tokens[i + 1], tokens[i])
    redis.call('EXPIREAT', 'auth:revoked', tokens[i + 1], 'GT')
    redis.call('PUBLISH', 'auth:revocations', 'jti ' .. tokens[i] .. ' ' .. tokens[i + 1])
  end
end
";

/// ARGV: family id, hash of its first refresh token, their expiry, now, the
/// count n of hash arguments, n field/value arguments of the family's hash,
/// then (jti, expiry) pairs of its access tokens. Returns 1 when the family
/// was revoked before it existed, and is now created revoked.
const CREATE_FAMILY: &str = r"
local id, first, exp, now, n = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local fam, access = 'auth:family:' .. id, 'auth:family:' .. id .. ':access'
redis.call('HSET', fam, unpack(ARGV, 6, 5 + n))
for i = 6 + n, #ARGV, 2 do
  redis.call('ZADD', access, ARGV[i + 1], ARGV[i])
end
redis.call('EXPIREAT', fam, exp)
redis.call('EXPIREAT', access, exp)
redis.call('SET', 'auth:refresh:' .. first, id, 'EXAT', exp)
if redis.call('EXISTS', 'auth:stillborn:' .. id) == 0 then return 0 end
revoke_family(id, now)
return 1
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
        let sentinel = sentinel_client(&config)?;
        let links = Arc::new(Links::new());
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(follow_failovers(config.clone(), Arc::downgrade(&links)));
            tokio::spawn(heartbeat(Arc::downgrade(&links), config.timeout / 4));
        }
        Ok(Self {
            sentinel: Mutex::new(sentinel),
            links,
            batch: Batcher::default(),
            redeem: Script::new(REDEEM),
            create_family: Script::new(&format!("{REVOKE_FAMILY_FN}{CREATE_FAMILY}")),
            rotate: Script::new(&format!("{REVOKE_FAMILY_FN}{ROTATE}")),
            revoke_family: Script::new(&format!(
                "{REVOKE_FAMILY_FN}revoke_family(ARGV[1], ARGV[2])\nreturn 1"
            )),
            gcra: Script::new(rate::GCRA_LUA),
            used: Throttle::new(SECRET_USE_WINDOW_SECS),
            config,
        })
    }

    /// A connection to the master, resolved through the Sentinels if none is open.
    async fn connection(&self, link: Link) -> Result<MultiplexedConnection> {
        let slot = self.links.slot(link);
        if let Some(conn) = slot.read().await.as_ref() {
            return Ok(conn.clone());
        }
        let mut slot = slot.write().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let client = self.sentinel.lock().await.async_get_client().await.map_err(|e| {
            StoreError(format!(
                "no Redis master {:?} found through the Sentinels: {e}",
                self.config.master_name
            ))
        })?;
        let mut limits = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.timeout))
            .set_response_timeout(Some(self.response_timeout(link)));
        if link == Link::Shared {
            limits = limits.set_cache_config(
                CacheConfig::new().set_mode(CacheMode::OptIn).set_default_client_ttl(CLIENT_CACHE_TTL),
            );
        }
        let mut conn =
            client.get_multiplexed_async_connection_with_config(&limits).await.map_err(unavailable)?;
        self.load_scripts(&mut conn).await.map_err(unavailable)?;
        if link == Link::Shared {
            self.links.heard();
        }
        tracing::info!(master = ?client.get_connection_info().addr(), ?link, "connected to the Redis master");
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// How long a reply may take on `link`. A durable write's reply comes
    /// after its `WAIT`, which may take the whole timeout when replicas are
    /// slow: the client must hear the master's answer then, not give up at
    /// the same moment and mistake slow replicas for a lost master.
    fn response_timeout(&self, link: Link) -> Duration {
        match link {
            Link::Shared => self.config.timeout,
            Link::Durable => self.config.timeout * 2,
        }
    }

    /// Loads every script, so that they can run inside pipelines: scripts
    /// are not replicated, a new master starts without them.
    async fn load_scripts(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for script in [&self.redeem, &self.create_family, &self.rotate, &self.revoke_family, &self.gcra] {
            pipe.load_script(script).ignore();
        }
        pipe.query_async(conn).await
    }

    /// Runs `op` on the master. After an error that means the master moved,
    /// the connections are dropped; `retry` runs `op` once more on a new one.
    async fn run<T, F, Fut>(&self, link: Link, retry: bool, op: F) -> Result<T>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let mut attempts = if retry { 2 } else { 1 };
        loop {
            attempts -= 1;
            let conn = self.connection(link).await?;
            match op(conn).await {
                Ok(v) => return Ok(v),
                Err(e) if stale_master(&e) => {
                    tracing::warn!(error = %e, "lost the Redis master; resolving it again through the Sentinels");
                    self.links.drop_all().await;
                    if attempts == 0 {
                        return Err(unavailable(e));
                    }
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    /// Runs `pipe` (whose only unignored reply is a `T`) on the durable
    /// connection followed by `WAIT`, in one round trip: the write counts
    /// only once `min_replicas` replicas hold it.
    async fn durable<T: FromRedisValue>(&self, retry: bool, mut pipe: Pipeline) -> Result<T> {
        let needed = self.config.min_replicas;
        let timeout = u64::try_from(self.config.timeout.as_millis()).unwrap_or(u64::MAX);
        pipe.cmd("WAIT").arg(needed).arg(timeout);
        let (value, acked): (T, usize) = self
            .run(Link::Durable, retry, |mut c| {
                let pipe = pipe.clone();
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        if acked < needed {
            return Err(StoreError(format!(
                "only {acked} of {needed} Redis replicas confirmed the write within {timeout} ms; \
                 check the replicas (INFO replication on the master) or --redis-min-replicas"
            )));
        }
        Ok(value)
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

/// A client that finds the master through the Sentinels and talks RESP3
/// to it (for the tracking cache and pushed pub/sub messages), with the
/// credentials and TLS of `config`.
pub(crate) fn sentinel_client(config: &RedisConfig) -> Result<SentinelClient> {
    let sentinels = config.sentinels.iter().map(|s| addr(s, config.tls)).collect::<Result<Vec<_>>>()?;
    let mut builder = SentinelClientBuilder::new(sentinels, &config.master_name, SentinelServerType::Master)
        .map_err(unavailable)?
        .set_client_to_redis_db(storage::AUTH_DB)
        .set_client_to_redis_protocol(ProtocolVersion::RESP3);
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
    builder.build().map_err(unavailable)
}

/// Follows the Sentinels' `+switch-master` announcements and drops the
/// connections as soon as the master moves, rather than at the next error
/// (an old master cut off from the others would otherwise keep taking
/// writes). Moves to the next Sentinel when one goes away; ends with the store.
async fn follow_failovers(config: RedisConfig, links: Weak<Links>) {
    for sentinel in config.sentinels.iter().cycle() {
        if links.strong_count() == 0 {
            return;
        }
        if let Err(e) = watch_sentinel(&config, sentinel, &links).await {
            tracing::debug!(sentinel, error = %e, "no failover announcements from this Sentinel; trying the next");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn watch_sentinel(config: &RedisConfig, sentinel: &str, links: &Weak<Links>) -> redis::RedisResult<()> {
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
        let Some(links) = links.upgrade() else { return Ok(()) };
        tracing::info!(%payload, "the Sentinels announced a new Redis master");
        links.drop_all().await;
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
        let mut pipe = redis::pipe();
        pipe.hgetall(storage::family(id)).zrange_withscores(storage::family_access(id), 0, -1);
        let (fields, access): (std::collections::HashMap<String, String>, Vec<(String, u64)>) = self
            .run(Link::Shared, true, |mut c| {
                let pipe = pipe.clone();
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        family_from(fields, access)
    }

    async fn revoke_family_now(&self, id: &str) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.invoke_script(self.revoke_family.arg(id).arg(unix_now()));
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
        raw.map(|v| serde_json::from_str(&v).map(Arc::new).map_err(|e| corrupt("client record", e)))
            .transpose()
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
        pipe.invoke_script(self.redeem.key(storage::code(code_hash)).arg(spent).arg(plan.exp));
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
        let mut call = self.create_family.prepare_invoke();
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
            self.rotate
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
        call.arg(self.gcra.get_hash()).arg(limits.len());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_never_prints_its_passwords() {
        let config = RedisConfig {
            password: Some("redis-secret".into()),
            sentinel_password: Some("sentinel-secret".into()),
            ..RedisConfig::new(vec!["127.0.0.1:26379".into()], "tokenplane")
        };
        let printed = format!("{config:?}");
        assert!(printed.contains("127.0.0.1:26379") && !printed.contains("secret"), "{printed}");
    }
}
