#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokenplane_api::redis_tls::{RedisTls, RedisTlsArgs, RedisTlsFiles};
use tokenplane_sidecar::agent::{self, Agent};
use tokenplane_sidecar::issuer::{Issuer, Settings, managed};
use tokenplane_sidecar::keys::KeySet;
use tokenplane_sidecar::store::{MemoryStore, Password, RedisConfig, RedisStore, Store};
use tokenplane_sidecar::tls::{PairFiles, ServingTls};
use tokenplane_sidecar::{manifests, redis_node, server};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "tokenplane data plane: the OAuth2 issuer and the workload agent")]
struct Cli {
    /// Log format.
    #[arg(long, env = "TOKENPLANE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    role: Role,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Role {
    /// Run the authorization server.
    Issuer(IssuerArgs),
    /// Run next to a workload: validate tokens from memory, vend the
    /// workload's own tokens.
    Agent(AgentArgs),
    /// Prune the expired members of Redis's sorted-set indexes (the
    /// RedisSentinelCluster's cleanup CronJob, as its cleanup user).
    Cleanup(CleanupArgs),
    /// An RDB snapshot of the master into a directory, keeping the newest
    /// ones (the RedisSentinelCluster's backup CronJob, as its backup user).
    Backup(BackupArgs),
    /// Steps of a RedisSentinelCluster's pods.
    RedisNode {
        #[command(subcommand)]
        step: RedisNodeStep,
    },
}

#[derive(Subcommand)]
enum RedisNodeStep {
    /// Before Redis or Sentinel serves: ask the Sentinels who the master
    /// is, then write the final configuration file.
    Start(StartArgs),
    /// A data node's preStop: if it is the master, have the Sentinels fail
    /// over to a replica and wait until they name it.
    HandOver(HandOverArgs),
}

#[derive(clap::Args)]
struct CleanupArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Keys per SCAN call.
    #[arg(long, env = "TOKENPLANE_CLEANUP_BATCH", default_value_t = 500)]
    batch: usize,
}

#[derive(clap::Args)]
struct BackupArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Where the snapshots go (`dump-<unix time>.rdb`).
    #[arg(long, env = "TOKENPLANE_BACKUP_DIR")]
    out_dir: PathBuf,
    /// Snapshots kept; older ones are removed.
    #[arg(long, env = "TOKENPLANE_BACKUP_RETAIN", default_value_t = 7)]
    retain: usize,
    /// Longest a snapshot may take.
    #[arg(long, env = "TOKENPLANE_BACKUP_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Clone, Copy, ValueEnum)]
enum NodeKind {
    Node,
    Sentinel,
}

/// What both steps need to know about the pod and its cluster.
#[derive(clap::Args)]
struct PodArgs {
    /// This pod's stable DNS name, announced to its peers.
    #[arg(long, env = "TOKENPLANE_REDIS_ANNOUNCE_HOST")]
    announce_host: String,
    /// The port announced with it.
    #[arg(long, env = "TOKENPLANE_REDIS_ANNOUNCE_PORT")]
    announce_port: u16,
    /// The Sentinels, `host:port`, comma-separated; a name may resolve to several.
    #[arg(long, env = "TOKENPLANE_REDIS_SENTINELS", value_delimiter = ',', required = true)]
    sentinels: Vec<String>,
    /// The name the Sentinels monitor the master under.
    #[arg(long, env = "TOKENPLANE_REDIS_MASTER_NAME", default_value = "tokenplane")]
    master_name: String,
    /// The mounted role Secrets: `<user>` holds a password, `<user>.sha256` a hash.
    #[arg(long, env = "TOKENPLANE_REDIS_USERS_DIR")]
    users_dir: PathBuf,
    /// Timeout of each question to a Sentinel or a node.
    #[arg(long, env = "TOKENPLANE_REDIS_QUERY_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    query_timeout: Duration,
    /// With the cluster's TLS: the PEM CA bundle its nodes' and Sentinels'
    /// certificate is verified against (their names, not their IPs).
    #[arg(long, env = "TOKENPLANE_REDIS_CA_FILE")]
    redis_ca_file: Option<PathBuf>,
}

impl PodArgs {
    fn me(&self) -> anyhow::Result<redis_node::Addr> {
        node_addr("--announce-host", &format!("{}:{}", self.announce_host, self.announce_port))
    }

    fn sentinels(&self) -> anyhow::Result<Vec<redis_node::Addr>> {
        self.sentinels.iter().map(|t| node_addr("--sentinels", t)).collect()
    }

    fn reach(&self) -> anyhow::Result<redis_node::Reach> {
        let files = self.redis_ca_file.clone().map(|ca| RedisTlsFiles::new(Some(ca), None, None));
        let tls = files.map(|f| RedisTls::load(&f, |p| std::fs::read(p))).transpose()?;
        Ok(redis_node::Reach { timeout: self.query_timeout, tls })
    }
}

fn node_addr(flag: &str, text: &str) -> anyhow::Result<redis_node::Addr> {
    redis_node::Addr::parse(text).with_context(|| format!("{flag} {text:?}: give host:port"))
}

#[derive(clap::Args)]
struct StartArgs {
    #[command(flatten)]
    pod: PodArgs,
    /// What this pod runs: a data node or a Sentinel.
    #[arg(long, env = "TOKENPLANE_REDIS_KIND", value_enum)]
    kind: NodeKind,
    /// The operator's configuration file (no secrets).
    #[arg(long, env = "TOKENPLANE_REDIS_TEMPLATE")]
    template: PathBuf,
    /// Where to write the file Redis or Sentinel runs with (mode 0600).
    #[arg(long, env = "TOKENPLANE_REDIS_OUT")]
    out: PathBuf,
    /// Every data node, `host:port`, comma-separated.
    #[arg(long, env = "TOKENPLANE_REDIS_NODES", value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    /// The master of a new cluster, `host:port`.
    #[arg(long, env = "TOKENPLANE_REDIS_FIRST_MASTER")]
    first_master: String,
    /// Sentinels that must agree the master is down.
    #[arg(long, env = "TOKENPLANE_REDIS_QUORUM")]
    quorum: u32,
    /// How long a data node waits for the Sentinels before it decides from the nodes alone.
    #[arg(long, env = "TOKENPLANE_REDIS_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// Copy this binary here, for the Redis container's preStop `hand-over`.
    #[arg(long, env = "TOKENPLANE_REDIS_COPY_SELF_TO")]
    copy_self_to: Option<PathBuf>,
}

#[derive(clap::Args)]
struct HandOverArgs {
    #[command(flatten)]
    pod: PodArgs,
    /// Replicas besides this node the new master must have before this one goes.
    #[arg(long, env = "TOKENPLANE_REDIS_MIN_REPLICAS", default_value_t = 1)]
    min_replicas: usize,
    /// How long to wait for the Sentinels to name another master and for
    /// its replicas; keep it under the pod's termination grace period.
    #[arg(long, env = "TOKENPLANE_REDIS_HAND_OVER_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(clap::Args)]
struct AgentArgs {
    /// The issuer's base URL: where the JWKS and tokens come from, and the
    /// `iss` every token must carry.
    #[arg(long, env = "TOKENPLANE_ISSUER_URL")]
    issuer: String,
    /// The mounted credentials Secret: files client_id, client_secret,
    /// redis_username, redis_password.
    #[arg(long, env = "TOKENPLANE_CREDENTIALS_DIR")]
    credentials_dir: PathBuf,
    /// Address to listen on; keep it on loopback, next to the workload.
    #[arg(long, env = "TOKENPLANE_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Also serve `/healthz` and `/readyz` alone, plain HTTP, on this
    /// address (the pod's, for the kubelet's probes; nothing else is there).
    #[arg(long, env = "TOKENPLANE_HEALTH_LISTEN")]
    health_listen: Option<SocketAddr>,
    /// PEM bundle of the CAs the issuer's certificate must chain to; only
    /// these are trusted. Without it, the system's roots.
    #[arg(long, env = "TOKENPLANE_ISSUER_CA_FILE")]
    issuer_ca_file: Option<PathBuf>,
    /// An audience (`aud`) this workload accepts; repeat for several.
    /// Without any, the agent only vends tokens.
    #[arg(long = "audience", env = "TOKENPLANE_AUDIENCES", value_delimiter = ',')]
    audiences: Vec<String>,
    /// Clock skew allowed on exp and nbf.
    #[arg(long, env = "TOKENPLANE_CLOCK_SKEW", default_value = "5s", value_parser = humantime::parse_duration)]
    clock_skew: Duration,
    /// Validation fails closed once Redis has not confirmed the revocation
    /// state for this long.
    #[arg(long, env = "TOKENPLANE_MAX_STALENESS", default_value = "10s", value_parser = humantime::parse_duration)]
    max_staleness: Duration,
    /// How often the JWKS is fetched.
    #[arg(long, env = "TOKENPLANE_JWKS_REFRESH", default_value = "60s", value_parser = humantime::parse_duration)]
    jwks_refresh: Duration,
    /// Least time between JWKS fetches caused by tokens with unknown kids.
    #[arg(long, env = "TOKENPLANE_JWKS_MIN_REFRESH", default_value = "5s", value_parser = humantime::parse_duration)]
    jwks_min_refresh: Duration,
    /// Verified tokens remembered for fast revalidation.
    #[arg(long, env = "TOKENPLANE_VERIFIED_CACHE", default_value_t = 100_000)]
    verified_cache: usize,
    /// How often the credentials folder is read for changes.
    #[arg(long, env = "TOKENPLANE_CREDENTIALS_POLL", default_value = "2s", value_parser = humantime::parse_duration)]
    credentials_poll: Duration,
    #[command(flatten)]
    serving: ServingArgs,
    #[command(flatten)]
    redis: RedisArgs,
}

#[derive(clap::Args)]
#[group(id = "mode", required = true, multiple = false, args = ["manifests", "keys_dir"])]
struct IssuerArgs {
    /// Folder of OAuth2Client, TokenPolicy and Secret manifests to serve
    /// (standalone mode).
    #[arg(long, env = "TOKENPLANE_MANIFESTS")]
    manifests: Option<PathBuf>,
    /// The mounted keys Secret of the TokenPolicy given by --policy
    /// NAMESPACE/NAME, whose record and clients are read from Redis
    /// (managed mode, as the operator runs issuers).
    #[arg(long, env = "TOKENPLANE_KEYS_DIR", requires = "policy")]
    keys_dir: Option<PathBuf>,
    /// Managed mode: how often the policy record and the keys are re-read.
    #[arg(long, env = "TOKENPLANE_RELOAD", default_value = "5s", value_parser = humantime::parse_duration)]
    reload: Duration,
    /// Address to listen on.
    #[arg(long, env = "TOKENPLANE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Issuer identifier (`iss`); the policy's issuerUrl, else
    /// https://LISTEN (http://LISTEN without TLS).
    #[arg(long, env = "TOKENPLANE_ISSUER_URL")]
    issuer: Option<String>,
    /// TokenPolicy to serve: NAMESPACE/NAME in managed mode; NAME or
    /// NAMESPACE/NAME when the manifests folder has several.
    #[arg(long, env = "TOKENPLANE_POLICY")]
    policy: Option<String>,
    /// File holding the bearer token of the admin API the login app calls
    /// (at least 32 characters); without it there is no admin API.
    #[arg(long, env = "TOKENPLANE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    #[command(flatten)]
    serving: ServingArgs,
    #[command(flatten)]
    redis: RedisArgs,
}

/// HTTPS, for both roles.
#[derive(clap::Args)]
struct ServingArgs {
    /// PEM certificate chain to serve HTTPS with, leaf first (the tls.crt of
    /// a TLS Secret). Reloaded when it changes.
    #[arg(long, env = "TOKENPLANE_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate (the tls.key of a TLS Secret).
    #[arg(long, env = "TOKENPLANE_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// How often the certificate files are checked for a change.
    #[arg(long, env = "TOKENPLANE_TLS_RELOAD_INTERVAL", default_value = "10s",
          value_parser = humantime::parse_duration, requires = "tls_cert_file")]
    tls_reload_interval: Duration,
    /// Serve plain HTTP on an address other than loopback. Client secrets
    /// and tokens then cross the network in the clear; only for a network
    /// that encrypts on its own (a service mesh's mTLS).
    #[arg(long, env = "TOKENPLANE_INSECURE_HTTP", conflicts_with = "tls_cert_file")]
    insecure_http: bool,
}

impl ServingArgs {
    /// The serving pair, loaded and checked, when HTTPS is asked for.
    fn tls(&self) -> anyhow::Result<Option<Arc<ServingTls>>> {
        let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) else { return Ok(None) };
        let files = PairFiles { cert: cert.clone(), key: key.clone() };
        let tls = ServingTls::load(files).context("cannot serve HTTPS (--tls-cert-file, --tls-key-file)")?;
        Ok(Some(Arc::new(tls)))
    }

    /// Binds `addr`. Plain HTTP only on loopback unless --insecure-http.
    async fn bind(&self, addr: SocketAddr) -> anyhow::Result<(server::Listener, Option<Arc<ServingTls>>)> {
        let tls = self.tls()?;
        if tls.is_none() && !addr.ip().is_loopback() {
            anyhow::ensure!(
                self.insecure_http,
                "refusing to serve plain HTTP on {addr}: credentials and tokens would cross the network \
                 in the clear. Give --tls-cert-file and --tls-key-file, listen on loopback, or accept \
                 the risk with --insecure-http"
            );
            tracing::warn!(listen = %addr, "serving PLAIN HTTP off loopback (--insecure-http): client secrets and tokens are not encrypted");
        }
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}; is another process using it? (--listen)"))?;
        let listener = match &tls {
            Some(tls) => {
                tokio::spawn(tls.clone().follow(self.tls_reload_interval));
                server::Listener::https(tcp, tls)
            }
            None => tcp.into(),
        };
        Ok((listener, tls))
    }
}

/// The URL a listener is reached at, for the default issuer identifier.
fn base_url(listener: &server::Listener) -> anyhow::Result<String> {
    let scheme = if listener.tls.is_some() { "https" } else { "http" };
    Ok(format!("{scheme}://{}", listener.tcp.local_addr()?))
}

/// Redis Sentinel. The issuer keeps its state in memory without
/// `--redis-sentinels`; the agent needs them. The agent takes its username
/// and password from its credentials folder unless given here.
#[derive(clap::Args)]
struct RedisArgs {
    /// Sentinel addresses, host:port, comma separated.
    #[arg(long, env = "TOKENPLANE_REDIS_SENTINELS", value_delimiter = ',')]
    redis_sentinels: Vec<String>,
    /// Name the Sentinels monitor the master under.
    #[arg(long, env = "TOKENPLANE_REDIS_MASTER", default_value = "tokenplane")]
    redis_master: String,
    /// Redis ACL user.
    #[arg(long, env = "TOKENPLANE_REDIS_USERNAME")]
    redis_username: Option<String>,
    /// File holding that user's password.
    #[arg(long, env = "TOKENPLANE_REDIS_PASSWORD_FILE")]
    redis_password_file: Option<PathBuf>,
    /// User the Sentinels require, if any.
    #[arg(long, env = "TOKENPLANE_REDIS_SENTINEL_USERNAME")]
    redis_sentinel_username: Option<String>,
    /// File holding the Sentinel user's password.
    #[arg(long, env = "TOKENPLANE_REDIS_SENTINEL_PASSWORD_FILE")]
    redis_sentinel_password_file: Option<PathBuf>,
    /// Replicas that must confirm a revocation, code redemption or refresh rotation (WAIT).
    #[arg(long, env = "TOKENPLANE_REDIS_MIN_REPLICAS", default_value_t = 1)]
    redis_min_replicas: usize,
    /// Longest wait for a Redis reply, and for the replicas to confirm a
    /// durable write (WAIT) before it is refused with 503, in milliseconds.
    #[arg(long, env = "TOKENPLANE_REDIS_TIMEOUT_MS", default_value_t = 1000)]
    redis_timeout_ms: u64,
    #[command(flatten)]
    tls: RedisTlsArgs,
}

impl RedisArgs {
    fn config(&self) -> anyhow::Result<Option<RedisConfig>> {
        if self.redis_sentinels.is_empty() {
            return Ok(None);
        }
        Ok(Some(RedisConfig {
            sentinels: self.redis_sentinels.clone(),
            master_name: self.redis_master.clone(),
            username: self.redis_username.clone(),
            password: self.redis_password_file.as_deref().map(password_file).transpose()?,
            sentinel_username: self.redis_sentinel_username.clone(),
            sentinel_password: self.redis_sentinel_password_file.as_deref().map(password_file).transpose()?,
            tls: self.tls()?,
            min_replicas: self.redis_min_replicas,
            timeout: std::time::Duration::from_millis(self.redis_timeout_ms),
        }))
    }

    fn tls(&self) -> anyhow::Result<Option<RedisTls>> {
        let tls = self.tls.files().map(|files| RedisTls::load(&files, |path| std::fs::read(path)));
        tls.transpose().context("cannot talk TLS to Redis")
    }
}

/// A password file, read again whenever a connection opens (rotation);
/// one that cannot be read now stops the start.
fn password_file(path: &std::path::Path) -> anyhow::Result<Password> {
    let password = Password::File(path.to_owned());
    password.read()?;
    Ok(password)
}

/// The trimmed content of a file holding a password or token.
fn read_secret(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.trim().to_owned())
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    // The agent is a sidecar on a small CPU budget: one thread is all it
    // needs, and fewer threads hold less memory; so do the one-off jobs.
    // The issuer uses every core.
    let mut runtime = match cli.role {
        Role::Issuer(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = runtime.enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(async {
        match cli.role {
            Role::Issuer(args) => run_issuer(args).await,
            Role::Agent(args) => run_agent(args).await,
            Role::Cleanup(args) => cleanup(args).await,
            Role::Backup(args) => backup(args).await,
            Role::RedisNode { step: RedisNodeStep::Start(args) } => start_redis_node(args).await,
            Role::RedisNode { step: RedisNodeStep::HandOver(args) } => hand_over(args).await,
        }
    })
}

async fn cleanup(args: CleanupArgs) -> anyhow::Result<()> {
    let config = args.redis.config()?.context("cleanup works on Redis: give --redis-sentinels")?;
    let mut conn = tokenplane_sidecar::store::master_connection(&config)
        .await
        .context("cannot reach the master through the Sentinels")?;
    let now = tokenplane_sidecar::clock::unix_now();
    let pruned = tokenplane_sidecar::cleanup::prune(&mut conn, now, args.batch.max(1))
        .await
        .context("pruning failed part-way; what was removed stays removed, and the next run goes on")?;
    tracing::info!(
        revoked = pruned.revoked,
        families = pruned.families,
        family_members = pruned.family_members,
        "expired index members pruned"
    );
    Ok(())
}

async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let config = args.redis.config()?.context("backup works on Redis: give --redis-sentinels")?;
    let (user, password) = match (&config.username, &config.password) {
        (Some(u), Some(p)) => (u.clone(), p.read()?),
        _ => anyhow::bail!(
            "backup logs in as the backup user: give --redis-username and --redis-password-file"
        ),
    };
    let (host, port) = tokenplane_sidecar::store::master_address(&config)
        .await
        .context("cannot find the master through the Sentinels")?;
    let now = tokenplane_sidecar::clock::unix_now();
    let dir = &args.out_dir;
    let addr = format!("{host}:{port}");
    let master = tokenplane_sidecar::backup::Master { addr: &addr, tls: config.tls.as_ref() };
    let taken =
        tokenplane_sidecar::backup::snapshot(master, (&user, &password), dir, args.retain, now, args.timeout)
            .await
            .context("no snapshot was written; the ones there are unchanged")?;
    tracing::info!(file = %taken.file.display(), bytes = taken.bytes, removed = taken.removed.len(), "snapshot written");
    Ok(())
}

async fn start_redis_node(args: StartArgs) -> anyhow::Result<()> {
    let reach = args.pod.reach()?;
    let nodes = args.nodes.iter().map(|t| node_addr("--nodes", t)).collect::<anyhow::Result<Vec<_>>>()?;
    let start = redis_node::Start {
        kind: match args.kind {
            NodeKind::Node => redis_node::Kind::Node,
            NodeKind::Sentinel => redis_node::Kind::Sentinel,
        },
        me: args.pod.me()?,
        sentinels: args.pod.sentinels()?,
        nodes,
        first_master: node_addr("--first-master", &args.first_master)?,
        template: args.template,
        out: args.out,
        users_dir: args.pod.users_dir,
        master_name: args.pod.master_name,
        quorum: args.quorum,
        wait: args.wait,
        reach,
        copy_self_to: args.copy_self_to,
    };
    start.run().await?;
    Ok(())
}

async fn hand_over(args: HandOverArgs) -> anyhow::Result<()> {
    let reach = args.pod.reach()?;
    let step = redis_node::HandOver {
        me: args.pod.me()?,
        sentinels: args.pod.sentinels()?,
        master_name: args.pod.master_name,
        users_dir: args.pod.users_dir,
        min_replicas: args.min_replicas,
        timeout: args.timeout,
        reach,
    };
    match step.run().await? {
        redis_node::HandedOver::NotMaster => tracing::info!("not the master: nothing to hand over"),
        redis_node::HandedOver::To(master) => tracing::info!(%master, "handed over"),
    }
    Ok(())
}

async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let redis = args.redis.config()?.context(
        "the agent learns revocations from Redis: give --redis-sentinels (and --redis-master if not tokenplane)",
    )?;
    let settings = agent::Settings {
        issuer: args.issuer.trim_end_matches('/').to_owned(),
        audiences: args.audiences,
        clock_skew: args.clock_skew,
        max_staleness: args.max_staleness,
        jwks_refresh: args.jwks_refresh,
        jwks_min_refresh: args.jwks_min_refresh,
        cache_capacity: args.verified_cache,
        credentials_dir: args.credentials_dir,
        credentials_poll: args.credentials_poll,
        issuer_ca_file: args.issuer_ca_file,
        redis,
    };
    check_issuer_url(&settings, args.serving.insecure_http)?;
    let (listener, tls) = args.serving.bind(args.listen).await?;
    let issuer = settings.issuer.clone();
    let audiences = settings.audiences.join(",");
    let mut agent = Agent::start(settings).context("cannot start the agent")?;
    if let Some(tls) = &tls {
        agent = agent.with_tls_metrics(tls.metrics());
    }
    let agent = Arc::new(agent);
    if let Some(addr) = args.health_listen {
        let probes = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --health-listen {addr}"))?;
        tracing::info!(health_listen = %addr, "probes served");
        let probes = server::serve(probes, Arc::new(agent::Probes(agent.clone())), shutdown_signal());
        tokio::spawn(probes);
    }
    tracing::info!(listen = %listener.tcp.local_addr()?, tls = listener.tls.is_some(), %issuer, %audiences, "agent ready");
    server::serve(listener, agent, shutdown_signal()).await;
    Ok(())
}

/// The agent sends its client secret to the issuer: over HTTPS, or plain
/// only to loopback or with --insecure-http.
fn check_issuer_url(settings: &agent::Settings, insecure_http: bool) -> anyhow::Result<()> {
    let url = url::Url::parse(&settings.issuer).context("--issuer is not a URL")?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if settings.issuer_ca_file.is_some() => {
            anyhow::bail!(
                "--issuer-ca-file is given but --issuer {} is plain http: use https",
                settings.issuer
            )
        }
        "http" if loopback => Ok(()),
        "http" if insecure_http => {
            tracing::warn!(issuer = %settings.issuer, "calling the issuer over PLAIN HTTP (--insecure-http): the client secret is not encrypted");
            Ok(())
        }
        "http" => anyhow::bail!(
            "refusing to send the client secret to {} over plain HTTP: use an https issuer URL (and \
             --issuer-ca-file), or accept the risk with --insecure-http",
            settings.issuer
        ),
        other => anyhow::bail!("--issuer must be an https URL, not {other}"),
    }
}

async fn run_issuer(args: IssuerArgs) -> anyhow::Result<()> {
    let admin_token_hash = args.admin_token_file.as_deref().map(admin_token_hash).transpose()?;
    match (&args.manifests, &args.keys_dir) {
        (Some(dir), _) => run_standalone(dir, admin_token_hash, &args).await,
        (None, Some(keys_dir)) => run_managed(keys_dir, admin_token_hash, &args).await,
        (None, None) => unreachable!("clap requires --manifests or --keys-dir"),
    }
}

async fn run_managed(
    keys_dir: &Path,
    admin_token_hash: Option<String>,
    args: &IssuerArgs,
) -> anyhow::Result<()> {
    let wanted = args.policy.as_deref().unwrap_or_default();
    let (namespace, name) =
        wanted.split_once('/').context("--policy must be NAMESPACE/NAME with --keys-dir")?;
    let config = args
        .redis
        .config()?
        .context("managed mode reads its policy and clients from Redis: give --redis-sentinels")?;
    let store = RedisStore::new(config)?;
    let source = managed::Source {
        policy_id: tokenplane_api::TokenPolicy::id_for(name, namespace),
        keys_dir: keys_dir.to_owned(),
        admin_token_hash,
    };
    let (listener, tls) = args.serving.bind(args.listen).await?;
    let (record, settings) = source.settings(&store).await.context("cannot load the policy")?;
    let origin = source.origin(&store).await?;
    let keys = source.keys(&origin)?;
    let issuer = Arc::new(with_tls(Issuer::new(store, keys, settings), tls.as_deref()));
    tokio::spawn(managed::follow(issuer.clone(), source, (record, origin), args.reload));
    tracing::info!(listen = %listener.tcp.local_addr()?, tls = listener.tls.is_some(), issuer = %issuer.current().settings.issuer, policy = wanted, "managed issuer ready");
    server::serve(listener, issuer, shutdown_signal()).await;
    Ok(())
}

fn with_tls<S: Store>(issuer: Issuer<S>, tls: Option<&ServingTls>) -> Issuer<S> {
    match tls {
        Some(tls) => issuer.with_tls_metrics(tls.metrics()),
        None => issuer,
    }
}

async fn run_standalone(
    dir: &Path,
    admin_token_hash: Option<String>,
    args: &IssuerArgs,
) -> anyhow::Result<()> {
    let loaded = manifests::load_dir(dir)
        .and_then(|m| manifests::resolve(m, args.policy.as_deref()))
        .with_context(|| format!("cannot serve the manifests in {}", dir.display()))?;
    let spec = &loaded.policy.object.spec;
    let redis = args.redis.config()?;
    let keys = match loaded.keys {
        Some(keys) => keys,
        None if redis.is_some() => anyhow::bail!(
            "no signing keys Secret {} in {}: issuers on one Redis share tokens, so they must sign \
             with the same keys, and a generated key would be each issuer's own. Add the Secret to \
             the folder (docs/standalone.md, \"Signing keys\", shows how to make one) and give it to \
             every issuer, or leave out --redis-sentinels to serve from memory",
            loaded.policy.object.keys_secret_name(),
            dir.display()
        ),
        None => {
            tracing::warn!(
                secret = %loaded.policy.object.keys_secret_name(),
                "no signing keys Secret in the manifests: generated an ephemeral {} key; tokens will not verify after a restart",
                spec.signing.algorithm.as_str()
            );
            KeySet::generate(spec.signing.algorithm).context("cannot generate a signing key")?
        }
    };
    let (listener, tls) = args.serving.bind(args.listen).await?;
    let issuer_url = match args.issuer.clone().or_else(|| spec.issuer_url.clone()) {
        Some(url) => url,
        None => base_url(&listener)?,
    };
    let mut settings = Settings::from_policy(issuer_url, spec);
    settings.admin_token_hash = admin_token_hash;
    let policy = format!("{}/{}", loaded.policy.namespace, loaded.policy.name);
    let served = Served { clients: loaded.clients, keys, settings, listener, tls, policy };
    match redis {
        Some(config) => serve(RedisStore::new(config)?, served).await,
        None => serve(MemoryStore::default(), served).await,
    }
}

/// What an issuer serves, whatever its store.
struct Served {
    clients: Vec<tokenplane_api::client::ClientRecord>,
    keys: KeySet,
    settings: Settings,
    listener: server::Listener,
    tls: Option<Arc<ServingTls>>,
    policy: String,
}

async fn serve<S: Store>(store: S, served: Served) -> anyhow::Result<()> {
    let Served { clients, keys, settings, listener, tls, policy } = served;
    let count = clients.len();
    for client in clients {
        store.put_client(client).await.context("cannot write the client registrations to the store")?;
    }
    let issuer_url = settings.issuer.clone();
    let issuer = Arc::new(with_tls(Issuer::new(store, keys, settings), tls.as_deref()));
    tracing::info!(listen = %listener.tcp.local_addr()?, tls = listener.tls.is_some(), issuer = %issuer_url, policy, clients = count, "standalone issuer ready");
    server::serve(listener, issuer, shutdown_signal()).await;
    Ok(())
}

/// Reads the admin token and keeps only its hash.
fn admin_token_hash(path: &std::path::Path) -> anyhow::Result<String> {
    let token = read_secret(path).context("cannot read the admin token (--admin-token-file)")?;
    anyhow::ensure!(
        token.len() >= 32,
        "the admin token in {} is shorter than 32 characters; use 256 random bits",
        path.display()
    );
    Ok(tokenplane_sidecar::opaque::hash(&token))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> Result<Cli, clap::Error> {
        let args =
            ["tokenplane-sidecar", "issuer", "--manifests", "m", "--redis-sentinels", "127.0.0.1:26379"];
        Cli::try_parse_from(args.iter().chain(flags))
    }

    #[test]
    fn redis_tls_files_are_refused_without_redis_tls() {
        let client = ["--redis-client-cert-file", "c.crt", "--redis-client-key-file", "c.key"];
        for flags in [&["--redis-ca-file", "ca.crt"][..], &client] {
            let error = parse(flags).err().expect("refused").to_string();
            assert!(error.contains("--redis-tls"), "{error}");
        }
        let error = parse(&["--redis-tls", "--redis-client-cert-file", "c.crt"]).err().expect("refused");
        assert!(error.to_string().contains("--redis-client-key-file"), "{error}");
        let all = [&["--redis-tls", "--redis-ca-file", "ca.crt"][..], &client].concat();
        assert!(parse(&all).is_ok());
    }
}
