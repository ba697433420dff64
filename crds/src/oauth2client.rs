//! `OAuth2Client`: one registered OAuth2 client and the workloads that use it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::redirect;
use crate::validation::{Errors, InvalidSpec};

/// Grants a client may use. The implicit and password grants do not exist
/// here: RFC 9700 §2.1.2 and §2.4 forbid them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    ClientCredentials,
    AuthorizationCode,
    RefreshToken,
}

impl GrantType {
    /// The `grant_type` parameter value of RFC 6749.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientCredentials => "client_credentials",
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
        }
    }
}

/// How a client authenticates at the token endpoint (RFC 7591 §2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// HTTP Basic with the client id and secret (RFC 6749 §2.3.1).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// A public client (browser or native app): no secret, PKCE only.
    None,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
            Self::None => "none",
        }
    }
}

/// A policy, optionally in another namespace (a platform team's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
pub struct PolicyReference {
    /// Name of the TokenPolicy.
    pub name: String,
    /// Namespace of the TokenPolicy; the client's own namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl PolicyReference {
    /// The policy id (`TokenPolicy::id_for`) this reference names from a
    /// client in `client_namespace`.
    pub fn policy_id(&self, client_namespace: &str) -> String {
        crate::TokenPolicy::id_for(&self.name, self.namespace.as_deref().unwrap_or(client_namespace))
    }
}

/// Scheduled and on-demand rotation of the client secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRotation {
    /// Issue a new secret this often; unset means only on demand (a new
    /// value of the annotation `tokenplane.io/rotate-secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1h')").message("rotation interval must be at least 1h"))]
    pub interval: Option<crate::duration::Duration>,
    /// How long the previous secret keeps working after a rotation.
    #[serde(default = "default_grace_period")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s') && duration(self) <= duration('720h')").message("grace period must be between 0s and 720h"))]
    pub grace_period: crate::duration::Duration,
}

fn default_grace_period() -> crate::duration::Duration {
    crate::duration::Duration::from_secs(24 * 3600)
}

/// On demand only, with the default grace period: what a client without
/// `secretRotation` gets when its rotation annotation changes.
impl Default for SecretRotation {
    fn default() -> Self {
        Self { interval: None, grace_period: default_grace_period() }
    }
}

fn default_grant_types() -> Vec<GrantType> {
    vec![GrantType::ClientCredentials]
}

/// An OAuth2 client registration. The operator issues its credentials into a
/// Secret in the same namespace; its client id is `<name>.<namespace>`.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "tokenplane.io",
    version = "v1alpha1",
    kind = "OAuth2Client",
    plural = "oauth2clients",
    shortname = "o2c",
    category = "tokenplane",
    namespaced,
    status = "OAuth2ClientStatus",
    doc = "An OAuth2 client registration: grants, scopes, audiences and redirect URIs, with credentials issued into a Secret.",
    printcolumn(name = "Client ID", type_ = "string", json_path = ".status.clientId"),
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.policyRef.name"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("!self.grantTypes.exists(g, g == 'authorization_code') || size(self.redirectUris) > 0").message("the authorization_code grant needs at least one redirect URI").field_path(".redirectUris"))]
#[x_kube(validation = Rule::new("!self.grantTypes.exists(g, g == 'refresh_token') || self.grantTypes.exists(g, g == 'authorization_code')").message("refresh tokens are only issued with the authorization_code grant (RFC 6749 §4.4.3)").field_path(".grantTypes"))]
#[x_kube(validation = Rule::new("self.tokenEndpointAuthMethod != 'none' || !self.grantTypes.exists(g, g == 'client_credentials')").message("a public client (tokenEndpointAuthMethod none) cannot use client_credentials: it has no secret").field_path(".grantTypes"))]
#[x_kube(validation = Rule::new("self.defaultScopes.all(s, s in self.scopes)").message("every default scope must also be listed in scopes").field_path(".defaultScopes"))]
#[serde(rename_all = "camelCase")]
pub struct OAuth2ClientSpec {
    /// Grants this client may use: client_credentials, authorization_code,
    /// refresh_token. Public clients always use PKCE with S256.
    #[serde(default = "default_grant_types")]
    #[x_kube(validation = Rule::new("size(self) > 0").message("list at least one grant type"))]
    #[x_kube(validation = Rule::new("!self.exists(g, g == 'implicit' || g == 'password')").message("the implicit and password grants are forbidden by RFC 9700 (§2.1.2, §2.4); use authorization_code with PKCE"))]
    #[schemars(length(max = 3))]
    pub grant_types: Vec<GrantType>,

    /// Client authentication at the token endpoint; `none` makes a public client.
    #[serde(default)]
    pub token_endpoint_auth_method: AuthMethod,

    /// Redirect URIs, matched exactly (only the port of a loopback URI may vary).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self.all(u, !u.contains('#'))").message(redirect::FRAGMENT))]
    #[x_kube(validation = Rule::new("self.all(u, !u.contains('*'))").message(redirect::WILDCARD))]
    #[x_kube(validation = Rule::new(r"self.all(u, !u.matches('^[a-z][a-z0-9+.-]*://[^/?#]*@'))").message(redirect::USERINFO))]
    #[x_kube(validation = Rule::new(r"self.all(u, u.matches('^https://[^/?#]+') || u.matches('^http://(localhost|127\\.[0-9]+\\.[0-9]+\\.[0-9]+|\\[::1\\])([:/?]|$)') || u.matches('^[a-z][a-z0-9+-]*(\\.[a-z0-9+-]+)+:'))").message(redirect::SCHEME))]
    #[schemars(length(max = 32), inner(length(max = 2048)))]
    pub redirect_uris: Vec<String>,

    /// Scopes the client may request.
    #[serde(default)]
    #[x_kube(validation = Rule::new(r"self.all(s, s.matches('^[!#-\\[\\]-~]+$'))").message("a scope is one or more printable ASCII characters without spaces, quotes or backslashes (RFC 6749 §3.3)"))]
    #[schemars(length(max = 64), inner(length(max = 128)))]
    pub scopes: Vec<String>,

    /// Scopes granted when a request names none; a subset of `scopes`.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(max = 128)))]
    pub default_scopes: Vec<String>,

    /// Audiences (RFC 8707 resource indicators) tokens may be issued for. A
    /// request names one with `resource`; with a single audience it may omit it.
    #[x_kube(validation = Rule::new("size(self) > 0").message("list at least one audience: access tokens always carry one (RFC 9068)"))]
    #[schemars(length(max = 16), inner(length(max = 512)))]
    pub audiences: Vec<String>,

    /// The TokenPolicy that shapes this client's tokens.
    pub policy_ref: PolicyReference,

    /// Name of the Secret receiving the credentials; `<name>-oauth2-credentials` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub credentials_secret_name: Option<String>,

    /// Pods that act as this client: they get its agent sidecar and network
    /// access to Redis and the issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<LabelSelector>,

    /// Rotation of the client secret. Without it, a new value of the
    /// annotation `tokenplane.io/rotate-secret` still rotates, with a 24h grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_rotation: Option<SecretRotation>,

    /// A first-party client skips the consent screen in the code flow.
    #[serde(default)]
    pub first_party: bool,

    /// A disabled client cannot get tokens, and every token it holds stops working.
    #[serde(default)]
    pub disabled: bool,
}

/// Observed state of an OAuth2Client.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2ClientStatus {
    /// The `.metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling` and `Degraded`; for a confidential client also
    /// `PreviousSecretInUse`: whether the secret a rotation replaced was
    /// accepted since.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The client id, `<name>.<namespace>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The Secret holding the credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// When the current secret was issued (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_issued_at: Option<String>,
    /// When the previous secret stops working, while a rotation overlaps (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at: Option<String>,
    /// When an issuer last accepted the previous secret (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_last_used_at: Option<String>,
}

impl OAuth2Client {
    /// The client id of a client named `name` in `namespace`. Namespaces hold
    /// no dots, so the id is unique across the cluster.
    pub fn client_id_for(name: &str, namespace: &str) -> String {
        format!("{name}.{namespace}")
    }

    /// The Secret that receives this client's credentials.
    pub fn credentials_secret_name(&self) -> String {
        self.spec.credentials_secret_name.clone().unwrap_or_else(|| {
            format!("{}-oauth2-credentials", self.metadata.name.as_deref().unwrap_or_default())
        })
    }

    /// The ConfigMap beside the credentials Secret holding the CA bundle
    /// (`ca.crt`) the client's agent verifies the issuer with.
    pub fn issuer_ca_name(&self) -> String {
        format!("{}-issuer-ca", self.credentials_secret_name())
    }
}

impl OAuth2ClientSpec {
    /// The CRD's CEL rules, for objects no API server has checked.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        let mut errors = Errors::default();
        let has = |g| self.grant_types.contains(&g);
        errors.check(!self.grant_types.is_empty(), "spec.grantTypes", "list at least one grant type");
        errors.check(
            !has(GrantType::AuthorizationCode) || !self.redirect_uris.is_empty(),
            "spec.redirectUris",
            "the authorization_code grant needs at least one redirect URI",
        );
        errors.check(
            !has(GrantType::RefreshToken) || has(GrantType::AuthorizationCode),
            "spec.grantTypes",
            "refresh tokens are only issued with the authorization_code grant (RFC 6749 §4.4.3)",
        );
        errors.check(
            self.token_endpoint_auth_method != AuthMethod::None || !has(GrantType::ClientCredentials),
            "spec.grantTypes",
            "a public client (tokenEndpointAuthMethod none) cannot use client_credentials: it has no secret",
        );
        for (i, uri) in self.redirect_uris.iter().enumerate() {
            if let Err(why) = redirect::check(uri) {
                errors.check(false, format!("spec.redirectUris[{i}]"), why);
            }
        }
        for (i, scope) in self.scopes.iter().enumerate() {
            errors.check(
                is_scope_token(scope),
                format!("spec.scopes[{i}]"),
                "a scope is one or more printable ASCII characters without spaces, quotes or backslashes (RFC 6749 §3.3)",
            );
        }
        errors.check(
            self.default_scopes.iter().all(|s| self.scopes.contains(s)),
            "spec.defaultScopes",
            "every default scope must also be listed in scopes",
        );
        errors.check(
            !self.audiences.is_empty(),
            "spec.audiences",
            "list at least one audience: access tokens always carry one (RFC 9068)",
        );
        errors.finish()
    }
}

/// `scope-token` of RFC 6749 §3.3.
pub fn is_scope_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}
