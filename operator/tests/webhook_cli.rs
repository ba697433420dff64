//! `tokenplane-operator webhook` as a user runs it: the samples as its
//! manifests, HTTPS on loopback, AdmissionReviews posted by a real client;
//! what is not one gets a 400 or 413; its certificate rotated while
//! admissions stream in, none failing.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokenplane_testkit::free_port;
use tokenplane_testkit::pki::{TestCa, Usage};
use tokio::process::{Child, Command};

const POD_REVIEW: &str = include_str!("fixtures/pod-review.json");

struct Webhook {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn start(ca: &TestCa) -> Webhook {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let samples = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/samples");
    for entry in std::fs::read_dir(samples).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, manifests.join(path.file_name().unwrap())).unwrap();
    }
    let files = ca.loopback(Usage::Server).write(dir.path(), "serving").unwrap();
    let port = free_port().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tokenplane-operator"))
        .arg("webhook")
        .arg("--manifests")
        .arg(&manifests)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert-file")
        .arg(&files.cert)
        .arg("--tls-key-file")
        .arg(&files.key)
        .args([
            "--tls-reload-interval",
            "200ms",
            "--agent-redis-sentinels",
            "redis-sentinel.tokenplane-system.svc:26379",
        ])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let webhook = Webhook { child, url: format!("https://localhost:{port}"), dir };
    let client = trusting(&[ca]);
    let started = Instant::now();
    while client.get(format!("{}/healthz", webhook.url)).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "the webhook never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    webhook
}

/// A client trusting only `cas`, on a new connection for every request.
fn trusting(cas: &[&TestCa]) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().tls_built_in_root_certs(false).pool_max_idle_per_host(0);
    for ca in cas {
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> reqwest::Result<(u16, String)> {
    let reply = client.post(url).header("content-type", "application/json").body(body).send().await?;
    Ok((reply.status().as_u16(), reply.text().await?))
}

#[tokio::test]
async fn the_standalone_webhook_injects_over_https_and_refuses_what_is_not_a_review() {
    let ca = TestCa::new("webhook test CA");
    let webhook = start(&ca).await;
    let client = trusting(&[&ca]);
    let mutate = format!("{}/mutate-pods", webhook.url);
    let (status, body) = post(&client, &mutate, POD_REVIEW.as_bytes().to_vec()).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let review: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (review["apiVersion"].as_str(), review["kind"].as_str()),
        (Some("admission.k8s.io/v1"), Some("AdmissionReview"))
    );
    assert_eq!(review["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(
        (review["response"]["allowed"].as_bool(), review["response"]["patchType"].as_str()),
        (Some(true), Some("JSONPatch"))
    );

    let (status, body) = post(&client, &mutate, b"{\"apiVersion\": 1".to_vec()).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not JSON"), "{body}");
    let (status, _) = post(&client, &mutate, vec![b' '; 5 * 1024 * 1024]).await.unwrap();
    assert_eq!(status, 413);
    let (status, _) = post(&client, &format!("{}/other", webhook.url), b"{}".to_vec()).await.unwrap();
    assert_eq!(status, 404);
    assert!(
        trusting(&[&TestCa::new("another CA")]).get(format!("{}/healthz", webhook.url)).send().await.is_err()
    );
    let metrics = client.get(format!("{}/metrics", webhook.url)).send().await.unwrap().text().await.unwrap();
    for counted in [
        r#"tokenplane_operator_admissions_total{webhook="mutate-pods",outcome="patched"} 1"#,
        r#"tokenplane_operator_admissions_total{webhook="mutate-pods",outcome="bad_request"} 2"#,
        r#"tokenplane_operator_admission_duration_seconds_count{webhook="mutate-pods"} 3"#,
    ] {
        assert!(metrics.contains(counted), "{counted} in {metrics}");
    }
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_failed_admission() {
    let (old, new) = (TestCa::new("old CA"), TestCa::new("new CA"));
    let webhook = start(&old).await;
    let both = trusting(&[&old, &new]);
    let only_new = trusting(&[&new]);
    let mutate = format!("{}/mutate-pods", webhook.url);
    let (mut sent, mut rotated_at) = (0, None);
    let started = Instant::now();
    loop {
        let (status, body) =
            post(&both, &mutate, POD_REVIEW.as_bytes().to_vec()).await.expect("no admission fails");
        assert_eq!(status, 200, "{body}");
        sent += 1;
        if sent == 50 {
            new.loopback(Usage::Server).write(webhook.dir.path(), "serving").unwrap();
            rotated_at = Some(Instant::now());
        }
        if rotated_at.is_some() && only_new.get(format!("{}/healthz", webhook.url)).send().await.is_ok() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the new certificate was never served");
    }
    eprintln!(
        "{sent} admissions, the new certificate served {:?} after the files changed",
        rotated_at.unwrap().elapsed()
    );
    for _ in 0..20 {
        let (status, _) = post(&only_new, &mutate, POD_REVIEW.as_bytes().to_vec()).await.unwrap();
        assert_eq!(status, 200);
    }
}
