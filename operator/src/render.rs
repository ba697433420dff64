//! `tokenplane-operator render`: the Kubernetes objects the operator would
//! create for some custom resources, offline, for review in a GitOps pull
//! request. Generated secrets show as placeholders; Secret values are
//! printed as `stringData` so that a reviewer can read them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;
use tokenplane_api::oauth2client::AuthMethod;
use tokenplane_api::{OAuth2Client, TokenPolicy};

use crate::reconcile::Invalid;
use crate::reconcile::oauth2client::{self, Credentials};

pub const GENERATED_SECRET: &str = "<generated: 256-bit client secret>";
pub const GENERATED_PASSWORD: &str = "<generated: 256-bit Redis password>";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{file} (document {document}): {message}")]
    Unreadable { file: PathBuf, document: usize, message: String },
    #[error("OAuth2Client {namespace}/{name}: {invalid}")]
    Invalid { namespace: String, name: String, invalid: Invalid },
}

/// The custom resources of some files.
#[derive(Default)]
pub struct Resources {
    pub clients: Vec<OAuth2Client>,
    pub policies: Vec<TokenPolicy>,
}

#[derive(Deserialize)]
struct Kind {
    #[serde(default)]
    kind: String,
}

impl Resources {
    /// Adds every OAuth2Client and TokenPolicy of a multi-document YAML
    /// file; other kinds are skipped. Objects without a namespace are in
    /// `default`, as `kubectl apply` would put them.
    pub fn add(&mut self, file: PathBuf, text: &str) -> Result<(), RenderError> {
        for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            let unreadable =
                |message: String| RenderError::Unreadable { file: file.clone(), document: i + 1, message };
            let value = serde_norway::Value::deserialize(doc).map_err(|e| unreadable(e.to_string()))?;
            if value.is_null() {
                continue;
            }
            let kind: Kind =
                serde_norway::from_value(value.clone()).map_err(|e| unreadable(e.to_string()))?;
            match kind.kind.as_str() {
                "OAuth2Client" => {
                    let mut client: OAuth2Client =
                        serde_norway::from_value(value).map_err(|e| unreadable(e.to_string()))?;
                    client.metadata.namespace.get_or_insert_with(|| "default".into());
                    self.clients.push(client);
                }
                "TokenPolicy" => {
                    let mut policy: TokenPolicy =
                        serde_norway::from_value(value).map_err(|e| unreadable(e.to_string()))?;
                    policy.metadata.namespace.get_or_insert_with(|| "default".into());
                    self.policies.push(policy);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn policy_of(&self, client: &OAuth2Client) -> Option<&TokenPolicy> {
        let r = &client.spec.policy_ref;
        let namespace = r.namespace.as_ref().or(client.metadata.namespace.as_ref());
        self.policies
            .iter()
            .find(|p| p.metadata.name.as_ref() == Some(&r.name) && p.metadata.namespace.as_ref() == namespace)
    }

    /// The YAML of every object, or the first resource that is invalid.
    pub fn render(&self) -> Result<String, RenderError> {
        let mut out = String::new();
        for client in &self.clients {
            let public = client.spec.token_endpoint_auth_method == AuthMethod::None;
            let placeholders = Credentials {
                client_secret: (!public).then(|| GENERATED_SECRET.to_owned()),
                redis_password: GENERATED_PASSWORD.to_owned(),
            };
            let desired =
                oauth2client::desired(client, self.policy_of(client), &placeholders).map_err(|invalid| {
                    RenderError::Invalid {
                        namespace: client.metadata.namespace.clone().unwrap_or_default(),
                        name: client.metadata.name.clone().unwrap_or_default(),
                        invalid,
                    }
                })?;
            out.push_str(&format!(
                "# OAuth2Client {}: client id {}; Redis: registration auth:client:{}, ACL user {}\n",
                client.metadata.name.as_deref().unwrap_or_default(),
                desired.client_id,
                desired.client_id,
                desired.agent_user.name
            ));
            out.push_str("---\n");
            out.push_str(&readable(desired.secret));
        }
        Ok(out)
    }
}

/// A Secret as YAML with its values in `stringData`. Owner references are
/// left out: they need the uid of an object that does not exist yet.
fn readable(mut secret: Secret) -> String {
    let data = secret.data.take().unwrap_or_default();
    let strings: BTreeMap<String, String> =
        data.into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned())).collect();
    secret.string_data = Some(strings);
    secret.metadata.owner_references = None;
    let mut value = serde_norway::to_value(&secret).expect("a Secret serializes");
    if let serde_norway::Value::Mapping(map) = &mut value {
        map.insert("apiVersion".into(), "v1".into());
        map.insert("kind".into(), "Secret".into());
    }
    serde_norway::to_string(&value).expect("a Secret serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenplane_api::credentials;

    fn resources(yaml: &str) -> Resources {
        let mut r = Resources::default();
        r.add("test.yaml".into(), yaml).unwrap();
        r
    }

    const POLICY: &str = "apiVersion: tokenplane.io/v1alpha1\nkind: TokenPolicy\nmetadata: {name: default}\n\
                          spec: {lifetimes: {accessToken: 15m}}\n";

    #[test]
    fn a_client_renders_to_its_credentials_secret_with_placeholders() {
        let yaml = format!(
            "{POLICY}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ignored}}\n---\n\
             apiVersion: tokenplane.io/v1alpha1\nkind: OAuth2Client\nmetadata: {{name: demo}}\n\
             spec: {{policyRef: {{name: default}}, audiences: [https://orders]}}\n"
        );
        let out = resources(&yaml).render().unwrap();
        let secret: Secret = serde_norway::from_str(out.split("---\n").nth(1).unwrap()).unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("demo-oauth2-credentials"));
        let data = secret.string_data.unwrap();
        assert_eq!(data[credentials::CLIENT_SECRET], GENERATED_SECRET);
        assert_eq!(data[credentials::CLIENT_ID], "demo.default");
        assert_eq!(data[credentials::ISSUER], "http://default-issuer.default.svc");
        assert!(out.starts_with("# OAuth2Client demo: client id demo.default"), "{out}");
    }

    #[test]
    fn an_invalid_client_or_a_missing_policy_is_an_error() {
        let client = "apiVersion: tokenplane.io/v1alpha1\nkind: OAuth2Client\nmetadata: {name: demo}\n\
                      spec: {policyRef: {name: other}, audiences: [https://orders]}\n";
        let e = resources(client).render().unwrap_err().to_string();
        assert!(e.contains("PolicyNotFound") && e.contains("default/other"), "{e}");
        let mut r = Resources::default();
        assert!(matches!(
            r.add("bad.yaml".into(), "kind: OAuth2Client\nspec: 3\n"),
            Err(RenderError::Unreadable { document: 1, .. })
        ));
    }
}
