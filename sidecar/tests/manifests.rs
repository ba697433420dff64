//! A bad manifest stops start-up with a message naming the file and the field.

use tokenplane_sidecar::manifests::{load_dir, resolve};

const POLICY: &str = "apiVersion: tokenplane.io/v1alpha1\nkind: TokenPolicy\nmetadata: {name: p}\nspec: {}\n";
const CLIENT: &str = "apiVersion: tokenplane.io/v1alpha1\nkind: OAuth2Client\nmetadata: {name: c}\n\
                      spec: {audiences: [https://api], policyRef: {name: p}}\n";
const SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: c-oauth2-credentials}\n\
                      stringData: {client_id: c.default, client_secret: s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3}\n";

fn docs(parts: &[&str]) -> String {
    parts.iter().map(|p| format!("---\n{p}")).collect()
}

/// Loads `yaml` from a file named `bad.yaml` and returns the error text.
fn error_of(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), yaml).unwrap();
    match load_dir(dir.path()).and_then(|m| resolve(m, None)) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_good_set_loads() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("all.yaml"), docs(&[POLICY, CLIENT, SECRET])).unwrap();
    let loaded = resolve(load_dir(dir.path()).unwrap(), None).unwrap();
    assert_eq!(loaded.clients.len(), 1);
    assert_eq!(loaded.clients[0].client_id, "c.default");
    assert!(loaded.clients[0].secret_matches("s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3", 0));
    assert!(loaded.keys.is_none());
}

#[test]
fn each_mistake_is_named_with_its_file_and_field() {
    let client_with = |spec: &str| {
        format!(
            "apiVersion: tokenplane.io/v1alpha1\nkind: OAuth2Client\nmetadata: {{name: c}}\nspec: {spec}\n"
        )
    };
    let implicit = client_with("{audiences: [a], policyRef: {name: p}, grantTypes: [implicit]}");
    let fragment = client_with(
        "{audiences: [a], policyRef: {name: p}, grantTypes: [authorization_code], redirectUris: ['https://x/cb#f']}",
    );
    let wrong_id = SECRET.replace("client_id: c.default", "client_id: other");
    let bad_duration = POLICY.replace("spec: {}", "spec: {lifetimes: {accessToken: 7d}}");
    let bad_lifetime = POLICY.replace("spec: {}", "spec: {lifetimes: {accessToken: 30h}}");
    let keys = |data: &str| {
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: p-signing-keys}}\nstringData: {data}\n")
    };
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("key: [unclosed".into(), vec!["bad.yaml (document 1)", "not valid YAML"]),
        (
            docs(&[POLICY, &implicit]),
            vec!["bad.yaml (document 2)", "spec.grantTypes[0]", "unknown variant `implicit`"],
        ),
        (docs(&[POLICY, &fragment, SECRET]), vec!["document 2", "spec.redirectUris[0]", "fragment"]),
        (docs(&[POLICY, &bad_duration]), vec!["spec.lifetimes.accessToken", "invalid duration \"7d\""]),
        (docs(&[&bad_lifetime]), vec!["spec.lifetimes.accessToken", "between 1m and 24h"]),
        (
            docs(&[POLICY, "apiVersion: tokenplane.io/v1alpha1\nkind: OAuth2Client\nspec: {}\n"]),
            vec!["document 2", "spec"],
        ),
        (docs(&[POLICY, CLIENT]), vec!["needs its credentials Secret c-oauth2-credentials"]),
        (docs(&[POLICY, CLIENT, &wrong_id]), vec!["document 3", "client_id is \"other\""]),
        (docs(&[CLIENT, SECRET]), vec!["no TokenPolicy"]),
        (docs(&[POLICY, &POLICY.replace("name: p", "name: q")]), vec!["choose one with --policy"]),
        (docs(&[POLICY, CLIENT, CLIENT, SECRET]), vec!["default/c is defined twice"]),
        (
            docs(&[POLICY, &keys("{active: k1, k1.pem: nonsense}")]),
            vec!["Secret default/p-signing-keys", "key k1", "PEM"],
        ),
        (docs(&[POLICY, &keys("{active: k9}")]), vec!["Secret default/p-signing-keys", "active key \"k9\""]),
        (
            docs(&["apiVersion: tokenplane.io/v2\nkind: OAuth2Client\nmetadata: {name: x}\n"]),
            vec!["unknown tokenplane kind"],
        ),
    ];
    for (yaml, expected) in cases {
        let err = error_of(&yaml);
        for part in expected {
            assert!(err.contains(part), "expected {part:?} in: {err}");
        }
    }
}

#[test]
fn other_kinds_and_empty_documents_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";
    std::fs::write(dir.path().join("a.yaml"), docs(&[POLICY, "", deployment])).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not yaml at all: [").unwrap();
    assert!(resolve(load_dir(dir.path()).unwrap(), None).is_ok());
}

#[test]
fn clients_of_another_policy_are_left_to_their_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let other = POLICY.replace("name: p", "name: q");
    let client_of_q = CLIENT.replace("policyRef: {name: p}", "policyRef: {name: q}");
    std::fs::write(dir.path().join("a.yaml"), docs(&[POLICY, &other, &client_of_q, SECRET])).unwrap();
    let for_p = resolve(load_dir(dir.path()).unwrap(), Some("default/p")).unwrap();
    assert!(for_p.clients.is_empty());
    let for_q = resolve(load_dir(dir.path()).unwrap(), Some("q")).unwrap();
    assert_eq!(for_q.clients.len(), 1);
}
