#![forbid(unsafe_code)]

use std::path::PathBuf;

use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokenplane_api::redis_tls::{RedisTls, RedisTlsArgs};
use tokenplane_api::tokenpolicy::CertManagerIssuerRef;
use tokenplane_operator::controller::{self, ClusterLogins, Context, generate_secret};
use tokenplane_operator::reconcile::ca::Settings;
use tokenplane_operator::redis::{Dial, RedisAdmin, RedisConfig};

#[derive(Parser)]
#[command(version, about = "tokenplane operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CRDs as YAML, or write one file per kind into --out.
    Crdgen {
        /// Folder to write `<kind>.yaml` files into (the repository's `crds/`).
        #[arg(long, env = "TOKENPLANE_CRD_OUT")]
        out: Option<PathBuf>,
    },
    /// Reconcile OAuth2Clients and TokenPolicies: in a cluster (service
    /// account) or out of it (kubeconfig), against the Redis Sentinels given here.
    Run(Box<RunArgs>),
    /// Print the Kubernetes objects the operator would create for the
    /// OAuth2Clients and TokenPolicies in some YAML files, offline.
    /// Generated secrets and keys show as placeholders.
    Render {
        /// YAML files with OAuth2Client and TokenPolicy documents.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Serve the admission webhooks (agent injection, validation) over
    /// HTTPS without a cluster, from the custom resources in manifest files.
    Webhook(WebhookArgs),
}

#[derive(clap::Args)]
struct WebhookArgs {
    /// Folder of YAML files with OAuth2Client, TokenPolicy and
    /// RedisSentinelCluster documents (other kinds are skipped, and said so).
    #[arg(long, env = "TOKENPLANE_MANIFESTS")]
    manifests: PathBuf,
    /// Address to serve HTTPS on.
    #[arg(long, env = "TOKENPLANE_WEBHOOK_LISTEN", default_value = "127.0.0.1:8443")]
    listen: std::net::SocketAddr,
    /// PEM certificate chain to serve with (reloaded when it changes).
    #[arg(long, env = "TOKENPLANE_TLS_CERT_FILE")]
    tls_cert_file: PathBuf,
    /// PEM private key of that certificate.
    #[arg(long, env = "TOKENPLANE_TLS_KEY_FILE")]
    tls_key_file: PathBuf,
    /// How often the certificate files are checked for a change.
    #[arg(long, env = "TOKENPLANE_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    tls_reload_interval: std::time::Duration,
    #[command(flatten)]
    inject: InjectArgs,
}

/// How agents are injected.
#[derive(clap::Args)]
struct InjectArgs {
    /// The agent's image (the tokenplane sidecar).
    #[arg(long, env = "TOKENPLANE_AGENT_IMAGE", default_value = controller::ISSUER_IMAGE)]
    agent_image: String,
    /// Sentinels as agents reach them, for policies without a redisRef.
    #[arg(long = "agent-redis-sentinels", env = "TOKENPLANE_AGENT_REDIS_SENTINELS", value_delimiter = ',')]
    redis_sentinels: Vec<String>,
    /// The master's name at those Sentinels.
    #[arg(long = "agent-redis-master", env = "TOKENPLANE_AGENT_REDIS_MASTER", default_value = "tokenplane")]
    redis_master: String,
    /// Agents talk TLS to that Redis, verifying it against the bundle
    /// the OAuth2Client controller puts beside the issuer CA.
    #[arg(long = "agent-redis-tls", env = "TOKENPLANE_AGENT_REDIS_TLS")]
    redis_tls: bool,
    /// Inject the agent as a plain container (Kubernetes before 1.29, no
    /// native sidecars); it then starts alongside the others.
    #[arg(long, env = "TOKENPLANE_LEGACY_SIDECAR")]
    legacy_sidecar: bool,
    /// Admit a pod whose client is missing or not Ready without the agent
    /// (with a warning) instead of refusing it.
    #[arg(long, env = "TOKENPLANE_ADMIT_WITHOUT_CLIENT")]
    admit_without_client: bool,
    /// Namespace the operator runs in: never injected.
    #[arg(long, env = "TOKENPLANE_OPERATOR_NAMESPACE", default_value = "tokenplane-system")]
    operator_namespace: String,
}

impl InjectArgs {
    fn settings(self) -> tokenplane_operator::admission::inject::Settings {
        let env = tokenplane_operator::reconcile::tokenpolicy::Environment {
            image: self.agent_image,
            sentinels: self.redis_sentinels,
            master_name: self.redis_master,
            sentinel_login: None,
            operator_namespace: self.operator_namespace,
            redis_tls: self.redis_tls.then(|| b"(the bundle beside the issuer CA)".to_vec()),
            cert_manager_issuer: None,
        };
        tokenplane_operator::admission::inject::Settings {
            env,
            native_sidecar: !self.legacy_sidecar,
            admit_without_client: self.admit_without_client,
        }
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// Sentinel addresses, host:port, comma separated.
    #[arg(long, env = "TOKENPLANE_REDIS_SENTINELS", value_delimiter = ',', required = true)]
    redis_sentinels: Vec<String>,
    /// Name the Sentinels monitor the master under.
    #[arg(long, env = "TOKENPLANE_REDIS_MASTER", default_value = "tokenplane")]
    redis_master: String,
    /// The operator's Redis ACL user (administers ACL users and registrations).
    #[arg(long, env = "TOKENPLANE_REDIS_USERNAME")]
    redis_username: String,
    /// File holding that user's password.
    #[arg(long, env = "TOKENPLANE_REDIS_PASSWORD_FILE")]
    redis_password_file: PathBuf,
    /// User the Sentinels require, if any.
    #[arg(long, env = "TOKENPLANE_REDIS_SENTINEL_USERNAME")]
    redis_sentinel_username: Option<String>,
    /// File holding the Sentinel user's password.
    #[arg(long, env = "TOKENPLANE_REDIS_SENTINEL_PASSWORD_FILE")]
    redis_sentinel_password_file: Option<PathBuf>,
    #[command(flatten)]
    redis_tls: RedisTlsArgs,
    /// Namespace of the Lease the replicas elect a leader with.
    #[arg(long, env = "TOKENPLANE_LEASE_NAMESPACE", default_value = "tokenplane-system")]
    lease_namespace: String,
    /// This replica's name in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Image of the issuer Deployments, unless a TokenPolicy names one.
    #[arg(long, env = "TOKENPLANE_ISSUER_IMAGE", default_value = controller::ISSUER_IMAGE)]
    issuer_image: String,
    /// The cluster's DNS domain, in the stable names RedisSentinelCluster
    /// pods announce (`<pod>.<service>.<namespace>.svc.<domain>`).
    #[arg(long, env = "TOKENPLANE_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Sentinels as issuer pods reach them, for policies without a
    /// redisRef; --redis-sentinels when unset (out of a cluster those are
    /// often addresses pods cannot use).
    #[arg(long, env = "TOKENPLANE_ISSUER_REDIS_SENTINELS", value_delimiter = ',')]
    issuer_redis_sentinels: Vec<String>,
    /// Where to reach RedisSentinelCluster pods instead of their stable
    /// names, `NAME:PORT=HOST:PORT`, comma separated: for an operator run
    /// outside its cluster, through port-forwards. With a cluster's TLS
    /// dial `localhost:PORT`, a name its certificate holds.
    #[arg(long, env = "TOKENPLANE_REDIS_DIAL", value_delimiter = ',', value_parser = dial_entry)]
    redis_dial: Vec<(String, String)>,
    /// Lifetime of a CA the operator makes (Secret tokenplane-ca in the
    /// --lease-namespace); the next one is made and published before it ends.
    #[arg(long, env = "TOKENPLANE_CA_LIFETIME", default_value = "365d", value_parser = humantime::parse_duration)]
    ca_lifetime: std::time::Duration,
    /// Lifetime of an issuer's serving certificate; renewed at two thirds.
    #[arg(long, env = "TOKENPLANE_SERVING_CERT_LIFETIME", default_value = "30d", value_parser = humantime::parse_duration)]
    serving_cert_lifetime: std::time::Duration,
    /// How long a new CA sits in every bundle before it signs: time for
    /// kubelet to update mounted ConfigMaps and for agents to re-read them.
    #[arg(long, env = "TOKENPLANE_CA_PROPAGATION", default_value = "1d", value_parser = humantime::parse_duration)]
    ca_propagation: std::time::Duration,
    /// A cert-manager issuer that signs every issuer's serving certificate
    /// (unless its TokenPolicy names another) instead of the operator's CA.
    #[arg(long, env = "TOKENPLANE_CERT_MANAGER_ISSUER")]
    cert_manager_issuer: Option<String>,
    /// Its kind: ClusterIssuer or Issuer (then in each policy's namespace).
    #[arg(long, env = "TOKENPLANE_CERT_MANAGER_ISSUER_KIND", default_value = "ClusterIssuer",
          value_parser = ["ClusterIssuer", "Issuer"], requires = "cert_manager_issuer")]
    cert_manager_issuer_kind: String,
    /// Its API group (an external issuer's own).
    #[arg(
        long,
        env = "TOKENPLANE_CERT_MANAGER_ISSUER_GROUP",
        default_value = "cert-manager.io",
        requires = "cert_manager_issuer"
    )]
    cert_manager_issuer_group: String,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "TOKENPLANE_METRICS_LISTEN", default_value = "0.0.0.0:8090")]
    metrics_listen: std::net::SocketAddr,
    /// Serve the admission webhooks (agent injection, validation) over
    /// HTTPS here, on every replica; the leader applies their certificate
    /// and webhook configurations. Off without it.
    #[arg(long, env = "TOKENPLANE_WEBHOOK_LISTEN")]
    webhook_listen: Option<std::net::SocketAddr>,
    /// A writable folder for the webhooks' certificate files.
    #[arg(long, env = "TOKENPLANE_WEBHOOK_CERT_DIR", default_value = "/var/run/tokenplane/webhook")]
    webhook_cert_dir: PathBuf,
    /// Admit a pod whose client is missing or not Ready without the agent
    /// (with a warning) instead of refusing it.
    #[arg(long, env = "TOKENPLANE_ADMIT_WITHOUT_CLIENT")]
    admit_without_client: bool,
}

fn dial_entry(entry: &str) -> Result<(String, String), String> {
    let (name, addr) = entry.split_once('=').ok_or("expected NAME:PORT=HOST:PORT")?;
    for part in [name, addr] {
        let port = part
            .rsplit_once(':')
            .and_then(|(host, port)| port.parse::<u16>().ok().filter(|_| !host.is_empty()));
        port.ok_or_else(|| format!("{part:?} is not host:port"))?;
    }
    Ok((name.to_owned(), addr.to_owned()))
}

fn read_secret(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.trim().to_owned())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let ca_settings = Settings {
        ca_lifetime: args.ca_lifetime.as_secs(),
        leaf_lifetime: args.serving_cert_lifetime.as_secs(),
        propagation: args.ca_propagation.as_secs(),
    };
    ca_settings.check().map_err(|e| anyhow::anyhow!("invalid certificate lifetimes: {e}"))?;
    let tls = args.redis_tls.files().map(|files| RedisTls::load(&files, |path| std::fs::read(path)));
    let redis = RedisAdmin::new(RedisConfig {
        sentinels: args.redis_sentinels,
        master_name: args.redis_master,
        username: args.redis_username,
        password: read_secret(&args.redis_password_file)?,
        sentinel_username: args.redis_sentinel_username,
        sentinel_password: args.redis_sentinel_password_file.as_deref().map(read_secret).transpose()?,
        timeout: std::time::Duration::from_secs(2),
        tls: tls.transpose().context("cannot talk TLS to Redis")?,
        members: None,
        dial: Dial::default(),
    });
    let kube = kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API: run in a cluster, or set KUBECONFIG")?;
    let mut ctx = Context::new(kube, redis, generate_secret);
    ctx.cluster_logins = ClusterLogins::new(Dial::new(args.redis_dial.into_iter().collect()));
    ctx.ca_settings = ca_settings;
    ctx.issuers.cert_manager_issuer = args.cert_manager_issuer.map(|name| CertManagerIssuerRef {
        name,
        kind: args.cert_manager_issuer_kind,
        group: args.cert_manager_issuer_group,
    });
    ctx.clusters.tokenplane_image = args.issuer_image.clone();
    ctx.clusters.operator_namespace = args.lease_namespace.clone();
    ctx.clusters.cluster_domain = args.cluster_domain;
    ctx.issuers.image = args.issuer_image;
    ctx.issuers.operator_namespace = args.lease_namespace.clone();
    if !args.issuer_redis_sentinels.is_empty() {
        ctx.issuers.sentinels = args.issuer_redis_sentinels;
    }
    if let Some(listen) = args.webhook_listen {
        ctx.webhooks = true;
        let inject = tokenplane_operator::admission::inject::Settings {
            env: ctx.issuers.clone(),
            native_sidecar: native_sidecars(&ctx.kube).await,
            admit_without_client: args.admit_without_client,
        };
        let place = tokenplane_operator::admission::cluster::Place {
            listen,
            namespace: args.lease_namespace.clone(),
            cert_dir: args.webhook_cert_dir,
        };
        let serving = tokenplane_operator::admission::cluster::serve(
            ctx.kube.clone(),
            place,
            (inject, ctx.clusters.clone()),
            ctx.metrics.clone(),
        );
        tokio::spawn(async move {
            if let Err(error) = serving.await {
                tracing::error!(%error, "the admission webhooks stopped");
            }
        });
    }
    let ctx = Arc::new(ctx);
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_listen))?;
    tokio::spawn(tokenplane_operator::serve::serve(listener, ctx.metrics.clone()));
    let identity = args.identity.unwrap_or_else(|| format!("tokenplane-operator-{}", std::process::id()));
    controller::lead(ctx, &args.lease_namespace, identity).await.with_context(|| {
        format!("leader election on the Lease {}/{} failed", args.lease_namespace, controller::LEASE)
    })
}

/// Whether the API server runs native sidecars (Kubernetes 1.29 or later);
/// a plain container is injected when it does not say.
async fn native_sidecars(kube: &kube::Client) -> bool {
    match kube.apiserver_version().await {
        Ok(info) => {
            let minor: u32 = info.minor.trim_end_matches(|c: char| !c.is_ascii_digit()).parse().unwrap_or(0);
            info.major == "1" && minor >= 29 || info.major.parse::<u32>().is_ok_and(|m| m > 1)
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the Kubernetes version: injecting the agent as a plain container");
            false
        }
    }
}

/// The three kinds from every YAML file of `dir`.
fn read_manifests(dir: &std::path::Path) -> anyhow::Result<tokenplane_operator::render::Resources> {
    let mut resources = tokenplane_operator::render::Resources::default();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read --manifests {}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.retain(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"));
    files.sort();
    for file in files {
        let text =
            std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        resources.add(file, &text)?;
    }
    for skipped in &resources.skipped {
        tracing::warn!("{skipped}");
    }
    Ok(resources)
}

async fn webhook(args: WebhookArgs) -> anyhow::Result<()> {
    use tokenplane_sidecar::{server, tls};
    let catalog = tokenplane_operator::admission::Manifests::new(read_manifests(&args.manifests)?);
    let (clients, policies, clusters) = catalog.counts();
    let files = tls::PairFiles { cert: args.tls_cert_file, key: args.tls_key_file };
    let serving = Arc::new(
        tls::ServingTls::load(files).context("cannot serve HTTPS (--tls-cert-file, --tls-key-file)")?,
    );
    tokio::spawn(serving.clone().follow(args.tls_reload_interval));
    let admission = tokenplane_operator::admission::Admission {
        catalog,
        inject: args.inject.settings(),
        clusters: Default::default(),
        metrics: Arc::default(),
    };
    let tcp = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on --listen {}", args.listen))?;
    tracing::info!(listen = %args.listen, clients, policies, clusters, "admission webhooks serving");
    let listener = server::Listener::https(tcp, &serving);
    server::serve(listener, Arc::new(admission), controller::shutdown_signal()).await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run(args) => tokio::runtime::Runtime::new()?.block_on(run(*args)),
        Command::Webhook(args) => tokio::runtime::Runtime::new()?.block_on(webhook(args)),
        Command::Crdgen { out: Some(dir) } => tokenplane_operator::crdgen::write(&dir),
        Command::Crdgen { out: None } => {
            for (_, yaml) in tokenplane_operator::crdgen::render()? {
                print!("---\n{yaml}");
            }
            Ok(())
        }
        Command::Render { files } => {
            let mut resources = tokenplane_operator::render::Resources::default();
            for file in files {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                resources.add(file, &text)?;
            }
            for skipped in &resources.skipped {
                eprintln!("tokenplane-operator render: {skipped}");
            }
            for cluster in &resources.clusters {
                let name = cluster.metadata.name.as_deref().unwrap_or_default();
                let preview = tokenplane_operator::render::CLUSTER_PREVIEW;
                eprintln!("tokenplane-operator render: RedisSentinelCluster {name}: {preview}");
            }
            print!("{}", resources.render()?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> Result<Cli, clap::Error> {
        let args =
            ["tokenplane-operator", "run", "--redis-sentinels", "127.0.0.1:26379", "--redis-username", "op"];
        Cli::try_parse_from(args.iter().chain(&["--redis-password-file", "pw"]).chain(flags))
    }

    #[test]
    fn the_redis_tls_files_need_redis_tls() {
        let refusal = |flags: &[&str]| parse(flags).err().map(|e| e.to_string()).unwrap_or_default();
        let ca_alone = refusal(&["--redis-ca-file", "ca.crt"]);
        assert!(ca_alone.contains("--redis-tls"), "{ca_alone}");
        let key_alone = refusal(&["--redis-tls", "--redis-client-key-file", "c.key"]);
        assert!(key_alone.contains("--redis-client-cert-file"), "{key_alone}");
        let pair = ["--redis-tls", "--redis-client-cert-file", "c.crt", "--redis-client-key-file", "c.key"];
        assert!(parse(&pair).is_ok());
    }

    #[test]
    fn dial_entries_are_pairs_of_addresses() {
        let Command::Run(args) =
            parse(&["--redis-dial", "a-redis-0.a-redis.ns.svc.cluster.local:6379=127.0.0.1:16379"])
                .unwrap()
                .command
        else {
            panic!("run")
        };
        assert_eq!(
            args.redis_dial,
            [("a-redis-0.a-redis.ns.svc.cluster.local:6379".into(), "127.0.0.1:16379".into())]
        );
        for wrong in ["a:1", "a=b:1", "a:1=:2", "a:x=b:1"] {
            assert!(parse(&["--redis-dial", wrong]).is_err(), "{wrong}");
        }
    }
}
