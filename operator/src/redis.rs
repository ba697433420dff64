//! The operator's side effects in Redis: client registrations on the
//! master, agent ACL users on every node (ACLs are not replicated), and the
//! not-before mark that kills every token of a deleted client at once.
//! Every node is found through the Sentinels.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo,
};
use tokenplane_api::client::ClientRecord;
use tokenplane_api::storage;

use crate::reconcile::oauth2client::AclUser;

/// How to reach the cluster, as the operator's admin user.
#[derive(Clone)]
pub struct RedisConfig {
    /// Sentinel addresses, `host:port`.
    pub sentinels: Vec<String>,
    pub master_name: String,
    pub username: String,
    pub password: String,
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("no Sentinel of {0:?} answered; check the RedisSentinelCluster and the Sentinel credentials")]
    NoSentinel(Vec<String>),
    #[error("Redis node {addr}: {source}")]
    Node { addr: String, source: redis::RedisError },
    #[error("the Sentinels report an unusable address {0:?}")]
    Address(String),
}

/// The data nodes, as the Sentinels see them.
pub struct Nodes {
    pub master: String,
    pub replicas: Vec<String>,
}

impl Nodes {
    /// The master, then every replica: ACL users live on each.
    fn all(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.master).chain(&self.replicas)
    }
}

pub struct RedisAdmin {
    config: RedisConfig,
    /// The connection to each node and Sentinel, by address, kept open:
    /// a reconcile runs a handful of commands, and a new connection (TCP
    /// and AUTH) for each costs more than the commands themselves.
    open: Mutex<HashMap<String, MultiplexedConnection>>,
}

fn connection_info(
    addr: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<ConnectionInfo, RedisError> {
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
        .ok_or_else(|| RedisError::Address(addr.to_owned()))?;
    let mut auth = RedisConnectionInfo::default();
    if let Some(u) = username {
        auth = auth.set_username(u);
    }
    if let Some(p) = password {
        auth = auth.set_password(p);
    }
    let info = ConnectionAddr::Tcp(host, port)
        .into_connection_info()
        .map_err(|source| RedisError::Node { addr: addr.to_owned(), source })?;
    Ok(info.set_redis_settings(auth))
}

impl RedisAdmin {
    pub fn new(config: RedisConfig) -> Self {
        Self { config, open: Mutex::default() }
    }

    async fn connect(
        &self,
        addr: &str,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<MultiplexedConnection, RedisError> {
        if let Some(open) = self.open.lock().expect("never poisoned").get(addr) {
            return Ok(open.clone());
        }
        let node = |source| RedisError::Node { addr: addr.to_owned(), source };
        let limits = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.timeout))
            .set_response_timeout(Some(self.config.timeout));
        let client = Client::open(connection_info(addr, username, password)?).map_err(node)?;
        let connection = client.get_multiplexed_async_connection_with_config(&limits).await.map_err(node)?;
        self.open.lock().expect("never poisoned").insert(addr.to_owned(), connection.clone());
        Ok(connection)
    }

    /// Forgets the connection to `addr` after an error on it (a broken
    /// connection stays broken), so that the next use reconnects.
    fn failed(&self, addr: &str, source: redis::RedisError) -> RedisError {
        self.forget(addr);
        RedisError::Node { addr: addr.to_owned(), source }
    }

    fn forget(&self, addr: &str) {
        self.open.lock().expect("never poisoned").remove(addr);
    }

    async fn node(&self, addr: &str) -> Result<MultiplexedConnection, RedisError> {
        self.connect(addr, Some(&self.config.username), Some(&self.config.password)).await
    }

    /// Runs `cmd` on the node at `addr`.
    async fn on<T: redis::FromRedisValue>(&self, addr: &str, cmd: &redis::Cmd) -> Result<T, RedisError> {
        let result = cmd.query_async(&mut self.node(addr).await?).await;
        result.map_err(|source| self.failed(addr, source))
    }

    /// The master's address and every replica's, from the first Sentinel
    /// that answers. Resolve them once per reconcile and pass them on.
    pub async fn nodes(&self) -> Result<Nodes, RedisError> {
        let c = &self.config;
        for sentinel in &c.sentinels {
            let Ok(mut conn) =
                self.connect(sentinel, c.sentinel_username.as_deref(), c.sentinel_password.as_deref()).await
            else {
                continue;
            };
            let master: redis::RedisResult<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&c.master_name)
                .query_async(&mut conn)
                .await;
            let replicas: redis::RedisResult<Vec<std::collections::HashMap<String, String>>> =
                redis::cmd("SENTINEL").arg("replicas").arg(&c.master_name).query_async(&mut conn).await;
            let (Ok((host, port)), Ok(replicas)) = (master, replicas) else {
                self.forget(sentinel);
                continue;
            };
            let replicas = replicas
                .iter()
                .filter(|r| {
                    !r.get("flags").is_some_and(|f| f.contains("s_down") || f.contains("disconnected"))
                })
                .filter_map(|r| Some(format!("{}:{}", r.get("ip")?, r.get("port")?)))
                .collect();
            return Ok(Nodes { master: format!("{host}:{port}"), replicas });
        }
        Err(RedisError::NoSentinel(c.sentinels.clone()))
    }

    /// Writes a client's registration and creates (or redefines) its agent's
    /// ACL user with `passwords` (two while a password rotation overlaps)
    /// on every node.
    pub async fn apply_client(
        &self,
        nodes: &Nodes,
        registration: &ClientRecord,
        user: &AclUser,
        passwords: &[&str],
    ) -> Result<(), RedisError> {
        let mut setuser = redis::cmd("ACL");
        setuser.arg("SETUSER").arg(&user.name).arg("reset").arg("on");
        for password in passwords {
            setuser.arg(format!(">{password}"));
        }
        setuser.arg(user.rules.split_whitespace().collect::<Vec<_>>());
        for addr in nodes.all() {
            self.on::<()>(addr, &setuser).await?;
        }
        let json = serde_json::to_string(registration).expect("a registration serializes");
        let mut set = redis::cmd("SET");
        set.arg(storage::client(&registration.client_id)).arg(json);
        self.on(&nodes.master, &set).await
    }

    /// What Redis holds for a client: its registration, and the password
    /// hashes (SHA-256 hex) of its agent's ACL user on the master.
    pub async fn registered(
        &self,
        nodes: &Nodes,
        client_id: &str,
        user: &AclUser,
    ) -> Result<(Option<ClientRecord>, Option<Vec<String>>), RedisError> {
        let json: Option<String> =
            self.on(&nodes.master, &redis::Cmd::get(storage::client(client_id))).await?;
        let mut getuser = redis::cmd("ACL");
        getuser.arg("GETUSER").arg(&user.name);
        let acl: Option<std::collections::HashMap<String, redis::Value>> =
            self.on(&nodes.master, &getuser).await?;
        let passwords = acl
            .and_then(|mut fields| fields.remove("passwords"))
            .map(|p| redis::from_redis_value(p).unwrap_or_default());
        // An unreadable registration is rewritten by the reconcile, like a missing one.
        Ok((json.and_then(|j| serde_json::from_str(&j).ok()), passwords))
    }

    /// Removes a client: every token issued before `now` dies (the
    /// not-before mark, announced to the agents), then the registration and
    /// the agent's ACL user go.
    pub async fn remove_client(
        &self,
        nodes: &Nodes,
        client_id: &str,
        user: &AclUser,
        now: u64,
    ) -> Result<(), RedisError> {
        let master = &nodes.master;
        let mut pipe = redis::pipe();
        pipe.hset(storage::NOT_BEFORE, client_id, now).ignore();
        pipe.publish(storage::REVOCATIONS, format!("client {client_id} {now}")).ignore();
        pipe.del(storage::client(client_id)).ignore();
        let () = pipe
            .query_async(&mut self.node(master).await?)
            .await
            .map_err(|source| self.failed(master, source))?;
        let mut deluser = redis::cmd("ACL");
        deluser.arg("DELUSER").arg(&user.name);
        for addr in nodes.all() {
            self.on::<i64>(addr, &deluser).await?;
        }
        Ok(())
    }
}
