//! The revocation feed: what the agent knows of revoked tokens and client
//! "not before" marks, kept current from Redis.
//!
//! One RESP3 connection to the master (found through the Sentinels) carries
//! everything: `SUBSCRIBE auth:revocations` first, then a resync of the
//! whole state (`ZRANGEBYSCORE auth:revoked`, `HGETALL auth:notbefore`), so
//! nothing published during the resync is missed; then the announcements,
//! and a `PING` every heartbeat. The state counts as fresh while the last
//! resync or heartbeat is younger than the staleness bound; past it,
//! validation fails closed. Any error ends the session, and the next one
//! resyncs before the state is fresh again.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokenplane_api::storage;
use tokio::sync::mpsc;

use super::credentials::Watched;
use super::jwks::Jwks;
use crate::clock::unix_now;
use crate::heartbeat;
use crate::store::{Password, RedisConfig};

/// Revoked ids read per `ZSCAN` call during a resync.
const RESYNC_CHUNK: usize = 2_000;

/// Revoked token ids are kept as 64-bit keyed hashes (a random key per
/// process): 100,000 revocations take about 2 MiB. A collision could only
/// reject a valid token, never accept a revoked one.
pub struct Revocations {
    hasher: std::collections::hash_map::RandomState,
    /// Hash of the jti -> its `exp`.
    revoked: RwLock<HashMap<u64, u64>>,
    /// Client id -> unix time before which its tokens are dead.
    not_before: RwLock<HashMap<String, u64>>,
    epoch: Instant,
    /// When the state was last confirmed current (ms after `epoch`); 0 never.
    confirmed_ms: AtomicU64,
    max_staleness: Duration,
}

/// Why the feed rejects a token.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Revoked {
    #[error("the token was revoked")]
    Token,
    #[error("every token of client {0} issued before its not-before time was revoked")]
    Client(String),
    #[error("the revocation feed has not synced with Redis yet: failing closed until it does")]
    NotSynced,
    #[error(
        "the revocation feed has not been confirmed for {0:?} (bound {1:?}): failing closed until Redis answers"
    )]
    Stale(Duration, Duration),
}

fn lock<T>(r: std::sync::LockResult<T>) -> T {
    r.unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Revocations {
    pub fn new(max_staleness: Duration) -> Self {
        Self {
            hasher: Default::default(),
            revoked: RwLock::default(),
            not_before: RwLock::default(),
            epoch: Instant::now(),
            confirmed_ms: AtomicU64::new(0),
            max_staleness,
        }
    }

    /// Whether a token (`jti`, of `client_id`, issued at `iat`) still lives.
    pub fn check(&self, jti: &str, client_id: &str, iat: u64) -> Result<(), Revoked> {
        match self.staleness() {
            Duration::MAX => return Err(Revoked::NotSynced),
            age if age > self.max_staleness => return Err(Revoked::Stale(age, self.max_staleness)),
            _ => {}
        }
        if lock(self.revoked.read()).contains_key(&self.hasher.hash_one(jti)) {
            return Err(Revoked::Token);
        }
        if lock(self.not_before.read()).get(client_id).is_some_and(|nb| iat < *nb) {
            return Err(Revoked::Client(client_id.to_owned()));
        }
        Ok(())
    }

    /// How long since the state was last confirmed current (`MAX` if never).
    pub fn staleness(&self) -> Duration {
        match self.confirmed_ms.load(Ordering::Acquire) {
            0 => Duration::MAX,
            at => self.epoch.elapsed().saturating_sub(Duration::from_millis(at)),
        }
    }

    pub fn fresh(&self) -> bool {
        self.staleness() <= self.max_staleness
    }

    /// How many revoked tokens are held.
    pub fn len(&self) -> usize {
        lock(self.revoked.read()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn confirm(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
        self.confirmed_ms.store(ms, Ordering::Release);
    }

    fn revoke(&self, jti: &str, exp: u64) {
        lock(self.revoked.write()).insert(self.hasher.hash_one(jti), exp);
    }

    /// A not-before mark only moves forward, so an announcement that arrives
    /// after a resync which already saw a later mark changes nothing.
    fn mark(&self, client_id: &str, at: u64) {
        let mut marks = lock(self.not_before.write());
        let mark = marks.entry(client_id.to_owned()).or_default();
        *mark = (*mark).max(at);
    }

    /// Applies one announcement: `jti <id> <exp>` or `client <id> <not-before>`.
    fn apply(&self, note: &str) {
        let mut parts = note.split(' ');
        let (kind, id, at) = (parts.next(), parts.next(), parts.next().and_then(|t| t.parse::<u64>().ok()));
        match (kind, id, at) {
            (Some("jti"), Some(jti), Some(exp)) => self.revoke(jti, exp),
            (Some("client"), Some(client), Some(at)) => self.mark(client, at),
            _ => tracing::warn!(note, "ignoring an unreadable revocation announcement"),
        }
    }

    /// Replaces the state with a full read of Redis (hashed revoked ids).
    fn replace(&self, revoked: Vec<(u64, u64)>, marks: HashMap<String, u64>) {
        let now = unix_now();
        *lock(self.revoked.write()) = revoked.into_iter().filter(|(_, exp)| *exp > now).collect();
        *lock(self.not_before.write()) = marks;
    }

    /// Drops revocations of tokens that have expired anyway.
    fn sweep(&self, now: u64) {
        lock(self.revoked.write()).retain(|_, exp| *exp > now);
    }
}

/// What the agent reports on its feed connection: the issuer it verifies
/// for and the keys it holds (its heartbeat, for the operator's key rotation).
pub struct Reporter {
    pub issuer: String,
    pub jwks: Arc<Jwks>,
    pub instance: String,
}

impl Reporter {
    /// Best effort: a heartbeat that cannot be written (say, a Redis user
    /// from before heartbeats) must not cost the revocation feed.
    async fn beat(&self, conn: &mut MultiplexedConnection, client_id: &str) {
        let key = storage::verifier(&storage::agent_verifier(client_id, &self.instance));
        let report = heartbeat::report(&self.issuer, self.jwks.keys().kids(), None);
        let written: redis::RedisResult<()> = redis::cmd("SET")
            .arg(key)
            .arg(serde_json::to_string(&report).expect("a heartbeat serializes"))
            .arg("EX")
            .arg(storage::HEARTBEAT_TTL_SECS)
            .query_async(conn)
            .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot report the keys held (heartbeat)");
        }
    }
}

/// Keeps `revocations` current until the process ends: a session per
/// connection, a short pause between sessions. Each session takes the
/// Redis username and password from `credentials` unless `config` sets
/// them, so a rotated ACL password is picked up at the next connection.
pub async fn follow(
    revocations: Arc<Revocations>,
    config: RedisConfig,
    credentials: Arc<Watched>,
    reporter: Reporter,
) {
    let ping_every = (revocations.max_staleness / 4).max(Duration::from_millis(50));
    let mut pause = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let creds = credentials.get();
        let config = RedisConfig {
            username: config.username.clone().or_else(|| creds.redis_username.clone()),
            password: config.password.clone().or_else(|| creds.redis_password.clone().map(Password::Given)),
            ..config.clone()
        };
        if let Err(e) = session(&revocations, &config, ping_every, (&reporter, &creds.client_id)).await {
            tracing::warn!(error = %e, staleness = ?revocations.staleness(), "revocation feed interrupted; reconnecting");
        }
        pause = if started.elapsed() > Duration::from_secs(10) {
            Duration::from_millis(100)
        } else {
            (pause * 2).min(Duration::from_secs(2))
        };
        tokio::time::sleep(pause).await;
    }
}

async fn session(
    revocations: &Revocations,
    config: &RedisConfig,
    ping_every: Duration,
    (reporter, client_id): (&Reporter, &str),
) -> redis::RedisResult<()> {
    let mut sentinel = crate::store::sentinel_client(config).map_err(|e| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad Redis settings", e.0))
    })?;
    let client = sentinel.async_get_client().await?;
    let (pushes, mut pushed) = mpsc::unbounded_channel();
    let limits = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.timeout))
        .set_response_timeout(Some(config.timeout))
        .set_push_sender(pushes);
    let mut conn = client.get_multiplexed_async_connection_with_config(&limits).await?;
    conn.subscribe(storage::REVOCATIONS).await?;
    resync(revocations, &mut conn).await?;
    let mut tick = tokio::time::interval(ping_every);
    let mut beat = tokio::time::interval(heartbeat::INTERVAL);
    loop {
        tokio::select! {
            push = pushed.recv() => on_push(revocations, push)?,
            _ = beat.tick() => reporter.beat(&mut conn, client_id).await,
            _ = tick.tick() => {
                redis::cmd("PING").query_async::<Value>(&mut conn).await?;
                revocations.confirm();
                revocations.sweep(unix_now());
            }
        }
    }
}

/// Reads the whole revocation state, the set in chunks (`ZSCAN`) so that
/// even a large one never sits in memory twice over.
async fn resync(revocations: &Revocations, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
    let mut revoked = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, chunk): (u64, Vec<(String, u64)>) = redis::cmd("ZSCAN")
            .arg(storage::REVOKED)
            .arg(cursor)
            .arg("COUNT")
            .arg(RESYNC_CHUNK)
            .query_async(conn)
            .await?;
        revoked.extend(chunk.into_iter().map(|(jti, exp)| (revocations.hasher.hash_one(jti), exp)));
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let marks: HashMap<String, u64> = conn.hgetall(storage::NOT_BEFORE).await?;
    let count = revoked.len();
    revocations.replace(revoked, marks);
    revocations.confirm();
    tracing::info!(revoked = count, "revocation feed in sync with Redis");
    Ok(())
}

fn on_push(revocations: &Revocations, push: Option<PushInfo>) -> redis::RedisResult<()> {
    let closed = || redis::RedisError::from((redis::ErrorKind::Io, "the Redis connection closed"));
    let push = push.ok_or_else(closed)?;
    match push.kind {
        PushKind::Message => {
            if let Some(Value::BulkString(note)) = push.data.get(1) {
                revocations.apply(&String::from_utf8_lossy(note));
            }
            Ok(())
        }
        PushKind::Disconnection => Err(closed()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_revoke_tokens_and_clients() {
        let r = Revocations::new(Duration::from_secs(60));
        r.confirm();
        r.apply("jti abc 4000000000");
        r.apply("client c.ns 100");
        r.apply("garbage");
        assert_eq!(r.check("abc", "other", 50), Err(Revoked::Token));
        assert_eq!(r.check("def", "c.ns", 99), Err(Revoked::Client("c.ns".into())));
        assert_eq!(r.check("def", "c.ns", 100), Ok(()), "issued at the mark: alive");
        r.apply("client c.ns 50");
        assert!(r.check("def", "c.ns", 99).is_err(), "a mark never moves back");
        r.sweep(4_000_000_000);
        assert_eq!(r.check("abc", "other", 50), Ok(()), "expired revocations are swept");
    }

    #[test]
    fn an_unconfirmed_or_stale_feed_fails_closed() {
        let r = Revocations::new(Duration::from_millis(20));
        assert_eq!(r.check("a", "b", 1), Err(Revoked::NotSynced));
        r.confirm();
        assert_eq!(r.check("a", "b", 1), Ok(()));
        std::thread::sleep(Duration::from_millis(40));
        assert!(matches!(r.check("a", "b", 1), Err(Revoked::Stale(..))));
    }
}
