#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokenplane_sidecar::issuer::{Issuer, Settings};
use tokenplane_sidecar::keys::KeySet;
use tokenplane_sidecar::store::{MemoryStore, Store};
use tokenplane_sidecar::{manifests, server};
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
}

#[derive(clap::Args)]
struct IssuerArgs {
    /// Folder of OAuth2Client, TokenPolicy and Secret manifests to serve from
    /// memory (standalone mode).
    #[arg(long, env = "TOKENPLANE_MANIFESTS")]
    manifests: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "TOKENPLANE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Issuer identifier (`iss`); the policy's issuerUrl, else http://LISTEN.
    #[arg(long, env = "TOKENPLANE_ISSUER_URL")]
    issuer: Option<String>,
    /// TokenPolicy to serve, as NAME or NAMESPACE/NAME, when the folder has several.
    #[arg(long, env = "TOKENPLANE_POLICY")]
    policy: Option<String>,
    /// File holding the bearer token of the admin API the login app calls
    /// (at least 32 characters); without it there is no admin API.
    #[arg(long, env = "TOKENPLANE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.role {
        Role::Issuer(args) => run_issuer(args).await,
    }
}

async fn run_issuer(args: IssuerArgs) -> anyhow::Result<()> {
    let loaded = manifests::load_dir(&args.manifests)
        .and_then(|m| manifests::resolve(m, args.policy.as_deref()))
        .with_context(|| format!("cannot serve the manifests in {}", args.manifests.display()))?;
    let spec = &loaded.policy.object.spec;
    let keys = match loaded.keys {
        Some(keys) => keys,
        None => {
            tracing::warn!(
                secret = %loaded.policy.object.keys_secret_name(),
                "no signing keys Secret in the manifests: generated an ephemeral {} key; tokens will not verify after a restart",
                spec.signing.algorithm.as_str()
            );
            KeySet::generate(spec.signing.algorithm).context("cannot generate a signing key")?
        }
    };
    let issuer_url =
        args.issuer.or_else(|| spec.issuer_url.clone()).unwrap_or_else(|| format!("http://{}", args.listen));
    let mut settings = Settings::from_policy(issuer_url.clone(), spec);
    if let Some(path) = &args.admin_token_file {
        settings.admin_token_hash = Some(admin_token_hash(path)?);
    }
    let store = MemoryStore::default();
    let clients = loaded.clients.len();
    for client in loaded.clients {
        store.put_client(client).await?;
    }
    let issuer = Arc::new(Issuer::new(store, keys, settings));
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| {
        format!("cannot listen on {}; is another process using it? (--listen)", args.listen)
    })?;
    tracing::info!(
        listen = %listener.local_addr()?,
        issuer = %issuer_url,
        policy = %format!("{}/{}", loaded.policy.namespace, loaded.policy.name),
        clients,
        "standalone issuer ready"
    );
    server::serve(listener, issuer, shutdown_signal()).await;
    Ok(())
}

/// Reads the admin token and keeps only its hash.
fn admin_token_hash(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!("cannot read the admin token from {} (--admin-token-file)", path.display())
    })?;
    let token = text.trim();
    anyhow::ensure!(
        token.len() >= 32,
        "the admin token in {} is shorter than 32 characters; use 256 random bits",
        path.display()
    );
    Ok(tokenplane_sidecar::opaque::hash(token))
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
