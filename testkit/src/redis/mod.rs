//! A real Redis Sentinel cluster for tests: one master, replicas and three
//! Sentinels, each a `redis-server` or `redis-sentinel` child process on a
//! free loopback port with its own temp dir, ACLs on and the default user
//! off. Failure injection kills, restarts, pauses and resumes processes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tokenplane_testkit::HarnessError> {
//! use tokenplane_testkit::{RedisCluster, RedisClusterOptions};
//! use std::time::Duration;
//!
//! let cluster = RedisCluster::start(RedisClusterOptions::default()).await?;
//! cluster.add_user("issuer", "s3cret", "~tp:* +@read +@write +ping +role").await?;
//! let old = cluster.kill_master().await?;
//! let new = cluster.wait_for_failover(&old, Duration::from_secs(10)).await?;
//! cluster.restart_node(&old).await?; // rejoins as a replica of `new`
//! # Ok(()) }
//! ```
//!
//! With [`RedisClusterOptions::tls`] every process serves TLS only (`port 0`,
//! `tls-port`), replicas and Sentinels talk TLS to each other, and the
//! certificates come from a throwaway CA; [`RedisCluster::tls`] gives the CA
//! and a client certificate the cluster accepts.
//!
//! Every process stops and every temp dir is removed when the
//! [`RedisCluster`] drops. When a test fails, print [`RedisCluster::logs`].

mod config;
mod error;
mod process;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    RedisConnectionInfo, RedisError, TlsCertificates, Value,
};
use tempfile::TempDir;

use self::config::{
    ADMIN_USER, Listen, Passwords, QUORUM, REPLICATION_USER, SENTINEL_CLIENT_USER, SENTINEL_USER, SENTINELS,
    Timings, TlsFiles, node_acl_file, node_config, sentinel_config,
};
pub use self::error::HarnessError;
pub use self::process::free_port;
use self::process::{Kind, Proc, find_binary};
use crate::pki::{LeafFiles, TestCa, Usage};

/// How long one connection attempt of the harness may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one command of the harness may take (a paused node never answers).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the harness polls while it waits for a state.
const POLL: Duration = Duration::from_millis(50);
/// Ports tried per process when other processes take them first.
const PORT_ATTEMPTS: usize = 10;
/// Log lines per process in error messages.
const TAIL_LINES: usize = 25;

/// What to start. [`Default`] gives 2 replicas, master name `tokenplane`,
/// `down-after-milliseconds` 1000, `failover-timeout` 3000, a readiness
/// deadline of 20 s and plain TCP; there are always 3 Sentinels with quorum 2.
#[derive(Clone, Debug)]
pub struct RedisClusterOptions {
    /// Replicas of the master (at least 1, so a failover has a candidate).
    pub replicas: usize,
    /// The name the Sentinels monitor the master under.
    pub master_name: String,
    /// `sentinel down-after-milliseconds`: how long a node may not answer
    /// before a Sentinel considers it down.
    pub down_after: Duration,
    /// `sentinel failover-timeout`.
    pub failover_timeout: Duration,
    /// How long [`RedisCluster::start`] and [`RedisCluster::restart_node`]
    /// wait for processes to come up and sync.
    pub ready_timeout: Duration,
    /// TLS on every port and link, clients authenticated as given; plain
    /// TCP when `None`.
    pub tls: Option<ClientAuth>,
}

/// Whether a TLS cluster requires clients to present a certificate
/// (`tls-auth-clients`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `tls-auth-clients yes`: a client without a certificate the CA signed
    /// fails the handshake.
    Required,
    /// `tls-auth-clients optional`: a certificate is checked when presented.
    Optional,
}

/// The TLS files of a cluster started with [`RedisClusterOptions::tls`],
/// PEM, removed with the cluster.
#[derive(Clone, Debug)]
pub struct ClusterTls {
    /// The CA that signed every certificate of the cluster: what clients
    /// verify the nodes and Sentinels against.
    pub ca_file: PathBuf,
    /// A client certificate and key the cluster accepts.
    pub client: LeafFiles,
}

/// The TLS side of a running cluster.
struct Tls {
    /// What the processes' configurations name.
    files: TlsFiles,
    /// What the harness connects with: the CA and the client certificate.
    certificates: TlsCertificates,
    /// Holds the files.
    _dir: TempDir,
}

impl Tls {
    fn new(auth: ClientAuth) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new().prefix("tokenplane-redis-tls-").tempdir().map_err(|source| {
            HarnessError::Io { what: "creating a temp dir", path: std::env::temp_dir(), source }
        })?;
        let io = |path: PathBuf| {
            move |source| HarnessError::Io { what: "writing a certificate", path: path.clone(), source }
        };
        let ca = TestCa::new("tokenplane-testkit Redis CA");
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, ca.pem()).map_err(io(ca_file.clone()))?;
        let client_leaf = ca.loopback(Usage::Client);
        let server = ca.loopback(Usage::Server).write(dir.path(), "server").map_err(io(dir.path().into()))?;
        let client = client_leaf.write(dir.path(), "client").map_err(io(dir.path().into()))?;
        let certificates = TlsCertificates {
            client_tls: Some(ClientTlsConfig {
                client_cert: client_leaf.cert_pem.into_bytes(),
                client_key: client_leaf.key_pem.into_bytes(),
            }),
            root_cert: Some(ca.pem().as_bytes().to_vec()),
        };
        let auth_clients = match auth {
            ClientAuth::Required => "yes",
            ClientAuth::Optional => "optional",
        };
        Ok(Tls { files: TlsFiles { ca: ca_file, server, client, auth_clients }, certificates, _dir: dir })
    }
}

impl Default for RedisClusterOptions {
    fn default() -> Self {
        RedisClusterOptions {
            replicas: 2,
            master_name: "tokenplane".to_owned(),
            down_after: Duration::from_millis(1000),
            failover_timeout: Duration::from_millis(3000),
            ready_timeout: Duration::from_secs(20),
            tls: None,
        }
    }
}

/// A username and password of an ACL user. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The ACL user name.
    pub username: String,
    /// Its password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl Credentials {
    /// Credentials of `username` with `password`.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials { username: username.into(), password: password.into() }
    }

    /// What the `redis` crate needs to connect to `addr` (`host:port`) as
    /// this user.
    pub fn connection_info(&self, addr: &str) -> Result<ConnectionInfo, HarnessError> {
        let redis = RedisConnectionInfo::default().set_username(&self.username).set_password(&self.password);
        Ok(tcp_info(addr)?.set_redis_settings(redis))
    }

    /// A `redis://user:password@addr/` URL, user and password
    /// percent-encoded.
    pub fn url(&self, addr: &str) -> String {
        format!("redis://{}:{}@{addr}/", percent_encode(&self.username), percent_encode(&self.password))
    }
}

/// A user added with [`RedisCluster::add_user`], re-created on nodes that
/// were down when it was added.
struct ExtraUser {
    name: String,
    args: Vec<String>,
}

/// A running Redis Sentinel cluster; see the [module docs](self).
///
/// All methods take `&self`, so a test can share the cluster (in an `Arc`)
/// with the code under test while it injects failures.
pub struct RedisCluster {
    opts: RedisClusterOptions,
    server_bin: PathBuf,
    sentinel_bin: PathBuf,
    passwords: Passwords,
    /// Data nodes; the first one started as the master.
    nodes: Vec<Proc>,
    sentinels: Vec<Proc>,
    users: Mutex<Vec<ExtraUser>>,
    tls: Option<Tls>,
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCluster")
            .field("master_name", &self.opts.master_name)
            .field("nodes", &self.node_addrs())
            .field("sentinels", &self.sentinel_addrs())
            .field("tls", &self.opts.tls)
            .finish_non_exhaustive()
    }
}

impl RedisCluster {
    /// Starts the master, then the replicas, waits until every replica's
    /// link to the master is up, then starts the Sentinels and waits until
    /// each one knows the master, the replicas and the two other Sentinels.
    /// On error every process started so far is killed.
    pub async fn start(opts: RedisClusterOptions) -> Result<RedisCluster, HarnessError> {
        if opts.replicas == 0 {
            return Err(HarnessError::InvalidOptions(
                "replicas must be at least 1: a failover needs a replica to promote".to_owned(),
            ));
        }
        if opts.master_name.is_empty()
            || !opts.master_name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(HarnessError::InvalidOptions(format!(
                "master_name {:?} must be non-empty ASCII letters, digits, '-', '_' or '.'",
                opts.master_name
            )));
        }
        // The redis crate builds its rustls configurations with the
        // process-wide provider, which rustls cannot pick by itself when a
        // test binary links both aws-lc-rs and ring. An error means one is
        // installed already, which is as good.
        if opts.tls.is_some() {
            let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let mut cluster = RedisCluster {
            tls: opts.tls.map(Tls::new).transpose()?,
            server_bin: find_binary("redis-server")?,
            sentinel_bin: find_binary("redis-sentinel")?,
            passwords: Passwords {
                admin: random_password()?,
                replication: random_password()?,
                sentinel: random_password()?,
                sentinel_client: random_password()?,
            },
            opts,
            nodes: Vec::new(),
            sentinels: Vec::new(),
            users: Mutex::new(Vec::new()),
        };
        let started = Instant::now();
        let deadline = started + cluster.opts.ready_timeout;

        let master = cluster.launch(Kind::Node, None, started, deadline).await?;
        let master_port = master.port;
        cluster.nodes.push(master);
        for _ in 0..cluster.opts.replicas {
            let replica = cluster.launch(Kind::Node, Some(master_port), started, deadline).await?;
            cluster.nodes.push(replica);
        }
        for replica in &cluster.nodes[1..] {
            cluster.wait_link_up(replica, deadline, started).await?;
        }
        // Sentinels start once the replicas are attached: a Sentinel learns
        // the replicas from the master's INFO, which it asks for only every
        // 10 s after the first time.
        for _ in 0..SENTINELS {
            let sentinel = cluster.launch(Kind::Sentinel, Some(master_port), started, deadline).await?;
            cluster.sentinels.push(sentinel);
        }
        cluster.wait_sentinels_ready(deadline, started).await?;
        Ok(cluster)
    }

    /// The CA and a client certificate, when the cluster serves TLS.
    pub fn tls(&self) -> Option<ClusterTls> {
        let files = &self.tls.as_ref()?.files;
        Some(ClusterTls { ca_file: files.ca.clone(), client: files.client.clone() })
    }

    /// The name the Sentinels monitor the master under.
    pub fn master_name(&self) -> &str {
        &self.opts.master_name
    }

    /// The Sentinels' addresses, `127.0.0.1:port`.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(Proc::addr).collect()
    }

    /// Every data node's address (master and replicas, running or not), the
    /// first one being the node that started as master.
    pub fn node_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(Proc::addr).collect()
    }

    /// The `admin` user: every command, key and channel, on every data node
    /// and Sentinel.
    pub fn admin_credentials(&self) -> Credentials {
        Credentials::new(ADMIN_USER, &self.passwords.admin)
    }

    /// What a client authenticates to the Sentinels with: the
    /// `sentinel-client` user, allowed master discovery (`SENTINEL
    /// get-master-addr-by-name`, `masters`, `master`, `replicas`, `sentinels`,
    /// ...) and the Sentinel event channels, nothing else. It does not exist
    /// on the data nodes.
    pub fn sentinel_credentials(&self) -> Credentials {
        Credentials::new(SENTINEL_CLIENT_USER, &self.passwords.sentinel_client)
    }

    /// The `replication` user replicas log in to their master with
    /// (`masterauth`), whose rules are `acl::REPLICATION`.
    pub fn replication_credentials(&self) -> Credentials {
        Credentials::new(REPLICATION_USER, &self.passwords.replication)
    }

    /// The `sentinel` user the Sentinels log in to the nodes and to each
    /// other with (`auth-pass`, `sentinel-pass`).
    pub fn sentinel_link_credentials(&self) -> Credentials {
        Credentials::new(SENTINEL_USER, &self.passwords.sentinel)
    }

    /// The master's address as the first Sentinel that answers reports it
    /// (`SENTINEL get-master-addr-by-name`). Right after a kill this is still
    /// the dead master, until the Sentinels fail over.
    pub async fn master_addr(&self) -> Result<String, HarnessError> {
        let mut failures = Vec::new();
        for sentinel in self.sentinels.iter().filter(|s| !s.is_paused() && s.is_running()) {
            match self.ask_master(&sentinel.addr()).await {
                Ok(Some(addr)) => return Ok(addr),
                Ok(None) => failures.push(format!("{}: master unknown", sentinel.addr())),
                Err(e) => failures.push(format!("{}: {e}", sentinel.addr())),
            }
        }
        Err(HarnessError::Timeout {
            what: format!(
                "a Sentinel reports the master of {} (answers: {})",
                self.opts.master_name,
                if failures.is_empty() {
                    "none, every Sentinel is down or paused".to_owned()
                } else {
                    failures.join("; ")
                }
            ),
            waited: Duration::ZERO,
            log_tail: self.tails(&self.sentinels),
        })
    }

    /// A connection to `addr` (a data node or a Sentinel) as `admin`.
    pub async fn admin_connection(&self, addr: &str) -> Result<MultiplexedConnection, HarnessError> {
        self.connection(addr, &self.admin_credentials()).await
    }

    /// A connection to `addr` as `credentials`, with the harness's timeouts
    /// (1 s to connect, 2 s per command), over TLS with the client
    /// certificate when the cluster serves TLS.
    pub async fn connection(
        &self,
        addr: &str,
        credentials: &Credentials,
    ) -> Result<MultiplexedConnection, HarnessError> {
        self.connect(addr, credentials).await.map_err(|source| HarnessError::Redis {
            what: format!("connecting as {}", credentials.username),
            addr: addr.to_owned(),
            source,
        })
    }

    /// Creates (or redefines from scratch) the ACL user `name` on every data
    /// node, master and replicas, so it survives a failover: `ACL SETUSER
    /// name reset on >password <acl_rules>` then `ACL SAVE`. `acl_rules` are
    /// space-separated ACL rules such as `~tp:* +get +set`; a selector
    /// `(...)` may hold spaces. Nodes that are down get the user when
    /// [`restart_node`](Self::restart_node) starts them again; a paused node
    /// is an error.
    pub async fn add_user(&self, name: &str, password: &str, acl_rules: &str) -> Result<(), HarnessError> {
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            return Err(HarnessError::InvalidOptions(format!(
                "ACL user name {name:?} must be non-empty and hold no whitespace"
            )));
        }
        let mut args = vec!["SETUSER".to_owned(), name.to_owned(), "reset".to_owned(), "on".to_owned()];
        args.push(format!(">{password}"));
        args.extend(tokenplane_api::acl::split_rules(acl_rules));
        let user = ExtraUser { name: name.to_owned(), args };
        if let Some(paused) = self.nodes.iter().find(|n| n.is_paused()) {
            return Err(HarnessError::WrongState {
                process: paused.to_string(),
                state: "paused",
                hint: "call resume_node() first: add_user must reach every running node",
            });
        }
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            self.apply_user(node, &user).await?;
        }
        let mut users = self.users.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        users.retain(|u| u.name != name);
        users.push(user);
        Ok(())
    }

    /// SIGKILLs the process of the current master (as the Sentinels report
    /// it) and returns its address, for [`wait_for_failover`](Self::wait_for_failover)
    /// and [`restart_node`](Self::restart_node).
    pub async fn kill_master(&self) -> Result<String, HarnessError> {
        let addr = self.master_addr().await?;
        self.kill_node(&addr).await?;
        Ok(addr)
    }

    /// SIGKILLs the process at `addr` (data node or Sentinel) and waits
    /// until it is gone.
    pub async fn kill_node(&self, addr: &str) -> Result<(), HarnessError> {
        self.find(addr)?.kill().await
    }

    /// Polls the Sentinels until at least a quorum of them answer, all that
    /// answer agree on a master other than `old_addr`, and that node's `ROLE`
    /// is `master`. Returns the new master's address.
    pub async fn wait_for_failover(&self, old_addr: &str, timeout: Duration) -> Result<String, HarnessError> {
        let started = Instant::now();
        loop {
            let mut answers = Vec::new();
            for sentinel in self.sentinels.iter().filter(|s| !s.is_paused() && s.is_running()) {
                answers.push(self.ask_master(&sentinel.addr()).await.ok().flatten());
            }
            let first = answers.first().cloned().flatten();
            let agreed = answers.len() >= QUORUM && answers.iter().all(|a| *a == first);
            let mut last_seen = format!("Sentinels report {answers:?}");
            if let (true, Some(candidate)) = (agreed, first)
                && candidate != old_addr
            {
                match self.role(&candidate).await {
                    Ok(role) if role == "master" => return Ok(candidate),
                    Ok(role) => last_seen.push_str(&format!(", ROLE of {candidate} is {role}")),
                    Err(e) => last_seen.push_str(&format!(", ROLE of {candidate} failed: {e}")),
                }
            }
            if started.elapsed() >= timeout {
                return Err(HarnessError::Timeout {
                    what: format!(
                        "the Sentinels agree on a master other than {old_addr} whose ROLE is master \
                         (last seen: {last_seen})"
                    ),
                    waited: started.elapsed(),
                    log_tail: self.logs(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts a killed process again with the same configuration file, port
    /// and directory, and waits until it answers. A data node that is not
    /// the master the Sentinels report starts with `--replicaof <master>`,
    /// so it rejoins as a replica at once (instead of running as a stale
    /// master until a Sentinel reconfigures it, about 10 s later); the call
    /// returns when its replication link is up and users added while it was
    /// down exist on it.
    pub async fn restart_node(&self, addr: &str) -> Result<(), HarnessError> {
        let node = self.find(addr)?;
        if node.is_running() {
            return Err(HarnessError::WrongState {
                process: node.to_string(),
                state: "running",
                hint: "kill it first with kill_node() or kill_master()",
            });
        }
        let started = Instant::now();
        let deadline = started + self.opts.ready_timeout;
        match node.kind {
            Kind::Sentinel => {
                node.spawn(&self.sentinel_bin, &[])?;
                self.wait_up(node, deadline, started).await
            }
            Kind::Node => {
                let master = self.master_addr().await.ok().filter(|m| m != addr);
                let mut extra = Vec::new();
                if let Some(master) = &master {
                    let (host, port) = split_addr(master)?;
                    extra = vec!["--replicaof".to_owned(), host, port.to_string()];
                }
                node.spawn(&self.server_bin, &extra)?;
                self.wait_up(node, deadline, started).await?;
                let users: Vec<ExtraUser> = {
                    let users = self.users.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    users.iter().map(|u| ExtraUser { name: u.name.clone(), args: u.args.clone() }).collect()
                };
                for user in &users {
                    self.apply_user(node, user).await?;
                }
                if master.is_some() {
                    self.wait_link_up(node, deadline, started).await?;
                }
                Ok(())
            }
        }
    }

    /// SIGSTOPs the process at `addr`: it keeps its sockets open but answers
    /// nothing, like a node behind a network partition.
    pub fn pause_node(&self, addr: &str) -> Result<(), HarnessError> {
        self.find(addr)?.signal_pause(true)
    }

    /// SIGCONTs a process paused with [`pause_node`](Self::pause_node).
    pub fn resume_node(&self, addr: &str) -> Result<(), HarnessError> {
        self.find(addr)?.signal_pause(false)
    }

    /// The `ACL LOG` of every running process, one line per entry: commands,
    /// keys or channels a user was denied, and failed authentications. Empty
    /// when every user had the permissions it needed.
    pub async fn acl_denials(&self) -> Result<Vec<String>, HarnessError> {
        let mut out = Vec::new();
        let procs = self.nodes.iter().chain(&self.sentinels).filter(|p| !p.is_paused() && p.is_running());
        for proc in procs {
            let addr = proc.addr();
            let redis_err =
                |source| HarnessError::Redis { what: "ACL LOG".to_owned(), addr: addr.clone(), source };
            let mut con = self.connect(&addr, &self.admin_credentials()).await.map_err(redis_err)?;
            let entries: Vec<Vec<Value>> =
                ::redis::cmd("ACL").arg("LOG").query_async(&mut con).await.map_err(redis_err)?;
            for entry in entries {
                let fields: HashMap<String, String> = entry
                    .chunks(2)
                    .filter_map(|kv| match kv {
                        [k, v] => Some((value_text(k), value_text(v))),
                        _ => None,
                    })
                    .collect();
                let field = |k: &str| fields.get(k).map_or("?", String::as_str);
                out.push(format!(
                    "{proc}: {} denied: {} by user {} ({} time(s))",
                    field("reason"),
                    field("object"),
                    field("username"),
                    field("count"),
                ));
            }
        }
        Ok(out)
    }

    /// The last lines of every process's log and stdout/stderr, each headed
    /// by the process and its log file: print this when a test fails.
    pub fn logs(&self) -> String {
        self.tails(self.nodes.iter().chain(&self.sentinels))
    }

    fn tails<'a>(&self, procs: impl IntoIterator<Item = &'a Proc>) -> String {
        procs.into_iter().map(|p| p.log_tail(TAIL_LINES)).collect::<Vec<_>>().join("\n")
    }

    fn find(&self, addr: &str) -> Result<&Proc, HarnessError> {
        self.nodes
            .iter()
            .chain(&self.sentinels)
            .find(|p| p.addr() == addr)
            .ok_or_else(|| HarnessError::UnknownAddr { addr: addr.to_owned() })
    }

    /// Writes the configuration of a new process on a free port, starts it
    /// and waits until it answers; tries another port when another process
    /// took this one first. `master_port` is the master to replicate (data
    /// node) or to monitor (Sentinel); `started` is when the caller began
    /// waiting, for the error message.
    async fn launch(
        &self,
        kind: Kind,
        master_port: Option<u16>,
        started: Instant,
        deadline: Instant,
    ) -> Result<Proc, HarnessError> {
        for _ in 0..PORT_ATTEMPTS {
            let proc = Proc::new(kind, free_port()?)?;
            let listen = Listen { port: proc.port, tls: self.tls.as_ref().map(|t| &t.files) };
            match kind {
                Kind::Node => {
                    let acl_file = proc.path("users.acl");
                    write(&acl_file, &node_acl_file(&self.passwords))?;
                    let conf = node_config(
                        &listen,
                        proc.dir.path(),
                        &proc.log,
                        &acl_file,
                        &self.passwords,
                        master_port,
                    );
                    write(&proc.conf, &conf)?;
                    proc.spawn(&self.server_bin, &[])?;
                }
                Kind::Sentinel => {
                    let timings = Timings {
                        down_after: self.opts.down_after,
                        failover_timeout: self.opts.failover_timeout,
                    };
                    let conf = sentinel_config(
                        &listen,
                        proc.dir.path(),
                        &proc.log,
                        &self.opts.master_name,
                        master_port.unwrap_or_default(),
                        &self.passwords,
                        &timings,
                    );
                    write(&proc.conf, &conf)?;
                    proc.spawn(&self.sentinel_bin, &[])?;
                }
            }
            match self.wait_up(&proc, deadline, started).await {
                Ok(()) => return Ok(proc),
                Err(HarnessError::Exited { .. }) if proc.port_was_taken() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(HarnessError::NoFreePort { process: kind.binary(), attempts: PORT_ATTEMPTS })
    }

    /// Waits until `proc` answers `PING` as admin.
    async fn wait_up(&self, proc: &Proc, deadline: Instant, started: Instant) -> Result<(), HarnessError> {
        let admin = self.admin_credentials();
        loop {
            if let Some(status) = proc.exit_status() {
                return Err(HarnessError::Exited {
                    process: proc.to_string(),
                    status,
                    log_tail: proc.log_tail(TAIL_LINES),
                });
            }
            let last = match self.connect(&proc.addr(), &admin).await {
                Ok(mut con) => match ::redis::cmd("PING").query_async::<String>(&mut con).await {
                    Ok(_) => return Ok(()),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("{proc} answers PING as admin (last error: {last})"),
                    waited: started.elapsed(),
                    log_tail: proc.log_tail(TAIL_LINES),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the replica `node` reports `master_link_status:up`.
    async fn wait_link_up(
        &self,
        node: &Proc,
        deadline: Instant,
        started: Instant,
    ) -> Result<(), HarnessError> {
        let admin = self.admin_credentials();
        loop {
            let last = match self.connect(&node.addr(), &admin).await {
                Ok(mut con) => {
                    match ::redis::cmd("INFO").arg("replication").query_async::<String>(&mut con).await {
                        Ok(info) if info.lines().any(|l| l.trim() == "master_link_status:up") => {
                            return Ok(());
                        }
                        Ok(info) => {
                            info.lines().filter(|l| l.starts_with("master_")).collect::<Vec<_>>().join(" ")
                        }
                        Err(e) => e.to_string(),
                    }
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                let mut log_tail = node.log_tail(TAIL_LINES);
                if let Some(master) = self.nodes.first() {
                    log_tail.push_str(&master.log_tail(TAIL_LINES));
                }
                return Err(HarnessError::Timeout {
                    what: format!("{node} reports master_link_status:up (last seen: {last})"),
                    waited: started.elapsed(),
                    log_tail,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every Sentinel sees the master up, all replicas up and
    /// the other Sentinels.
    async fn wait_sentinels_ready(&self, deadline: Instant, started: Instant) -> Result<(), HarnessError> {
        let mut pending: Vec<&Proc> = self.sentinels.iter().collect();
        let mut last = HashMap::new();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for sentinel in pending {
                match self.sentinel_view(&sentinel.addr()).await {
                    Ok(None) => {}
                    Ok(Some(state)) => {
                        last.insert(sentinel.addr(), state);
                        still.push(sentinel);
                    }
                    Err(e) => {
                        last.insert(sentinel.addr(), e.to_string());
                        still.push(sentinel);
                    }
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let what = pending
                    .iter()
                    .map(|s| format!("{s}: {}", last.get(&s.addr()).map_or("?", String::as_str)))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(HarnessError::Timeout {
                    what: format!(
                        "every Sentinel sees master {} up, {} replica(s) up and {} other Sentinels ({what})",
                        self.opts.master_name,
                        self.opts.replicas,
                        SENTINELS - 1
                    ),
                    waited: started.elapsed(),
                    log_tail: self.logs(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// `None` when the Sentinel at `addr` is ready, else what it sees.
    async fn sentinel_view(&self, addr: &str) -> Result<Option<String>, RedisError> {
        let name = &self.opts.master_name;
        let mut con = self.connect(addr, &self.sentinel_credentials()).await?;
        let master: Vec<String> =
            ::redis::cmd("SENTINEL").arg("MASTER").arg(name).query_async(&mut con).await?;
        let master = pairs(master);
        let replicas: Vec<Vec<String>> =
            ::redis::cmd("SENTINEL").arg("REPLICAS").arg(name).query_async(&mut con).await?;
        let replica_flags: Vec<String> =
            replicas.into_iter().map(|r| pairs(r).remove("flags").unwrap_or_default()).collect();
        let get = |k: &str| master.get(k).map_or("?", String::as_str);
        let ready = get("flags") == "master"
            && get("num-other-sentinels") == (SENTINELS - 1).to_string()
            && replica_flags.len() == self.opts.replicas
            && replica_flags.iter().all(|f| f == "slave");
        Ok((!ready).then(|| {
            format!(
                "master flags={} num-other-sentinels={} replica flags={replica_flags:?}",
                get("flags"),
                get("num-other-sentinels")
            )
        }))
    }

    /// `SENTINEL get-master-addr-by-name` on one Sentinel.
    async fn ask_master(&self, sentinel: &str) -> Result<Option<String>, RedisError> {
        let mut con = self.connect(sentinel, &self.sentinel_credentials()).await?;
        let reply: Option<(String, u16)> = ::redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.opts.master_name)
            .query_async(&mut con)
            .await?;
        Ok(reply.map(|(host, port)| format!("{host}:{port}")))
    }

    /// The first element of `ROLE`: `master`, `slave` or `sentinel`.
    async fn role(&self, addr: &str) -> Result<String, RedisError> {
        let mut con = self.connect(addr, &self.admin_credentials()).await?;
        let role: Vec<Value> = ::redis::cmd("ROLE").query_async(&mut con).await?;
        Ok(role.first().map(value_text).unwrap_or_default())
    }

    /// Connects to `addr` as `credentials` with the harness's timeouts, over
    /// TLS when the cluster serves TLS.
    async fn connect(
        &self,
        addr: &str,
        credentials: &Credentials,
    ) -> Result<MultiplexedConnection, RedisError> {
        let redis = RedisConnectionInfo::default()
            .set_skip_set_lib_name()
            .set_username(&credentials.username)
            .set_password(&credentials.password);
        let bad_addr = |e: HarnessError| {
            RedisError::from((::redis::ErrorKind::InvalidClientConfig, "bad address", e.to_string()))
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let client = match &self.tls {
            None => Client::open(tcp_info(addr).map_err(bad_addr)?.set_redis_settings(redis))?,
            Some(tls) => {
                let (host, port) = split_addr(addr).map_err(bad_addr)?;
                let addr = ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None };
                let info = addr.into_connection_info()?.set_redis_settings(redis);
                Client::build_with_tls(info, tls.certificates.clone())?
            }
        };
        client.get_multiplexed_async_connection_with_config(&config).await
    }

    async fn apply_user(&self, node: &Proc, user: &ExtraUser) -> Result<(), HarnessError> {
        let addr = node.addr();
        let what = format!("ACL SETUSER {}", user.name);
        let redis_err = |source| HarnessError::Redis { what: what.clone(), addr: addr.clone(), source };
        let mut con = self.connect(&addr, &self.admin_credentials()).await.map_err(redis_err)?;
        ::redis::cmd("ACL").arg(&user.args).query_async::<()>(&mut con).await.map_err(redis_err)?;
        // Persist to the node's ACL file, so a restart keeps the user.
        ::redis::cmd("ACL")
            .arg("SAVE")
            .query_async::<()>(&mut con)
            .await
            .map_err(|source| HarnessError::Redis { what: "ACL SAVE".to_owned(), addr: addr.clone(), source })
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let procs = || self.nodes.iter().chain(&self.sentinels);
        procs().for_each(Proc::start_kill);
        let deadline = Instant::now() + Duration::from_secs(2);
        procs().for_each(|p| p.reap(deadline));
        // The temp dirs go when `nodes` and `sentinels` drop.
    }
}

fn tcp_info(addr: &str) -> Result<ConnectionInfo, HarnessError> {
    let (host, port) = split_addr(addr)?;
    ConnectionAddr::Tcp(host, port).into_connection_info().map_err(|source| HarnessError::Redis {
        what: "building connection info".to_owned(),
        addr: addr.to_owned(),
        source,
    })
}

fn split_addr(addr: &str) -> Result<(String, u16), HarnessError> {
    addr.rsplit_once(':')
        .and_then(|(host, port)| Some((host.to_owned(), port.parse().ok()?)))
        .ok_or_else(|| HarnessError::InvalidOptions(format!("address {addr:?} is not host:port")))
}

/// A flat `[key, value, key, value, ...]` reply as a map.
fn pairs(flat: Vec<String>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.insert(k, v);
    }
    out
}

/// A scalar reply as text.
fn value_text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Double(d) => d.to_string(),
        Value::Okay => "OK".to_owned(),
        other => format!("{other:?}"),
    }
}

fn write(path: &std::path::Path, text: &str) -> Result<(), HarnessError> {
    std::fs::write(path, text).map_err(|source| HarnessError::Io {
        what: "writing a configuration file",
        path: path.to_owned(),
        source,
    })
}

/// 32 random hex characters (128 bits).
fn random_password() -> Result<String, HarnessError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(HarnessError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_random_hex() {
        let (a, b) = (random_password().unwrap(), random_password().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn urls_encode_credentials_and_debug_hides_the_password() {
        let c = Credentials::new("a:b", "p@ss/w rd");
        assert_eq!(c.url("127.0.0.1:6379"), "redis://a%3Ab:p%40ss%2Fw%20rd@127.0.0.1:6379/");
        assert!(!format!("{c:?}").contains("p@ss"));
    }

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(split_addr("127.0.0.1:6379").unwrap(), ("127.0.0.1".to_owned(), 6379));
        assert!(split_addr("127.0.0.1").is_err());
        assert!(split_addr("127.0.0.1:http").is_err());
    }
}
