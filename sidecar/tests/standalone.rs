//! The real binary, started the way the README says, on config/samples;
//! and two of them on one real Redis Sentinel cluster.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokenplane_api::signing::KeyPair;
use tokenplane_api::tokenpolicy::SigningAlgorithm;
use tokenplane_testkit::pki::{TestCa, Usage, window};
use tokenplane_testkit::{ClientAuth, RedisCluster};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/samples")
}

fn sample_secret() -> String {
    let text = std::fs::read_to_string(samples().join("oauth2client-credentials.yaml")).unwrap();
    let secret: Value = serde_norway::from_str(&text).unwrap();
    secret["stringData"]["client_secret"].as_str().unwrap().to_owned()
}

fn issuer(manifests: &std::path::Path) -> Child {
    issuer_with(manifests, &[])
}

/// The issuer on `manifests`, on a free loopback port unless `args` give
/// `--listen`.
fn issuer_with(manifests: &std::path::Path, args: &[String]) -> Child {
    let listen = match args.iter().any(|a| a == "--listen") {
        true => &[][..],
        false => &["--listen", "127.0.0.1:0"][..],
    };
    Command::new(env!("CARGO_BIN_EXE_tokenplane-sidecar"))
        .args(["issuer", "--log-format", "json", "--manifests"])
        .arg(manifests)
        .args(listen)
        .args(args)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Reads JSON log lines until the ready line, and returns the address.
async fn ready_address(logs: &mut Lines<BufReader<ChildStderr>>, seen: &mut String) -> String {
    let wait = async {
        while let Some(line) = logs.next_line().await.unwrap() {
            seen.push_str(&line);
            let entry: Value = serde_json::from_str(&line).unwrap();
            if entry["fields"]["message"] == "standalone issuer ready" {
                return entry["fields"]["listen"].as_str().unwrap().to_owned();
            }
        }
        panic!("issuer exited before it was ready: {seen}");
    };
    tokio::time::timeout(Duration::from_secs(30), wait).await.expect("issuer ready within 30s")
}

#[tokio::test]
async fn the_readme_flow_serves_tokens_and_never_logs_secrets() {
    let mut child = issuer(&samples());
    let mut logs = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let addr = ready_address(&mut logs, &mut seen).await;
    let secret = sample_secret();
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("http://{addr}/oauth2/token"))
        .basic_auth("demo.default", Some(&secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["scope"], "orders.read");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let revoke = http
        .post(format!("http://{addr}/oauth2/revoke"))
        .basic_auth("demo.default", Some(&secret))
        .form(&[("token", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 200);

    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "SIGTERM is a clean shutdown: {status}");
    while let Some(line) = logs.next_line().await.unwrap() {
        seen.push_str(&line);
    }
    assert!(seen.contains("token revoked"), "{seen}");
    assert!(!seen.contains(&secret) && !seen.contains(&token), "a secret reached the logs");
}

#[tokio::test]
async fn a_bad_manifest_stops_start_up_with_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(samples().join("oauth2client.yaml")).unwrap();
    std::fs::write(dir.path().join("client.yaml"), text.replace("[client_credentials]", "[password]"))
        .unwrap();
    for sample in ["tokenpolicy.yaml", "oauth2client-credentials.yaml"] {
        std::fs::copy(samples().join(sample), dir.path().join(sample)).unwrap();
    }
    let out = issuer(dir.path()).wait_with_output().await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("client.yaml (document 1)"), "{stderr}");
    assert!(stderr.contains("spec.grantTypes[0]: unknown variant `password`"), "{stderr}");
}

/// The flags that put an issuer on `cluster` as its issuer ACL user; the
/// password files live in `dir`.
fn redis_flags(cluster: &RedisCluster, dir: &Path) -> Vec<String> {
    let sentinel = cluster.sentinel_credentials();
    let (password, sentinel_password) = (dir.join("redis-password"), dir.join("sentinel-password"));
    std::fs::write(&password, support::redis::ISSUER_PASSWORD).unwrap();
    std::fs::write(&sentinel_password, &sentinel.password).unwrap();
    let flags = [
        ("--redis-sentinels", cluster.sentinel_addrs().join(",")),
        ("--redis-master", cluster.master_name().to_owned()),
        ("--redis-username", "issuer".to_owned()),
        ("--redis-password-file", password.display().to_string()),
        ("--redis-sentinel-username", sentinel.username),
        ("--redis-sentinel-password-file", sentinel_password.display().to_string()),
        ("--issuer", "http://issuer.test".to_owned()),
    ];
    flags.into_iter().flat_map(|(flag, value)| [flag.to_owned(), value]).collect()
}

/// The flags that put an issuer on a TLS `cluster`: its CA and client certificate.
fn redis_tls_flags(cluster: &RedisCluster) -> Vec<String> {
    let tls = cluster.tls().expect("a TLS cluster");
    let [ca, cert, key] = [tls.ca_file, tls.client.cert, tls.client.key].map(|p| p.display().to_string());
    strings(&[
        "--redis-tls",
        "--redis-ca-file",
        &ca,
        "--redis-client-cert-file",
        &cert,
        "--redis-client-key-file",
        &key,
    ])
}

/// POSTs `form` to `path` of the plain-HTTP issuer at `addr` as the sample
/// client: the status and the JSON body (null when there is none).
async fn as_sample_client(
    http: &reqwest::Client,
    addr: &str,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let resp = http
        .post(format!("http://{addr}{path}"))
        .basic_auth("demo.default", Some(sample_secret()))
        .form(form)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

/// The samples, plus the policy's keys Secret when `keys` is set.
fn samples_dir(keys: Option<&KeyPair>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(samples()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    if let Some(key) = keys {
        let pem = key.to_pem().replace('\n', "\n    ");
        let secret = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: default-signing-keys}}\nstringData:\n  \
             active: k1\n  k1.pem: |\n    {pem}\n"
        );
        std::fs::write(dir.path().join("signing-keys.yaml"), secret).unwrap();
    }
    dir
}

#[tokio::test]
async fn an_issuer_on_redis_without_a_keys_secret_refuses_to_start() {
    let cluster = support::redis::cluster().await;
    let dir = samples_dir(None);
    let out = issuer_with(dir.path(), &redis_flags(&cluster, dir.path())).wait_with_output().await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no signing keys Secret default-signing-keys in"), "{stderr}");
    assert!(stderr.contains("must sign with the same keys"), "{stderr}");
}

#[tokio::test]
async fn two_issuers_on_one_redis_with_the_keys_secret_honour_each_others_tokens() {
    let cluster = support::redis::cluster().await;
    let dir = samples_dir(Some(&KeyPair::generate(SigningAlgorithm::EdDSA).unwrap()));
    let flags = redis_flags(&cluster, dir.path());
    let mut addrs = Vec::new();
    let mut running = Vec::new();
    for _ in 0..2 {
        let mut child = issuer_with(dir.path(), &flags);
        let mut logs = BufReader::new(child.stderr.take().unwrap()).lines();
        addrs.push(ready_address(&mut logs, &mut String::new()).await);
        running.push((child, logs));
    }
    let (a, b) = (&addrs[0], &addrs[1]);
    let http = reqwest::Client::new();
    let call =
        async |addr: &str, path: &str, form: &[(&str, &str)]| as_sample_client(&http, addr, path, form).await;
    let (status, body) = call(a, "/oauth2/token", &[("grant_type", "client_credentials")]).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(call(b, "/oauth2/introspect", &[("token", token)]).await.1["active"], true);
    assert_eq!(call(b, "/oauth2/revoke", &[("token", token)]).await.0, 200);
    assert_eq!(
        call(a, "/oauth2/introspect", &[("token", token)]).await.1["active"],
        false,
        "a revocation at one issuer holds at the other"
    );
    let jwks = async |addr: &str| {
        http.get(format!("http://{addr}/.well-known/jwks.json")).send().await.unwrap().text().await.unwrap()
    };
    assert_eq!(jwks(a).await, jwks(b).await);
}

/// The operator's rotation of an issuer's Redis password, as Redis and the
/// issuer see it: the new password joins the user on every node, the
/// mounted Secret (the password file) changes, the old password leaves.
/// Open connections stay logged in; the ones opened afterwards (here after
/// Redis dropped them all) must log in with the file as it is now.
#[tokio::test]
async fn an_issuer_logs_in_with_a_rotated_password_file_without_a_restart() {
    let cluster = support::redis::cluster().await;
    let dir = samples_dir(Some(&KeyPair::generate(SigningAlgorithm::EdDSA).unwrap()));
    let mut child = issuer_with(dir.path(), &redis_flags(&cluster, dir.path()));
    let mut logs = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = ready_address(&mut logs, &mut String::new()).await;
    let http = reqwest::Client::new();
    let token = async || {
        as_sample_client(&http, &addr, "/oauth2/token", &[("grant_type", "client_credentials")]).await
    };
    // Every connection the issuer keeps is open: a token, a revocation
    // (durable) and an introspection that sees it.
    let first = token().await.1["access_token"].as_str().unwrap().to_owned();
    assert_eq!(as_sample_client(&http, &addr, "/oauth2/revoke", &[("token", &first)]).await.0, 200);
    let seen = as_sample_client(&http, &addr, "/oauth2/introspect", &[("token", &first)]).await;
    assert_eq!(seen.1["active"], false);

    let on_every_node = async |args: &[&str]| {
        for node in cluster.node_addrs() {
            let mut admin = cluster.admin_connection(&node).await.unwrap();
            let _: () = redis::cmd("ACL").arg(args).query_async(&mut admin).await.unwrap();
        }
    };
    let rotated = "the-rotated-issuer-password";
    on_every_node(&["SETUSER", "issuer", &format!(">{rotated}")]).await;
    std::fs::write(dir.path().join("redis-password"), rotated).unwrap();
    on_every_node(&["SETUSER", "issuer", &format!("<{}", support::redis::ISSUER_PASSWORD)]).await;
    let open = token().await.1["access_token"].as_str().unwrap().to_owned();
    let revoked = as_sample_client(&http, &addr, "/oauth2/revoke", &[("token", &open)]).await;
    assert_eq!(revoked.0, 200, "open connections stay logged in");

    let master = cluster.master_addr().await.unwrap();
    let mut admin = cluster.admin_connection(&master).await.unwrap();
    let killed: u64 =
        redis::cmd("CLIENT").arg(&["KILL", "USER", "issuer"]).query_async(&mut admin).await.unwrap();
    assert!(killed >= 1, "the issuer was connected");
    // A revocation is a durable write: it needs the master, on a new connection.
    let access = token().await.1["access_token"].as_str().unwrap().to_owned();
    let revoke = async || as_sample_client(&http, &addr, "/oauth2/revoke", &[("token", &access)]).await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let (status, body) = revoke().await;
        statuses.push(status);
        if status == 200 {
            break;
        }
        assert_eq!(body["error"], "temporarily_unavailable", "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(statuses.last(), Some(&200), "the issuer came back on the new password: {statuses:?}");
    let introspected = as_sample_client(&http, &addr, "/oauth2/introspect", &[("token", &access)]).await;
    assert_eq!(introspected.1["active"], false, "the revocation is in Redis");
    let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut admin).await.unwrap();
    assert!(clients.contains(" user=issuer "), "logged in again as issuer: {clients}");
    let old = tokenplane_testkit::redis::Credentials::new("issuer", support::redis::ISSUER_PASSWORD);
    assert!(cluster.connection(&master, &old).await.is_err(), "the old password is gone");
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// Waits for `child` to exit and returns its stderr.
async fn refusal(child: Child) -> String {
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
    assert!(!out.status.success(), "it started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn plain_http_off_loopback_is_refused_unless_insecure_http_is_given() {
    let stderr = refusal(issuer_with(&samples(), &strings(&["--listen", "0.0.0.0:0"]))).await;
    assert!(stderr.contains("refusing to serve plain HTTP on 0.0.0.0:0"), "{stderr}");
    assert!(stderr.contains("--tls-cert-file"), "{stderr}");

    let mut child = issuer_with(&samples(), &strings(&["--listen", "0.0.0.0:0", "--insecure-http"]));
    let mut logs = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    ready_address(&mut logs, &mut seen).await;
    assert!(seen.contains("serving PLAIN HTTP off loopback"), "{seen}");
}

#[tokio::test]
async fn an_expired_certificate_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("start-up CA");
    let long_ago = window(Duration::from_secs(7200), Duration::ZERO).0;
    let an_hour_ago = window(Duration::from_secs(3600), Duration::ZERO).0;
    let files = ca
        .leaf_valid(&["127.0.0.1"], Usage::Server, (long_ago, an_hour_ago))
        .write(dir.path(), "tls")
        .unwrap();
    let args = [
        "--tls-cert-file".to_owned(),
        files.cert.display().to_string(),
        "--tls-key-file".to_owned(),
        files.key.display().to_string(),
    ];
    let stderr = refusal(issuer_with(&samples(), &args)).await;
    assert!(stderr.contains("cannot serve HTTPS") && stderr.contains("expired at unix time"), "{stderr}");
}

/// The binary follows its certificate files: a client trusting only the
/// second CA fails before the swap and succeeds after it.
#[tokio::test]
async fn the_binary_serves_a_renewed_certificate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (TestCa::new("old CA"), TestCa::new("new CA"));
    let files = old_ca.loopback(Usage::Server).write(dir.path(), "tls").unwrap();
    let args = [
        "--tls-cert-file".to_owned(),
        files.cert.display().to_string(),
        "--tls-key-file".to_owned(),
        files.key.display().to_string(),
        "--tls-reload-interval".to_owned(),
        "100ms".to_owned(),
    ];
    let mut child = issuer_with(&samples(), &args);
    let mut logs = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = ready_address(&mut logs, &mut String::new()).await;
    let trusting = |ca: &TestCa| {
        let root = reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap();
        reqwest::Client::builder().tls_built_in_root_certs(false).add_root_certificate(root).build().unwrap()
    };
    let url = format!("https://{addr}/.well-known/oauth-authorization-server");
    let metadata: Value = trusting(&old_ca).get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(metadata["issuer"], format!("https://{addr}"), "the default issuer URL is https");
    assert!(trusting(&new_ca).get(&url).send().await.is_err(), "served by the old CA only");

    new_ca.loopback(Usage::Server).write(dir.path(), "tls").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while trusting(&new_ca).get(&url).send().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the renewed certificate was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_agent_refuses_to_send_its_secret_over_plain_http_off_loopback() {
    let credentials = tempfile::tempdir().unwrap();
    let agent = Command::new(env!("CARGO_BIN_EXE_tokenplane-sidecar"))
        .args(["agent", "--issuer", "http://issuer.example", "--redis-sentinels", "127.0.0.1:1"])
        .arg("--credentials-dir")
        .arg(credentials.path())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = refusal(agent).await;
    assert!(
        stderr.contains("refusing to send the client secret to http://issuer.example over plain HTTP"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_issuer_on_redis_over_tls_serves_and_a_bad_tls_file_stops_start_up() {
    let cluster = support::redis::tls_cluster(ClientAuth::Required).await;
    let dir = samples_dir(Some(&KeyPair::generate(SigningAlgorithm::EdDSA).unwrap()));
    let flags = [redis_flags(&cluster, dir.path()), redis_tls_flags(&cluster)].concat();
    let mut child = issuer_with(dir.path(), &flags);
    let mut logs = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = ready_address(&mut logs, &mut String::new()).await;
    let http = reqwest::Client::new();
    let post = async |path: &str, form: &[(&str, &str)]| as_sample_client(&http, &addr, path, form).await;
    let (status, body) = post("/oauth2/token", &[("grant_type", "client_credentials")]).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(post("/oauth2/revoke", &[("token", token)]).await.0, 200, "a durable write to Redis over TLS");
    assert_eq!(post("/oauth2/introspect", &[("token", token)]).await.1["active"], false);

    // A key where the CA bundle belongs.
    let key = cluster.tls().unwrap().client.key.display().to_string();
    let mut bad = flags.clone();
    let at = bad.iter().position(|f| f == "--redis-ca-file").unwrap() + 1;
    bad[at] = key.clone();
    let stderr = refusal(issuer_with(dir.path(), &bad)).await;
    assert!(stderr.contains(&format!("--redis-ca-file {key}: holds no PEM certificate")), "{stderr}");
}
