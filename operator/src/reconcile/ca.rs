//! The operator's certificate authority, as pure functions of its Secret
//! and the time: which CAs exist (active, next, retired), when the next is
//! made and promoted, the bundle every verifier trusts, and the leaf
//! certificates it signs (the issuers' serving certificates; the admission
//! webhooks' later).
//!
//! Rotation never fails a handshake: a new CA enters the bundle
//! `propagation` before it signs anything; it takes over when the active CA
//! has less than one leaf lifetime left; the retired CA stays in the bundle
//! until it expires, and no leaf it signed outlives it.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use super::{Invalid, MANAGED_BY};

/// The Secret holding the CA, in the operator's namespace.
pub const CA_SECRET: &str = "tokenplane-ca";
/// Key of the trusted CAs (PEM, concatenated) in Secrets and ConfigMaps.
pub const BUNDLE_KEY: &str = "ca.crt";
/// Entries of a `kubernetes.io/tls` Secret.
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

const ACTIVE_CRT: &str = "active.crt";
const ACTIVE_KEY: &str = "active.key";
const NEXT_CRT: &str = "next.crt";
const NEXT_KEY: &str = "next.key";
const RETIRED_CRT: &str = "retired.crt";

const DAY: u64 = 86_400;

/// How long CAs and leaves live, and how long a bundle takes to reach every
/// verifier (kubelet's ConfigMap sync plus the agent's re-read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub ca_lifetime: u64,
    pub leaf_lifetime: u64,
    pub propagation: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self { ca_lifetime: 365 * DAY, leaf_lifetime: 30 * DAY, propagation: DAY }
    }
}

impl Settings {
    /// A CA must live long enough to be published, then sign full leaves.
    pub fn check(&self) -> Result<(), String> {
        if self.leaf_lifetime < 3600 || self.propagation == 0 {
            return Err(
                "the serving certificate lifetime must be at least 1h and the CA propagation time above 0"
                    .into(),
            );
        }
        if self.ca_lifetime < 2 * (self.leaf_lifetime + self.propagation) {
            return Err(format!(
                "the CA lifetime ({}s) must be at least twice the serving certificate lifetime plus the propagation time ({}s): raise --ca-lifetime or lower --serving-cert-lifetime",
                self.ca_lifetime,
                2 * (self.leaf_lifetime + self.propagation)
            ));
        }
        Ok(())
    }
}

/// A CA certificate and, while it may sign, its key.
#[derive(Clone, PartialEq, Eq)]
pub struct Authority {
    pub cert_pem: String,
    key_pem: Option<String>,
    pub not_before: u64,
    pub not_after: u64,
    key_id: Vec<u8>,
}

/// Never prints the key, should one reach a log line.
impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A leaf certificate and its key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a leaf says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafInfo {
    pub not_before: u64,
    pub not_after: u64,
    /// The signer's key identifier.
    authority_key_id: Option<Vec<u8>>,
    pub dns_names: Vec<String>,
}

impl LeafInfo {
    /// When a leaf is renewed: at two thirds of its lifetime.
    pub fn renew_at(&self) -> u64 {
        self.not_before + (self.not_after - self.not_before) * 2 / 3
    }
}

/// The CAs: the one that signs, the one about to, those still trusted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Authorities {
    pub active: Option<Authority>,
    pub next: Option<Authority>,
    pub retired: Vec<Authority>,
}

impl Authorities {
    /// A first CA, made at `now`, as [`plan`] makes it from nothing: for
    /// previews and tests, which have no CA Secret to read.
    pub fn first(settings: &Settings, now: u64) -> Self {
        plan(Self::default(), settings, now, Authority::generate).authorities
    }
}

/// One CA for every unit test, made at time 0 for a year.
#[cfg(test)]
pub(crate) fn test_authorities() -> &'static Authorities {
    static CAS: std::sync::OnceLock<Authorities> = std::sync::OnceLock::new();
    CAS.get_or_init(|| Authorities::first(&Settings::default(), 0))
}

/// The CAs as they should be now, and when to look again.
#[derive(Debug)]
pub struct Planned {
    pub authorities: Authorities,
    pub changed: bool,
    pub next_at: u64,
}

fn x509_error(what: &str, e: impl std::fmt::Display) -> Invalid {
    Invalid { reason: "InvalidCertificateAuthority", message: format!("{what}: {e}") }
}

fn parse_pems(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .map(|p| p.map(|p| p.contents).map_err(|e| e.to_string()))
        .collect()
}

/// Each certificate of a concatenated PEM bundle, as its own PEM.
fn split_pems(bundle: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    bundle.split_inclusive(END).filter(|b| b.contains(END)).map(|b| format!("{}\n", b.trim_start())).collect()
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions().iter().find_map(|e| match e.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
        _ => None,
    })
}

fn unix(t: x509_parser::time::ASN1Time) -> u64 {
    u64::try_from(t.timestamp()).unwrap_or_default()
}

impl Authority {
    /// A new self-signed ECDSA P-256 CA valid from `now` for `lifetime`.
    pub fn generate(now: u64, lifetime: u64) -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("P-256 key generation");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::OrganizationName, "tokenplane");
        params.distinguished_name.push(DnType::CommonName, format!("tokenplane CA {now}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        (params.not_before, params.not_after) = (time(now), time(now + lifetime));
        let cert = params.self_signed(&key).expect("self-signing a CA");
        Self::parse(cert.pem(), Some(key.serialize_pem())).expect("a CA just made parses")
    }

    fn parse(cert_pem: String, key_pem: Option<String>) -> Result<Self, String> {
        let der = parse_pems(cert_pem.as_bytes())?.pop().ok_or("no certificate in the PEM")?;
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| e.to_string())?;
        Ok(Self {
            not_before: unix(cert.validity().not_before),
            not_after: unix(cert.validity().not_after),
            key_id: subject_key_id(&cert).ok_or("the CA has no subject key identifier")?,
            cert_pem,
            key_pem,
        })
    }

    /// A server certificate for `dns_names`, valid from `now` for
    /// `lifetime` but never beyond this CA.
    pub fn sign_server(&self, dns_names: &[String], now: u64, lifetime: u64) -> Result<Leaf, String> {
        let ca_key = self.key_pem.as_deref().ok_or("a retired CA does not sign")?;
        let ca_key = KeyPair::from_pem(ca_key).map_err(|e| e.to_string())?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key).map_err(|e| e.to_string())?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let mut params = CertificateParams::new(dns_names.to_vec()).map_err(|e| e.to_string())?;
        params.distinguished_name.push(DnType::CommonName, dns_names.first().cloned().unwrap_or_default());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = (time(now), time((now + lifetime).min(self.not_after)));
        let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
        Ok(Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    fn signed(&self, leaf: &LeafInfo) -> bool {
        leaf.authority_key_id.as_ref() == Some(&self.key_id)
    }
}

fn time(unix: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).unwrap_or(i64::MAX))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// The first certificate of `cert_pem`, as a leaf.
pub fn leaf_info(cert_pem: &[u8]) -> Result<LeafInfo, String> {
    let der = parse_pems(cert_pem)?.into_iter().next().ok_or("no certificate in the PEM")?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| e.to_string())?;
    let dns_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(name) => Some((*name).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(LeafInfo {
        not_before: unix(cert.validity().not_before),
        not_after: unix(cert.validity().not_after),
        authority_key_id: cert.extensions().iter().find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref().map(|k| k.0.to_vec()),
            _ => None,
        }),
        dns_names,
    })
}

impl Authorities {
    /// The CAs of the operator's CA Secret; none when it does not exist.
    pub fn read(secret: Option<&Secret>) -> Result<Self, Invalid> {
        let Some(data) = secret.and_then(|s| s.data.as_ref()) else { return Ok(Self::default()) };
        let text = |key: &str| data.get(key).map(|v| String::from_utf8_lossy(&v.0).into_owned());
        let pair = |crt: &str, key: &str| -> Result<Option<Authority>, Invalid> {
            match (text(crt), text(key)) {
                (Some(cert), Some(key)) => {
                    Authority::parse(cert, Some(key)).map(Some).map_err(|e| x509_error(crt, e))
                }
                (None, None) => Ok(None),
                _ => Err(x509_error(crt, "a certificate without its key, or a key without its certificate")),
            }
        };
        let mut retired = Vec::new();
        for pem in split_pems(&text(RETIRED_CRT).unwrap_or_default()) {
            retired.push(Authority::parse(pem, None).map_err(|e| x509_error(RETIRED_CRT, e))?);
        }
        Ok(Self { active: pair(ACTIVE_CRT, ACTIVE_KEY)?, next: pair(NEXT_CRT, NEXT_KEY)?, retired })
    }

    /// Every CA a verifier must trust now: next, active and retired, PEM.
    pub fn bundle(&self) -> String {
        self.next.iter().chain(&self.active).chain(&self.retired).map(|a| a.cert_pem.as_str()).collect()
    }

    /// Whether the active CA signed `leaf`.
    pub fn signed_by_active(&self, leaf: &LeafInfo) -> bool {
        self.active.as_ref().is_some_and(|a| a.signed(leaf))
    }

    /// The CA Secret in `namespace`.
    pub fn to_secret(&self, namespace: &str) -> Secret {
        let mut data = BTreeMap::new();
        let mut put =
            |key: &str, value: &str| data.insert(key.to_owned(), ByteString(value.as_bytes().to_vec()));
        for (authority, crt, key) in
            [(&self.active, ACTIVE_CRT, ACTIVE_KEY), (&self.next, NEXT_CRT, NEXT_KEY)]
        {
            if let Some(a) = authority {
                put(crt, &a.cert_pem);
                put(key, a.key_pem.as_deref().unwrap_or_default());
            }
        }
        if !self.retired.is_empty() {
            put(RETIRED_CRT, &self.retired.iter().map(|a| a.cert_pem.as_str()).collect::<String>());
        }
        put(BUNDLE_KEY, &self.bundle());
        Secret {
            metadata: ObjectMeta {
                name: Some(CA_SECRET.into()),
                namespace: Some(namespace.into()),
                labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".into(), MANAGED_BY.into())])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Secret::default()
        }
    }
}

/// The CAs as they should be at `now`: the first one made, the next one
/// made `propagation` before it must sign, promoted when the active one has
/// less than a leaf lifetime left, retired ones dropped once expired.
/// `new_ca(now, lifetime)` makes a CA.
pub fn plan(
    current: Authorities,
    settings: &Settings,
    now: u64,
    mut new_ca: impl FnMut(u64, u64) -> Authority,
) -> Planned {
    let mut cas = current.clone();
    cas.retired.retain(|r| r.not_after > now);
    let active = cas.active.get_or_insert_with(|| new_ca(now, settings.ca_lifetime));
    let hand_over_at = active.not_after.saturating_sub(settings.leaf_lifetime);
    let publish_at = hand_over_at.saturating_sub(settings.propagation);
    if cas.next.is_none() && now >= publish_at {
        cas.next = Some(new_ca(now, settings.ca_lifetime));
    }
    let active_not_after = active.not_after;
    if let Some(next) = cas.next.take_if(|next| {
        let published = next.not_before + settings.propagation <= now;
        (now >= hand_over_at && published) || now >= active_not_after
    }) {
        let mut old = cas.active.replace(next).expect("an active CA");
        old.key_pem = None;
        cas.retired.push(old);
    }
    let active = cas.active.as_ref().expect("an active CA");
    let hand_over_at = active.not_after.saturating_sub(settings.leaf_lifetime);
    let mut wakes = vec![hand_over_at.saturating_sub(settings.propagation), hand_over_at];
    if let Some(next) = &cas.next {
        wakes.push(next.not_before + settings.propagation);
    }
    wakes.extend(cas.retired.iter().map(|r| r.not_after));
    let next_at = wakes.into_iter().filter(|t| *t > now).min().unwrap_or(now + settings.leaf_lifetime);
    Planned { changed: cas != current, authorities: cas, next_at }
}

/// Whether the leaf in `cert_pem` must be replaced: missing or unreadable,
/// not signed by the active CA, for other names, or two thirds through.
pub fn needs_renewal(cas: &Authorities, cert_pem: Option<&[u8]>, dns_names: &[String], now: u64) -> bool {
    let Some(info) = cert_pem.and_then(|pem| leaf_info(pem).ok()) else { return true };
    !cas.signed_by_active(&info) || info.dns_names != dns_names || now >= info.renew_at()
}

/// Where a serving certificate comes from.
#[derive(Clone, Debug)]
pub enum Serving {
    /// Signed by the operator's CA.
    Secret(Secret),
    /// Asked of cert-manager, which writes the Secret of the same name.
    Certificate(kube::api::DynamicObject),
}

/// cert-manager's `Certificate` kind.
pub fn certificate_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "cert-manager.io",
        "v1",
        "Certificate",
    ))
}

/// A cert-manager Certificate (`metadata` as given) that has `issuer` write
/// the Secret of the same name for `dns_names`, renewed at two thirds of
/// `lifetime`, with a fresh ECDSA P-256 key each time.
pub fn certificate(
    metadata: ObjectMeta,
    dns_names: &[String],
    issuer: &tokenplane_api::tokenpolicy::CertManagerIssuerRef,
    lifetime: u64,
) -> kube::api::DynamicObject {
    let secret_name = metadata.name.clone().unwrap_or_default();
    let hours = |secs: u64| format!("{}h", secs.div_ceil(3600));
    let mut certificate =
        kube::api::DynamicObject::new(&secret_name, &certificate_resource()).data(serde_json::json!({
            "spec": {
                "secretName": secret_name,
                "secretTemplate": {"labels": {"app.kubernetes.io/managed-by": super::MANAGED_BY}},
                "dnsNames": dns_names,
                "duration": hours(lifetime),
                "renewBefore": hours(lifetime / 3),
                "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                "usages": ["digital signature", "server auth"],
                "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
            }
        }));
    certificate.metadata = metadata;
    certificate
}

/// What a server certificate Secret is made from.
#[derive(Clone, Copy)]
pub struct ServingInputs<'a> {
    pub cas: &'a Authorities,
    /// The Secret as it is, if any.
    pub existing: Option<&'a Secret>,
    /// How long a new certificate lives.
    pub lifetime: u64,
}

/// A `kubernetes.io/tls` Secret (`metadata` as given) for `names`: the
/// certificate `inputs.existing` holds while it needs no renewal, else one
/// the active CA signs afresh; the CA bundle beside it; and when it is due
/// for renewal. `what` names it in a refusal.
pub fn server_secret(
    metadata: ObjectMeta,
    names: &[String],
    inputs: ServingInputs<'_>,
    now: u64,
    what: &str,
) -> Result<(Secret, u64), Invalid> {
    let held = inputs.existing.and_then(|s| s.data.as_ref());
    let entry = |key: &str| held.and_then(|d| d.get(key)).map(|v| v.0.clone()).filter(|v| !v.is_empty());
    let (cert, key) = match (entry(TLS_CRT), entry(TLS_KEY)) {
        (Some(cert), Some(key)) if !needs_renewal(inputs.cas, Some(&cert), names, now) => (cert, key),
        _ => {
            let signer = inputs.cas.active.as_ref().ok_or_else(|| Invalid {
                reason: "NoCertificateAuthority",
                message: "the operator's CA is not loaded yet; this retries by itself".into(),
            })?;
            let leaf = signer.sign_server(names, now, inputs.lifetime).map_err(|e| Invalid {
                reason: "InvalidCertificateAuthority",
                message: format!("cannot sign {what}: {e}"),
            })?;
            (leaf.cert_pem.into_bytes(), leaf.key_pem.into_bytes())
        }
    };
    let renew_at = leaf_info(&cert).map(|info| info.renew_at()).unwrap_or(now);
    let secret = Secret {
        metadata,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (TLS_CRT.to_owned(), ByteString(cert)),
            (TLS_KEY.to_owned(), ByteString(key)),
            (BUNDLE_KEY.to_owned(), ByteString(inputs.cas.bundle().into_bytes())),
        ])),
        ..Secret::default()
    };
    Ok((secret, renew_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600;

    fn settings() -> Settings {
        Settings { ca_lifetime: 90 * DAY, leaf_lifetime: 9 * DAY, propagation: DAY }
    }

    #[test]
    fn settings_that_leave_no_room_to_rotate_are_refused() {
        assert!(settings().check().is_ok());
        let tight = Settings { ca_lifetime: 19 * DAY, ..settings() };
        assert!(tight.check().unwrap_err().contains("--ca-lifetime"));
    }

    #[test]
    fn the_secret_round_trips_and_never_prints_a_key() {
        let planned = plan(Authorities::default(), &settings(), 1_000_000, Authority::generate);
        assert!(planned.changed);
        let secret = planned.authorities.to_secret("tokenplane-system");
        assert_eq!(Authorities::read(Some(&secret)).unwrap(), planned.authorities);
        assert!(!format!("{:?}", planned.authorities).contains("PRIVATE"));
        let again = plan(planned.authorities.clone(), &settings(), 1_000_000 + HOUR, Authority::generate);
        assert!(!again.changed, "nothing to do an hour later");
        assert_eq!(again.next_at, 1_000_000 + 80 * DAY, "wakes to publish the next CA");
    }

    #[test]
    fn a_broken_secret_is_refused_with_the_entry_named() {
        let mut secret =
            plan(Authorities::default(), &settings(), 0, Authority::generate).authorities.to_secret("ns");
        secret.data.as_mut().unwrap().remove(ACTIVE_KEY);
        let invalid = Authorities::read(Some(&secret)).unwrap_err();
        assert!(invalid.message.starts_with("active.crt"), "{}", invalid.message);
    }

    #[test]
    fn leaves_renew_at_two_thirds_and_when_the_signer_or_names_change() {
        let cas = plan(Authorities::default(), &settings(), 0, Authority::generate).authorities;
        let names = vec!["default-issuer.auth.svc".to_owned()];
        let leaf = cas.active.as_ref().unwrap().sign_server(&names, 0, 9 * DAY).unwrap();
        let pem = Some(leaf.cert_pem.as_bytes());
        assert!(!needs_renewal(&cas, pem, &names, 6 * DAY - 1));
        assert!(needs_renewal(&cas, pem, &names, 6 * DAY));
        assert!(needs_renewal(&cas, pem, &["other.svc".to_owned()], 0));
        assert!(needs_renewal(&cas, None, &names, 0));
        let other = plan(Authorities::default(), &settings(), 0, Authority::generate).authorities;
        assert!(needs_renewal(&other, pem, &names, 0), "signed by another CA");
    }
}
