//! The operator's side effects in Redis: client registrations and policy
//! records on the master, agent and issuer ACL users on every node (ACLs
//! are not replicated), the not-before marks that kill every token of a
//! client at once, the verifiers' heartbeats read for key rotation, and
//! when issuers last accepted each client secret. Every node is found
//! through the Sentinels.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    RedisConnectionInfo, TlsCertificates,
};
use tokenplane_api::client::{ClientRecord, SecretHash};
use tokenplane_api::redis_tls::RedisTls;
use tokenplane_api::storage::{self, VerifierHeartbeat};
use tokenplane_api::tokenpolicy::PolicyRecord;

use crate::reconcile::AclUser;

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
    /// TLS to the Sentinels and every node, verified against the CA bundle
    /// (the system's roots without one); plain TCP when `None`.
    pub tls: Option<RedisTls>,
    /// Every member by its stable name, for a RedisSentinelCluster: ACL
    /// changes also reach the nodes the Sentinels do not count now (one
    /// that restarts) and the Sentinels. `None` for a Redis the operator
    /// does not run: its Sentinels are not ours to change.
    pub members: Option<Members>,
    pub dial: Dial,
}

/// A cluster's data nodes and Sentinels, `host:port`.
#[derive(Clone, Debug, Default)]
pub struct Members {
    pub nodes: Vec<String>,
    pub sentinels: Vec<String>,
}

/// Addresses dialled in place of the ones given or reported by the
/// Sentinels (`name:port` to `host:port`): an operator run outside its
/// cluster reaches the pods through port-forwards, tests through loopback.
#[derive(Clone, Debug, Default)]
pub struct Dial(Arc<BTreeMap<String, String>>);

impl Dial {
    pub fn new(map: BTreeMap<String, String>) -> Self {
        Self(Arc::new(map))
    }

    /// Where to connect for `addr`.
    pub fn to<'a>(&'a self, addr: &'a str) -> &'a str {
        self.0.get(addr).map_or(addr, String::as_str)
    }

    /// The name `dialled` stands for (itself when not mapped).
    pub fn name_of<'a>(&'a self, dialled: &'a str) -> &'a str {
        self.0.iter().find(|(_, to)| *to == dialled).map_or(dialled, |(name, _)| name.as_str())
    }
}

/// A member of the cluster, by the address the operator knows it by.
#[derive(Clone, Copy, Debug)]
pub enum Member<'a> {
    Node(&'a str),
    Sentinel(&'a str),
}

impl Member<'_> {
    pub fn addr(&self) -> &str {
        match self {
            Member::Node(addr) | Member::Sentinel(addr) => addr,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error(
        "no Sentinel of {sentinels:?} answered (last error: {last}); check the RedisSentinelCluster, \
         the Sentinel credentials and, with --redis-tls, that --redis-ca-file holds the CA of their \
         certificates and a client certificate is given where they set tls-auth-clients yes"
    )]
    NoSentinel { sentinels: Vec<String>, last: String },
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

#[derive(Clone, Copy)]
enum Query<'a> {
    Cmd(&'a redis::Cmd),
    Pipeline(&'a redis::Pipeline),
}

/// `ACL SETUSER name reset on #<hash>... <rules>`: the user accepts exactly
/// the passwords of `hashes` (SHA-256 hex), so no password is ever sent.
fn setuser(name: &str, hashes: &[String], rules: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg(name).arg("reset").arg("on");
    cmd.arg(hashes.iter().map(|h| format!("#{h}")).collect::<Vec<_>>());
    cmd.arg(tokenplane_api::acl::split_rules(rules));
    cmd
}

/// On a Sentinel, every issuer and agent only discovers the master.
fn setuser_on_sentinel(name: &str, hashes: &[String]) -> redis::Cmd {
    setuser(name, hashes, tokenplane_api::acl::SENTINEL_CLIENT)
}

fn deluser(name: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("DELUSER").arg(name);
    cmd
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
    (username, password): (Option<&str>, Option<&str>),
    tls: bool,
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
    let addr_of = if tls {
        ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None }
    } else {
        ConnectionAddr::Tcp(host, port)
    };
    let info = addr_of
        .into_connection_info()
        .map_err(|source| RedisError::Node { addr: addr.to_owned(), source })?;
    Ok(info.set_redis_settings(auth))
}

/// What the redis crate verifies the servers with and presents to them.
fn certificates(tls: &RedisTls) -> TlsCertificates {
    let client = tls.client.clone();
    let client_tls = client.map(|c| ClientTlsConfig { client_cert: c.cert_chain, client_key: c.key });
    TlsCertificates { client_tls, root_cert: tls.ca_bundle.clone() }
}

impl RedisAdmin {
    pub fn new(config: RedisConfig) -> Self {
        if config.tls.is_some() {
            // The redis crate's TLS connections take the process's rustls
            // provider, which rustls cannot choose by itself once both
            // aws-lc-rs and ring are linked. One installed already stays.
            let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        Self { config, open: Mutex::default() }
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
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
        let info =
            connection_info(self.config.dial.to(addr), (username, password), self.config.tls.is_some())?;
        let client = match &self.config.tls {
            Some(tls) => Client::build_with_tls(info, certificates(tls)),
            None => Client::open(info),
        }
        .map_err(node)?;
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

    async fn sentinel(&self, addr: &str) -> Result<MultiplexedConnection, RedisError> {
        let c = &self.config;
        self.connect(addr, c.sentinel_username.as_deref(), c.sentinel_password.as_deref()).await
    }

    /// Runs `cmd` on a node or a Sentinel.
    async fn on_member<T: redis::FromRedisValue>(
        &self,
        member: Member<'_>,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisError> {
        self.run(member, Query::Cmd(cmd)).await
    }

    /// Runs `query` on the kept connection to `member`, and once more on a
    /// new one when the kept one was closed at the other end: Sentinels
    /// close clients' connections on a failover, a restarted node lost them.
    async fn run<T: redis::FromRedisValue>(
        &self,
        member: Member<'_>,
        query: Query<'_>,
    ) -> Result<T, RedisError> {
        let addr = member.addr();
        let mut retried = false;
        loop {
            let mut conn = match member {
                Member::Node(_) => self.node(addr).await?,
                Member::Sentinel(_) => self.sentinel(addr).await?,
            };
            let result = match query {
                Query::Cmd(cmd) => cmd.query_async(&mut conn).await,
                Query::Pipeline(pipe) => pipe.query_async(&mut conn).await,
            };
            match result {
                Ok(value) => return Ok(value),
                Err(e) if !retried && e.is_connection_dropped() => {
                    self.forget(addr);
                    retried = true;
                }
                Err(source) => return Err(self.failed(addr, source)),
            }
        }
    }

    /// Runs `cmd` on the node at `addr`.
    async fn on<T: redis::FromRedisValue>(&self, addr: &str, cmd: &redis::Cmd) -> Result<T, RedisError> {
        self.on_member(Member::Node(addr), cmd).await
    }

    /// The master's address and every replica's, from the first Sentinel
    /// that answers. Resolve them once per reconcile and pass them on.
    pub async fn nodes(&self) -> Result<Nodes, RedisError> {
        let c = &self.config;
        let mut last = "none tried".to_owned();
        for sentinel in &c.sentinels {
            let mut conn = match self.sentinel(sentinel).await {
                Ok(conn) => conn,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let master: redis::RedisResult<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&c.master_name)
                .query_async(&mut conn)
                .await;
            let replicas: redis::RedisResult<Vec<std::collections::HashMap<String, String>>> =
                redis::cmd("SENTINEL").arg("replicas").arg(&c.master_name).query_async(&mut conn).await;
            let (host, port, replicas) = match (master, replicas) {
                (Ok((host, port)), Ok(replicas)) => (host, port, replicas),
                (Err(e), _) | (_, Err(e)) => {
                    last = format!("{sentinel}: {e}");
                    self.forget(sentinel);
                    continue;
                }
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
        Err(RedisError::NoSentinel { sentinels: c.sentinels.clone(), last })
    }

    /// Creates (or redefines) `user`, accepting exactly the passwords of
    /// `hashes` (SHA-256 hex; two while a password rotation overlaps), on
    /// every node the Sentinels count, and on a cluster's other members:
    /// ACL users are not replicated.
    pub async fn set_user(&self, nodes: &Nodes, user: &AclUser, hashes: &[String]) -> Result<(), RedisError> {
        let setuser = setuser(&user.name, hashes, &user.rules);
        for addr in nodes.all() {
            self.on::<()>(addr, &setuser).await?;
        }
        self.on_other_members(nodes, &setuser, &setuser_on_sentinel(&user.name, hashes)).await
    }

    /// Removes `user` from every node and the cluster's other members.
    async fn delete_user(&self, nodes: &Nodes, user: &AclUser) -> Result<(), RedisError> {
        let deluser = deluser(&user.name);
        for addr in nodes.all() {
            self.on::<i64>(addr, &deluser).await?;
        }
        self.on_other_members(nodes, &deluser, &deluser).await
    }

    /// Runs an ACL change on the cluster's members beyond `nodes`: the
    /// other data nodes (`on_node`) and the Sentinels (`on_sentinel`). One
    /// that is down misses it and gets it from the cluster's ACL sync once
    /// back; when no Sentinel answers, the change failed.
    async fn on_other_members(
        &self,
        nodes: &Nodes,
        on_node: &redis::Cmd,
        on_sentinel: &redis::Cmd,
    ) -> Result<(), RedisError> {
        let Some(members) = &self.config.members else { return Ok(()) };
        let dial = &self.config.dial;
        let counted: Vec<&str> = nodes.all().map(|a| dial.to(a)).collect();
        let mut missed = Vec::new();
        for addr in members.nodes.iter().filter(|a| !counted.contains(&dial.to(a))) {
            if let Err(e) = self.on_member::<redis::Value>(Member::Node(addr), on_node).await {
                missed.push(e);
            }
        }
        let mut answered = false;
        for addr in &members.sentinels {
            match self.on_member::<redis::Value>(Member::Sentinel(addr), on_sentinel).await {
                Ok(_) => answered = true,
                Err(e) => missed.push(e),
            }
        }
        if !answered && !members.sentinels.is_empty() {
            return Err(missed.swap_remove(missed.len() - 1));
        }
        for error in missed {
            tracing::warn!(%error, "a member missed an ACL change; the cluster's ACL sync brings it in line");
        }
        Ok(())
    }

    /// The users `member` has, as `ACL LIST` prints them.
    pub async fn acl_list(&self, member: Member<'_>) -> Result<Vec<String>, RedisError> {
        self.on_member(member, redis::cmd("ACL").arg("LIST")).await
    }

    /// Sets `name` on `member` with `rules`, accepting exactly the
    /// passwords of `hashes`.
    pub async fn set_hashed_user(
        &self,
        member: Member<'_>,
        name: &str,
        hashes: &[String],
        rules: &str,
    ) -> Result<(), RedisError> {
        self.on_member(member, &setuser(name, hashes, rules)).await
    }

    /// Runs `cmd` on `member`, for what its running configuration holds.
    pub async fn configure(&self, member: Member<'_>, cmd: &redis::Cmd) -> Result<(), RedisError> {
        self.on_member::<redis::Value>(member, cmd).await.map(drop)
    }

    /// Removes `name` from `member`.
    pub async fn delete_user_on(&self, member: Member<'_>, name: &str) -> Result<(), RedisError> {
        self.on_member::<i64>(member, &deluser(name)).await.map(drop)
    }

    /// The password hashes (SHA-256 hex) of `user` on the master; `None`
    /// when there is no such user.
    pub async fn password_hashes(
        &self,
        nodes: &Nodes,
        user: &AclUser,
    ) -> Result<Option<Vec<String>>, RedisError> {
        let mut getuser = redis::cmd("ACL");
        getuser.arg("GETUSER").arg(&user.name);
        let acl: Option<std::collections::HashMap<String, redis::Value>> =
            self.on(&nodes.master, &getuser).await?;
        Ok(acl
            .and_then(|mut fields| fields.remove("passwords"))
            .map(|p| redis::from_redis_value(p).unwrap_or_default()))
    }

    /// Writes a client's registration and its agent's ACL user (see
    /// [`Self::set_user`]).
    pub async fn apply_client(
        &self,
        nodes: &Nodes,
        registration: &ClientRecord,
        user: &AclUser,
        hashes: &[String],
    ) -> Result<(), RedisError> {
        self.set_user(nodes, user, hashes).await?;
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
        let passwords = self.password_hashes(nodes, user).await?;
        // An unreadable registration is rewritten by the reconcile, like a missing one.
        Ok((json.and_then(|j| serde_json::from_str(&j).ok()), passwords))
    }

    /// Kills every token the clients issued up to `now` at once: their
    /// not-before marks, announced to the agents. Tokens carry `iat` in whole
    /// seconds and a mark kills `iat < mark`, so the mark is the next second:
    /// a token issued later in this second dies too.
    pub async fn revoke_clients(
        &self,
        nodes: &Nodes,
        client_ids: &[String],
        now: u64,
    ) -> Result<(), RedisError> {
        if client_ids.is_empty() {
            return Ok(());
        }
        let mark = now + 1;
        let mut pipe = redis::pipe();
        for client_id in client_ids {
            pipe.hset(storage::NOT_BEFORE, client_id, mark).ignore();
            pipe.publish(storage::REVOCATIONS, format!("client {client_id} {mark}")).ignore();
        }
        self.pipeline(&nodes.master, &pipe).await
    }

    async fn pipeline(&self, addr: &str, pipe: &redis::Pipeline) -> Result<(), RedisError> {
        self.run(Member::Node(addr), Query::Pipeline(pipe)).await
    }

    /// When issuers last accepted each of `registered`, the client's secret
    /// hashes (hash -> unix time). What issuers recorded for hashes no
    /// longer registered is deleted: they cannot be used again.
    pub async fn secret_uses(
        &self,
        nodes: &Nodes,
        client_id: &str,
        registered: &[SecretHash],
    ) -> Result<std::collections::HashMap<String, u64>, RedisError> {
        let key = storage::secret_used(client_id);
        let mut uses: std::collections::HashMap<String, u64> =
            self.on(&nodes.master, &redis::Cmd::hgetall(&key)).await?;
        let stale: Vec<String> =
            uses.keys().filter(|h| !registered.iter().any(|r| r.sha256 == **h)).cloned().collect();
        if !stale.is_empty() {
            self.on::<i64>(&nodes.master, &redis::Cmd::hdel(&key, &stale)).await?;
            uses.retain(|h, _| !stale.contains(h));
        }
        Ok(uses)
    }

    /// Removes a client: every token it issued up to `now` dies, then the
    /// registration and the agent's ACL user go.
    pub async fn remove_client(
        &self,
        nodes: &Nodes,
        client_id: &str,
        user: &AclUser,
        now: u64,
    ) -> Result<(), RedisError> {
        self.revoke_clients(nodes, &[client_id.to_owned()], now).await?;
        let records = [storage::client(client_id), storage::secret_used(client_id)];
        self.on::<i64>(&nodes.master, &redis::Cmd::del(&records)).await?;
        self.delete_user(nodes, user).await
    }

    /// Every live verifier heartbeat, by verifier id.
    pub async fn heartbeats(&self, nodes: &Nodes) -> Result<Vec<(String, VerifierHeartbeat)>, RedisError> {
        let node = |source| self.failed(&nodes.master, source);
        let mut conn = self.node(&nodes.master).await?;
        let keys: Vec<String> = {
            let mut scan = redis::AsyncCommands::scan_match::<_, String>(&mut conn, storage::VERIFIERS)
                .await
                .map_err(node)?;
            let mut keys = Vec::new();
            while let Some(key) = futures_util::StreamExt::next(&mut scan).await {
                keys.push(key.map_err(node)?);
            }
            keys
        };
        let mut beats = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let values: Vec<Option<String>> =
                redis::cmd("MGET").arg(chunk).query_async(&mut conn).await.map_err(node)?;
            let prefix = storage::verifier("");
            beats.extend(chunk.iter().zip(values).filter_map(|(key, value)| {
                let beat = serde_json::from_str(&value?).ok()?;
                Some((key.strip_prefix(&prefix)?.to_owned(), beat))
            }));
        }
        Ok(beats)
    }

    /// Publishes a policy to its issuers and their users: the issuer ACL
    /// user (every node), the policy record and the JWKS (master).
    pub async fn apply_policy(
        &self,
        nodes: &Nodes,
        policy_id: &str,
        (record, jwks): (&PolicyRecord, &str),
        user: &AclUser,
        hashes: &[String],
    ) -> Result<(), RedisError> {
        self.set_user(nodes, user, hashes).await?;
        let mut pipe = redis::pipe();
        pipe.set(storage::policy(policy_id), serde_json::to_string(record).expect("a record serializes"))
            .ignore();
        pipe.set(storage::jwks(policy_id), jwks).ignore();
        self.pipeline(&nodes.master, &pipe).await
    }

    /// Forgets a deleted policy: its record, JWKS and issuer user.
    pub async fn remove_policy(
        &self,
        nodes: &Nodes,
        policy_id: &str,
        user: &AclUser,
    ) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        pipe.del(storage::policy(policy_id)).ignore();
        pipe.del(storage::jwks(policy_id)).ignore();
        self.pipeline(&nodes.master, &pipe).await?;
        self.delete_user(nodes, user).await
    }
}
