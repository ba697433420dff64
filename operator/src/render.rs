//! `tokenplane-operator render`: the Kubernetes objects the operator would
//! create for some custom resources, offline, for review in a GitOps pull
//! request. Generated secrets show as placeholders; Secret values are
//! printed as `stringData` so that a reviewer can read them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use serde::Deserialize;
use tokenplane_api::oauth2client::AuthMethod;
use tokenplane_api::signing::KeyPair;
use tokenplane_api::{OAuth2Client, RedisSentinelCluster, TokenPolicy, storage};

use crate::reconcile::Invalid;
use crate::reconcile::ca::{Authorities, BUNDLE_KEY, Settings};
use crate::reconcile::oauth2client::{self, Credentials};
use crate::reconcile::redis_password::Credentials as RedisCredentials;
use crate::reconcile::redissentinelcluster::{self, Passwords, tls};
use crate::reconcile::tokenpolicy::{
    self, Environment, Inputs, Keys, Serving, ServingInputs, TLS_CRT, TLS_KEY,
};

pub const GENERATED_SECRET: &str = "<generated: 256-bit client secret>";
pub const GENERATED_PASSWORD: &str = "<generated: 256-bit Redis password>";
pub const GENERATED_KID: &str = "generated-kid";
pub const GENERATED_KEY: &str = "<generated: private signing key, PKCS#8 PEM>";
pub const GENERATED_JWKS: &str = "<generated: the public keys of the signing keys>";
pub const GENERATED_CERT: &str = "<generated: serving certificate signed by the operator CA>";
pub const GENERATED_CERT_KEY: &str = "<generated: private key of the serving certificate>";
pub const CA_BUNDLE: &str = "<the operator CA bundle (Secret tokenplane-system/tokenplane-ca)>";
pub const TLS_FINGERPRINT: &str = "<the certificate's fingerprint>";
/// Where issuer pods find the Sentinels is the running operator's setting.
pub const SENTINELS: &str = "<the operator's --issuer-redis-sentinels>";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{file} (document {document}): {message}")]
    Unreadable { file: PathBuf, document: usize, message: String },
    #[error("{kind} {namespace}/{name}: {invalid}")]
    Invalid { kind: String, namespace: String, name: String, invalid: Invalid },
}

impl RenderError {
    /// `object` cannot be rendered as it is.
    fn of<K: Resource<DynamicType = ()>>(object: &K, invalid: Invalid) -> Self {
        let meta = object.meta();
        Self::Invalid {
            kind: K::kind(&()).into_owned(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            invalid,
        }
    }
}

/// The custom resources of some files.
#[derive(Default)]
pub struct Resources {
    pub clients: Vec<OAuth2Client>,
    pub policies: Vec<TokenPolicy>,
    pub clusters: Vec<RedisSentinelCluster>,
    /// Documents of kinds that are not rendered, for the caller to report.
    pub skipped: Vec<Skipped>,
}

/// What `render` says on stderr about a RedisSentinelCluster: what its
/// controller acts on.
pub const CLUSTER_PREVIEW: &str = "the operator applies these objects, rotates the role passwords and the \
     certificate, and keeps the issuers' and agents' users of the TokenPolicies with this redisRef on every \
     node and Sentinel";

/// A document `render` does not turn into objects.
#[derive(Debug, PartialEq, Eq)]
pub struct Skipped {
    pub file: PathBuf,
    pub document: usize,
    pub kind: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.kind.is_empty() { "(no kind)" } else { &self.kind };
        write!(
            f,
            "{} (document {}): skipped {kind}: only OAuth2Client, TokenPolicy and RedisSentinelCluster \
             documents are read",
            self.file.display(),
            self.document
        )
    }
}

#[derive(Deserialize)]
struct Kind {
    #[serde(default)]
    kind: String,
}

impl Resources {
    /// Adds every OAuth2Client and TokenPolicy of a multi-document YAML
    /// file; documents of other kinds are listed in `skipped`. Objects without a namespace are in
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
                "RedisSentinelCluster" => {
                    let mut cluster: RedisSentinelCluster =
                        serde_norway::from_value(value).map_err(|e| unreadable(e.to_string()))?;
                    cluster.metadata.namespace.get_or_insert_with(|| "default".into());
                    self.clusters.push(cluster);
                }
                _ => self.skipped.push(Skipped { file: file.clone(), document: i + 1, kind: kind.kind }),
            }
        }
        Ok(())
    }

    /// The RedisSentinelCluster among the files that `policy`'s `redisRef` names.
    fn cluster_of(&self, policy: &TokenPolicy) -> Option<&RedisSentinelCluster> {
        let name = policy.spec.redis_ref.as_deref()?;
        self.clusters.iter().find(|c| {
            c.metadata.name.as_deref() == Some(name) && c.metadata.namespace == policy.metadata.namespace
        })
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
        for cluster in &self.clusters {
            render_cluster(cluster, &mut out)?;
        }
        for policy in &self.policies {
            self.render_policy(policy, &mut out)?;
        }
        for client in &self.clients {
            let public = client.spec.token_endpoint_auth_method == AuthMethod::None;
            let placeholders = Credentials {
                client_secret: (!public).then(|| GENERATED_SECRET.to_owned()),
                redis: RedisCredentials::new(GENERATED_PASSWORD.to_owned(), 0),
            };
            let desired = oauth2client::desired(client, self.policy_of(client), &placeholders)
                .map_err(|invalid| RenderError::of(client, invalid))?;
            out.push_str(&format!(
                "# OAuth2Client {}: client id {}; Redis: registration auth:client:{}, ACL user {}\n",
                client.metadata.name.as_deref().unwrap_or_default(),
                desired.client_id,
                desired.client_id,
                desired.agent_user.name
            ));
            out.push_str("---\n");
            out.push_str(&readable(desired.secret));
            out.push_str("---\n");
            let redis_tls =
                self.policy_of(client).and_then(|p| self.cluster_of(p)).is_some_and(|c| c.spec.tls.enabled);
            let redis_ca = redis_tls.then_some(CA_BUNDLE.as_bytes());
            out.push_str(&yaml(oauth2client::issuer_ca(client, CA_BUNDLE, redis_ca)));
        }
        Ok(out)
    }
}

impl Resources {
    /// A policy's objects, its keys as placeholders and without the key
    /// states annotation (the operator's bookkeeping, and a timestamp).
    fn render_policy(&self, policy: &TokenPolicy, out: &mut String) -> Result<(), RenderError> {
        let clients: Vec<OAuth2Client> = self
            .clients
            .iter()
            .filter(|c| self.policy_of(c).is_some_and(|p| std::ptr::eq(p, policy)))
            .cloned()
            .collect();
        let env = Environment {
            image: crate::controller::ISSUER_IMAGE.into(),
            sentinels: vec![SENTINELS.into()],
            master_name: "tokenplane".into(),
            sentinel_login: None,
            operator_namespace: "tokenplane-system".into(),
            cert_manager_issuer: None,
            redis_tls: None,
        };
        let cas = Authorities::first(&Settings::default(), 0);
        let inputs = Inputs {
            policy,
            keys: Keys::default(),
            heartbeats: &[],
            clients: &clients,
            cluster: self.cluster_of(policy),
            cluster_ca: None,
            issuer_redis: &RedisCredentials::new(GENERATED_PASSWORD.to_owned(), 0),
            env: &env,
            serving: ServingInputs { cas: &cas, existing: None, lifetime: Settings::default().leaf_lifetime },
            now: 0,
        };
        let algorithm = policy.spec.signing.algorithm;
        let new_key = || {
            let key = KeyPair::generate(algorithm).expect("the system can generate keys");
            (GENERATED_KID.to_owned(), key.to_pem().into_bytes())
        };
        let mut d =
            tokenpolicy::desired(inputs, new_key).map_err(|invalid| RenderError::of(policy, invalid))?;
        for pem in d.keys_secret.data.iter_mut().flatten().filter(|(k, _)| k.ends_with(".pem")) {
            pem.1.0 = GENERATED_KEY.as_bytes().to_vec();
        }
        d.keys_secret.metadata.annotations = None;

        d.jwks_config_map.data = Some(BTreeMap::from([("jwks.json".to_owned(), GENERATED_JWKS.to_owned())]));
        out.push_str(&format!(
            "# TokenPolicy {}: policy id {id}; Redis: record {}, JWKS {}, ACL user {}\n",
            policy.metadata.name.as_deref().unwrap_or_default(),
            storage::policy(&d.policy_id),
            storage::jwks(&d.policy_id),
            d.issuer_user.name,
            id = d.policy_id,
        ));
        let serving = match d.serving {
            Serving::Secret(mut secret) => {
                secret.data = Some(placeholder_tls());
                readable(secret)
            }
            Serving::Certificate(mut certificate) => {
                certificate.metadata.owner_references = None;
                serde_norway::to_string(&certificate).expect("an object serializes")
            }
        };
        for text in [readable(d.keys_secret), readable(d.issuer_secret), serving] {
            out.push_str("---\n");
            out.push_str(&text);
        }
        let objects =
            [yaml(d.jwks_config_map), yaml(d.service), yaml(d.deployment), yaml(d.pdb), yaml(d.hpa)];
        for text in objects.into_iter().chain(d.network_policies.into_iter().map(yaml)) {
            out.push_str("---\n");
            out.push_str(&text);
        }
        Ok(())
    }
}

/// A serving certificate's Secret data, as placeholders.
fn placeholder_tls() -> BTreeMap<String, ByteString> {
    BTreeMap::from(
        [(TLS_CRT, GENERATED_CERT), (TLS_KEY, GENERATED_CERT_KEY), (BUNDLE_KEY, CA_BUNDLE)]
            .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec()))),
    )
}

/// A cluster's objects, its passwords and certificate as placeholders.
fn render_cluster(cluster: &RedisSentinelCluster, out: &mut String) -> Result<(), RenderError> {
    let env = redissentinelcluster::Environment {
        tokenplane_image: crate::controller::ISSUER_IMAGE.into(),
        exporter_image: crate::controller::EXPORTER_IMAGE.into(),
        cluster_domain: "cluster.local".into(),
        operator_namespace: "tokenplane-system".into(),
    };
    let cas = Authorities::first(&Settings::default(), 0);
    // The Secret of spec.tls.secretName is the user's: a placeholder stands in.
    let theirs = Secret { data: Some(placeholder_tls()), ..Secret::default() };
    let existing = cluster.spec.tls.secret_name.as_ref().map(|_| &theirs);
    let tls = ServingInputs { cas: &cas, existing, lifetime: Settings::default().leaf_lifetime };
    let mut d = redissentinelcluster::desired(
        cluster,
        &env,
        (&Passwords::default(), tls),
        (|| GENERATED_PASSWORD.into(), 0),
    )
    .map_err(|invalid| RenderError::of(cluster, invalid))?;
    let owned = d.tls.and_then(|tls| tls.owned).map(|mut secret| {
        secret.data = Some(placeholder_tls());
        readable(secret)
    });
    for set in [&mut d.redis, &mut d.sentinel] {
        let template = set.spec.as_mut().and_then(|s| s.template.metadata.as_mut());
        if let Some(fingerprint) = template.and_then(|m| m.annotations.as_mut()?.get_mut(tls::FINGERPRINT)) {
            *fingerprint = TLS_FINGERPRINT.into();
        }
    }
    out.push_str(&format!(
        "# RedisSentinelCluster {}: clients find the Sentinels at {}:{}\n",
        d.names.cluster,
        d.names.service_host(&d.names.sentinel()),
        redissentinelcluster::SENTINEL_PORT,
    ));
    let texts = d.role_secrets.into_iter().map(readable).chain(owned);
    let texts = texts.chain([yaml(d.config), yaml(d.redis), yaml(d.sentinel)]);
    let texts = texts.chain(d.services.into_iter().map(yaml)).chain(d.budgets.into_iter().map(yaml));
    let texts = texts.chain([yaml(d.network_policy), yaml(d.cleanup)]);
    let texts = texts.chain(d.backup.into_iter().flat_map(|(claim, job)| [yaml(claim), yaml(job)]));
    for text in texts {
        out.push_str("---\n");
        out.push_str(&text);
    }
    Ok(())
}

/// An object as YAML with its apiVersion and kind, without owner
/// references: they need the uid of an object that does not exist yet.
fn yaml<K: Resource<DynamicType = ()> + serde::Serialize>(mut object: K) -> String {
    object.meta_mut().owner_references = None;
    let mut value = serde_norway::to_value(&object).expect("an object serializes");
    if let serde_norway::Value::Mapping(map) = &mut value {
        map.insert("apiVersion".into(), K::api_version(&()).into_owned().into());
        map.insert("kind".into(), K::kind(&()).into_owned().into());
    }
    serde_norway::to_string(&value).expect("an object serializes")
}

/// A Secret as YAML with its values in `stringData`, so a reviewer can read them.
fn readable(mut secret: Secret) -> String {
    let data = secret.data.take().unwrap_or_default();
    let strings: BTreeMap<String, String> =
        data.into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned())).collect();
    secret.string_data = Some(strings);
    yaml(secret)
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
    fn documents_of_other_kinds_are_listed_as_skipped() {
        let yaml = format!(
            "{POLICY}---\napiVersion: tokenplane.io/v1alpha1\nkind: RedisSentinelCluster\nmetadata: {{name: r}}\nspec: {{}}\n\
             ---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n---\nmetadata: {{name: x}}\n"
        );
        let r = resources(&yaml);
        let skipped: Vec<(usize, &str)> = r.skipped.iter().map(|s| (s.document, s.kind.as_str())).collect();
        assert_eq!(skipped, [(3, "ConfigMap"), (4, "")]);
        assert_eq!(
            r.skipped[0].to_string(),
            "test.yaml (document 3): skipped ConfigMap: only OAuth2Client, TokenPolicy and \
             RedisSentinelCluster documents are read"
        );
        assert!(r.skipped[1].to_string().contains("skipped (no kind)"));
        assert_eq!(r.clusters.len(), 1);
        assert_eq!(r.policies.len(), 1);
    }

    #[test]
    fn a_client_renders_to_its_credentials_secret_with_placeholders() {
        let yaml = format!(
            "{POLICY}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: ignored}}\n---\n\
             apiVersion: tokenplane.io/v1alpha1\nkind: OAuth2Client\nmetadata: {{name: demo}}\n\
             spec: {{policyRef: {{name: default}}, audiences: [https://orders]}}\n"
        );
        let out = resources(&yaml).render().unwrap();
        let client = &out[out.find("# OAuth2Client").unwrap()..];
        let secret: Secret = serde_norway::from_str(client.split("---\n").nth(1).unwrap()).unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("demo-oauth2-credentials"));
        let data = secret.string_data.unwrap();
        assert_eq!(data[credentials::CLIENT_SECRET], GENERATED_SECRET);
        assert_eq!(data[credentials::CLIENT_ID], "demo.default");
        assert_eq!(data[credentials::ISSUER], "https://default-issuer.default.svc");
        let bundle: k8s_openapi::api::core::v1::ConfigMap =
            serde_norway::from_str(client.split("---\n").nth(2).unwrap()).unwrap();
        assert_eq!(bundle.metadata.name.as_deref(), Some("demo-oauth2-credentials-issuer-ca"));
        assert_eq!(bundle.data.unwrap()[BUNDLE_KEY], CA_BUNDLE);
        assert!(client.starts_with("# OAuth2Client demo: client id demo.default"), "{out}");
    }

    #[test]
    fn a_policy_renders_to_its_issuer_with_keys_as_placeholders() {
        let out = resources(POLICY).render().unwrap();
        assert!(!out.contains("BEGIN"), "no key material in a review: {out}");
        let kinds: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("kind: ")).collect();
        assert_eq!(
            kinds,
            [
                "Secret",
                "Secret",
                "Secret",
                "ConfigMap",
                "Service",
                "Deployment",
                "PodDisruptionBudget",
                "HorizontalPodAutoscaler",
                "NetworkPolicy"
            ]
        );
        assert!(
            out.contains(GENERATED_KEY) && out.contains(GENERATED_JWKS) && out.contains(GENERATED_PASSWORD)
        );
        assert!(out.contains("name: default-issuer-tls") && out.contains(GENERATED_CERT), "{out}");
        assert!(out.contains("type: kubernetes.io/tls") && out.contains("--tls-cert-file"), "{out}");
        assert!(!out.contains("ownerReferences") && !out.contains("key-states"), "{out}");
        let deterministic = resources(POLICY).render().unwrap();
        assert_eq!(out, deterministic, "the same files render the same, for diffs");
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
