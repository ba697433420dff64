//! The CRD schemas are what a real API server accepts: structural, known
//! formats only, CEL rules that compile within the cost budget, and rules
//! that agree with the Rust validation the operator and issuer run.

use kube::core::cel::{CompiledSchema, compile_schema, estimate_rule_cost};
use serde_json::{Value, json};
use tokenplane_api::{OAuth2Client, OAuth2ClientSpec, TokenPolicy, TokenPolicySpec, crds};

/// Formats kube-apiserver knows; any other is rejected or ignored.
const KNOWN_FORMATS: &[&str] = &[
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "date",
    "date-time",
    "password",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
];

fn schemas() -> Vec<(&'static str, Value)> {
    crds()
        .into_iter()
        .map(|(file, crd)| {
            let v = &crd.spec.versions[0];
            let schema = v.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).unwrap();
            (file, serde_json::to_value(schema).unwrap())
        })
        .collect()
}

fn check_structural(path: &str, node: &Value, problems: &mut Vec<String>) {
    let Some(obj) = node.as_object() else { return };
    for forbidden in ["$ref", "definitions", "$defs", "$schema", "oneOf", "anyOf"] {
        if obj.contains_key(forbidden) {
            problems.push(format!("{path}: has {forbidden}"));
        }
    }
    let typed = obj.contains_key("type")
        || obj.get("x-kubernetes-int-or-string") == Some(&json!(true))
        || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    if !typed {
        problems.push(format!("{path}: no type"));
    }
    if let Some(format) = obj.get("format").and_then(Value::as_str)
        && !KNOWN_FORMATS.contains(&format)
    {
        problems.push(format!("{path}: unknown format {format}"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        problems.push(format!("{path}: both properties and additionalProperties"));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            check_structural(&format!("{path}.{name}"), child, problems);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = obj.get(key).filter(|c| c.is_object()) {
            check_structural(&format!("{path}[{key}]"), child, problems);
        }
    }
}

#[test]
fn schemas_are_structural_with_known_formats() {
    for (file, schema) in schemas() {
        let mut problems = vec![];
        check_structural("", &schema, &mut problems);
        assert!(problems.is_empty(), "{file}: {problems:#?}");
    }
}

fn check_rules(path: &str, node: &CompiledSchema, rules: &mut usize, problems: &mut Vec<String>) {
    for compiled in &node.validations {
        match compiled {
            Ok(c) => {
                *rules += 1;
                for w in estimate_rule_cost(&c.rule.rule, node) {
                    problems.push(format!("{path}: {}: {}", c.rule.rule, w.message));
                }
            }
            Err(e) => problems.push(format!("{path}: does not compile: {e:?}")),
        }
    }
    for (name, child) in &node.properties {
        check_rules(&format!("{path}.{name}"), child, rules, problems);
    }
    for child in node.items.iter().chain(&node.additional_properties) {
        check_rules(&format!("{path}[]"), child, rules, problems);
    }
}

#[test]
fn cel_rules_compile_within_the_cost_budget() {
    let mut rules = 0;
    for (file, schema) in schemas() {
        let mut problems = vec![];
        check_rules(file, &compile_schema(&schema), &mut rules, &mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
    }
    assert!(rules >= 20, "only {rules} rules found: the walk missed some");
}

fn client(spec: Value) -> OAuth2Client {
    let spec: OAuth2ClientSpec = serde_json::from_value(spec).expect("spec deserializes");
    OAuth2Client::new("billing", spec)
}

fn base_client() -> Value {
    json!({"audiences": ["https://api.example.com"], "policyRef": {"name": "default"}})
}

fn with(mut base: Value, patch: Value) -> Value {
    for (k, v) in patch.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

/// Each case goes through both the CEL rules (as the API server would run
/// them) and the Rust validation; both must give the same verdict.
fn assert_client_verdicts(cases: &[(Value, bool)]) {
    for (patch, valid) in cases {
        let c = client(with(base_client(), patch.clone()));
        let cel = kube::core::cel::validate_cel(&c);
        let rust = c.spec.validate();
        assert_eq!(cel.is_ok(), *valid, "CEL verdict on {patch}: {cel:?}");
        assert_eq!(rust.is_ok(), *valid, "Rust verdict on {patch}: {rust:?}");
    }
}

#[test]
fn client_rules_reject_what_rfc_9700_forbids() {
    let code = json!(["authorization_code", "refresh_token"]);
    assert_client_verdicts(&[
        (json!({}), true),
        (json!({"grantTypes": code, "redirectUris": ["https://app.example.com/cb"]}), true),
        (json!({"grantTypes": code, "redirectUris": ["http://127.0.0.1:8000/cb"]}), true),
        (json!({"grantTypes": code, "redirectUris": ["http://localhost/cb", "http://[::1]/cb"]}), true),
        (json!({"grantTypes": code, "redirectUris": ["com.example.app:/cb"]}), true),
        (json!({"grantTypes": code, "redirectUris": ["https://app.example.com/cb#x"]}), false),
        (json!({"grantTypes": code, "redirectUris": ["https://*.example.com/cb"]}), false),
        (json!({"grantTypes": code, "redirectUris": ["http://app.example.com/cb"]}), false),
        (json!({"grantTypes": code, "redirectUris": ["http://localhost.evil.com/cb"]}), false),
        (json!({"grantTypes": code, "redirectUris": ["https://u@app.example.com/cb"]}), false),
        (json!({"grantTypes": code, "redirectUris": ["myapp:/cb"]}), false),
        (json!({"grantTypes": code}), false),
        (json!({"grantTypes": ["client_credentials", "refresh_token"]}), false),
        (json!({"grantTypes": []}), false),
        (
            json!({"grantTypes": ["authorization_code"], "tokenEndpointAuthMethod": "none",
                   "redirectUris": ["https://spa.example.com/cb"]}),
            true,
        ),
        (json!({"tokenEndpointAuthMethod": "none"}), false),
        (json!({"scopes": ["read", "write:all"], "defaultScopes": ["read"]}), true),
        (json!({"scopes": ["read"], "defaultScopes": ["write"]}), false),
        (json!({"scopes": ["has space"]}), false),
        (json!({"scopes": ["quote\"d"]}), false),
        (json!({"audiences": []}), false),
    ]);
}

#[test]
fn implicit_and_password_grants_do_not_even_deserialize() {
    for grant in ["implicit", "password"] {
        let spec = with(base_client(), json!({"grantTypes": [grant]}));
        let err = serde_json::from_value::<OAuth2ClientSpec>(spec).unwrap_err();
        assert!(err.to_string().contains(grant), "{err}");
    }
}

fn assert_policy_verdicts(cases: &[(Value, bool)]) {
    for (spec, valid) in cases {
        let spec: TokenPolicySpec = serde_json::from_value(spec.clone()).unwrap();
        let policy = TokenPolicy::new("default", spec);
        let cel = kube::core::cel::validate_cel(&policy);
        assert_eq!(cel.is_ok(), *valid, "CEL verdict on {:?}: {cel:?}", policy.spec);
        let rust = policy.spec.validate();
        assert_eq!(rust.is_ok(), *valid, "Rust verdict on {:?}: {rust:?}", policy.spec);
    }
}

#[test]
fn policy_rules_keep_lifetimes_sane() {
    assert_policy_verdicts(&[
        (json!({}), true),
        (json!({"issuerUrl": "https://auth.example.com"}), true),
        (json!({"issuerUrl": "https://auth.example.com/tenant-a"}), true),
        (json!({"issuerUrl": "https://auth.example.com/?x=1"}), false),
        (json!({"issuerUrl": "ftp://auth.example.com"}), false),
        (json!({"lifetimes": {"accessToken": "5m", "refreshToken": "24h", "authorizationCode": "1m"}}), true),
        (json!({"lifetimes": {"accessToken": "30s"}}), false),
        (json!({"lifetimes": {"accessToken": "48h"}}), false),
        (json!({"lifetimes": {"accessToken": "1h", "refreshToken": "30m"}}), false),
        (json!({"lifetimes": {"authorizationCode": "1h"}}), false),
        (json!({"signing": {"algorithm": "ES256", "rotationInterval": "30m"}}), false),
        (json!({"issuerDeployment": {"replicas": 3, "maxReplicas": 2}}), false),
    ]);
}

#[test]
fn durations_are_checked_on_parse() {
    let spec = json!({"lifetimes": {"accessToken": "7d"}});
    let err = serde_json::from_value::<TokenPolicySpec>(spec).unwrap_err();
    assert!(err.to_string().contains("invalid duration \"7d\""), "{err}");
}
