//! A Redis Sentinel cluster for the benchmarks (hack/bench.sh,
//! hack/bench-agent.sh): the test harness's cluster
//! (`tokenplane_testkit::RedisCluster`, default options: a master, 2
//! replicas, 3 Sentinels, ACLs on) plus an `issuer` and an `agent` ACL user
//! with exactly `tokenplane_api::storage::ISSUER_ACL` and `agent_acl("demo.default")`. With
//! `REVOKED=N` in the environment, N revoked token ids are written to the
//! revocation set first (for the agent's memory benchmark). Runs until
//! SIGTERM or ctrl-c, then stops every process it started.
//!
//! Writes into DIR, once the cluster is ready: `issuer.password`,
//! `agent.password`, `sentinel.password`, and `cluster.env`, `KEY=value`
//! lines for a shell to `source` (also printed on stdout):
//!
//! ```text
//! REDIS_SENTINELS=127.0.0.1:port,127.0.0.1:port,127.0.0.1:port
//! REDIS_MASTER=tokenplane
//! REDIS_USERNAME=issuer
//! REDIS_PASSWORD_FILE=DIR/issuer.password
//! REDIS_SENTINEL_USERNAME=sentinel-client
//! REDIS_SENTINEL_PASSWORD_FILE=DIR/sentinel.password
//! REDIS_MASTER_ADDR=127.0.0.1:port
//! REDIS_MASTER_PID=pid
//! REDIS_AGENT_USERNAME=agent
//! REDIS_AGENT_PASSWORD_FILE=DIR/agent.password
//! ```
//!
//! On exit it prints the master's command counts (`INFO commandstats`) to
//! stderr and exits with status 3 if any ACL user was denied something
//! (`ACL LOG`): the issuer must work with exactly its rules.
//!
//! Every Redis process inherits this process's CPU affinity: the benchmark
//! starts it under `taskset -c 1`, next to the load generator.
//!
//! `cargo run --release -p tokenplane-sidecar --example redis_cluster -- /tmp/redis`

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tokenplane_testkit::{RedisCluster, RedisClusterOptions};

const ISSUER_USER: &str = "issuer";
const AGENT_USER: &str = "agent";
/// The client whose agent the benchmarks run (config/samples).
const AGENT_CLIENT_ID: &str = "demo.default";

/// Adds `count` revoked token ids, valid for a day, in batches.
async fn revoke_many(admin: &mut redis::aio::MultiplexedConnection, count: usize) -> anyhow::Result<()> {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() + 86_400;
    for start in (0..count).step_by(10_000) {
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(tokenplane_api::storage::REVOKED);
        for _ in start..count.min(start + 10_000) {
            zadd.arg(exp).arg(tokenplane_sidecar::opaque::id());
        }
        let _: usize = zadd.query_async(admin).await?;
    }
    Ok(())
}

/// Writes `text` to `path`, readable by the owner only, atomically (through
/// a temp file and a rename), so a reader polling for the file never sees
/// it half written.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// The value of `field` in an `INFO` reply.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|l| l.trim().strip_prefix(field)?.strip_prefix(':'))
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {},
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let dir: PathBuf = std::env::args_os().nth(1).context("usage: redis_cluster DIR")?.into();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let cluster = RedisCluster::start(RedisClusterOptions::default()).await?;
    let issuer_password = tokenplane_sidecar::opaque::secret();
    cluster.add_user(ISSUER_USER, &issuer_password, tokenplane_api::storage::ISSUER_ACL).await?;
    let agent_password = tokenplane_sidecar::opaque::secret();
    let agent_acl = tokenplane_api::storage::agent_acl(AGENT_CLIENT_ID);
    cluster.add_user(AGENT_USER, &agent_password, &agent_acl).await?;

    let master = cluster.master_addr().await?;
    let mut admin = cluster.admin_connection(&master).await?;
    let server: String = redis::cmd("INFO").arg("server").query_async(&mut admin).await?;
    let master_pid = info_field(&server, "process_id").context("no process_id in INFO server")?.to_owned();
    if let Some(count) = std::env::var("REVOKED").ok().filter(|v| !v.is_empty()) {
        revoke_many(&mut admin, count.parse().context("REVOKED must be a number")?).await?;
    }

    let sentinel = cluster.sentinel_credentials();
    let (password_file, sentinel_password_file) =
        (dir.join("issuer.password"), dir.join("sentinel.password"));
    let agent_password_file = dir.join("agent.password");
    write_private(&password_file, &issuer_password)?;
    write_private(&agent_password_file, &agent_password)?;
    write_private(&sentinel_password_file, &sentinel.password)?;
    let env = format!(
        "REDIS_SENTINELS={}\nREDIS_MASTER={}\nREDIS_USERNAME={ISSUER_USER}\nREDIS_PASSWORD_FILE={}\n\
         REDIS_SENTINEL_USERNAME={}\nREDIS_SENTINEL_PASSWORD_FILE={}\nREDIS_MASTER_ADDR={master}\n\
         REDIS_MASTER_PID={master_pid}\nREDIS_AGENT_USERNAME={AGENT_USER}\nREDIS_AGENT_PASSWORD_FILE={}\n",
        cluster.sentinel_addrs().join(","),
        cluster.master_name(),
        password_file.display(),
        sentinel.username,
        sentinel_password_file.display(),
        agent_password_file.display(),
    );
    write_private(&dir.join("cluster.env"), &env)?;
    print!("{env}");
    std::io::stdout().flush()?;

    shutdown_signal().await?;

    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut admin).await?;
    eprintln!("commands run on the master {master}:");
    for line in stats.lines().filter(|l| l.starts_with("cmdstat_")) {
        eprintln!("  {line}");
    }
    let denials = cluster.acl_denials().await?;
    drop(cluster);
    if !denials.is_empty() {
        eprintln!("ACL denials (the issuer or the agent needs more than its ACL):");
        for d in &denials {
            eprintln!("  {d}");
        }
        std::process::exit(3);
    }
    Ok(())
}
