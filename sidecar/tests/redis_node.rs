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
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, Value};
use tokenplane_operator::reconcile::redissentinelcluster::{self, Desired, Environment, Passwords};
use tokenplane_testkit::free_port;
use tokio::process::{Child, Command};

const SAMPLE: &str = include_str!("../../config/samples/redissentinelcluster.yaml");
const MASTER_NAME: &str = "tokenplane";

fn render() -> (Desired, BTreeMap<String, String>) {
    let mut value: serde_json::Value = serde_norway::from_str(SAMPLE).unwrap();
    value["metadata"]["namespace"] = "test".into();
    let rsc = serde_json::from_value(value).unwrap();
    let env = Environment {
        tokenplane_image: "unused".into(),
        exporter_image: "unused".into(),
        cluster_domain: "cluster.local".into(),
    };
    let mut n = 0;
    let d = redissentinelcluster::desired(&rsc, &env, &Passwords::default(), || {
        n += 1;
        format!("pw{n}-{}", std::process::id())
    })
    .unwrap();
    let config = d.config.data.clone().unwrap();
    (d, config)
}

/// One pod: its directory, port, and the process serving in it.
struct Pod {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Pod {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap(), port: free_port().unwrap(), child: None }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
        }
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
/// loopback, this pod's port and directory.
fn localize(template: &str, pod: &Pod) -> String {
    template
        .lines()
        .map(|line| match line.split_whitespace().next() {
            Some("port") => format!("port {}", pod.port),
            Some("bind") => "bind 127.0.0.1".into(),
            Some("dir") => format!("dir {}", pod.dir.path().display()),
            _ => line.into(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn start_container(set: &StatefulSet) -> Container {
    set.spec.as_ref().unwrap().template.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0].clone()
}

struct Cluster {
    desired: Desired,
    config: BTreeMap<String, String>,
    nodes: Vec<Pod>,
    sentinels: Vec<Pod>,
}

impl Cluster {
    fn new() -> Self {
        let (desired, config) = render();
        let nodes = (0..3).map(|_| Pod::new()).collect();
        let sentinels = (0..3).map(|_| Pod::new()).collect();
        Self { desired, config, nodes, sentinels }
    }

    fn password(&self, user: &str) -> String {
        let name = self.desired.names.role_secret(tokenplane_api::acl::role_named(user).unwrap());
        let secret = self.desired.role_secrets.iter().find(|s| s.metadata.name.as_ref() == Some(&name)).unwrap();
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
            ("--template", pod.path("template.conf").display().to_string()),
            ("--out", pod.path("final.conf").display().to_string()),
            ("--users-dir", pod.path("users").display().to_string()),
            ("--announce-host", "127.0.0.1".to_owned()),
            ("--announce-port", pod.port.to_string()),
            ("--sentinels", Self::list(&self.sentinels)),
            ("--nodes", Self::list(&self.nodes)),
            ("--first-master", self.nodes[0].addr()),
        ]);
        let rendered = start_container(set).args.unwrap();
        let mut args = Vec::new();
        let mut flags = rendered.iter();
        while let Some(arg) = flags.next() {
            args.push(arg.clone());
            if let Some(local) = swap.get(arg.as_str()) {
                flags.next().expect("a value after the flag");
                args.push(local.clone());
            }
        }
        args.extend(["--wait".into(), "20s".into()]);
        let out = Command::new(env!("CARGO_BIN_EXE_tokenplane-sidecar")).args(&args).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "start step {args:?} failed: {stderr}");
        stderr
    }

    fn serve(&mut self, sentinel: bool, i: usize) {
        let pod = if sentinel { &mut self.sentinels[i] } else { &mut self.nodes[i] };
        let binary = if sentinel { "redis-sentinel" } else { "redis-server" };
        let log = std::fs::File::create(pod.path("stdio.log")).unwrap();
        let child = Command::new(binary)
            .arg(pod.path("final.conf"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        pod.child = Some(child);
    }

    async fn connect(&self, addr: &str, user: &str) -> redis::RedisResult<MultiplexedConnection> {
        connect_as(addr, user, &self.password(user)).await
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
            out.push_str(&format!("--- {}\n{}\n", pod.addr(), std::fs::read_to_string(pod.path("stdio.log")).unwrap_or_default()));
        }
        out
    }
}

async fn connect_as(addr: &str, user: &str, password: &str) -> redis::RedisResult<MultiplexedConnection> {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let info = ConnectionAddr::Tcp(host.into(), port.parse().unwrap()).into_connection_info()?;
    let info = info.set_redis_settings(RedisConnectionInfo::default().set_username(user).set_password(password));
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    redis::Client::open(info)?.get_multiplexed_async_connection_with_config(&config).await
}

async fn until<F: AsyncFnMut() -> bool>(what: &str, timeout: Duration, cluster: &Cluster, mut check: F) -> Duration {
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
        (Some(Value::BulkString(h)), Some(Value::Int(p))) => Some(format!("{}:{p}", String::from_utf8_lossy(h))),
        _ => None,
    }
}

async fn start_all(cluster: &mut Cluster) {
    for i in 0..3 {
        cluster.start_step(true, i).await;
        cluster.serve(true, i);
    }
    for i in 0..3 {
        cluster.start_step(false, i).await;
        cluster.serve(false, i);
    }
}

#[tokio::test]
async fn the_rendered_cluster_replicates_elects_and_brings_an_old_master_back_as_a_replica() {
    let mut cluster = Cluster::new();
    start_all(&mut cluster).await;
    let first = cluster.nodes[0].addr();

    // Replication forms and every Sentinel agrees on the master, and knows its peers.
    until("two replicas attached to the first master", Duration::from_secs(20), &cluster, async || {
        let role = cluster.role(&first).await;
        role.as_ref().is_some_and(|r| role_name(r) == "master" && matches!(r.get(2), Some(Value::Array(a)) if a.len() == 2))
    })
    .await;
    until("every Sentinel names the first master and sees two peers", Duration::from_secs(20), &cluster, async || {
        let agreed = cluster.master_by_sentinels().await.iter().all(|m| m.as_deref() == Some(first.as_str()));
        let mut peers = true;
        for s in &cluster.sentinels {
            let Ok(mut c) = cluster.connect(&s.addr(), "monitor").await else { return false };
            let known: redis::RedisResult<Vec<Value>> =
                redis::cmd("SENTINEL").arg("sentinels").arg(MASTER_NAME).query_async(&mut c).await;
            peers &= known.is_ok_and(|k| k.len() == 2);
        }
        agreed && peers
    })
    .await;

    // Nobody gets in without a password, and `default` cannot log in.
    let unauthenticated = redis::Client::open(format!("redis://{first}")).unwrap();
    let mut anon = unauthenticated.get_multiplexed_async_connection().await.unwrap();
    let denied = redis::cmd("GET").arg("auth:x").query_async::<Option<String>>(&mut anon).await.unwrap_err();
    assert_eq!(denied.code(), Some("NOAUTH"), "{denied}");
    assert!(connect_as(&first, "default", "").await.is_err());

    // Kill -9 the master: the Sentinels promote a replica; the old master
    // starts again through the start-up step and comes back as a replica
    // of the new one, never as a second master.
    cluster.nodes[0].kill();
    let mut promoted = None;
    let took = until("a failover to a replica", Duration::from_secs(30), &cluster, async || {
        let masters = cluster.master_by_sentinels().await;
        let named: Vec<_> = masters.iter().flatten().filter(|m| **m != first).collect();
        if named.len() >= 2 {
            promoted = named.first().map(|m| (*m).clone());
        }
        promoted.is_some()
    })
    .await;
    let promoted = promoted.unwrap();
    eprintln!("failover with the generated settings took {took:?}");
    let stderr = cluster.start_step(false, 0).await;
    assert!(stderr.contains("ReplicaOf"), "the returning master is placed as a replica: {stderr}");
    cluster.serve(false, 0);
    until("the old master replicates from the new one", Duration::from_secs(20), &cluster, async || {
        let role = cluster.role(&first).await;
        role.as_ref().is_some_and(|r| role_name(r) == "slave" && replica_of(r).as_deref() == Some(promoted.as_str()))
    })
    .await;
}
