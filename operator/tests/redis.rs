//! The operator's Redis side effects on a real Sentinel cluster: an agent
//! user on every node with exactly its rights, the registration issuers
//! read, and a deletion that kills the client's tokens at once; the same
//! over TLS, where a wrong CA or a missing client certificate says so.

mod support;

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tokenplane_api::acl::password_hash;
use tokenplane_api::client::ClientRecord;
use tokenplane_api::redis_tls::RedisTls;
use tokenplane_api::storage;
use tokenplane_operator::reconcile::oauth2client::{self, Credentials};
use tokenplane_operator::reconcile::redis_password::Credentials as RedisCredentials;
use tokenplane_operator::redis::{RedisAdmin, RedisConfig};
use tokenplane_testkit::{ClientAuth, Credentials as Login, RedisCluster, RedisClusterOptions};

/// What the operator builds for the client `orders`, with known credentials.
fn orders() -> oauth2client::Desired {
    let (client, policy) = (support::client("orders"), support::policy());
    let redis = RedisCredentials::new("agent-pw-0123".into(), 0);
    let creds = Credentials { client_secret: Some("secret-0123".into()), redis };
    oauth2client::desired(&client, Some(&policy), &creds).unwrap()
}

/// `agent` reads the revocations on every node, and not a registration.
async fn agent_has_its_rights_everywhere(cluster: &RedisCluster, agent: &Login) {
    for node in cluster.node_addrs() {
        let mut conn = cluster.connection(&node, agent).await.unwrap();
        let _: (u64, Vec<String>) =
            redis::cmd("ZSCAN").arg(storage::REVOKED).arg(0).query_async(&mut conn).await.unwrap();
        let denied: redis::RedisResult<Option<String>> = conn.get(storage::client("orders.shop")).await;
        assert!(denied.is_err(), "the agent reads only what it needs ({node})");
    }
}

#[tokio::test]
async fn a_client_gets_its_agent_user_everywhere_and_deletion_kills_its_tokens() {
    let cluster = RedisCluster::start(RedisClusterOptions::default()).await.unwrap();
    let desired = orders();
    let admin = support::admin(&cluster);
    let nodes = admin.nodes().await.unwrap();
    assert_eq!(nodes.replicas.len(), 2, "every replica is found through the Sentinels");
    let master = nodes.master.clone();
    admin
        .apply_client(&nodes, &desired.registration, &desired.agent_user, &[password_hash("agent-pw-0123")])
        .await
        .unwrap();

    let agent = Login::new(&desired.agent_user.name, "agent-pw-0123");
    agent_has_its_rights_everywhere(&cluster, &agent).await;
    let mut conn = cluster.admin_connection(&master).await.unwrap();
    let json: String = conn.get(storage::client("orders.shop")).await.unwrap();
    let stored: ClientRecord = serde_json::from_str(&json).unwrap();
    assert!(stored.secret_matches("secret-0123", 0) && !json.contains("secret-0123"));

    // A second apply (a password rotation) redefines the user from scratch.
    admin
        .apply_client(&nodes, &desired.registration, &desired.agent_user, &[password_hash("agent-pw-4567")])
        .await
        .unwrap();
    assert!(cluster.connection(&master, &agent).await.is_err(), "the old password stopped working");

    let before: Option<String> = conn.hget(storage::NOT_BEFORE, "orders.shop").await.unwrap();
    assert_eq!(before, None);
    let () = conn.hset(storage::secret_used("orders.shop"), "some-hash", 1_800_000_000).await.unwrap();
    admin.remove_client(&nodes, "orders.shop", &desired.agent_user, 1_900_000_000).await.unwrap();
    let uses: Option<u64> = conn.hget(storage::secret_used("orders.shop"), "some-hash").await.unwrap();
    assert_eq!(uses, None, "what issuers recorded goes with the client");
    let mark: Option<u64> = conn.hget(storage::NOT_BEFORE, "orders.shop").await.unwrap();
    assert_eq!(mark, Some(1_900_000_001), "every token of the client up to this second is dead");
    let gone: Option<String> = conn.get(storage::client("orders.shop")).await.unwrap();
    assert_eq!(gone, None);
    for node in cluster.node_addrs() {
        let rotated = Login::new(&desired.agent_user.name, "agent-pw-4567");
        assert!(cluster.connection(&node, &rotated).await.is_err(), "the agent user is gone from {node}");
    }
}

#[tokio::test]
async fn a_restarted_node_gets_a_new_connection() {
    let cluster = RedisCluster::start(RedisClusterOptions::default()).await.unwrap();
    let desired = orders();
    let admin = support::admin(&cluster);
    let apply = async || {
        let nodes = admin.nodes().await?;
        admin
            .apply_client(
                &nodes,
                &desired.registration,
                &desired.agent_user,
                &[password_hash("agent-pw-0123")],
            )
            .await
    };
    apply().await.unwrap();
    let replica = admin.nodes().await.unwrap().replicas[0].clone();
    cluster.kill_node(&replica).await.unwrap();
    cluster.restart_node(&replica).await.unwrap();
    // The Sentinels list it again once they saw it back (a replica they
    // flag down is left out of the apply).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !admin.nodes().await.unwrap().replicas.contains(&replica) {
        assert!(Instant::now() < deadline, "the Sentinels never saw {replica} back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The connection kept to the replica died with it: the apply that finds
    // out fails (the controller retries), the next one reconnects.
    if apply().await.is_err() {
        apply().await.unwrap();
    }
    let agent = Login::new(&desired.agent_user.name, "agent-pw-0123");
    assert!(cluster.connection(&replica, &agent).await.is_ok(), "the agent user is back on {replica}");
}

#[tokio::test]
async fn over_tls_the_agent_user_reaches_every_node_and_a_wrong_ca_says_so() {
    let opts = RedisClusterOptions { tls: Some(ClientAuth::Required), ..RedisClusterOptions::default() };
    let cluster = RedisCluster::start(opts).await.unwrap();
    let desired = orders();
    let admin = support::admin(&cluster);
    let nodes = admin.nodes().await.unwrap();
    assert_eq!(nodes.replicas.len(), 2, "every replica is found through the Sentinels, over TLS");
    admin
        .apply_client(&nodes, &desired.registration, &desired.agent_user, &[password_hash("agent-pw-0123")])
        .await
        .unwrap();
    agent_has_its_rights_everywhere(&cluster, &Login::new(&desired.agent_user.name, "agent-pw-0123")).await;

    let config = support::admin_config(&cluster);
    let other = tokenplane_testkit::pki::TestCa::new("another CA");
    let wrong_ca =
        RedisTls { ca_bundle: Some(other.pem().as_bytes().to_vec()), ..config.tls.clone().unwrap() };
    let error =
        RedisAdmin::new(RedisConfig { tls: Some(wrong_ca), ..config.clone() }).nodes().await.err().unwrap();
    let error = error.to_string();
    assert!(error.contains("UnknownIssuer") && error.contains("--redis-ca-file"), "{error}");
    let no_client = RedisTls { client: None, ..config.tls.clone().unwrap() };
    let error = RedisAdmin::new(RedisConfig { tls: Some(no_client), ..config }).nodes().await.err().unwrap();
    let error = error.to_string();
    assert!(error.contains("CertificateRequired") && error.contains("tls-auth-clients"), "{error}");
}
