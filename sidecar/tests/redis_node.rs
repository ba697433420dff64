//! The RedisSentinelCluster's generated configuration, run for real: the
//! operator's builders render the sample cluster; its redis.conf and
//! sentinel.conf (from the ConfigMap), the role passwords (from the Secrets,
//! mounted as the StatefulSets' projected volumes say) and the start-up
//! step's flags (from the init containers) start real `redis-server` and
//! `redis-sentinel` processes through `tokenplane-sidecar redis-node start`,
//! each pod's stable name mapped to a loopback port.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Container, Secret};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, TlsCertificates, Value,
};
use tokenplane_operator::reconcile::ca::{Authorities, ServingInputs, Settings};
use tokenplane_operator::reconcile::redissentinelcluster::{self, Desired, Environment, Passwords};
use tokenplane_testkit::free_port;
use tokio::process::{Child, Command};

const SAMPLE: &str = include_str!("../../config/samples/redissentinelcluster.yaml");
const MASTER_NAME: &str = "tokenplane";
/// The issuer's user comes from a TokenPolicy: the tests set it by hand.
const ISSUER_PASSWORD: &str = "issuer-test-password";

/// The sample cluster, edited, as the operator renders it now (its
/// certificate, with TLS on, signed by a CA of its own).
fn render(edit: impl FnOnce(&mut serde_json::Value)) -> (Desired, BTreeMap<String, String>) {
    let mut value: serde_json::Value = serde_norway::from_str(SAMPLE).unwrap();
    value["metadata"]["namespace"] = "test".into();
    edit(&mut value);
    let rsc = serde_json::from_value(value).unwrap();
    let env = Environment {
        tokenplane_image: "unused".into(),
        exporter_image: "unused".into(),
        cluster_domain: "cluster.local".into(),
        operator_namespace: "tokenplane-system".into(),
    };
    let mut n = 0;
    let numbered = || {
        n += 1;
        format!("pw{n}-{}", std::process::id())
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let cas = Authorities::first(&Settings::default(), now);
    let tls = ServingInputs { cas: &cas, existing: None, lifetime: Settings::default().leaf_lifetime };
    let d = redissentinelcluster::desired(&rsc, &env, (&Passwords::default(), tls), (numbered, now)).unwrap();
    let config = d.config.data.clone().unwrap();
    (d, config)
}

/// One pod: its directory, port, and the process serving in it.
struct Pod {
    dir: tempfile::TempDir,
    /// The name it announces: with TLS one its certificate holds.
    host: &'static str,
    port: u16,
    child: std::sync::Mutex<Option<Child>>,
}

impl Pod {
    fn new(host: &'static str) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            host,
            port: free_port().unwrap(),
            child: Default::default(),
        }
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// SIGKILL, as a node crash or the kubelet after the grace period.
    fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.start_kill();
        }
    }

    fn pid(&self) -> u32 {
        self.child.lock().unwrap().as_ref().and_then(Child::id).expect("a running process")
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The files of the projected `users` volume of `set`, written as the
/// kubelet would, from the role Secrets.
fn mount_users(set: &StatefulSet, secrets: &[Secret], dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let volumes = set.spec.as_ref().unwrap().template.spec.as_ref().unwrap().volumes.as_ref().unwrap();
    let users = volumes.iter().find(|v| v.name == "users").unwrap().projected.as_ref().unwrap();
    for source in users.sources.as_ref().unwrap() {
        let projection = source.secret.as_ref().unwrap();
        let secret = secrets.iter().find(|s| s.metadata.name.as_ref() == Some(&projection.name)).unwrap();
        for item in projection.items.as_ref().unwrap() {
            std::fs::write(dir.join(&item.path), &secret.data.as_ref().unwrap()[&item.key].0).unwrap();
        }
    }
}

/// The template as the pod reads it, with the addresses of this machine:
/// loopback, this pod's port and directory, its certificate's files.
fn localize(template: &str, pod: &Pod) -> String {
    template
        .lines()
        .map(|line| match line.split_whitespace().next() {
            Some("port") if line != "port 0" => format!("port {}", pod.port),
            Some("tls-port") => format!("tls-port {}", pod.port),
            Some(file @ ("tls-cert-file" | "tls-key-file" | "tls-ca-cert-file")) => {
                let name = line.rsplit('/').next().unwrap();
                format!("{file} {}", pod.path("tls").join(name).display())
            }
            Some("bind") => "bind 127.0.0.1 -::1".into(),
            Some("dir") => format!("dir {}", pod.dir.path().display()),
            _ => line.into(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Rendered flags with the values of those in `swap` replaced by this
/// machine's (paths, loopback addresses).
fn localized(rendered: &[String], swap: &BTreeMap<&str, String>) -> Vec<String> {
    let mut args = Vec::new();
    let mut flags = rendered.iter();
    while let Some(arg) = flags.next() {
        args.push(arg.clone());
        if let Some(local) = swap.get(arg.as_str()) {
            flags.next().expect("a value after the flag");
            args.push(local.clone());
        }
    }
    args
}

fn start_container(set: &StatefulSet) -> Container {
    set.spec.as_ref().unwrap().template.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0].clone()
}

/// One cluster at a time: six processes each, failure detection on a
/// 5-second clock, and a Sentinel starved of CPU for 2 s stops acting
/// for 30 s (TILT).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Cluster {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    desired: Desired,
    config: BTreeMap<String, String>,
    nodes: Vec<Pod>,
    sentinels: Vec<Pod>,
}

impl Cluster {
    async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// The sample cluster, edited.
    async fn with(edit: impl FnOnce(&mut serde_json::Value)) -> Self {
        let _turn = ONE_AT_A_TIME.lock().await;
        let (desired, config) = render(edit);
        let host = if desired.tls.is_some() { "localhost" } else { "127.0.0.1" };
        let nodes = (0..3).map(|_| Pod::new(host)).collect();
        let sentinels = (0..3).map(|_| Pod::new(host)).collect();
        Self { _turn, desired, config, nodes, sentinels }
    }

    /// With TLS, the CA bundle clients verify the members against.
    fn ca(&self) -> Option<&[u8]> {
        self.desired.tls.as_ref().map(|tls| tls.ca_bundle.as_slice())
    }

    /// The files of the `tls` volume, written as the kubelet would from
    /// the certificate's Secret; the CA bundle's path.
    fn mount_tls(&self, pod: &Pod) -> String {
        let dir = pod.path("tls");
        std::fs::create_dir_all(&dir).unwrap();
        let secret = self.desired.tls.as_ref().and_then(|t| t.owned.as_ref());
        for (file, value) in secret.and_then(|s| s.data.as_ref()).into_iter().flatten() {
            std::fs::write(dir.join(file), &value.0).unwrap();
        }
        dir.join("ca.crt").display().to_string()
    }

    fn password(&self, user: &str) -> String {
        let name = self.desired.names.role_secret(tokenplane_api::acl::role_named(user).unwrap());
        let secret =
            self.desired.role_secrets.iter().find(|s| s.metadata.name.as_ref() == Some(&name)).unwrap();
        String::from_utf8(secret.data.as_ref().unwrap()["password"].0.clone()).unwrap()
    }

    fn list(pods: &[Pod]) -> String {
        pods.iter().map(Pod::addr).collect::<Vec<_>>().join(",")
    }

    /// Runs the start-up step of pod `i` of the node or Sentinel
    /// StatefulSet with the rendered flags, loopback addresses swapped in;
    /// its stderr.
    async fn start_step(&self, sentinel: bool, i: usize) -> String {
        let (set, pod, template) = match sentinel {
            true => (&self.desired.sentinel, &self.sentinels[i], "sentinel.conf"),
            false => (&self.desired.redis, &self.nodes[i], "redis.conf"),
        };
        std::fs::write(pod.path("template.conf"), localize(&self.config[template], pod)).unwrap();
        mount_users(set, &self.desired.role_secrets, &pod.path("users"));
        let swap = BTreeMap::from([
            ("--redis-ca-file", self.mount_tls(pod)),
            ("--template", pod.path("template.conf").display().to_string()),
            ("--out", pod.path("final.conf").display().to_string()),
            ("--users-dir", pod.path("users").display().to_string()),
            ("--announce-host", pod.host.to_owned()),
            ("--announce-port", pod.port.to_string()),
            ("--sentinels", Self::list(&self.sentinels)),
            ("--nodes", Self::list(&self.nodes)),
            ("--first-master", self.nodes[0].addr()),
            ("--copy-self-to", pod.path("tokenplane-sidecar").display().to_string()),
        ]);
        let mut args = localized(&start_container(set).args.unwrap(), &swap);
        args.extend(["--wait".into(), "60s".into()]);
        let out = Command::new(env!("CARGO_BIN_EXE_tokenplane-sidecar")).args(&args).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "start step {args:?} failed: {stderr}");
        stderr
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) a data node.
    async fn signal_node(&self, i: usize, signal: &str) {
        let pid = self.nodes[i].pid();
        let status = Command::new("kill").args([signal, &pid.to_string()]).status().await.unwrap();
        assert!(status.success());
    }

    /// The master most Sentinels name, other than `not`.
    async fn promoted(&self, not: &str) -> Option<String> {
        let masters = self.master_by_sentinels().await;
        let named: Vec<_> = masters.iter().flatten().filter(|m| *m != not).collect();
        (named.len() >= 2).then(|| named[0].clone())
    }

    /// Runs node `i`'s preStop hook as the kubelet would: its command, the
    /// Redis container's environment (loopback addresses swapped in); its
    /// stderr.
    async fn pre_stop(&self, i: usize) -> String {
        let pod = &self.nodes[i];
        let spec = self.desired.redis.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let redis = spec.containers.iter().find(|c| c.name == "redis").unwrap();
        let hook = redis.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap().exec.as_ref().unwrap();
        let command = hook.command.as_ref().unwrap();
        assert!(command[0].ends_with("tokenplane-sidecar"), "{command:?}");
        let local = BTreeMap::from([
            ("TOKENPLANE_REDIS_ANNOUNCE_HOST", pod.host.to_owned()),
            ("TOKENPLANE_REDIS_CA_FILE", self.mount_tls(pod)),
            ("TOKENPLANE_REDIS_ANNOUNCE_PORT", pod.port.to_string()),
            ("TOKENPLANE_REDIS_SENTINELS", Self::list(&self.sentinels)),
            ("TOKENPLANE_REDIS_USERS_DIR", pod.path("users").display().to_string()),
        ]);
        let mut hook = Command::new(pod.path("tokenplane-sidecar"));
        hook.args(&command[1..]).env_clear();
        for var in redis.env.iter().flatten().filter(|v| v.name.starts_with("TOKENPLANE_")) {
            let value = local.get(var.name.as_str()).cloned().or_else(|| var.value.clone()).unwrap();
            hook.env(&var.name, value);
        }
        let out = hook.output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "preStop failed: {stderr}");
        stderr
    }

    fn serve(&self, sentinel: bool, i: usize) {
        let pod = if sentinel { &self.sentinels[i] } else { &self.nodes[i] };
        let binary = if sentinel { "redis-sentinel" } else { "redis-server" };
        let log = std::fs::File::create(pod.path("stdio.log")).unwrap();
        let child = Command::new(binary)
            .arg(pod.path("final.conf"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        *pod.child.lock().unwrap() = Some(child);
    }

    async fn connect(&self, addr: &str, user: &str) -> redis::RedisResult<MultiplexedConnection> {
        connect_as(addr, (user, &self.password(user)), self.ca()).await
    }

    async fn master_by_sentinels(&self) -> Vec<Option<String>> {
        let mut all = Vec::new();
        for s in &self.sentinels {
            let answer = async {
                let mut c = self.connect(&s.addr(), "monitor").await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(MASTER_NAME)
                    .query_async::<Option<(String, u16)>>(&mut c)
                    .await
            };
            all.push(answer.await.ok().flatten().map(|(h, p)| format!("{h}:{p}")));
        }
        all
    }

    async fn role(&self, addr: &str) -> Option<Vec<Value>> {
        let mut c = self.connect(addr, "monitor").await.ok()?;
        redis::cmd("ROLE").query_async::<Vec<Value>>(&mut c).await.ok()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for pod in self.nodes.iter().chain(&self.sentinels) {
            out.push_str(&format!(
                "--- {}\n{}\n",
                pod.addr(),
                std::fs::read_to_string(pod.path("stdio.log")).unwrap_or_default()
            ));
        }
        out
    }
}

/// A connection as `user`; over TLS when given the CA to verify with.
async fn connect_as(
    addr: &str,
    (user, password): (&str, &str),
    ca: Option<&[u8]>,
) -> redis::RedisResult<MultiplexedConnection> {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let (host, port) = (host.to_owned(), port.parse().unwrap());
    let to = match ca {
        Some(_) => ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None },
        None => ConnectionAddr::Tcp(host, port),
    };
    let info = to.into_connection_info()?;
    let info =
        info.set_redis_settings(RedisConnectionInfo::default().set_username(user).set_password(password));
    let client = match ca {
        Some(ca) => {
            tokenplane_sidecar::tls::install_default_provider();
            let certificates = TlsCertificates { client_tls: None, root_cert: Some(ca.to_vec()) };
            redis::Client::build_with_tls(info, certificates)?
        }
        None => redis::Client::open(info)?,
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    client.get_multiplexed_async_connection_with_config(&config).await
}

async fn until<F: AsyncFnMut() -> bool>(
    what: &str,
    timeout: Duration,
    cluster: &Cluster,
    mut check: F,
) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < timeout, "{what}: not within {timeout:?}\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

fn role_name(role: &[Value]) -> String {
    match role.first() {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    }
}

/// The master a replica's `ROLE` names, as `host:port`.
fn replica_of(role: &[Value]) -> Option<String> {
    match (role.get(1), role.get(2)) {
        (Some(Value::BulkString(h)), Some(Value::Int(p))) => {
            Some(format!("{}:{p}", String::from_utf8_lossy(h)))
        }
        _ => None,
    }
}

/// Starts every pod, then waits until the first master has both replicas
/// and every Sentinel names it.
async fn start_all(cluster: &Cluster) {
    for i in 0..3 {
        cluster.start_step(true, i).await;
        cluster.serve(true, i);
    }
    for i in 0..3 {
        cluster.start_step(false, i).await;
        cluster.serve(false, i);
    }
    let first = cluster.nodes[0].addr();
    until("two replicas attached to the first master", Duration::from_secs(20), cluster, async || {
        let role = cluster.role(&first).await;
        role.as_ref().is_some_and(|r| {
            role_name(r) == "master" && matches!(r.get(2), Some(Value::Array(a)) if a.len() == 2)
        })
    })
    .await;
    until("every Sentinel names the first master", Duration::from_secs(20), cluster, async || {
        cluster.master_by_sentinels().await.iter().all(|m| m.as_deref() == Some(first.as_str()))
    })
    .await;
    // A Sentinel fails over only to replicas it knows (it reads them from
    // the master's INFO every 10 s); one that knows none gives up for
    // twice the failover timeout.
    until("every Sentinel knows both replicas", Duration::from_secs(30), cluster, async || {
        let mut all = true;
        for s in &cluster.sentinels {
            let Ok(mut c) = cluster.connect(&s.addr(), "operator").await else { return false };
            let known: redis::RedisResult<Vec<Value>> =
                redis::cmd("SENTINEL").arg("replicas").arg(MASTER_NAME).query_async(&mut c).await;
            all &= known.is_ok_and(|k| k.len() == 2);
        }
        all
    })
    .await;
}

/// The error code of a command that must fail.
async fn refused(conn: &mut MultiplexedConnection, cmd: &mut redis::Cmd) -> String {
    match cmd.query_async::<Value>(conn).await {
        Ok(v) => panic!("{cmd:?} was allowed: {v:?}"),
        Err(e) => e.code().unwrap_or("(none)").to_owned(),
    }
}

async fn allowed(conn: &mut MultiplexedConnection, cmd: &mut redis::Cmd) {
    if let Err(e) = cmd.query_async::<Value>(conn).await {
        panic!("{cmd:?} was refused: {e}");
    }
}

#[tokio::test]
async fn the_rendered_cluster_replicates_elects_and_brings_an_old_master_back_as_a_replica() {
    let cluster = Cluster::new().await;
    start_all(&cluster).await;
    let first = cluster.nodes[0].addr();

    // Every Sentinel knows its two peers.
    until("every Sentinel sees two peers", Duration::from_secs(20), &cluster, async || {
        let mut peers = true;
        for s in &cluster.sentinels {
            let Ok(mut c) = cluster.connect(&s.addr(), "monitor").await else { return false };
            let known: redis::RedisResult<Vec<Value>> =
                redis::cmd("SENTINEL").arg("sentinels").arg(MASTER_NAME).query_async(&mut c).await;
            peers &= known.is_ok_and(|k| k.len() == 2);
        }
        peers
    })
    .await;

    // Nobody gets in without a password, and `default` cannot log in.
    let unauthenticated = redis::Client::open(format!("redis://{first}")).unwrap();
    let mut anon = unauthenticated.get_multiplexed_async_connection().await.unwrap();
    let denied = redis::cmd("GET").arg("auth:x").query_async::<Option<String>>(&mut anon).await.unwrap_err();
    assert_eq!(denied.code(), Some("NOAUTH"), "{denied}");
    assert!(connect_as(&first, ("default", ""), None).await.is_err());

    // Kill -9 the master: the Sentinels promote a replica; the old master
    // starts again through the start-up step and comes back as a replica
    // of the new one, never as a second master.
    cluster.nodes[0].kill();
    let took = until("a failover to a replica", Duration::from_secs(60), &cluster, async || {
        cluster.promoted(&first).await.is_some()
    })
    .await;
    let promoted = cluster.promoted(&first).await.unwrap();
    eprintln!("failover with the generated settings took {took:?}");
    comes_back_as_replica_of(&cluster, &promoted).await;
}

/// The old master (node 0) through its start-up step: placed as a replica
/// of `promoted`, and replicating from it.
async fn comes_back_as_replica_of(cluster: &Cluster, promoted: &str) {
    let stderr = cluster.start_step(false, 0).await;
    assert!(stderr.contains("ReplicaOf"), "the returning master is placed as a replica: {stderr}");
    cluster.serve(false, 0);
    let first = cluster.nodes[0].addr();
    until("the old master replicates from the new one", Duration::from_secs(20), cluster, async || {
        let role = cluster.role(&first).await;
        role.as_ref().is_some_and(|r| role_name(r) == "slave" && replica_of(r).as_deref() == Some(promoted))
    })
    .await;
}

#[tokio::test]
async fn each_user_a_pod_creates_can_do_its_job_and_nothing_more() {
    let cluster = Cluster::new().await;
    start_all(&cluster).await;
    let master = cluster.nodes[0].addr();
    let cmd = redis::cmd;

    let mut monitor = cluster.connect(&master, "monitor").await.unwrap();
    allowed(&mut monitor, &mut cmd("INFO")).await;
    allowed(&mut monitor, &mut cmd("ROLE")).await;
    allowed(&mut monitor, cmd("CONFIG").arg("GET").arg("maxmemory")).await;
    assert_eq!(refused(&mut monitor, cmd("GET").arg("auth:client:x")).await, "NOPERM");
    assert_eq!(refused(&mut monitor, cmd("CONFIG").arg("SET").arg("maxmemory").arg("1")).await, "NOPERM");

    let mut operator = cluster.connect(&master, "operator").await.unwrap();
    allowed(&mut operator, cmd("SET").arg("auth:client:x").arg("{}")).await;
    allowed(&mut operator, cmd("HSET").arg("auth:notbefore").arg("x").arg(1)).await;
    allowed(&mut operator, cmd("ACL").arg("SETUSER").arg("probe").arg("on").arg(">pw").arg("+ping")).await;
    assert_eq!(refused(&mut operator, cmd("SET").arg("other:x").arg("1")).await, "NOPERM");
    assert_eq!(refused(&mut operator, &mut cmd("FLUSHALL")).await, "NOPERM");
    assert_eq!(refused(&mut operator, &mut cmd("SHUTDOWN")).await, "NOPERM");
    assert_eq!(refused(&mut operator, cmd("CONFIG").arg("REWRITE")).await, "NOPERM");
    assert_eq!(refused(&mut operator, cmd("KEYS").arg("*")).await, "NOPERM");

    for user in ["replication", "sentinel", "backup", "cleanup"] {
        let mut c = cluster.connect(&master, user).await.unwrap();
        assert_eq!(refused(&mut c, cmd("GET").arg("auth:client:x")).await, "NOPERM", "{user}");
        assert_eq!(refused(&mut c, cmd("SET").arg("auth:client:x").arg("1")).await, "NOPERM", "{user}");
    }
    let mut cleanup = cluster.connect(&master, "cleanup").await.unwrap();
    allowed(&mut cleanup, cmd("ZREMRANGEBYSCORE").arg("auth:revoked").arg("-inf").arg(0)).await;
    assert_eq!(
        refused(&mut cleanup, cmd("DEL").arg("auth:revoked")).await,
        "NOPERM",
        "cleanup trims, never deletes"
    );
    denials_are_logged(&cluster, &master, &mut operator).await;
    let replica = cluster.nodes[1].addr();
    let mut on_replica = cluster.connect(&replica, "operator").await.unwrap();
    let written = refused(&mut on_replica, cmd("SET").arg("auth:client:y").arg("1")).await;
    assert_eq!(written, "READONLY", "replicas take no writes");

    let sentinel = cluster.sentinels[0].addr();
    let mut monitor = cluster.connect(&sentinel, "monitor").await.unwrap();
    allowed(&mut monitor, cmd("SENTINEL").arg("get-master-addr-by-name").arg(MASTER_NAME)).await;
    assert_eq!(refused(&mut monitor, cmd("SENTINEL").arg("failover").arg(MASTER_NAME)).await, "NOPERM");
    assert_eq!(
        refused(&mut monitor, cmd("SENTINEL").arg("set").arg(MASTER_NAME).arg("quorum").arg("1")).await,
        "NOPERM"
    );
    let mut operator = cluster.connect(&sentinel, "operator").await.unwrap();
    allowed(&mut operator, cmd("ACL").arg("SETUSER").arg("probe").arg("on").arg(">pw").arg("+ping")).await;
    assert_eq!(refused(&mut operator, cmd("SENTINEL").arg("remove").arg(MASTER_NAME)).await, "NOPERM");
    assert_eq!(refused(&mut operator, cmd("SENTINEL").arg("reset").arg("*")).await, "NOPERM");
}

/// The master's `ACL LOG` names the refusals above, user and object. No
/// role may read it: the operator (which may set any user) makes one that may.
async fn denials_are_logged(cluster: &Cluster, master: &str, operator: &mut MultiplexedConnection) {
    let mut auditor = redis::cmd("ACL");
    auditor.arg("SETUSER").arg("auditor").arg("on").arg(">auditor-password").arg("-@all").arg("+acl|log");
    allowed(operator, &mut auditor).await;
    let mut auditor = connect_as(master, ("auditor", "auditor-password"), cluster.ca()).await.unwrap();
    let log: Vec<BTreeMap<String, Value>> =
        redis::cmd("ACL").arg("LOG").arg(128).query_async(&mut auditor).await.unwrap();
    let text = |entry: &BTreeMap<String, Value>, field: &str| match entry.get(field) {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    };
    let denied: Vec<(String, String, String)> =
        log.iter().map(|e| (text(e, "username"), text(e, "reason"), text(e, "object"))).collect();
    for (user, reason, object) in [
        ("monitor", "command", "get"),
        ("monitor", "command", "config|set"),
        ("operator", "key", "other:x"),
        ("operator", "command", "flushall"),
        ("cleanup", "command", "del"),
        ("backup", "command", "get"),
    ] {
        let wanted = (user.to_owned(), reason.to_owned(), object.to_owned());
        assert!(denied.contains(&wanted), "{wanted:?} in the ACL LOG: {denied:?}");
    }
}

/// The issuer's user, set on every node as the operator's ACL sync does.
async fn add_issuer(cluster: &Cluster) {
    for node in &cluster.nodes {
        let mut operator = cluster.connect(&node.addr(), "operator").await.unwrap();
        let mut setuser = redis::cmd("ACL");
        setuser.arg("SETUSER").arg("issuer").arg("reset").arg("on").arg(format!(">{ISSUER_PASSWORD}"));
        setuser.arg(tokenplane_api::acl::split_rules(tokenplane_api::storage::ISSUER_ACL));
        allowed(&mut operator, &mut setuser).await;
    }
}

/// Which of `ids` the master at `addr` does not hold.
async fn missing(cluster: &Cluster, addr: &str, ids: &[u32]) -> Vec<u32> {
    let mut check = cluster.connect(addr, "operator").await.unwrap();
    let mut lost = Vec::new();
    for i in ids {
        let value: Option<u32> =
            redis::cmd("GET").arg(format!("auth:ack:{i}")).query_async(&mut check).await.unwrap();
        if value != Some(*i) {
            lost.push(*i);
        }
    }
    lost
}

/// Writes `auth:ack:<i>` with `WAIT 1` as an issuer would, and returns
/// the ids the master acknowledged (a replica confirmed them); rediscovers
/// the master through the Sentinels after an error.
async fn acknowledged_stream(
    cluster: &Cluster,
    range: std::ops::Range<u32>,
    master: &mut String,
) -> Vec<u32> {
    let mut acked = Vec::new();
    let mut conn = None;
    for i in range {
        if conn.is_none() {
            conn = connect_as(master, ("issuer", ISSUER_PASSWORD), cluster.ca()).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(m) = cluster.master_by_sentinels().await.into_iter().flatten().next() {
                *master = m;
            }
            continue;
        };
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(format!("auth:ack:{i}")).arg(i).ignore().cmd("WAIT").arg(1).arg(500);
        match pipe.query_async::<(i64,)>(c).await {
            Ok((replicas,)) if replicas >= 1 => acked.push(i),
            Ok(_) => {}
            Err(_) => conn = None,
        }
    }
    acked
}

#[tokio::test]
async fn no_acknowledged_write_is_lost_when_the_master_is_killed() {
    let cluster = Cluster::new().await;
    start_all(&cluster).await;
    add_issuer(&cluster).await;
    let mut master = cluster.nodes[0].addr();
    let before = acknowledged_stream(&cluster, 0..300, &mut master).await;
    assert_eq!(before.len(), 300, "every write is acknowledged while all is well");
    cluster.nodes[0].kill();
    let first = cluster.nodes[0].addr();
    let mut after = Vec::new();
    let mut next = 300;
    let started = Instant::now();
    while after.len() < 300 {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "no writes after the failover\n{}",
            cluster.logs()
        );
        after.extend(acknowledged_stream(&cluster, next..next + 100, &mut master).await);
        next += 100;
    }
    assert_ne!(master, first, "the writes went to the promoted replica");
    let mut check = cluster.connect(&master, "operator").await.unwrap();
    let mut lost = Vec::new();
    for i in before.iter().chain(&after) {
        let value: Option<u32> =
            redis::cmd("GET").arg(format!("auth:ack:{i}")).query_async(&mut check).await.unwrap();
        if value != Some(*i) {
            lost.push(*i);
        }
    }
    eprintln!("{} acknowledged writes checked after the failover", before.len() + after.len());
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

#[tokio::test]
async fn a_master_without_persistence_waits_for_the_failover_instead_of_wiping_its_replicas() {
    let cluster = Cluster::with(|c| c["spec"]["persistence"] = serde_json::json!({"enabled": false})).await;
    start_all(&cluster).await;
    let first = cluster.nodes[0].addr();
    let mut operator = cluster.connect(&first, "operator").await.unwrap();
    allowed(&mut operator, redis::cmd("SET").arg("auth:client:kept").arg("1")).await;
    until("both replicas hold the key", Duration::from_secs(10), &cluster, async || {
        let mut both = true;
        for node in &cluster.nodes[1..] {
            let Ok(mut c) = cluster.connect(&node.addr(), "operator").await else { return false };
            let v: Option<String> =
                redis::cmd("GET").arg("auth:client:kept").query_async(&mut c).await.ok().flatten();
            both &= v.as_deref() == Some("1");
        }
        both
    })
    .await;
    cluster.nodes[0].kill();
    // At once, before the Sentinels notice: they still name it master.
    assert_eq!(cluster.master_by_sentinels().await[0].as_deref(), Some(first.as_str()));
    let started = Instant::now();
    let stderr = cluster.start_step(false, 0).await;
    assert!(stderr.contains("waiting for their failover"), "{stderr}");
    assert!(stderr.contains("ReplicaOf"), "{stderr}");
    eprintln!("the empty node waited {:?} for the failover", started.elapsed());
    cluster.serve(false, 0);
    let promoted = cluster.promoted(&first).await.expect("a failover happened");
    until("the empty node syncs from the new master", Duration::from_secs(20), &cluster, async || {
        let Ok(mut c) = cluster.connect(&first, "operator").await else { return false };
        let role = cluster.role(&first).await;
        let follows = role.as_ref().is_some_and(|r| replica_of(r).as_deref() == Some(promoted.as_str()));
        let kept: Option<String> =
            redis::cmd("GET").arg("auth:client:kept").query_async(&mut c).await.ok().flatten();
        follows && kept.as_deref() == Some("1")
    })
    .await;
}

#[tokio::test]
async fn a_master_that_was_stopped_takes_no_write_when_it_wakes() {
    let cluster = Cluster::new().await;
    start_all(&cluster).await;
    let first = cluster.nodes[0].addr();
    cluster.signal_node(0, "-STOP").await;
    until("a failover away from the stopped master", Duration::from_secs(60), &cluster, async || {
        cluster.promoted(&first).await.is_some()
    })
    .await;
    cluster.signal_node(0, "-CONT").await;
    // Its replicas left it: min-replicas-to-write refuses writes at once,
    // and the Sentinels then turn it into a replica.
    let mut operator = cluster.connect(&first, "operator").await.unwrap();
    let code = refused(&mut operator, redis::cmd("SET").arg("auth:client:zombie").arg("1")).await;
    assert!(["NOREPLICAS", "READONLY"].contains(&code.as_str()), "{code}");
    let promoted = cluster.promoted(&first).await.unwrap();
    until("the old master follows the new one", Duration::from_secs(20), &cluster, async || {
        cluster
            .role(&first)
            .await
            .as_ref()
            .is_some_and(|r| replica_of(r).as_deref() == Some(promoted.as_str()))
    })
    .await;
}

#[tokio::test]
async fn deleting_the_master_hands_over_first_and_loses_no_acknowledged_write() {
    let cluster = Cluster::new().await;
    start_all(&cluster).await;
    add_issuer(&cluster).await;
    let first = cluster.nodes[0].addr();
    // A replica's preStop hands nothing over.
    assert!(cluster.pre_stop(1).await.contains("not the master"));
    assert_eq!(cluster.master_by_sentinels().await[0].as_deref(), Some(first.as_str()));

    let mut master = first.clone();
    let started = Instant::now();
    let (stderr, during) =
        tokio::join!(cluster.pre_stop(0), acknowledged_stream(&cluster, 0..2000, &mut master));
    let took = started.elapsed();
    assert!(stderr.contains("handed over"), "{stderr}");
    let hand_over = stderr.lines().find(|l| l.contains("master handed over")).unwrap_or_default().to_owned();
    // The kubelet stops Redis after the hook.
    cluster.nodes[0].kill();
    let promoted = cluster.promoted(&first).await.expect("the Sentinels name the successor");
    let mut master = promoted.clone();
    let after = acknowledged_stream(&cluster, 2000..2300, &mut master).await;
    assert_eq!(master, promoted);
    assert_eq!(after.len(), 300, "the new master takes writes at once");
    let all: Vec<u32> = during.iter().chain(&after).copied().collect();
    let lost = missing(&cluster, &promoted, &all).await;
    eprintln!("{hand_over}");
    eprintln!(
        "hand-over and write stream took {took:?}; {} acknowledged writes checked ({} during it)",
        all.len(),
        during.len()
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

#[tokio::test]
async fn the_cleanup_job_runs_as_rendered() {
    let cluster = Cluster::new().await;
    start_all(&cluster).await;
    // The pods created the cleanup user themselves, from its hash.
    let password = cluster.password("cleanup");
    let master = cluster.nodes[0].addr();
    let mut cleanup = cluster.connect(&master, "cleanup").await.unwrap();
    let refused_write =
        refused(&mut cleanup, redis::cmd("ZADD").arg("auth:family:f:access").arg(1).arg("x")).await;
    assert_eq!(refused_write, "NOPERM", "cleanup only removes");
    add_issuer(&cluster).await;
    let mut issuer = connect_as(&master, ("issuer", ISSUER_PASSWORD), cluster.ca()).await.unwrap();
    allowed(&mut issuer, redis::cmd("ZADD").arg("auth:family:f:access").arg(1).arg("expired")).await;

    let stderr = run_job(&cluster, &cluster.desired.cleanup, &password, None).await;
    assert!(stderr.contains("\"family_members\":1"), "{stderr}");
}

/// Runs a CronJob's container as rendered, loopback addresses and local
/// files swapped in (`out_dir` for the backup volume); its stderr.
async fn run_job(
    cluster: &Cluster,
    cron: &k8s_openapi::api::batch::v1::CronJob,
    password: &str,
    out_dir: Option<&Path>,
) -> String {
    let job = cron.spec.as_ref().unwrap().job_template.spec.as_ref().unwrap();
    let container = &job.template.spec.as_ref().unwrap().containers[0];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("password"), password).unwrap();
    let local_password = dir.path().join("password").display().to_string();
    let mut swap = BTreeMap::from([
        ("--redis-sentinels", Cluster::list(&cluster.sentinels)),
        ("--redis-password-file", local_password.clone()),
        ("--redis-sentinel-password-file", local_password),
        ("--redis-ca-file", cluster.nodes[0].path("tls/ca.crt").display().to_string()),
    ]);
    if let Some(out) = out_dir {
        swap.insert("--out-dir", out.display().to_string());
    }
    let args = localized(container.args.as_ref().unwrap(), &swap);
    let out = Command::new(env!("CARGO_BIN_EXE_tokenplane-sidecar")).args(&args).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}: {stderr}");
    stderr
}

#[tokio::test]
async fn without_a_quorum_of_sentinels_nothing_fails_over_and_no_second_master_appears() {
    let cluster = Cluster::new().await;
    start_all(&cluster).await;
    let first = cluster.nodes[0].addr();
    // One Sentinel of three lost: the other two are still a majority.
    cluster.sentinels[2].kill();
    cluster.nodes[0].kill();
    until("a failover with two Sentinels of three", Duration::from_secs(60), &cluster, async || {
        cluster.promoted(&first).await.is_some()
    })
    .await;
    let second = cluster.promoted(&first).await.unwrap();
    let survivor = cluster.nodes.iter().map(Pod::addr).find(|a| *a != first && *a != second).unwrap();
    until("the other replica follows the new master", Duration::from_secs(30), &cluster, async || {
        cluster
            .role(&survivor)
            .await
            .as_ref()
            .is_some_and(|r| replica_of(r).as_deref() == Some(second.as_str()))
    })
    .await;
    // Two of three lost: the last one cannot reach the quorum of 2.
    cluster.sentinels[1].kill();
    let second_i = cluster.nodes.iter().position(|n| n.addr() == second).unwrap();
    cluster.nodes[second_i].kill();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        cluster.master_by_sentinels().await[0].as_deref(),
        Some(second.as_str()),
        "the last Sentinel fails nothing over alone"
    );
    let role = cluster.role(&survivor).await.expect("the replica answers");
    assert_eq!(role_name(&role), "slave", "no second master: {role:?}");
    assert_eq!(replica_of(&role).as_deref(), Some(second.as_str()));
}

/// Acknowledged writes (as in `acknowledged_stream`) until `stop`.
async fn stream_until(cluster: &Cluster, stop: &std::sync::atomic::AtomicBool) -> (Vec<u32>, u32) {
    let mut master = cluster.nodes[0].addr();
    let (mut acked, mut next) = (Vec::new(), 0);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        acked.extend(acknowledged_stream(cluster, next..next + 50, &mut master).await);
        next += 50;
    }
    (acked, next)
}

#[tokio::test]
async fn a_rolling_restart_of_every_node_loses_no_acknowledged_write() {
    let cluster = Cluster::new().await;
    start_all(&cluster).await;
    add_issuer(&cluster).await;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let restarts = async {
        // As a StatefulSet rolls: the highest ordinal first, each pod's
        // preStop, stop, start-up step and start, then wait until it is
        // ready (synced) before the next.
        for i in [2, 1, 0] {
            let stderr = cluster.pre_stop(i).await;
            assert!(stderr.contains(if i == 0 { "handed over" } else { "not the master" }), "{stderr}");
            cluster.nodes[i].kill();
            cluster.start_step(false, i).await;
            cluster.serve(false, i);
            let addr = cluster.nodes[i].addr();
            until("the restarted node is a synced replica", Duration::from_secs(30), &cluster, async || {
                let Ok(mut c) = cluster.connect(&addr, "monitor").await else { return false };
                let info: String =
                    redis::cmd("INFO").arg("replication").query_async(&mut c).await.unwrap_or_default();
                info.contains("role:slave") && info.contains("master_link_status:up")
            })
            .await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let ((), (acked, attempted)) = tokio::join!(restarts, stream_until(&cluster, &stop));
    let master = cluster.master_by_sentinels().await.into_iter().flatten().next().unwrap();
    assert_ne!(master, cluster.nodes[0].addr(), "the master moved off the first node");
    let lost = missing(&cluster, &master, &acked).await;
    eprintln!("rolling restart: {} of {attempted} writes acknowledged, all checked", acked.len());
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(acked.len() > 100, "writes went on during the restart");
    // Every restarted node has every user of the cluster again, at once.
    for node in &cluster.nodes {
        for user in ["cleanup", "backup", "monitor", "operator"] {
            assert!(cluster.connect(&node.addr(), user).await.is_ok(), "{user} on {}", node.addr());
        }
    }
}

#[tokio::test]
async fn over_tls_the_cluster_fails_over_hands_over_and_runs_its_jobs_with_verified_members() {
    let cluster = Cluster::with(|v| {
        v["spec"]["tls"] = serde_json::json!({"enabled": true});
        v["spec"]["backup"] = serde_json::json!({"schedule": "@daily"});
    })
    .await;
    start_all(&cluster).await;
    let first = cluster.nodes[0].addr();

    // TLS only, and only to a client that trusts the cluster's CA.
    let monitor = cluster.password("monitor");
    let plain = connect_as(&first, ("monitor", &monitor), None).await;
    let plain = async { redis::cmd("PING").query_async::<String>(&mut plain?).await };
    assert!(plain.await.is_err(), "no plain-text Redis");
    let stranger = Authorities::first(&Settings::default(), 0).bundle();
    assert!(connect_as(&first, ("monitor", &monitor), Some(stranger.as_bytes())).await.is_err());

    // The jobs find the master through the Sentinels and talk TLS to both.
    add_issuer(&cluster).await;
    let mut issuer = connect_as(&first, ("issuer", ISSUER_PASSWORD), cluster.ca()).await.unwrap();
    allowed(&mut issuer, redis::cmd("ZADD").arg("auth:family:f:access").arg(1).arg("expired")).await;
    let stderr = run_job(&cluster, &cluster.desired.cleanup, &cluster.password("cleanup"), None).await;
    assert!(stderr.contains("\"family_members\":1"), "{stderr}");
    let (_, backup) = cluster.desired.backup.as_ref().expect("spec.backup renders a CronJob");
    let out = tempfile::tempdir().unwrap();
    run_job(&cluster, backup, &cluster.password("backup"), Some(out.path())).await;
    let snapshots: Vec<_> = std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert!(std::fs::read(&snapshots[0]).unwrap().starts_with(b"REDIS"));

    // The master's preStop hands over; it comes back as a replica.
    let stderr = cluster.pre_stop(0).await;
    assert!(stderr.contains("handed over"), "{stderr}");
    cluster.nodes[0].kill();
    let promoted = cluster.promoted(&first).await.expect("most Sentinels name the new master");
    comes_back_as_replica_of(&cluster, &promoted).await;
}
