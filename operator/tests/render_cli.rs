//! `tokenplane-operator render` as a user runs it: what it cannot render is
//! said on stderr, never dropped in silence.

use std::process::Command;

fn render(file: &str) -> std::process::Output {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/samples/").to_owned() + file;
    Command::new(env!("CARGO_BIN_EXE_tokenplane-operator")).args(["render", "-f", &path]).output().unwrap()
}

#[test]
fn a_cluster_renders_as_a_preview_and_says_what_the_operator_does_beyond_it() {
    let out = render("redissentinelcluster.yaml");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.matches("kind: StatefulSet").count(), 2, "{stdout}");
    assert!(
        stderr.contains("RedisSentinelCluster tokenplane: the operator applies these objects, rotates"),
        "{stderr}"
    );
    assert!(!stderr.contains("not acted on") && !stdout.contains("redis-tls"), "{stderr}");
}

#[test]
fn a_cluster_with_tls_renders_its_certificate_as_a_placeholder() {
    let sample = include_str!("../../config/samples/redissentinelcluster.yaml");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tls.yaml");
    std::fs::write(&path, format!("{sample}  tls:\n    enabled: true\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tokenplane-operator"))
        .args(["render", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("name: tokenplane-redis-tls\n") && stdout.contains("type: kubernetes.io/tls"));
    assert!(stdout.contains("<generated: private key of the serving certificate>"), "{stdout}");
    assert!(!stdout.contains("PRIVATE KEY"), "no key material in a preview");
    assert!(stdout.contains("tls-port 6379") && stdout.contains("--redis-ca-file"), "{stdout}");
}

#[test]
fn a_kind_it_does_not_render_is_reported_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cm.yaml");
    std::fs::write(&path, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tokenplane-operator"))
        .args(["render", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success() && out.stdout.is_empty(), "{stderr}");
    assert!(
        stderr.contains("skipped ConfigMap: only OAuth2Client, TokenPolicy and RedisSentinelCluster"),
        "{stderr}"
    );
}

#[test]
fn the_sample_policy_renders_without_warnings() {
    let out = render("tokenpolicy.yaml");
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8(out.stdout).unwrap().contains("kind: Deployment"));
}
