//! What an OAuth2Client needs, as pure functions of the resource, its
//! TokenPolicy and its generated credentials: the credentials Secret in the
//! client's namespace, the registration issuers serve from Redis (secret
//! hashes only), and the Redis ACL user of the client's agent. The apply
//! layer generates the credentials, writes these, and reports conditions.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use tokenplane_api::client::{ClientRecord, SecretHash};
use tokenplane_api::credentials::{CLIENT_ID, CLIENT_SECRET, ISSUER, REDIS_USERNAME, TOKEN_ENDPOINT};
use tokenplane_api::oauth2client::AuthMethod;
use tokenplane_api::{OAuth2Client, TokenPolicy, storage};

use super::redis_password::{Credentials as RedisCredentials, OWNED_KEYS};
use super::{AclUser, Invalid, managed_meta, password_hash};

/// Secrets the operator generated for a client (256-bit random each), kept
/// in its credentials Secret between reconciles.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `None` for a public client.
    pub client_secret: Option<String>,
    /// The agent user's passwords.
    pub redis: RedisCredentials,
}

/// Never prints a secret, should one reach a log line.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("confidential", &self.client_secret.is_some())
            .finish_non_exhaustive()
    }
}

/// Everything an OAuth2Client should have.
pub struct Desired {
    pub client_id: String,
    pub secret: Secret,
    pub registration: ClientRecord,
    pub agent_user: AclUser,
}

/// The issuer URL of a policy: its `issuerUrl`, else its issuer Service.
pub fn issuer_url(policy: &TokenPolicy) -> String {
    policy.spec.issuer_url.clone().unwrap_or_else(|| {
        let name = policy.metadata.name.as_deref().unwrap_or_default();
        let namespace = policy.metadata.namespace.as_deref().unwrap_or("default");
        format!("https://{name}-issuer.{namespace}.svc")
    })
}

/// The Redis user of a client's agent.
pub fn agent_user(client_id: &str) -> AclUser {
    AclUser { name: format!("agent:{client_id}"), rules: storage::agent_acl(client_id) }
}

/// Checks `client` and builds what it should have. `policy` is the
/// TokenPolicy its `policyRef` names, if found.
pub fn desired(
    client: &OAuth2Client,
    policy: Option<&TokenPolicy>,
    credentials: &Credentials,
) -> Result<Desired, Invalid> {
    client.spec.validate().map_err(|e| Invalid::spec(e.to_string()))?;
    let (name, namespace) = name_and_namespace(client)?;
    let policy = policy.ok_or_else(|| policy_not_found(client))?;
    let public = client.spec.token_endpoint_auth_method == AuthMethod::None;
    if public != credentials.client_secret.is_none() {
        return Err(Invalid::spec(
            "credentials do not match the client type: a secret is for confidential clients only".into(),
        ));
    }
    let client_id = OAuth2Client::client_id_for(name, namespace);
    let issuer = issuer_url(policy);
    let agent_user = agent_user(&client_id);
    let secret = credentials_secret(client, &client_id, &issuer, &agent_user, credentials);
    let hashes = credentials.client_secret.iter().map(|s| SecretHash::of(s)).collect();
    let registration = ClientRecord {
        policy: Some(client.spec.policy_ref.policy_id(namespace)),
        ..ClientRecord::new(client_id.clone(), &client.spec, hashes)
    };
    Ok(Desired { client_id, secret, registration, agent_user })
}

/// The condition of a client whose `policyRef` names no TokenPolicy.
pub fn policy_not_found(client: &OAuth2Client) -> Invalid {
    let namespace = client.metadata.namespace.as_deref().unwrap_or_default();
    let policy_ns = client.spec.policy_ref.namespace.as_deref().unwrap_or(namespace);
    Invalid::policy(format!(
        "TokenPolicy {policy_ns}/{} not found: create it or fix spec.policyRef",
        client.spec.policy_ref.name
    ))
}

fn name_and_namespace(client: &OAuth2Client) -> Result<(&str, &str), Invalid> {
    match (client.metadata.name.as_deref(), client.metadata.namespace.as_deref()) {
        (Some(name), Some(namespace)) => Ok((name, namespace)),
        _ => Err(Invalid::spec("an OAuth2Client needs a name and a namespace".into())),
    }
}

fn credentials_secret(
    client: &OAuth2Client,
    client_id: &str,
    issuer: &str,
    agent_user: &AclUser,
    credentials: &Credentials,
) -> Secret {
    let (mut data, times) = credentials.redis.written(&OWNED_KEYS);
    let mut put = |key: &str, value: &str| data.insert(key.to_owned(), ByteString(value.as_bytes().to_vec()));
    put(CLIENT_ID, client_id);
    put(ISSUER, issuer);
    put(TOKEN_ENDPOINT, &format!("{issuer}/oauth2/token"));
    put(REDIS_USERNAME, &agent_user.name);
    if let Some(secret) = &credentials.client_secret {
        put(CLIENT_SECRET, secret);
    }
    let mut metadata = managed_meta(
        client,
        client.credentials_secret_name(),
        [("tokenplane.io/client", client.metadata.name.clone().unwrap_or_default())],
    );
    metadata.annotations.get_or_insert_default().extend(times);
    Secret { metadata, type_: Some("Opaque".into()), data: Some(data), ..Secret::default() }
}

/// The key of the Redis CA bundle in the issuer CA ConfigMap.
pub const REDIS_CA_KEY: &str = "redis-ca.crt";

/// The CA bundle of the client's issuer, in a ConfigMap beside its
/// credentials Secret: not secret, and mounted by its agents. With Redis
/// over TLS, the bundle Redis is verified against beside it.
pub fn issuer_ca(client: &OAuth2Client, bundle: &str, redis_ca: Option<&[u8]>) -> ConfigMap {
    let mut data = BTreeMap::from([(super::ca::BUNDLE_KEY.to_owned(), bundle.to_owned())]);
    if let Some(ca) = redis_ca.filter(|ca| !ca.is_empty()) {
        data.insert(REDIS_CA_KEY.to_owned(), String::from_utf8_lossy(ca).into_owned());
    }
    ConfigMap {
        metadata: managed_meta(
            client,
            client.issuer_ca_name(),
            [("tokenplane.io/client", client.metadata.name.clone().unwrap_or_default())],
        ),
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// The credentials kept in an existing credentials Secret, if complete for
/// this kind of client: reused, so a reconcile never rotates by accident.
/// A password without a time counts from `now`.
pub fn existing_credentials(secret: &Secret, public: bool, now: u64) -> Option<Credentials> {
    let data = secret.data.as_ref()?;
    let text =
        |key: &str| data.get(key).and_then(|v| String::from_utf8(v.0.clone()).ok()).filter(|s| !s.is_empty());
    let client_secret = text(CLIENT_SECRET);
    if public != client_secret.is_none() {
        return None;
    }
    Some(Credentials { client_secret, redis: RedisCredentials::read(secret, &OWNED_KEYS, now)? })
}

/// What Redis holds for a client, to check its credentials Secret against:
/// the registration's secret hashes and the agent user's password hashes
/// (`ACL GETUSER`, SHA-256 hex).
pub struct Registered<'a> {
    pub registration: Option<&'a ClientRecord>,
    pub password_hashes: Option<&'a [String]>,
}

/// The credentials to use: those of the Secret unless they no longer match
/// what Redis holds (the Secret was edited by hand), in which case fresh
/// ones replace them (`true`: repaired). A hand-set value is never adopted:
/// it may be weak, or known to whoever set it.
pub fn credentials_to_use(
    existing: Option<Credentials>,
    registered: &Registered<'_>,
    now: u64,
    fresh: impl FnOnce() -> Credentials,
) -> (Credentials, bool) {
    let Some(existing) = existing else { return (fresh(), false) };
    let secret_ok = match (&existing.client_secret, registered.registration) {
        (Some(secret), Some(r)) => r.secret_matches(secret, now),
        (None, Some(r)) => r.secrets.is_empty(),
        (_, None) => true,
    };
    let password_ok = registered
        .password_hashes
        .is_none_or(|hashes| hashes.contains(&password_hash(&existing.redis.password)));
    if secret_ok && password_ok { (existing, false) } else { (fresh(), true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(yaml: &str) -> OAuth2Client {
        let mut client: OAuth2Client = serde_norway::from_str(yaml).expect("fixture parses");
        client.metadata.uid = Some("uid-1".into());
        client
    }

    fn policy() -> TokenPolicy {
        serde_norway::from_str(
            "apiVersion: tokenplane.io/v1alpha1\nkind: TokenPolicy\nmetadata: {name: default, namespace: auth}\n\
             spec: {lifetimes: {accessToken: 15m}}\n",
        )
        .expect("fixture parses")
    }

    const ORDERS: &str = "apiVersion: tokenplane.io/v1alpha1\nkind: OAuth2Client\n\
        metadata: {name: orders, namespace: shop}\n\
        spec: {policyRef: {name: default, namespace: auth}, scopes: [orders.read], audiences: [https://orders]}\n";

    fn credentials() -> Credentials {
        Credentials { client_secret: Some("s3cret".into()), redis: RedisCredentials::new("pw".into(), 0) }
    }

    fn text(secret: &Secret, key: &str) -> String {
        String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
    }

    #[test]
    fn a_confidential_client_gets_its_secret_registration_and_agent_user() {
        let d = desired(&client(ORDERS), Some(&policy()), &credentials()).unwrap();
        assert_eq!(d.client_id, "orders.shop");
        let meta = &d.secret.metadata;
        assert_eq!(
            (meta.name.as_deref(), meta.namespace.as_deref()),
            (Some("orders-oauth2-credentials"), Some("shop"))
        );
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("OAuth2Client", "uid-1", Some(true))
        );
        assert_eq!(text(&d.secret, CLIENT_SECRET), "s3cret");
        assert_eq!(text(&d.secret, TOKEN_ENDPOINT), "https://default-issuer.auth.svc/oauth2/token");
        assert_eq!(text(&d.secret, REDIS_USERNAME), "agent:orders.shop");
        assert_eq!(d.agent_user.rules, storage::agent_acl("orders.shop"));
        assert_eq!(d.registration.policy.as_deref(), Some("default.auth"));
        assert!(d.registration.secret_matches("s3cret", 0), "the registration holds the secret's hash");
        let json = serde_json::to_string(&d.registration).unwrap();
        assert!(!json.contains("s3cret"), "never the secret itself: {json}");
        assert_eq!(
            existing_credentials(&d.secret, false, 0),
            Some(credentials()),
            "reused on the next reconcile"
        );
    }

    #[test]
    fn a_public_client_has_no_secret() {
        let spa = ORDERS.replace("scopes:", "tokenEndpointAuthMethod: none, grantTypes: [authorization_code], redirectUris: [https://spa/cb], scopes:");
        let creds = Credentials { client_secret: None, redis: RedisCredentials::new("pw".into(), 0) };
        let d = desired(&client(&spa), Some(&policy()), &creds).unwrap();
        assert!(!d.secret.data.as_ref().unwrap().contains_key(CLIENT_SECRET));
        assert!(d.registration.secrets.is_empty());
        assert_eq!(existing_credentials(&d.secret, true, 0), Some(creds));
        assert_eq!(existing_credentials(&d.secret, false, 0), None, "a confidential client needs a secret");
    }

    #[test]
    fn hand_edited_credentials_are_replaced_not_adopted() {
        let d = desired(&client(ORDERS), Some(&policy()), &credentials()).unwrap();
        let fresh = || Credentials {
            client_secret: Some("new".into()),
            redis: RedisCredentials::new("new-pw".into(), 0),
        };
        let held = |hashes: &[String]| {
            let registered =
                Registered { registration: Some(&d.registration), password_hashes: Some(hashes) };
            credentials_to_use(Some(credentials()), &registered, 0, fresh)
        };
        assert_eq!(held(&[password_hash("pw")]), (credentials(), false), "matching: kept");
        assert_eq!(
            held(&[password_hash("other")]),
            (fresh(), true),
            "Redis password edited by hand: replaced"
        );
        let edited = Credentials { client_secret: Some("chosen-by-hand".into()), ..credentials() };
        let registered = Registered { registration: Some(&d.registration), password_hashes: None };
        assert_eq!(credentials_to_use(Some(edited), &registered, 0, fresh), (fresh(), true));
        let nothing = Registered { registration: None, password_hashes: None };
        assert_eq!(
            credentials_to_use(Some(credentials()), &nothing, 0, fresh),
            (credentials(), false),
            "first sight"
        );
        assert_eq!(credentials_to_use(None, &nothing, 0, fresh), (fresh(), false));
    }

    #[test]
    fn invalid_specs_and_missing_policies_get_a_reason() {
        let fragment = ORDERS.replace(
            "scopes:",
            "grantTypes: [authorization_code], redirectUris: [https://x/cb#frag], scopes:",
        );
        let Err(e) = desired(&client(&fragment), Some(&policy()), &credentials()) else { panic!("accepted") };
        assert_eq!(e.reason, "InvalidSpec");
        assert!(e.message.contains("redirectUris[0]"), "{}", e.message);
        let Err(e) = desired(&client(ORDERS), None, &credentials()) else { panic!("accepted") };
        assert_eq!(e.reason, "PolicyNotFound");
        assert!(e.message.contains("auth/default"), "{}", e.message);
    }

    #[test]
    fn the_issuer_ca_config_map_carries_the_redis_ca_only_with_redis_over_tls() {
        let c = client(ORDERS);
        let plain = issuer_ca(&c, "issuer CA", None).data.unwrap();
        assert_eq!(plain.keys().collect::<Vec<_>>(), [crate::reconcile::ca::BUNDLE_KEY]);
        let tls = issuer_ca(&c, "issuer CA", Some(b"redis CA")).data.unwrap();
        assert_eq!(tls[REDIS_CA_KEY], "redis CA", "what injected agents pass as --redis-ca-file");
    }
}
