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
use tokenplane_operator::reconcile::ca::{self, Authorities, Authority};
use tokenplane_operator::redis::{Dial, RedisAdmin, RedisConfig};
use tokenplane_testkit::{Credentials, RedisCluster, RedisClusterOptions};

use support::api::ApiServer;

const ISSUER: &str = "issuer:default.auth";
const AGENT: &str = "agent:orders.shop";

/// The operator's own Redis is not involved: nothing here connects to it.
fn unused_redis() -> RedisAdmin {
    RedisAdmin::new(RedisConfig {
        sentinels: vec!["127.0.0.1:9".into()],
        master_name: "unused".into(),
        username: "unused".into(),
        password: "unused".into(),
        sentinel_username: None,
        sentinel_password: None,
        timeout: Duration::from_millis(100),
        tls: None,
        members: None,
        dial: Dial::default(),
    })
}

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

#[tokio::test]
async fn a_policy_on_a_cluster_gets_its_users_everywhere_and_the_sync_keeps_them_there() {
    let redis = RedisCluster::start(RedisClusterOptions::default()).await.unwrap();
    let server = ApiServer::default();
    let kube = server.client();
    let mut ctx = Context::new(kube.clone(), unused_redis(), generate_secret);
    ctx.cluster_logins = ClusterLogins::new(dial(&redis));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let cas = ca::plan(Authorities::default(), &ctx.ca_settings, now, Authority::generate).authorities;
    ctx.ca.send_replace(cas);
    let ctx = Arc::new(ctx);
    let clusters: Api<RedisSentinelCluster> = Api::namespaced(kube.clone(), "auth");
    let policies: Api<TokenPolicy> = Api::namespaced(kube.clone(), "auth");
    let clients: Api<OAuth2Client> = Api::namespaced(kube.clone(), "shop");

    // A policy naming a cluster that does not exist waits for it.
    let policy: TokenPolicy = serde_norway::from_str(
        "apiVersion: tokenplane.io/v1alpha1\nkind: TokenPolicy\nmetadata: {name: default, namespace: auth}\n\
         spec: {redisRef: tokens}\n",
    )
    .unwrap();
    policies.create(&PostParams::default(), &policy).await.unwrap();
    // The requests of the reconciles, not of the test's own setup.
    let operator_requests = std::sync::Mutex::new(Vec::new());
    let operator = async |run: tokio::task::JoinHandle<Result<Action, _>>| {
        let before = server.used().len();
        let action = run.await.unwrap().unwrap();
        operator_requests.lock().unwrap().extend(server.used().split_off(before));
        action
    };
    let reconcile_policy = async || {
        let policy = policies.get("default").await.unwrap();
        operator(tokio::spawn(reconcile::<TokenPolicy>(Arc::new(policy), ctx.clone()))).await
    };
    reconcile_policy().await; // adds the finalizer
    assert_eq!(reconcile_policy().await, Action::requeue(Duration::from_secs(15)));
    let ready = policies.get("default").await.unwrap().status.unwrap().conditions;
    assert_eq!((ready[0].status.as_str(), ready[0].reason.as_str()), ("False", "RedisClusterNotFound"));

    // The cluster comes: its controller makes the role Secrets, its pods
    // (here the harness's processes) create the operator user from them.
    let rsc: RedisSentinelCluster = serde_norway::from_str(
        "apiVersion: tokenplane.io/v1alpha1\nkind: RedisSentinelCluster\nmetadata: {name: tokens, namespace: auth}\n\
         spec: {replicas: 3, sentinels: 3, masterName: tokenplane}\n",
    )
    .unwrap();
    clusters.create(&PostParams::default(), &rsc).await.unwrap();
    let reconcile_cluster = async || {
        let rsc = clusters.get("tokens").await.unwrap();
        operator(tokio::spawn(redissentinelcluster::reconcile(Arc::new(rsc), ctx.clone()))).await
    };
    reconcile_cluster().await;
    bootstrap_operator(&redis, &secret_value(&kube, "auth", "tokens-redis-operator", "password").await).await;
    let sets: Api<StatefulSet> = Api::namespaced(kube.clone(), "auth");
    for name in ["tokens-redis", "tokens-sentinel-peers"] {
        let status = Patch::Merge(json!({"status": {"replicas": 3, "readyReplicas": 3}}));
        sets.patch_status(name, &PatchParams::default(), &status).await.unwrap();
    }

    // The policy and its client land on the cluster.
    assert_eq!(reconcile_policy().await, Action::requeue(Duration::from_secs(300)));
    let client: OAuth2Client = serde_norway::from_str(
        "apiVersion: tokenplane.io/v1alpha1\nkind: OAuth2Client\nmetadata: {name: orders, namespace: shop}\n\
         spec: {policyRef: {name: default, namespace: auth}, audiences: [https://orders]}\n",
    )
    .unwrap();
    clients.create(&PostParams::default(), &client).await.unwrap();
    let reconcile_client = async || {
        let client = clients.get("orders").await.unwrap();
        operator(tokio::spawn(reconcile::<OAuth2Client>(Arc::new(client), ctx.clone()))).await
    };
    reconcile_client().await;
    reconcile_client().await;
    let issuer_password = secret_value(&kube, "auth", "default-issuer-redis", "redis_password").await;
    let agent_password = secret_value(&kube, "shop", "orders-oauth2-credentials", "redis_password").await;
    let issuer_hash = tokenplane_api::acl::password_hash(&issuer_password);
    let agent_hash = tokenplane_api::acl::password_hash(&agent_password);
    everywhere(&redis, ISSUER, &issuer_hash, None).await;
    everywhere(&redis, AGENT, &agent_hash, None).await;

    // Each logs in to a Sentinel as itself, finds the master, reads its own.
    let sentinel = &redis.sentinel_addrs()[1];
    let mut conn = connect_as(&redis, sentinel, ISSUER, &issuer_password).await;
    let (host, port): (String, u16) = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg("tokenplane")
        .query_async(&mut conn)
        .await
        .unwrap();
    let master = format!("{host}:{port}");
    let mut conn = connect_as(&redis, &master, ISSUER, &issuer_password).await;
    let record: Option<String> =
        redis::cmd("GET").arg("auth:policy:default.auth").query_async(&mut conn).await.unwrap();
    assert!(record.is_some_and(|r| r.contains("issuer")), "the policy record is on the cluster's master");
    let registered: Option<String> =
        redis::cmd("GET").arg("auth:client:orders.shop").query_async(&mut conn).await.unwrap();
    assert!(registered.is_some(), "the client's registration is on the cluster's master");
    let mut conn = connect_as(&redis, &master, AGENT, &agent_password).await;
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
    assert_eq!(hashes_on(&redis, &replica, ISSUER).await, None, "a restarted node has lost it");
    let mut admin = redis.admin_connection(&redis.sentinel_addrs()[2]).await.unwrap();
    let _: i64 = redis::cmd("ACL").arg("DELUSER").arg(AGENT).query_async(&mut admin).await.unwrap();
    let mut admin = redis.admin_connection(&master).await.unwrap();
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", "agent:gone.shop", "on", ">old", "~auth:client:gone.shop", "+get"])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(reconcile_cluster().await, Action::requeue(Duration::from_secs(60)), "ready and in sync");
    everywhere(&redis, ISSUER, &issuer_hash, None).await;
    everywhere(&redis, AGENT, &agent_hash, None).await;
    assert_eq!(hashes_on(&redis, &master, "agent:gone.shop").await, None, "the leftover is gone");
    let mut conn = connect_as(&redis, &replica, ISSUER, &issuer_password).await;
    let () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    let status = clusters.get("tokens").await.unwrap();
    let (synced, reason, message) = condition(&status, "UsersSynced");
    assert_eq!((synced.as_str(), reason.as_str()), ("True", "Synced"), "{message}");
    assert!(
        message.contains("the 2 issuer and agent users") && message.contains("(4 changes made)"),
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
        reconcile_cluster().await,
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
    let mut conn = connect_as(&redis, &promoted, ISSUER, &issuer_password).await;
    let record: Option<String> =
        redis::cmd("GET").arg("auth:policy:default.auth").query_async(&mut conn).await.unwrap();
    assert!(record.is_some(), "the issuer reads its policy on the new master");
    redis.restart_node(&master).await.unwrap();
    assert_eq!(reconcile_cluster().await, Action::requeue(Duration::from_secs(60)));
    everywhere(&redis, ISSUER, &issuer_hash, None).await;

    // The client is deleted: its agent user leaves every node and Sentinel.
    clients.delete("orders", &DeleteParams::default()).await.unwrap();
    reconcile_client().await;
    for addr in redis.node_addrs().iter().chain(&redis.sentinel_addrs()) {
        assert_eq!(
            hashes_on(&redis, addr, AGENT).await,
            None,
            "{AGENT} on {addr} of {:?} {:?}",
            redis.node_addrs(),
            redis.sentinel_addrs()
        );
    }

    support::rbac::assert_role_allows(&operator_requests.lock().unwrap());
}
