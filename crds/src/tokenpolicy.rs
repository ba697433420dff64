//! `TokenPolicy`: how tokens are made, and the issuer that makes them.

use crate::duration::Duration;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::validation::{Errors, InvalidSpec};

/// JWS algorithms the issuer signs with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SigningAlgorithm {
    /// Ed25519: small, fast, deterministic.
    #[default]
    EdDSA,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// RSA PKCS#1 v1.5 with SHA-256 (2048-bit keys), for verifiers that know nothing else.
    RS256,
}

impl SigningAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::ES256 => "ES256",
            Self::RS256 => "RS256",
        }
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Lifetimes of what the issuer hands out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.refreshToken) > duration(self.accessToken)").message("refresh tokens must outlive access tokens").field_path(".refreshToken"))]
pub struct Lifetimes {
    /// Access token (JWT) lifetime.
    #[serde(default = "default_access")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('24h')").message("access tokens must live between 1m and 24h; keep them short (RFC 9700 §2.2)"))]
    pub access_token: Duration,
    /// Refresh token lifetime, renewed at each rotation (refresh tokens
    /// always rotate; reusing a rotated one revokes its whole family).
    #[serde(default = "default_refresh")]
    #[x_kube(validation = Rule::new("duration(self) <= duration('8760h')").message("refresh tokens may live at most 8760h (one year)"))]
    pub refresh_token: Duration,
    /// Absolute lifetime of a refresh-token family, whatever its rotations; unset means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_family: Option<Duration>,
    /// Authorization code lifetime.
    #[serde(default = "default_code")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('10s') && duration(self) <= duration('10m')").message("authorization codes must live between 10s and 10m (RFC 6749 §4.1.2)"))]
    pub authorization_code: Duration,
}

fn default_access() -> Duration {
    secs(15 * 60)
}
fn default_refresh() -> Duration {
    secs(7 * 24 * 3600)
}
fn default_code() -> Duration {
    secs(10 * 60)
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            access_token: default_access(),
            refresh_token: default_refresh(),
            refresh_token_family: None,
            authorization_code: default_code(),
        }
    }
}

/// Signing keys and their rotation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Signing {
    /// Signing algorithm of new keys; a change takes effect at the next rotation.
    #[serde(default)]
    pub algorithm: SigningAlgorithm,
    /// How often a new signing key is introduced.
    #[serde(default = "default_rotation")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1h')").message("keys rotate at most once an hour"))]
    pub rotation_interval: Duration,
    /// Longest wait, after publishing a new key, for every verifier to report
    /// it before the key signs anyway (with a warning condition).
    #[serde(default = "default_propagation")]
    pub propagation_timeout: Duration,
    /// Secret holding the private keys; `<policy>-signing-keys` when unset.
    /// It holds one `<kid>.pem` (PKCS#8) entry per key and an `active` entry
    /// naming the kid that signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub keys_secret_name: Option<String>,
}

fn default_rotation() -> Duration {
    secs(30 * 24 * 3600)
}
fn default_propagation() -> Duration {
    secs(10 * 60)
}

impl Default for Signing {
    fn default() -> Self {
        Self {
            algorithm: SigningAlgorithm::default(),
            rotation_interval: default_rotation(),
            propagation_timeout: default_propagation(),
            keys_secret_name: None,
        }
    }
}

/// A token bucket: `requestsPerSecond` sustained, `burst` at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rate {
    #[schemars(range(min = 1))]
    pub requests_per_second: i32,
    #[schemars(range(min = 1))]
    pub burst: i32,
}

/// Limits at the token endpoint, shared by every issuer replica.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimits {
    /// Per client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_client: Option<Rate>,
    /// Per source IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_source_address: Option<Rate>,
}

/// Where the issuer sends people to log in and consent (the code flow).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Login {
    /// The login app's page; gets `login_challenge`.
    #[x_kube(validation = Rule::new(r"self.matches('^https?://')").message("loginUrl must be an http(s) URL"))]
    #[schemars(length(max = 2048))]
    pub login_url: String,
    /// The consent page; gets `consent_challenge`. The login app's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub consent_url: Option<String>,
}

/// The issuer Deployment the operator runs for this policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerDeployment {
    /// Minimum replicas (and the HorizontalPodAutoscaler's floor).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// Ceiling of the HorizontalPodAutoscaler.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// Issuer image; the operator's own version when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Resources of the issuer container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_replicas() -> i32 {
    2
}
fn default_max_replicas() -> i32 {
    6
}

impl Default for IssuerDeployment {
    fn default() -> Self {
        Self { replicas: 2, max_replicas: 6, image: None, resources: None }
    }
}

/// How tokens are made for the clients that reference this policy, and the
/// issuer Deployment that makes them.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "tokenplane.io",
    version = "v1alpha1",
    kind = "TokenPolicy",
    plural = "tokenpolicies",
    shortname = "tp",
    category = "tokenplane",
    namespaced,
    status = "TokenPolicyStatus",
    doc = "Token lifetimes, signing keys and their rotation, rate limits and login for one issuer.",
    printcolumn(name = "Algorithm", type_ = "string", json_path = ".spec.signing.algorithm"),
    printcolumn(name = "Active Key", type_ = "string", json_path = ".status.activeKeyId"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("!has(self.issuerDeployment) || self.issuerDeployment.maxReplicas >= self.issuerDeployment.replicas").message("maxReplicas must be at least replicas").field_path(".issuerDeployment.maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct TokenPolicySpec {
    /// The `iss` of every token (RFC 8414 issuer identifier): an https URL
    /// without query or fragment; http only for loopback and in-cluster use.
    /// Defaults to the issuer Service's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(r"self.matches('^https?://[^/?#]+(/[^?#]*)?$')").message("issuer must be an http(s) URL without query or fragment (RFC 8414 §2)"))]
    #[schemars(length(max = 2048))]
    pub issuer_url: Option<String>,
    /// Token and code lifetimes.
    #[serde(default)]
    pub lifetimes: Lifetimes,
    /// Signing keys and rotation.
    #[serde(default)]
    pub signing: Signing,
    /// Rate limits at the token endpoint; none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimits>,
    /// Login and consent for the authorization code flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<Login>,
    /// The RedisSentinelCluster (same namespace) holding this policy's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_ref: Option<String>,
    /// Shape of the issuer Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_deployment: Option<IssuerDeployment>,
    /// Where the issuer's serving certificate comes from: the operator's
    /// own CA when unset (or the operator's `--cert-manager-issuer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<IssuerTls>,
}

/// The issuer's serving certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerTls {
    /// A cert-manager issuer that signs it (a `Certificate` is created
    /// for the issuer Service's DNS names) instead of the operator's CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager_issuer: Option<CertManagerIssuerRef>,
}

/// A cert-manager `Issuer` (in the policy's namespace) or `ClusterIssuer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertManagerIssuerRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` or `ClusterIssuer`.
    #[serde(default = "default_issuer_kind")]
    #[x_kube(validation = Rule::new("self == 'Issuer' || self == 'ClusterIssuer'").message("kind must be Issuer or ClusterIssuer"))]
    pub kind: String,
    /// The issuer's API group (an external issuer's own group, for one).
    #[serde(default = "default_issuer_group")]
    #[schemars(length(min = 1, max = 253))]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".into()
}

fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

/// Where a signing key is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum KeyState {
    /// In the JWKS, not yet signing: verifiers are learning it.
    Published,
    /// Signing new tokens.
    Active,
    /// No longer signing; published until the last token it signed expires.
    Retiring,
}

/// One signing key, public facts only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    pub kid: String,
    pub algorithm: SigningAlgorithm,
    pub state: KeyState,
    /// When the key entered its current state (RFC 3339).
    pub since: String,
}

/// Observed state of a TokenPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The issuer identifier in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyStatus>,
    /// When the next rotation starts (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_at: Option<String>,
    /// Verifiers (issuers and agents) that have not reported the newest key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lagging_verifiers: Vec<String>,
}

/// What an issuer replica reads from Redis (`storage::policy`): the issuer
/// identifier in force and the policy's spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub issuer: String,
    pub spec: TokenPolicySpec,
}

impl TokenPolicy {
    /// The id of the policy named `name` in `namespace`, as client
    /// registrations and Redis keys name it.
    pub fn id_for(name: &str, namespace: &str) -> String {
        format!("{name}.{namespace}")
    }

    /// The Secret with this policy's private signing keys.
    pub fn keys_secret_name(&self) -> String {
        self.spec
            .signing
            .keys_secret_name
            .clone()
            .unwrap_or_else(|| format!("{}-signing-keys", self.metadata.name.as_deref().unwrap_or_default()))
    }
}

impl TokenPolicySpec {
    /// The CRD's CEL rules, for objects no API server has checked.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        let mut errors = Errors::default();
        let l = &self.lifetimes;
        let within = |d: &Duration, lo: u64, hi: u64| (lo..=hi).contains(&d.as_secs());
        errors.check(
            within(&l.access_token, 60, 24 * 3600),
            "spec.lifetimes.accessToken",
            "access tokens must live between 1m and 24h; keep them short (RFC 9700 §2.2)",
        );
        errors.check(
            within(&l.refresh_token, 0, 8760 * 3600),
            "spec.lifetimes.refreshToken",
            "refresh tokens may live at most 8760h (one year)",
        );
        errors.check(
            l.refresh_token > l.access_token,
            "spec.lifetimes.refreshToken",
            "refresh tokens must outlive access tokens",
        );
        errors.check(
            within(&l.authorization_code, 10, 600),
            "spec.lifetimes.authorizationCode",
            "authorization codes must live between 10s and 10m (RFC 6749 §4.1.2)",
        );
        errors.check(
            within(&self.signing.rotation_interval, 3600, u64::MAX),
            "spec.signing.rotationInterval",
            "keys rotate at most once an hour",
        );
        if let Some(url) = &self.issuer_url {
            errors.check(
                is_issuer_url(url),
                "spec.issuerUrl",
                "issuer must be an http(s) URL without query or fragment (RFC 8414 §2)",
            );
        }
        if let Some(d) = &self.issuer_deployment {
            errors.check(
                d.max_replicas >= d.replicas,
                "spec.issuerDeployment.maxReplicas",
                "maxReplicas must be at least replicas",
            );
        }
        if let Some(issuer) = self.tls.as_ref().and_then(|t| t.cert_manager_issuer.as_ref()) {
            errors.check(
                issuer.kind == "Issuer" || issuer.kind == "ClusterIssuer",
                "spec.tls.certManagerIssuer.kind",
                "kind must be Issuer or ClusterIssuer",
            );
        }
        errors.finish()
    }
}

fn is_issuer_url(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| {
        matches!(u.scheme(), "https" | "http")
            && u.host().is_some()
            && u.query().is_none()
            && u.fragment().is_none()
            && s.starts_with(u.scheme())
    })
}
