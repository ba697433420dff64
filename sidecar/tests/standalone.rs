//! The real binary, started the way the README says, on config/samples.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
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
    Command::new(env!("CARGO_BIN_EXE_tokenplane-sidecar"))
        .args(["issuer", "--listen", "127.0.0.1:0", "--log-format", "json", "--manifests"])
        .arg(manifests)
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
