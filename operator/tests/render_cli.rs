//! `tokenplane-operator render` as a user runs it: what it cannot render is
//! said on stderr, never dropped in silence.

use std::process::Command;

fn render(file: &str) -> std::process::Output {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/samples/").to_owned() + file;
    Command::new(env!("CARGO_BIN_EXE_tokenplane-operator")).args(["render", "-f", &path]).output().unwrap()
}

#[test]
fn a_kind_it_does_not_render_is_reported_on_stderr() {
    let out = render("redissentinelcluster.yaml");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing is rendered for a RedisSentinelCluster");
    assert!(
        stderr.contains(
            "skipped RedisSentinelCluster: the operator does not reconcile RedisSentinelClusters yet"
        ),
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
