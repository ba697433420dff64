//! The harness against real `redis-server` and `redis-sentinel` processes.
//! Each test starts its own cluster on its own ports and temp dirs, so the
//! tests run in parallel.

use std::fmt::Display;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tokenplane_testkit::{ClientAuth, Credentials, HarnessError, RedisCluster, RedisClusterOptions};

async fn start() -> RedisCluster {
    let started = Instant::now();
    let cluster = RedisCluster::start(RedisClusterOptions::default()).await.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("cluster ready in {:?}: {cluster:?}", started.elapsed());
    cluster
}

/// Unwraps, or panics with the error and every process's log.
trait OrLogs<T> {
    fn or_logs(self, cluster: &RedisCluster, what: &str) -> T;
}

impl<T, E: Display> OrLogs<T> for Result<T, E> {
    fn or_logs(self, cluster: &RedisCluster, what: &str) -> T {
        self.unwrap_or_else(|e| panic!("{what}: {e}\n\nlogs:\n{}", cluster.logs()))
    }
}

async fn admin(cluster: &RedisCluster, addr: &str) -> MultiplexedConnection {
    cluster.admin_connection(addr).await.or_logs(cluster, "admin connection")
}

async fn query<T: redis::FromRedisValue>(
    con: &mut MultiplexedConnection,
    cmd: &mut redis::Cmd,
) -> redis::RedisResult<T> {
    cmd.query_async(con).await
}

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn writes_on_the_master_are_readable_on_the_replicas() {
    let cluster = start().await;
    assert_eq!(cluster.master_name(), "tokenplane");
    assert_eq!(cluster.sentinel_addrs().len(), 3);
    let nodes = cluster.node_addrs();
    assert_eq!(nodes.len(), 3);
    let master = cluster.master_addr().await.or_logs(&cluster, "master_addr");
    assert_eq!(master, nodes[0], "the first node starts as master");

    let mut con = admin(&cluster, &master).await;
    query::<()>(&mut con, redis::cmd("SET").arg("tp:greeting").arg("hello")).await.or_logs(&cluster, "SET");
    let acked: i64 = query(&mut con, redis::cmd("WAIT").arg(2).arg(1000)).await.or_logs(&cluster, "WAIT");
    assert_eq!(acked, 2, "both replicas acknowledge the write");

    for replica in &nodes[1..] {
        let mut con = admin(&cluster, replica).await;
        let value: String =
            query(&mut con, redis::cmd("GET").arg("tp:greeting")).await.or_logs(&cluster, "GET");
        assert_eq!(value, "hello", "on replica {replica}");
        let role: Vec<redis::Value> =
            query(&mut con, &mut redis::cmd("ROLE")).await.or_logs(&cluster, "ROLE");
        assert_eq!(role.first(), Some(&redis::Value::BulkString(b"slave".to_vec())), "{replica}");
    }
    let denials = cluster.acl_denials().await.or_logs(&cluster, "ACL LOG");
    assert!(denials.is_empty(), "replication and Sentinel users lack nothing: {denials:#?}");
}

#[tokio::test]
async fn the_default_user_cannot_authenticate_anywhere() {
    let cluster = start().await;
    let admin_password = cluster.admin_credentials().password;
    for addr in cluster.node_addrs().into_iter().chain(cluster.sentinel_addrs()) {
        // A connection that never AUTHs runs nothing.
        let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.or_logs(&cluster, "plain connection");
        let err = query::<String>(&mut con, &mut redis::cmd("PING")).await.expect_err("PING without AUTH");
        assert_eq!(err.code(), Some("NOAUTH"), "{addr}: {err}");
        // A command the process knows (Redis checks that before auth: a
        // Sentinel answers GET with "unknown command" even unauthenticated).
        let mut known = if cluster.sentinel_addrs().contains(&addr) {
            redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg("tokenplane").to_owned()
        } else {
            redis::cmd("GET").arg("k").to_owned()
        };
        let err = query::<()>(&mut con, &mut known).await.expect_err("a command without AUTH");
        assert_eq!(err.code(), Some("NOAUTH"), "{addr}: {err}");

        // AUTH as default fails, whatever the password, even the admin's.
        for password in ["", "nopass", admin_password.as_str()] {
            let err = query::<()>(&mut con, redis::cmd("AUTH").arg("default").arg(password))
                .await
                .expect_err("AUTH default");
            assert_eq!(err.code(), Some("WRONGPASS"), "{addr}: {err}");
            let err =
                query::<()>(&mut con, redis::cmd("AUTH").arg(password)).await.expect_err("AUTH <password>");
            assert_eq!(err.code(), Some("WRONGPASS"), "{addr}: {err}");
        }

        // The admin password works for admin only.
        let wrong = Credentials::new("admin", "not-the-password");
        let err = cluster.connection(&addr, &wrong).await.expect_err("wrong admin password");
        assert!(err.to_string().contains("uthentication"), "{addr}: {err}");
        let mut con = admin(&cluster, &addr).await;
        let pong: String = query(&mut con, &mut redis::cmd("PING")).await.or_logs(&cluster, "PING as admin");
        assert_eq!(pong, "PONG");
    }
}

#[tokio::test]
async fn add_user_creates_a_user_on_every_node() {
    let cluster = start().await;
    cluster
        .add_user("issuer", "issuer-password", "~tp:* +get +set +ping (~ro:* +get)")
        .await
        .or_logs(&cluster, "add_user");
    let issuer = Credentials::new("issuer", "issuer-password");

    let master = cluster.master_addr().await.or_logs(&cluster, "master_addr");
    let mut con = cluster.connection(&master, &issuer).await.or_logs(&cluster, "connect as issuer");
    query::<()>(&mut con, redis::cmd("SET").arg("tp:code").arg("abc"))
        .await
        .or_logs(&cluster, "SET as issuer");
    let mut admin_con = admin(&cluster, &master).await;
    let acked: i64 =
        query(&mut admin_con, redis::cmd("WAIT").arg(2).arg(1000)).await.or_logs(&cluster, "WAIT");
    assert_eq!(acked, 2);

    for addr in cluster.node_addrs() {
        // Through the public connection info, as the code under test would.
        let client = redis::Client::open(issuer.connection_info(&addr).unwrap()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.or_logs(&cluster, "connect as issuer");
        let value: String = query(&mut con, redis::cmd("GET").arg("tp:code")).await.or_logs(&cluster, "GET");
        assert_eq!(value, "abc", "{addr}");
        let ro: Option<String> =
            query(&mut con, redis::cmd("GET").arg("ro:x")).await.or_logs(&cluster, "selector");
        assert_eq!(ro, None, "{addr}: the selector allows GET on ro:*");
        let err = query::<Option<String>>(&mut con, redis::cmd("GET").arg("other:x")).await.expect_err("key");
        assert_eq!(err.code(), Some("NOPERM"), "{addr}: {err}");
        let err = query::<()>(&mut con, redis::cmd("SET").arg("ro:x").arg("1")).await.expect_err("SET ro:x");
        assert_eq!(err.code(), Some("NOPERM"), "{addr}: {err}");
        let err = query::<()>(&mut con, &mut redis::cmd("FLUSHALL")).await.expect_err("FLUSHALL");
        assert_eq!(err.code(), Some("NOPERM"), "{addr}: {err}");
    }
}

#[tokio::test]
async fn failover_keeps_acknowledged_writes_and_the_old_master_rejoins_as_replica() {
    let cluster = start().await;
    let old = cluster.master_addr().await.or_logs(&cluster, "master_addr");
    let mut con = admin(&cluster, &old).await;
    query::<()>(&mut con, redis::cmd("SET").arg("tp:before").arg("1")).await.or_logs(&cluster, "SET");
    let acked: i64 = query(&mut con, redis::cmd("WAIT").arg(1).arg(1000)).await.or_logs(&cluster, "WAIT");
    assert!(acked >= 1, "a replica acknowledges the write");

    let killed_at = Instant::now();
    let killed = cluster.kill_master().await.or_logs(&cluster, "kill_master");
    assert_eq!(killed, old);
    let new = cluster.wait_for_failover(&old, Duration::from_secs(10)).await.or_logs(&cluster, "failover");
    let took = killed_at.elapsed();
    eprintln!("failover from {old} to {new} in {took:?}");
    assert_ne!(new, old);
    assert!(took < Duration::from_secs(10), "failover took {took:?}");

    let mut con = admin(&cluster, &new).await;
    let value: String = query(&mut con, redis::cmd("GET").arg("tp:before")).await.or_logs(&cluster, "GET");
    assert_eq!(value, "1", "the acknowledged write survives the failover");
    query::<()>(&mut con, redis::cmd("SET").arg("tp:after").arg("2")).await.or_logs(&cluster, "SET on new");

    let restarted_at = Instant::now();
    cluster.restart_node(&old).await.or_logs(&cluster, "restart_node");
    eprintln!("old master back as replica in {:?}", restarted_at.elapsed());
    let mut old_con = admin(&cluster, &old).await;
    let role: Vec<redis::Value> =
        query(&mut old_con, &mut redis::cmd("ROLE")).await.or_logs(&cluster, "ROLE");
    assert_eq!(role.first(), Some(&redis::Value::BulkString(b"slave".to_vec())), "{role:?}");
    let info: String =
        query(&mut old_con, redis::cmd("INFO").arg("replication")).await.or_logs(&cluster, "INFO");
    let new_port = new.rsplit_once(':').unwrap().1;
    assert!(info.contains(&format!("master_port:{new_port}")), "{info}");
    let after = eventually(Duration::from_secs(5), || {
        let mut old_con = old_con.clone();
        async move {
            query::<Option<String>>(&mut old_con, redis::cmd("GET").arg("tp:after")).await.ok().flatten()
        }
    })
    .await;
    assert_eq!(after.as_deref(), Some("2"), "the old master replicates the new one");

    // Every Sentinel sees the old master as a healthy replica of the new one.
    let sentinel_creds = cluster.sentinel_credentials();
    for sentinel in cluster.sentinel_addrs() {
        let seen = eventually(Duration::from_secs(10), || {
            let (cluster, sentinel, creds, old) = (&cluster, &sentinel, &sentinel_creds, &old);
            async move {
                let mut con = cluster.connection(sentinel, creds).await.ok()?;
                let replicas: Vec<Vec<String>> =
                    query(&mut con, redis::cmd("SENTINEL").arg("REPLICAS").arg("tokenplane")).await.ok()?;
                replicas
                    .iter()
                    .any(|r| r.join(" ").contains(&format!("name {old} ")) && r.contains(&"slave".to_owned()))
                    .then_some(())
            }
        })
        .await;
        assert!(seen.is_some(), "{sentinel} lists {old} as a healthy replica\n{}", cluster.logs());
    }

    let denials = cluster.acl_denials().await.or_logs(&cluster, "ACL LOG");
    assert!(
        denials.is_empty(),
        "Sentinel and replication users had every permission they needed: {denials:#?}"
    );
}

#[tokio::test]
async fn a_paused_node_is_unreachable_until_resumed() {
    let cluster = start().await;
    let replica = cluster.node_addrs()[1].clone();
    cluster.pause_node(&replica).or_logs(&cluster, "pause_node");

    let asked_at = Instant::now();
    let reply = match cluster.admin_connection(&replica).await {
        Ok(mut con) => query::<String>(&mut con, &mut redis::cmd("PING")).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(reply.is_err(), "a paused node answers nothing: {reply:?}");
    assert!(asked_at.elapsed() < Duration::from_secs(5), "the harness's timeouts apply");

    let paused = cluster.add_user("late", "pw", "+ping").await.expect_err("add_user with a paused node");
    assert!(matches!(paused, HarnessError::WrongState { state: "paused", .. }), "{paused}");

    let sentinel = cluster.sentinel_addrs()[0].clone();
    let creds = cluster.sentinel_credentials();
    let flags_of_replica = || {
        let (cluster, sentinel, creds, replica) = (&cluster, &sentinel, &creds, &replica);
        async move {
            let mut con = cluster.connection(sentinel, creds).await.ok()?;
            let replicas: Vec<Vec<String>> =
                query(&mut con, redis::cmd("SENTINEL").arg("REPLICAS").arg("tokenplane")).await.ok()?;
            let entry = replicas.into_iter().find(|r| r.join(" ").contains(&format!("name {replica} ")))?;
            let at = entry.iter().position(|f| f == "flags")?;
            entry.get(at + 1).cloned()
        }
    };
    let down = eventually(Duration::from_secs(5), || async {
        flags_of_replica().await.filter(|f| f.contains("s_down"))
    })
    .await;
    assert!(down.is_some(), "the Sentinel marks the paused replica down\n{}", cluster.logs());

    cluster.resume_node(&replica).or_logs(&cluster, "resume_node");
    let mut con = admin(&cluster, &replica).await;
    let pong: String = query(&mut con, &mut redis::cmd("PING")).await.or_logs(&cluster, "PING after resume");
    assert_eq!(pong, "PONG");
    let up =
        eventually(Duration::from_secs(5), || async { flags_of_replica().await.filter(|f| f == "slave") })
            .await;
    assert!(up.is_some(), "the Sentinel sees the replica up again\n{}", cluster.logs());

    // Misuse gets errors that say what to do.
    let running = cluster.restart_node(&replica).await.expect_err("restart a running node");
    assert!(running.to_string().contains("kill it first"), "{running}");
    let unknown = cluster.kill_node("127.0.0.1:1").await.expect_err("unknown address");
    assert!(matches!(unknown, HarnessError::UnknownAddr { .. }), "{unknown}");
}

#[tokio::test]
async fn the_redis_crate_sentinel_client_finds_the_master_with_these_credentials() {
    let cluster = start().await;
    cluster
        .add_user("probe", "probe-password", "resetkeys -@all +ping +role")
        .await
        .or_logs(&cluster, "add_user");
    let sentinels = cluster.sentinel_addrs().into_iter().map(|a| {
        let (host, port) = a.rsplit_once(':').unwrap();
        redis::ConnectionAddr::Tcp(host.to_owned(), port.parse().unwrap())
    });
    let creds = cluster.sentinel_credentials();
    let mut client = redis::sentinel::SentinelClientBuilder::new(
        sentinels,
        cluster.master_name(),
        redis::sentinel::SentinelServerType::Master,
    )
    .unwrap()
    .set_client_to_sentinel_username(&creds.username)
    .set_client_to_sentinel_password(&creds.password)
    .set_client_to_redis_username("probe")
    .set_client_to_redis_password("probe-password")
    .build()
    .unwrap();
    let master = client.async_get_client().await.or_logs(&cluster, "SentinelClient::async_get_client");
    assert_eq!(master.get_connection_info().addr().to_string(), cluster.master_addr().await.unwrap());
    let mut con = master.get_multiplexed_async_connection().await.or_logs(&cluster, "connect as probe");
    let role: Vec<redis::Value> = query(&mut con, &mut redis::cmd("ROLE")).await.or_logs(&cluster, "ROLE");
    assert_eq!(role.first(), Some(&redis::Value::BulkString(b"master".to_vec())));

    let denials = cluster.acl_denials().await.or_logs(&cluster, "ACL LOG");
    assert!(denials.is_empty(), "sentinel-client had every permission the redis crate needs: {denials:#?}");
}

#[tokio::test]
async fn a_start_that_times_out_says_what_it_waited_for_and_shows_the_logs() {
    let opts =
        RedisClusterOptions { ready_timeout: Duration::from_millis(300), ..RedisClusterOptions::default() };
    let err = RedisCluster::start(opts).await.expect_err("Sentinels cannot be ready in 300 ms");
    let message = err.to_string();
    assert!(matches!(err, HarnessError::Timeout { .. }), "{message}");
    assert!(message.contains("waiting until") && message.contains("==> redis-"), "{message}");

    let opts = RedisClusterOptions { replicas: 0, ..RedisClusterOptions::default() };
    let err = RedisCluster::start(opts).await.expect_err("no replica");
    assert!(err.to_string().contains("replicas must be at least 1"), "{err}");
}

async fn start_tls(auth: ClientAuth) -> RedisCluster {
    let opts = RedisClusterOptions { tls: Some(auth), ..RedisClusterOptions::default() };
    let started = Instant::now();
    let cluster = RedisCluster::start(opts).await.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("TLS cluster ready in {:?}: {cluster:?}", started.elapsed());
    cluster
}

/// A TLS client of `addr` verifying the cluster's CA, with `client_cert`
/// (the cluster's client pair) or none.
async fn tls_connection(
    cluster: &RedisCluster,
    addr: &str,
    client_cert: bool,
) -> redis::RedisResult<MultiplexedConnection> {
    let tls = cluster.tls().expect("a TLS cluster");
    let (host, port) = addr.rsplit_once(':').unwrap();
    let addr = redis::ConnectionAddr::TcpTls {
        host: host.to_owned(),
        port: port.parse().unwrap(),
        insecure: false,
        tls_params: None,
    };
    let admin = cluster.admin_credentials();
    let info = redis::IntoConnectionInfo::into_connection_info(addr)?.set_redis_settings(
        redis::RedisConnectionInfo::default().set_username(&admin.username).set_password(&admin.password),
    );
    let client_tls = client_cert.then(|| redis::ClientTlsConfig {
        client_cert: std::fs::read(&tls.client.cert).unwrap(),
        client_key: std::fs::read(&tls.client.key).unwrap(),
    });
    let certs = redis::TlsCertificates { client_tls, root_cert: Some(std::fs::read(&tls.ca_file).unwrap()) };
    let config = redis::AsyncConnectionConfig::new().set_connection_timeout(Some(Duration::from_secs(1)));
    redis::Client::build_with_tls(info, certs)?.get_multiplexed_async_connection_with_config(&config).await
}

#[tokio::test]
async fn a_tls_cluster_serves_only_tls_requires_client_certificates_and_fails_over() {
    let cluster = start_tls(ClientAuth::Required).await;
    let old = cluster.master_addr().await.or_logs(&cluster, "master_addr over TLS");
    let plain = redis::Client::open(cluster.admin_credentials().connection_info(&old).unwrap()).unwrap();
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)));
    assert!(plain.get_multiplexed_async_connection_with_config(&config).await.is_err(), "no plain TCP");
    assert!(tls_connection(&cluster, &old, false).await.is_err(), "no TLS without a client certificate");
    let mut con =
        tls_connection(&cluster, &old, true).await.or_logs(&cluster, "TLS with a client certificate");
    query::<()>(&mut con, redis::cmd("SET").arg("tp:before").arg("1")).await.or_logs(&cluster, "SET");
    let acked: i64 = query(&mut con, redis::cmd("WAIT").arg(2).arg(1000)).await.or_logs(&cluster, "WAIT");
    assert_eq!(acked, 2, "both replicas replicate over TLS");

    cluster.kill_master().await.or_logs(&cluster, "kill_master");
    let new = cluster.wait_for_failover(&old, Duration::from_secs(10)).await.or_logs(&cluster, "failover");
    let mut con = admin(&cluster, &new).await;
    let value: String = query(&mut con, redis::cmd("GET").arg("tp:before")).await.or_logs(&cluster, "GET");
    assert_eq!(value, "1", "the acknowledged write survives a failover over TLS");
    query::<()>(&mut con, redis::cmd("SET").arg("tp:after").arg("2")).await.or_logs(&cluster, "SET on new");
    cluster.restart_node(&old).await.or_logs(&cluster, "restart_node: the old master rejoins over TLS");
    let acked: i64 = query(&mut con, redis::cmd("WAIT").arg(2).arg(1000)).await.or_logs(&cluster, "WAIT");
    assert_eq!(acked, 2, "the new master's replicas, the old master among them, follow over TLS");
}

#[tokio::test]
async fn an_optional_client_certificate_may_be_left_out() {
    let cluster = start_tls(ClientAuth::Optional).await;
    let master = cluster.master_addr().await.or_logs(&cluster, "master_addr");
    let mut con =
        tls_connection(&cluster, &master, false).await.or_logs(&cluster, "TLS without a certificate");
    let pong: String = query(&mut con, &mut redis::cmd("PING")).await.or_logs(&cluster, "PING");
    assert_eq!(pong, "PONG");
}
