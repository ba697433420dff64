//! What the operator's ClusterRole (config/rbac/role.yaml) allows, against
//! the requests the tests saw the controllers make.

use http::Method;
use serde_json::Value;

/// The RBAC verb and resource (`plural` or `plural/subresource`) of a request.
pub fn rbac_of(method: &Method, path: &str) -> (String, String) {
    let parts: Vec<&str> = path.split('/').collect();
    let at = match parts.iter().position(|p| *p == "namespaces") {
        Some(ns) => ns + 2,
        None if parts[1] == "api" => 3,
        None => 4,
    };
    let resource = match parts.get(at + 2) {
        Some(sub) => format!("{}/{sub}", parts[at]),
        None => parts[at].to_owned(),
    };
    let verb = match *method {
        Method::GET if parts.get(at + 1).is_none() => "list",
        Method::GET => "get",
        Method::PATCH => "patch",
        Method::POST => "create",
        Method::PUT => "update",
        Method::DELETE => "delete",
        _ => "other",
    };
    (verb.to_owned(), resource)
}

/// Fails naming the first (verb, resource) of `used` that the role does not allow.
pub fn assert_role_allows(used: &[(String, String)]) {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/rbac/role.yaml")).unwrap();
    let role: Value = serde_norway::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .find(|doc: &Value| doc["kind"] == "ClusterRole")
        .unwrap();
    let allowed = |verb: &str, resource: &str| {
        role["rules"].as_array().unwrap().iter().any(|rule| {
            let has = |field: &str, value: &str| rule[field].as_array().unwrap().iter().any(|v| v == value);
            has("verbs", verb) && has("resources", resource)
        })
    };
    for (verb, resource) in used {
        assert!(
            allowed(verb, resource),
            "the code does {verb} on {resource}, which config/rbac/role.yaml does not allow"
        );
    }
}
