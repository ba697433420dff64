//! `tokenplane-sidecar cleanup`: prunes what Redis TTLs cannot, as a
//! RedisSentinelCluster's `cleanup` user (the cleanup CronJob). A sorted
//! set of expiring members lives as long as its newest member, so its
//! expired members stay until someone removes them:
//!
//! - `auth:revoked`: issuers trim it when they revoke; between revocations
//!   the expired ids stay, and every agent resyncs them;
//! - `auth:family:*:access`: a refresh family's access token ids.
//!
//! Each step is one `ZREMRANGEBYSCORE` per key, found with `SCAN` in
//! batches, so the job never blocks Redis for long, can be stopped at any
//! point, and two runs at once remove each member once.

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use tokenplane_api::storage;

/// What one run removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Expired ids removed from `auth:revoked`.
    pub revoked: u64,
    /// Family index keys looked at, and the expired ids removed from them.
    pub families: u64,
    pub family_members: u64,
}

/// Pattern of every refresh family's access index.
const FAMILY_ACCESS: &str = "auth:family:*:access";

/// Prunes every member that expired at or before `now` (unix seconds),
/// `batch` keys per `SCAN` call.
pub async fn prune(conn: &mut MultiplexedConnection, now: u64, batch: usize) -> redis::RedisResult<Pruned> {
    let mut pruned = Pruned { revoked: expired(conn, storage::REVOKED, now).await?, ..Pruned::default() };
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(FAMILY_ACCESS)
            .arg("COUNT")
            .arg(batch)
            .arg("TYPE")
            .arg("zset")
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.zrembyscore(key, "-inf", now);
            }
            let removed: Vec<u64> = pipe.query_async(conn).await?;
            pruned.families += keys.len() as u64;
            pruned.family_members += removed.iter().sum::<u64>();
        }
        if next == 0 {
            return Ok(pruned);
        }
        cursor = next;
    }
}

async fn expired(conn: &mut MultiplexedConnection, key: &str, now: u64) -> redis::RedisResult<u64> {
    conn.zrembyscore(key, "-inf", now).await
}
