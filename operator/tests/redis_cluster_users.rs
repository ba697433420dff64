//! A TokenPolicy with a `redisRef` and its client on a RedisSentinelCluster,
//! against real Redis and Sentinel processes and the in-memory API server:
//! the operator reaches the cluster as the operator user its controller
//! made, puts the issuer's and the agent's users on every node and every
//! Sentinel, and the cluster's ACL sync restores them on a node that
//! restarted, on a Sentinel that lost one, removes a leftover, and reports
//! the master and a failover.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use redis::aio::MultiplexedConnection;
use serde_json::json;
use tokenplane_api::acl::{OPERATOR, OPERATOR_ON_SENTINEL, split_rules};
use tokenplane_api::{OAuth2Client, RedisSentinelCluster, TokenPolicy};
use tokenplane_operator::controller::{
    ClusterLogins, Context, generate_secret, reconcile, redissentinelcluster,
};
use tokenplane_operator::error::Error;
use tokenplane_operator::reconcile::ca::{self, Authorities, Authority};
use tokenplane_operator::redis::Dial;
use tokenplane_testkit::{Credentials, RedisCluster, RedisClusterOptions};

use support::api::ApiServer;

const ISSUER: &str = "issuer:default.auth";
const AGENT: &str = "agent:orders.shop";

/// The pods' stable names, dialled at the harness's loopback ports.
fn dial(redis: &RedisCluster) -> Dial {
    let mut map = BTreeMap::new();
    for (i, addr) in redis.node_addrs().into_iter().enumerate() {
        map.insert(format!("tokens-redis-{i}.tokens-redis.auth.svc.cluster.local:6379"), addr);
    }
    for (i, addr) in redis.sentinel_addrs().into_iter().enumerate() {
        map.insert(
            format!("tokens-sentinel-peers-{i}.tokens-sentinel-peers.auth.svc.cluster.local:26379"),
            addr,
        );
    }
    Dial::new(map)
}

async fn secret_value(kube: &kube::Client, namespace: &str, name: &str, key: &str) -> String {
    let secret = Api::<Secret>::namespaced(kube.clone(), namespace).get(name).await.unwrap();
    String::from_utf8(secret.data.unwrap()[key].0.clone()).unwrap()
}

/// Creates the operator user on every node and Sentinel, as the pods'
/// start-up step does from the role Secret.
async fn bootstrap_operator(redis: &RedisCluster, password: &str) {
    redis.add_user("operator", password, OPERATOR).await.unwrap();
    for sentinel in redis.sentinel_addrs() {
        let mut conn = redis.admin_connection(&sentinel).await.unwrap();
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg("operator").arg("reset").arg("on").arg(format!(">{password}"));
        cmd.arg(split_rules(OPERATOR_ON_SENTINEL));
        let () = cmd.query_async(&mut conn).await.unwrap();
    }
}

/// The password hashes of `user` on `addr`, `None` without such a user.
async fn hashes_on(redis: &RedisCluster, addr: &str, user: &str) -> Option<Vec<String>> {
    let mut conn = redis.admin_connection(addr).await.unwrap();
    let found: Option<BTreeMap<String, redis::Value>> =
        redis::cmd("ACL").arg("GETUSER").arg(user).query_async(&mut conn).await.unwrap();
    found.map(|mut f| redis::from_redis_value(f.remove("passwords").unwrap()).unwrap())
}

/// Every running node and Sentinel holds `user` with exactly `hash`.
async fn everywhere(redis: &RedisCluster, user: &str, hash: &str, skip: Option<&str>) {
    for addr in redis.node_addrs().iter().chain(&redis.sentinel_addrs()).filter(|a| Some(a.as_str()) != skip)
    {
        assert_eq!(hashes_on(redis, addr, user).await, Some(vec![hash.to_owned()]), "{user} on {addr}");
    }
}

async fn connect_as(redis: &RedisCluster, addr: &str, user: &str, password: &str) -> MultiplexedConnection {
    redis.connection(addr, &Credentials::new(user, password)).await.unwrap()
}

fn condition(rsc: &RedisSentinelCluster, type_: &str) -> (String, String, String) {
    let c = rsc.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == type_).unwrap();
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

/// A test harness cluster posing as the RedisSentinelCluster `auth/tokens`,
/// the in-memory API server, and the operator's context on both.
struct Setup {
    redis: Arc<RedisCluster>,
    server: ApiServer,
    kube: kube::Client,
    ctx: Arc<Context>,
    /// The requests of the reconciles, not of the test's own setup.
    requests: std::sync::Mutex<Vec<(String, String)>>,
}

impl Setup {
    async fn new() -> Self {
        let redis = RedisCluster::start(RedisClusterOptions::default()).await.unwrap();
        let server = ApiServer::default();
        let kube = server.client();
        let mut ctx = Context::new(kube.clone(), support::unused_redis(), generate_secret);
        ctx.cluster_logins = ClusterLogins::new(dial(&redis));
        let cas =
            ca::plan(Authorities::default(), &ctx.ca_settings, unix_now(), Authority::generate).authorities;
        ctx.ca.send_replace(cas);
        Self { redis: Arc::new(redis), server, kube, ctx: Arc::new(ctx), requests: Default::default() }
    }

    /// Runs a reconcile on a task of its own (its future is large, and made
    /// there), noting its requests.
    async fn run<F>(&self, reconcile: impl FnOnce() -> F + Send + 'static) -> Action
    where
        F: Future<Output = Result<Action, Error>> + Send,
    {
        let before = self.server.used().len();
        let action = tokio::spawn(async move { reconcile().await }).await.unwrap().unwrap();
        self.requests.lock().unwrap().extend(self.server.used().split_off(before));
        action
    }

    fn clusters(&self) -> Api<RedisSentinelCluster> {
        Api::namespaced(self.kube.clone(), "auth")
    }

    async fn reconcile_cluster(&self) -> Action {
        let rsc = self.clusters().get("tokens").await.unwrap();
        let ctx = self.ctx.clone();
        self.run(move || redissentinelcluster::reconcile(Arc::new(rsc), ctx)).await
    }

    /// Creates the cluster as its pods would have it: the harness's
    /// replication and Sentinel users are the cluster's (their Secrets say
    /// so), the operator user is created from its Secret, the StatefulSets
    /// report every pod ready; one reconcile then creates the other role
    /// users on every member.
    async fn start_cluster(&self) {
        let secrets: Api<Secret> = Api::namespaced(self.kube.clone(), "auth");
        for (role, login) in [
            ("replication", self.redis.replication_credentials()),
            ("sentinel", self.redis.sentinel_link_credentials()),
        ] {
            let secret = json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": format!("tokens-redis-{role}"), "namespace": "auth"},
                "stringData": {}, "data": {"password": base64(&login.password)}});
            secrets.create(&PostParams::default(), &serde_json::from_value(secret).unwrap()).await.unwrap();
        }
        let rsc: RedisSentinelCluster = serde_norway::from_str(
            "apiVersion: tokenplane.io/v1alpha1\nkind: RedisSentinelCluster\nmetadata: {name: tokens, namespace: auth}\n\
             spec: {replicas: 3, sentinels: 3, masterName: tokenplane}\n",
        )
        .unwrap();
        self.clusters().create(&PostParams::default(), &rsc).await.unwrap();
        self.reconcile_cluster().await;
        let operator = secret_value(&self.kube, "auth", "tokens-redis-operator", "password").await;
        bootstrap_operator(&self.redis, &operator).await;
        let sets: Api<StatefulSet> = Api::namespaced(self.kube.clone(), "auth");
        for name in ["tokens-redis", "tokens-sentinel-peers"] {
            let status = Patch::Merge(json!({"status": {"replicas": 3, "readyReplicas": 3}}));
            sets.patch_status(name, &PatchParams::default(), &status).await.unwrap();
        }
        assert_eq!(self.reconcile_cluster().await, Action::requeue(Duration::from_secs(60)));
        let (synced, reason, message) =
            condition(&self.clusters().get("tokens").await.unwrap(), "UsersSynced");
        assert_eq!((synced.as_str(), reason.as_str()), ("True", "Synced"), "{message}");
    }

    /// Reconciles the `K` called `name` in `namespace`, as it is now.
    async fn reconcile_one<K>(&self, namespace: &str, name: &str) -> Action
    where
        K: tokenplane_operator::controller::Reconciled,
    {
        let object = Api::<K>::namespaced(self.kube.clone(), namespace).get(name).await.unwrap();
        let ctx = self.ctx.clone();
        self.run(move || reconcile::<K>(Arc::new(object), ctx)).await
    }

    async fn reconcile_policy(&self) -> Action {
        self.reconcile_one::<TokenPolicy>("auth", "default").await
    }

    async fn reconcile_client(&self) -> Action {
        self.reconcile_one::<OAuth2Client>("shop", "orders").await
    }

    /// The policy `auth/default` on the cluster and its client `shop/orders`.
    async fn create_policy_and_client(&self) {
        let policy: TokenPolicy = serde_norway::from_str(
            "apiVersion: tokenplane.io/v1alpha1\nkind: TokenPolicy\nmetadata: {name: default, namespace: auth}\n\
             spec: {redisRef: tokens}\n",
        )
        .unwrap();
        Api::namespaced(self.kube.clone(), "auth").create(&PostParams::default(), &policy).await.unwrap();
        let client: OAuth2Client = serde_norway::from_str(
            "apiVersion: tokenplane.io/v1alpha1\nkind: OAuth2Client\nmetadata: {name: orders, namespace: shop}\n\
             spec: {policyRef: {name: default, namespace: auth}, audiences: [https://orders]}\n",
        )
        .unwrap();
        Api::namespaced(self.kube.clone(), "shop").create(&PostParams::default(), &client).await.unwrap();
    }

    fn assert_role_allows_what_was_used(&self) {
        support::rbac::assert_role_allows(&self.requests.lock().unwrap());
    }
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn a_policy_on_a_cluster_gets_its_users_everywhere_and_the_sync_keeps_them_there() {
    let setup = Setup::new().await;
    let (redis, kube) = (&setup.redis, &setup.kube);
    let clusters = setup.clusters();
    let policies: Api<TokenPolicy> = Api::namespaced(kube.clone(), "auth");
    let clients: Api<OAuth2Client> = Api::namespaced(kube.clone(), "shop");

    // A policy naming a cluster that does not exist waits for it.
    setup.create_policy_and_client().await;
    setup.reconcile_policy().await; // adds the finalizer
    assert_eq!(setup.reconcile_policy().await, Action::requeue(Duration::from_secs(15)));
    let ready = policies.get("default").await.unwrap().status.unwrap().conditions;
    assert_eq!((ready[0].status.as_str(), ready[0].reason.as_str()), ("False", "RedisClusterNotFound"));

    // The cluster comes: its controller makes the role Secrets, its pods
    // (here the harness's processes) create their users from them.
    setup.start_cluster().await;

    // The policy and its client land on the cluster.
    assert_eq!(setup.reconcile_policy().await, Action::requeue(Duration::from_secs(300)));
    setup.reconcile_client().await;
    setup.reconcile_client().await;
    let issuer_password = secret_value(kube, "auth", "default-issuer-redis", "redis_password").await;
    let agent_password = secret_value(kube, "shop", "orders-oauth2-credentials", "redis_password").await;
    let issuer_hash = tokenplane_api::acl::password_hash(&issuer_password);
    let agent_hash = tokenplane_api::acl::password_hash(&agent_password);
    everywhere(redis, ISSUER, &issuer_hash, None).await;
    everywhere(redis, AGENT, &agent_hash, None).await;

    // Each logs in to a Sentinel as itself, finds the master, reads its own.
    let sentinel = &redis.sentinel_addrs()[1];
    let mut conn = connect_as(redis, sentinel, ISSUER, &issuer_password).await;
    let (host, port): (String, u16) = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg("tokenplane")
        .query_async(&mut conn)
        .await
        .unwrap();
    let master = format!("{host}:{port}");
    let mut conn = connect_as(redis, &master, ISSUER, &issuer_password).await;
    let record: Option<String> =
        redis::cmd("GET").arg("auth:policy:default.auth").query_async(&mut conn).await.unwrap();
    assert!(record.is_some_and(|r| r.contains("issuer")), "the policy record is on the cluster's master");
    let registered: Option<String> =
        redis::cmd("GET").arg("auth:client:orders.shop").query_async(&mut conn).await.unwrap();
    assert!(registered.is_some(), "the client's registration is on the cluster's master");
    let mut conn = connect_as(redis, &master, AGENT, &agent_password).await;
    let _: BTreeMap<String, String> =
        redis::cmd("HGETALL").arg("auth:notbefore").query_async(&mut conn).await.unwrap();
    let deployment = Api::<Deployment>::namespaced(kube.clone(), "auth").get("default-issuer").await.unwrap();
    let args = deployment.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap().join(" ");
    assert!(
        args.contains("--redis-sentinels tokens-sentinel.auth.svc:26379 --redis-master tokenplane"),
        "{args}"
    );

    // A replica restarts with only its role users; a Sentinel loses the
    // agent; a partitioned node kept the user of a client deleted meanwhile.
    let replica = redis.node_addrs().into_iter().find(|a| *a != master).unwrap();
    redis.kill_node(&replica).await.unwrap();
    redis.restart_node(&replica).await.unwrap();
    assert_eq!(hashes_on(redis, &replica, ISSUER).await, None, "a restarted node has lost it");
    let mut admin = redis.admin_connection(&redis.sentinel_addrs()[2]).await.unwrap();
    let _: i64 = redis::cmd("ACL").arg("DELUSER").arg(AGENT).query_async(&mut admin).await.unwrap();
    let mut admin = redis.admin_connection(&master).await.unwrap();
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", "agent:gone.shop", "on", ">old", "~auth:client:gone.shop", "+get"])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        setup.reconcile_cluster().await,
        Action::requeue(Duration::from_secs(60)),
        "ready and in sync"
    );
    everywhere(redis, ISSUER, &issuer_hash, None).await;
    everywhere(redis, AGENT, &agent_hash, None).await;
    assert_eq!(hashes_on(redis, &master, "agent:gone.shop").await, None, "the leftover is gone");
    let mut conn = connect_as(redis, &replica, ISSUER, &issuer_password).await;
    let () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    let status = clusters.get("tokens").await.unwrap();
    let (synced, reason, message) = condition(&status, "UsersSynced");
    assert_eq!((synced.as_str(), reason.as_str()), ("True", "Synced"), "{message}");
    // The replica lacks the issuer, the agent and the role users its file
    // does not hold (monitor, cleanup, backup); a Sentinel the agent; the
    // master has a leftover: 7 changes.
    assert!(
        message.contains("the 2 issuer and agent users") && message.contains("(7 changes made)"),
        "{message}"
    );
    let master_pod = status.status.as_ref().unwrap().master.clone().unwrap();
    let first = redis.node_addrs().iter().position(|a| *a == master).unwrap();
    assert_eq!(master_pod, format!("tokens-redis-{first}"));
    assert_eq!(status.status.as_ref().unwrap().last_failover_time, None);

    // The master dies: the status follows the Sentinels, with an event; the
    // dead pod waits for its users until it is back.
    redis.kill_node(&master).await.unwrap();
    let promoted = redis.wait_for_failover(&master, Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        setup.reconcile_cluster().await,
        Action::requeue(Duration::from_secs(10)),
        "a member is out of reach"
    );
    let status = clusters.get("tokens").await.unwrap();
    let second = redis.node_addrs().iter().position(|a| *a == promoted).unwrap();
    assert_eq!(
        status.status.as_ref().unwrap().master.as_deref(),
        Some(format!("tokens-redis-{second}").as_str())
    );
    assert!(status.status.as_ref().unwrap().last_failover_time.is_some());
    let (synced, reason, message) = condition(&status, "UsersSynced");
    assert_eq!((synced.as_str(), reason.as_str()), ("False", "PodsUnreachable"));
    assert!(message.starts_with(&format!("tokens-redis-{first} did not answer")), "{message}");
    let events = Api::<Event>::namespaced(kube.clone(), "auth").list(&ListParams::default()).await.unwrap();
    let failover =
        events.items.iter().find(|e| e.reason.as_deref() == Some("Failover")).expect("a Failover event");
    let note = failover.note.clone().unwrap_or_default();
    assert_eq!(
        note,
        format!("the Sentinels made tokens-redis-{second} the master (it was tokens-redis-{first})")
    );
    let mut conn = connect_as(redis, &promoted, ISSUER, &issuer_password).await;
    let record: Option<String> =
        redis::cmd("GET").arg("auth:policy:default.auth").query_async(&mut conn).await.unwrap();
    assert!(record.is_some(), "the issuer reads its policy on the new master");
    redis.restart_node(&master).await.unwrap();
    assert_eq!(setup.reconcile_cluster().await, Action::requeue(Duration::from_secs(60)));
    everywhere(redis, ISSUER, &issuer_hash, None).await;

    // The client is deleted: its agent user leaves every node and Sentinel.
    clients.delete("orders", &DeleteParams::default()).await.unwrap();
    setup.reconcile_client().await;
    for addr in redis.node_addrs().iter().chain(&redis.sentinel_addrs()) {
        assert_eq!(
            hashes_on(redis, addr, AGENT).await,
            None,
            "{AGENT} on {addr} of {:?} {:?}",
            redis.node_addrs(),
            redis.sentinel_addrs()
        );
    }

    setup.assert_role_allows_what_was_used();
}

/// Writes `probe:<n>` on the master as the harness's admin, each
/// acknowledged once a replica has it (`WAIT 1`), until `stop`; follows the
/// master through failovers. The numbers acknowledged.
async fn acknowledged_writes(redis: Arc<RedisCluster>, stop: Arc<std::sync::atomic::AtomicBool>) -> Vec<u64> {
    let mut acked = Vec::new();
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Ok(master) = redis.master_addr().await else { continue };
        let Ok(mut conn) = redis.admin_connection(&master).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            n += 1;
            let set: redis::RedisResult<()> =
                redis::cmd("SET").arg(format!("probe:{n}")).arg(n).query_async(&mut conn).await;
            let wait: redis::RedisResult<i64> =
                redis::cmd("WAIT").arg(1).arg(1000).query_async(&mut conn).await;
            match (set, wait) {
                (Ok(()), Ok(replicas)) if replicas >= 1 => acked.push(n),
                (Ok(()), Ok(_)) => {}
                _ => break,
            }
        }
    }
    acked
}

const ROLES: [&str; 6] = ["operator", "monitor", "cleanup", "backup", "replication", "sentinel"];

/// Every role's Secret, by role.
async fn role_secrets(kube: &kube::Client) -> BTreeMap<&'static str, Secret> {
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), "auth");
    let mut all = BTreeMap::new();
    for role in ROLES {
        all.insert(role, secrets.get(&format!("tokens-redis-{role}")).await.unwrap());
    }
    all
}

fn data(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

async fn annotate_roles(kube: &kube::Client, key: &str, value: &str) {
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), "auth");
    for role in ROLES {
        let patch = Patch::Merge(json!({"metadata": {"annotations": {key: value}}}));
        secrets.patch(&format!("tokens-redis-{role}"), &PatchParams::default(), &patch).await.unwrap();
    }
}

/// Whether `user` logs in with `password` on `addr`.
async fn logs_in(redis: &RedisCluster, addr: &str, user: &str, password: &str) -> bool {
    redis.connection(addr, &Credentials::new(user, password)).await.is_ok()
}

#[tokio::test]
async fn every_role_password_rotates_under_load_and_the_cluster_fails_over_on_the_new_ones() {
    let setup = Setup::new().await;
    setup.start_cluster().await;
    let redis = &setup.redis;
    let before = role_secrets(&setup.kube).await;
    let old: BTreeMap<&str, String> = before.iter().map(|(r, s)| (*r, data(s, "password"))).collect();

    // Writes go on all along, each acknowledged by a replica.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = {
        let (cluster, stop) = (setup.redis.clone(), stop.clone());
        tokio::spawn(acknowledged_writes(cluster, stop))
    };

    // Every role is due: begin, spread, promote, in one reconcile.
    annotate_roles(&setup.kube, "tokenplane.io/password-since", "1").await;
    assert_eq!(setup.reconcile_cluster().await, Action::requeue(Duration::from_secs(60)));
    let promoted = role_secrets(&setup.kube).await;
    let now = unix_now();
    for role in ROLES {
        let secret = &promoted[role];
        let new = data(secret, "password");
        assert_ne!(new, old[role], "{role} has a new password");
        assert_eq!(data(secret, "sha256"), tokenplane_api::acl::password_hash(&new));
        assert_eq!(
            data(secret, "also_sha256"),
            tokenplane_api::acl::password_hash(&old[role]),
            "{role}: the old one, in the overlap"
        );
        assert_eq!(data(secret, "next_password"), "");
        let until: u64 =
            secret.metadata.annotations.as_ref().unwrap()["tokenplane.io/previous-password-until"]
                .parse()
                .unwrap();
        assert!(until.abs_diff(now + 3600) < 60, "{role}: the previous password works for the overlap");
    }
    let node = &redis.node_addrs()[1];
    let sentinel = &redis.sentinel_addrs()[0];
    for role in ROLES {
        let new = data(&promoted[role], "password");
        assert!(
            logs_in(redis, node, role, &new).await && logs_in(redis, node, role, &old[role]).await,
            "{role} on a node"
        );
        if role != "backup" {
            assert!(
                logs_in(redis, sentinel, role, &new).await
                    && logs_in(redis, sentinel, role, &old[role]).await,
                "{role} on a Sentinel"
            );
        }
    }
    let replication = data(&promoted["replication"], "password");
    for addr in redis.node_addrs() {
        let mut admin = redis.admin_connection(&addr).await.unwrap();
        let (_, masterauth): (String, String) =
            redis::cmd("CONFIG").arg("GET").arg("masterauth").query_async(&mut admin).await.unwrap();
        assert_eq!(masterauth, replication, "{addr} replicates with the new password");
    }
    let events =
        Api::<Event>::namespaced(setup.kube.clone(), "auth").list(&ListParams::default()).await.unwrap();
    let notes: Vec<String> = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("PasswordRotated"))
        .filter_map(|e| e.note.clone())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n
                .starts_with("the replication user's new password is current; the previous one works until")),
        "{notes:?}"
    );
    let status = setup.clusters().get("tokens").await.unwrap().status.unwrap();
    assert!(status.acl_users.iter().all(|u| u.rotated_at.is_some()), "{:?}", status.acl_users);

    // The overlap ends.
    annotate_roles(&setup.kube, "tokenplane.io/previous-password-until", "1").await;
    setup.reconcile_cluster().await;
    let retired = role_secrets(&setup.kube).await;
    for role in ROLES {
        assert_eq!(data(&retired[role], "also_sha256"), "", "{role}: the overlap is over");
        assert!(!logs_in(redis, node, role, &old[role]).await, "{role}: the old password is refused");
        assert!(
            logs_in(redis, node, role, &data(&retired[role], "password")).await,
            "{role}: the new one works"
        );
    }
    assert_eq!(
        setup.reconcile_cluster().await,
        Action::requeue(Duration::from_secs(60)),
        "the operator logs in with its new password"
    );

    // The master dies: the Sentinels promote and reconfigure, the replicas
    // follow, all on the new passwords only; no acknowledged write is lost.
    let master = redis.kill_master().await.unwrap();
    let promoted_addr = redis.wait_for_failover(&master, Duration::from_secs(30)).await.unwrap();
    let mut admin = redis.admin_connection(&promoted_addr).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info: String = redis::cmd("INFO").arg("replication").query_async(&mut admin).await.unwrap();
        if info.contains("connected_slaves:1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica never followed the new master:\n{info}\n{}",
            redis.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = stream.await.unwrap();
    assert!(acked.len() > 100, "the stream ran: {} writes acknowledged", acked.len());
    let keys: Vec<String> = acked.iter().map(|n| format!("probe:{n}")).collect();
    let mut found = Vec::new();
    for chunk in keys.chunks(500) {
        let values: Vec<Option<u64>> = redis::cmd("MGET").arg(chunk).query_async(&mut admin).await.unwrap();
        found.extend(values);
    }
    let lost = found.iter().filter(|v| v.is_none()).count();
    assert_eq!(lost, 0, "{lost} of {} acknowledged writes lost", acked.len());
    println!("{} acknowledged writes, none lost", acked.len());
    setup.assert_role_allows_what_was_used();
}

/// The issuer's and the agent's Secrets, by user, and their current password.
async fn owned_passwords(kube: &kube::Client) -> [(&'static str, Secret, String); 2] {
    let get = async |namespace: &str, name: &str| {
        let secret = Api::<Secret>::namespaced(kube.clone(), namespace).get(name).await.unwrap();
        let password = data(&secret, "redis_password");
        (secret, password)
    };
    let (issuer, issuer_password) = get("auth", "default-issuer-redis").await;
    let (agent, agent_password) = get("shop", "orders-oauth2-credentials").await;
    [(ISSUER, issuer, issuer_password), (AGENT, agent, agent_password)]
}

async fn annotate_owned(kube: &kube::Client, key: &str, value: &str) {
    let patch = Patch::Merge(json!({"metadata": {"annotations": {key: value}}}));
    for (namespace, name) in [("auth", "default-issuer-redis"), ("shop", "orders-oauth2-credentials")] {
        let secrets: Api<Secret> = Api::namespaced(kube.clone(), namespace);
        secrets.patch(name, &PatchParams::default(), &patch).await.unwrap();
    }
}

/// Every node and Sentinel holds `user` with exactly the passwords `hashes`.
async fn everywhere_exactly(redis: &RedisCluster, user: &str, hashes: &[String]) {
    let mut want = hashes.to_vec();
    want.sort();
    for addr in redis.node_addrs().iter().chain(&redis.sentinel_addrs()) {
        let mut have = hashes_on(redis, addr, user).await.unwrap_or_default();
        have.sort();
        assert_eq!(have, want, "{user} on {addr}");
    }
}

#[tokio::test]
async fn the_issuer_and_agent_passwords_rotate_on_the_clusters_schedule_without_cutting_anyone_off() {
    let setup = Setup::new().await;
    setup.start_cluster().await;
    let (redis, kube) = (&setup.redis, &setup.kube);
    setup.create_policy_and_client().await;
    for _ in 0..2 {
        setup.reconcile_policy().await;
        setup.reconcile_client().await;
    }
    let old = owned_passwords(kube).await;
    let hash = tokenplane_api::acl::password_hash;
    let master = redis.master_addr().await.unwrap();
    let mut open = Vec::new();
    for (user, _, password) in &old {
        everywhere_exactly(redis, user, &[hash(password)]).await;
        open.push(connect_as(redis, &master, user, password).await);
    }

    // Due (spec.acl's 720h are over): the next password joins every member,
    // nobody is told to use it yet.
    annotate_owned(kube, "tokenplane.io/redis-password-since", "1").await;
    assert_eq!(setup.reconcile_policy().await, Action::requeue(Duration::from_secs(1)));
    assert_eq!(setup.reconcile_client().await, Action::requeue(Duration::from_secs(1)));
    let begun = owned_passwords(kube).await;
    let mut next = BTreeMap::new();
    for ((user, secret, password), (_, _, old_password)) in begun.iter().zip(&old) {
        assert_eq!(password, old_password, "{user} still logs in with the current one");
        let upcoming = data(secret, "next_redis_password");
        assert!(upcoming.len() >= 32 && upcoming != *password, "{user}");
        everywhere_exactly(redis, user, &[hash(password), hash(&upcoming)]).await;
        next.insert(*user, upcoming);
    }

    // Promoted: the Secret hands out the new one; the old one still works
    // for the overlap, on nodes and Sentinels.
    setup.reconcile_policy().await;
    setup.reconcile_client().await;
    let promoted = owned_passwords(kube).await;
    let now = unix_now();
    for ((user, secret, password), (_, _, old_password)) in promoted.iter().zip(&old) {
        assert_eq!(password, &next[user], "{user} has its new password");
        assert_eq!(data(secret, "next_redis_password"), "");
        assert_eq!(data(secret, "redis_also_sha256"), hash(old_password));
        let until: u64 =
            secret.metadata.annotations.as_ref().unwrap()["tokenplane.io/previous-redis-password-until"]
                .parse()
                .unwrap();
        assert!(until.abs_diff(now + 3600) < 60, "{user}: the overlap is spec.acl's hour");
        for addr in [&master, &redis.sentinel_addrs()[0]] {
            assert!(logs_in(redis, addr, user, password).await, "{user} new on {addr}");
            assert!(logs_in(redis, addr, user, old_password).await, "{user} old on {addr}");
        }
    }
    let notes = async |namespace: &str| {
        let events = Api::<Event>::namespaced(kube.clone(), namespace).list(&ListParams::default()).await;
        let events = events.unwrap().items.into_iter();
        events
            .filter(|e| e.reason.as_deref() == Some("PasswordRotated"))
            .filter_map(|e| e.note)
            .collect::<Vec<_>>()
    };
    for (namespace, user) in [("auth", ISSUER), ("shop", AGENT)] {
        let notes = notes(namespace).await;
        assert!(
            notes.iter().any(|n| n.starts_with(&format!("the {user} user's new password is current"))),
            "{notes:?}"
        );
    }

    // The overlap ends: only the new password works; connections opened
    // with the old one before stay.
    annotate_owned(kube, "tokenplane.io/previous-redis-password-until", "1").await;
    setup.reconcile_policy().await;
    setup.reconcile_client().await;
    for ((user, secret, password), (_, _, old_password)) in owned_passwords(kube).await.iter().zip(&old) {
        assert_eq!(data(secret, "redis_also_sha256"), "", "{user}");
        everywhere_exactly(redis, user, &[hash(password)]).await;
        assert!(!logs_in(redis, &master, user, old_password).await, "{user}: the old one is gone");
    }
    for conn in &mut open {
        let _: String = redis::cmd("PING").query_async(conn).await.unwrap();
    }
    // The cluster's ACL sync agrees: nothing to bring in line.
    assert_eq!(setup.reconcile_cluster().await, Action::requeue(Duration::from_secs(60)));
    everywhere_exactly(redis, ISSUER, &[hash(&owned_passwords(kube).await[0].2)]).await;

    setup.assert_role_allows_what_was_used();
}
