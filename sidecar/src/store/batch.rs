//! Coalesces the commands of concurrent requests into one pipeline: one
//! write to Redis and one read back for a whole batch, instead of a system
//! call pair (and a wake-up of the other side) per request. On loopback that
//! system call is most of what a Redis round trip costs the issuer.
//!
//! The first command of a batch spawns its flush, which yields once so that
//! every request already runnable can join, then sends them all. Flushing in
//! a task of its own means a caller that goes away (its client hung up)
//! cannot strand the others' replies.

use std::sync::{Arc, Mutex, PoisonError};

use redis::aio::MultiplexedConnection;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, RedisResult, Value};
use tokio::sync::oneshot;

type Call = (Cmd, oneshot::Sender<RedisResult<Value>>);

#[derive(Default)]
pub struct Batcher {
    queue: Arc<Mutex<Vec<Call>>>,
}

impl Batcher {
    /// Sends `cmd` on `conn` with whatever else is waiting, and parses its reply.
    pub async fn query<T: FromRedisValue>(&self, conn: &MultiplexedConnection, cmd: Cmd) -> RedisResult<T> {
        let (reply, replied) = oneshot::channel();
        let lead = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.push((cmd, reply));
            queue.len() == 1
        };
        if lead {
            tokio::spawn(flush(self.queue.clone(), conn.clone()));
        }
        let value = replied.await.map_err(|_| {
            RedisError::from((ErrorKind::Client, "the batch carrying this command was dropped"))
        })??;
        Ok(redis::from_redis_value(value.extract_error()?)?)
    }
}

async fn flush(queue: Arc<Mutex<Vec<Call>>>, mut conn: MultiplexedConnection) {
    tokio::task::yield_now().await;
    let calls = std::mem::take(&mut *queue.lock().unwrap_or_else(PoisonError::into_inner));
    let mut pipe = redis::pipe();
    // Each command's error stays its own instead of failing the batch.
    pipe.ignore_errors();
    let mut replies = Vec::with_capacity(calls.len());
    for (cmd, reply) in calls {
        pipe.add_command(cmd);
        replies.push(reply);
    }
    match pipe.query_async::<Vec<Value>>(&mut conn).await {
        Ok(values) if values.len() == replies.len() => {
            for (reply, value) in replies.into_iter().zip(values) {
                let _ = reply.send(Ok(value));
            }
        }
        Ok(values) => {
            let e = RedisError::from((
                ErrorKind::UnexpectedReturnType,
                "pipeline reply count differs from its command count",
                format!("{} replies to {} commands", values.len(), replies.len()),
            ));
            replies.into_iter().for_each(|reply| drop(reply.send(Err(e.clone()))));
        }
        Err(e) => replies.into_iter().for_each(|reply| drop(reply.send(Err(e.clone())))),
    }
}
