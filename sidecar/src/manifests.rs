//! Standalone mode: the OAuth2Client, TokenPolicy and Secret manifests of a
//! folder (the files one would `kubectl apply`), checked like the API server
//! and the operator would, and turned into what the issuer serves.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokenplane_api::client::{ClientRecord, SecretHash};
use tokenplane_api::credentials;
use tokenplane_api::oauth2client::AuthMethod;
use tokenplane_api::{OAuth2Client, TokenPolicy};

use crate::keys::{KeyError, KeySet};

/// Where a manifest came from: file and document number (from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub document: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {})", self.file.display(), self.document)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifests from {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin}: {message}")]
    Invalid { origin: Origin, message: String },
    #[error("{0}")]
    Inconsistent(String),
    #[error("signing keys in Secret {secret}: {source}")]
    Keys { secret: String, source: KeyError },
}

/// One parsed object and where it came from.
pub struct Loaded<T> {
    pub origin: Origin,
    pub namespace: String,
    pub name: String,
    pub object: T,
}

/// Every object of the kinds standalone mode reads.
#[derive(Default)]
pub struct Manifests {
    pub clients: Vec<Loaded<OAuth2Client>>,
    pub policies: Vec<Loaded<TokenPolicy>>,
    pub secrets: Vec<Loaded<Secret>>,
}

/// Reads every `*.yaml` / `*.yml` file directly in `dir`, in name order.
pub fn load_dir(dir: &Path) -> Result<Manifests, ManifestError> {
    let read_err = |source| ManifestError::Read { path: dir.to_owned(), source };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut manifests = Manifests::default();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|source| ManifestError::Read { path: file.clone(), source })?;
        manifests.add_file(&file, &text)?;
    }
    Ok(manifests)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

impl Manifests {
    /// Adds every document of one (possibly multi-document) YAML file.
    pub fn add_file(&mut self, file: &Path, text: &str) -> Result<(), ManifestError> {
        for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            let origin = Origin { file: file.to_owned(), document: i + 1 };
            let invalid = |message: String| ManifestError::Invalid { origin: origin.clone(), message };
            let value =
                serde_norway::Value::deserialize(doc).map_err(|e| invalid(format!("not valid YAML: {e}")))?;
            if value.is_null() {
                continue;
            }
            let meta = TypeMeta::deserialize(&value)
                .map_err(|e| invalid(format!("not a Kubernetes object: {e}")))?;
            match (meta.api_version.as_str(), meta.kind.as_str()) {
                ("tokenplane.io/v1alpha1", "OAuth2Client") => {
                    let client: Loaded<OAuth2Client> = typed(origin, value)?;
                    if let Err(e) = client.object.spec.validate() {
                        return Err(client.invalid(e.to_string()));
                    }
                    self.clients.push(client);
                }
                ("tokenplane.io/v1alpha1", "TokenPolicy") => {
                    let policy: Loaded<TokenPolicy> = typed(origin, value)?;
                    if let Err(e) = policy.object.spec.validate() {
                        return Err(policy.invalid(e.to_string()));
                    }
                    self.policies.push(policy);
                }
                ("v1", "Secret") => self.secrets.push(typed(origin, value)?),
                (api, kind) if api.starts_with("tokenplane.io/") && kind != "RedisSentinelCluster" => {
                    return Err(invalid(format!(
                        "unknown tokenplane kind {kind} in {api}; expected tokenplane.io/v1alpha1 OAuth2Client or TokenPolicy"
                    )));
                }
                (api, kind) => tracing::debug!(%origin, api, kind, "not used in standalone mode; skipped"),
            }
        }
        Ok(())
    }
}

/// Deserializes an object, naming the offending field on error.
fn typed<T: DeserializeOwned + kube::Resource>(
    origin: Origin,
    value: serde_norway::Value,
) -> Result<Loaded<T>, ManifestError> {
    let object: T = serde_path_to_error::deserialize(value).map_err(|e| ManifestError::Invalid {
        origin: origin.clone(),
        message: format!("{}: {}", e.path(), e.inner()),
    })?;
    let meta = object.meta();
    let Some(name) = meta.name.clone() else {
        return Err(ManifestError::Invalid { origin, message: "metadata.name is required".into() });
    };
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    Ok(Loaded { origin, namespace, name, object })
}

impl<T> Loaded<T> {
    fn invalid(&self, message: String) -> ManifestError {
        ManifestError::Invalid { origin: self.origin.clone(), message }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What a standalone issuer serves, resolved from the manifests.
pub struct Standalone {
    pub policy: Loaded<TokenPolicy>,
    pub clients: Vec<ClientRecord>,
    /// From the policy's keys Secret, when the folder has one.
    pub keys: Option<KeySet>,
}

/// Picks the policy to serve (`wanted` is `name` or `namespace/name`, needed
/// when the folder has several) and resolves the clients that use it.
pub fn resolve(mut m: Manifests, wanted: Option<&str>) -> Result<Standalone, ManifestError> {
    if let Some(key) =
        [duplicate(&m.clients), duplicate(&m.policies), duplicate(&m.secrets)].into_iter().flatten().next()
    {
        return Err(ManifestError::Inconsistent(format!("{key} is defined twice; keep one")));
    }
    let index = pick_policy(&m.policies, wanted)?;
    let policy = m.policies.swap_remove(index);
    let secrets: BTreeMap<String, &Loaded<Secret>> = m.secrets.iter().map(|s| (s.key(), s)).collect();
    let mut clients = Vec::new();
    for client in &m.clients {
        let policy_ref = &client.object.spec.policy_ref;
        let policy_ns = policy_ref.namespace.as_deref().unwrap_or(&client.namespace);
        if (policy_ns, policy_ref.name.as_str()) != (policy.namespace.as_str(), policy.name.as_str()) {
            tracing::info!(client = %client.key(), policy = %policy_ref.name, "client uses another policy; not served here");
            continue;
        }
        clients.push(client_record(client, &secrets)?);
    }
    let keys_secret = format!("{}/{}", policy.namespace, policy.object.keys_secret_name());
    let keys = match secrets.get(&keys_secret) {
        Some(secret) => {
            Some(signing_keys(secret).map_err(|source| ManifestError::Keys { secret: keys_secret, source })?)
        }
        None => None,
    };
    Ok(Standalone { policy, clients, keys })
}

fn duplicate<T>(objects: &[Loaded<T>]) -> Option<String> {
    let mut seen = HashSet::new();
    objects.iter().map(Loaded::key).find(|k| !seen.insert(k.clone()))
}

fn pick_policy(policies: &[Loaded<TokenPolicy>], wanted: Option<&str>) -> Result<usize, ManifestError> {
    let all = || policies.iter().map(Loaded::key).collect::<Vec<_>>().join(", ");
    match wanted {
        Some(w) => {
            policies.iter().position(|p| p.key() == w || (!w.contains('/') && p.name == w)).ok_or_else(|| {
                ManifestError::Inconsistent(format!(
                    "TokenPolicy {w} is not in the manifests; found: [{}]",
                    all()
                ))
            })
        }
        None if policies.len() == 1 => Ok(0),
        None if policies.is_empty() => Err(ManifestError::Inconsistent(
            "no TokenPolicy in the manifests; add one (see config/samples/tokenpolicy.yaml)".into(),
        )),
        None => Err(ManifestError::Inconsistent(format!(
            "several TokenPolicies ({}); choose one with --policy NAMESPACE/NAME",
            all()
        ))),
    }
}

/// All entries of a Secret, `stringData` over `data` as the API server merges them.
fn secret_entries(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut entries: BTreeMap<String, Vec<u8>> =
        secret.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
    for (k, v) in secret.string_data.iter().flatten() {
        entries.insert(k.clone(), v.clone().into_bytes());
    }
    entries
}

fn client_record(
    client: &Loaded<OAuth2Client>,
    secrets: &BTreeMap<String, &Loaded<Secret>>,
) -> Result<ClientRecord, ManifestError> {
    let client_id = OAuth2Client::client_id_for(&client.name, &client.namespace);
    let spec = &client.object.spec;
    if spec.token_endpoint_auth_method == AuthMethod::None {
        return Ok(ClientRecord::new(client_id, spec, vec![]));
    }
    let secret_name = client.object.credentials_secret_name();
    let secret = secrets.get(&format!("{}/{secret_name}", client.namespace)).ok_or_else(|| {
        client.invalid(format!(
            "client {client_id} needs its credentials Secret {secret_name} in namespace {} with keys client_id and client_secret",
            client.namespace
        ))
    })?;
    let entries = secret_entries(&secret.object);
    if let Some(id) = entries.get(credentials::CLIENT_ID).filter(|id| **id != client_id.as_bytes()) {
        return Err(secret.invalid(format!(
            "client_id is {:?} but the OAuth2Client {} has client id {client_id}",
            String::from_utf8_lossy(id),
            client.key()
        )));
    }
    let plain = entries
        .get(credentials::CLIENT_SECRET)
        .and_then(|s| std::str::from_utf8(s).ok())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| secret.invalid("key client_secret is missing or not UTF-8".into()))?;
    if plain.len() < 32 {
        tracing::warn!(client_id, secret = %secret.key(), "client secret is shorter than 32 characters; use 256 random bits");
    }
    Ok(ClientRecord::new(client_id, spec, vec![SecretHash::of(plain)]))
}

/// A keys Secret: `<kid>.pem` entries, and `active` naming the signing kid.
fn signing_keys(secret: &Loaded<Secret>) -> Result<KeySet, KeyError> {
    KeySet::from_entries(&secret_entries(&secret.object))
}
