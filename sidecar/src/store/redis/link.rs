//! The connections to the current master: one for the token path, one for
//! durable writes, dropped when the master moves and opened again on the
//! next call.

use std::future::Future;
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::caching::{CacheConfig, CacheMode};
use redis::{AsyncConnectionConfig, ErrorKind, FromRedisValue, Pipeline, RedisError, ServerErrorKind, Value};
use tokio::sync::RwLock;

use super::{RedisStore, sentinel_client, unavailable};
use crate::store::{Result, StoreError};

/// How long a cached registration may be served without Redis having
/// confirmed it, should an invalidation ever be missed.
const CLIENT_CACHE_TTL: Duration = Duration::from_secs(60);

type Slot = RwLock<Option<MultiplexedConnection>>;

/// The connections to the current master; empty until first use and after
/// the master moved. `last_reply` (ms after `epoch`) is when the master last
/// answered the heartbeat: cached registrations are trusted only while it is
/// recent, since invalidations cannot arrive from a master that went silent.
pub(super) struct Links {
    shared: Slot,
    durable: Slot,
    epoch: Instant,
    last_reply: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Link {
    Shared,
    Durable,
}

impl Links {
    pub fn new() -> Self {
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

    pub async fn drop_all(&self) {
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
    pub fn heard_within(&self, bound: Duration) -> bool {
        let last = self.last_reply.load(Ordering::Relaxed);
        last > 0 && self.now_ms().saturating_sub(last) < u64::try_from(bound.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Pings the master on the shared connection every `every`: keeps
/// `last_reply` current, and notices a silent master without waiting for a
/// request. Ends with the store.
pub(super) async fn heartbeat(links: Weak<Links>, every: Duration) {
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

/// What to check when a TLS connection fails: the handshake errors of rustls
/// name the symptom (`UnknownIssuer`, `CertificateRequired`), not the flag.
const TLS_HINT: &str = " (over TLS: --redis-ca-file must hold the CA that signed the Sentinels' and \
     the nodes' certificates, and --redis-client-cert-file is needed where they set tls-auth-clients yes)";

impl RedisStore {
    /// A connection to the master, resolved through the Sentinels if none is open.
    pub(super) async fn connection(&self, link: Link) -> Result<MultiplexedConnection> {
        let slot = self.links.slot(link);
        if let Some(conn) = slot.read().await.as_ref() {
            return Ok(conn.clone());
        }
        let mut slot = slot.write().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        // A new Sentinel client each time: it logs in with the passwords
        // their files hold now.
        let client = sentinel_client(&self.config)?.async_get_client().await.map_err(|e| {
            let hint = if self.config.tls.is_some() { TLS_HINT } else { "" };
            StoreError(format!(
                "no Redis master {:?} found through the Sentinels: {e}{hint}",
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
        self.scripts.load(&mut conn).await.map_err(unavailable)?;
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

    /// Runs `op` on the master. After an error that means the master moved,
    /// the connections are dropped; `retry` runs `op` once more on a new one.
    pub(super) async fn run<T, F, Fut>(&self, link: Link, retry: bool, op: F) -> Result<T>
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
    pub(super) async fn durable<T: FromRedisValue>(&self, retry: bool, mut pipe: Pipeline) -> Result<T> {
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
}
