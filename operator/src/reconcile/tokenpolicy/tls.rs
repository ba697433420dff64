//! The issuer's serving certificate: a TLS Secret for the issuer Service's
//! DNS names, signed by the operator's CA, kept until two thirds of its
//! lifetime or until another CA takes over, with the CA bundle beside it.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use tokenplane_api::TokenPolicy;

use crate::reconcile::ca::{self, Authorities, BUNDLE_KEY};
use crate::reconcile::{Invalid, managed_meta};

/// Entries of a `kubernetes.io/tls` Secret.
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

/// What the serving certificate is made from.
#[derive(Clone, Copy)]
pub(crate) struct ServingInputs<'a> {
    pub cas: &'a Authorities,
    /// The policy's serving Secret as it is, if any.
    pub existing: Option<&'a Secret>,
    /// How long a new certificate lives.
    pub lifetime: u64,
}

/// The Secret's name for the policy named `policy`.
pub fn serving_secret_name(policy: &str) -> String {
    format!("{policy}-issuer-tls")
}

/// The names the issuer Service answers to inside the cluster.
pub(super) fn dns_names(policy: &TokenPolicy) -> Vec<String> {
    let service = format!("{}-issuer", policy.metadata.name.as_deref().unwrap_or_default());
    let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service,
    ]
}

/// The serving Secret and when its certificate is due for renewal.
pub(super) fn serving_secret(
    policy: &TokenPolicy,
    inputs: ServingInputs<'_>,
    now: u64,
) -> Result<(Secret, u64), Invalid> {
    let names = dns_names(policy);
    let held = inputs.existing.and_then(|s| s.data.as_ref());
    let entry = |key: &str| held.and_then(|d| d.get(key)).map(|v| v.0.clone()).filter(|v| !v.is_empty());
    let (cert, key) = match (entry(TLS_CRT), entry(TLS_KEY)) {
        (Some(cert), Some(key)) if !ca::needs_renewal(inputs.cas, Some(&cert), &names, now) => (cert, key),
        _ => {
            let signer = inputs.cas.active.as_ref().ok_or_else(|| Invalid {
                reason: "NoCertificateAuthority",
                message: "the operator's CA is not loaded yet; this retries by itself".into(),
            })?;
            let leaf = signer.sign_server(&names, now, inputs.lifetime).map_err(|e| Invalid {
                reason: "InvalidCertificateAuthority",
                message: format!("cannot sign the issuer's serving certificate: {e}"),
            })?;
            (leaf.cert_pem.into_bytes(), leaf.key_pem.into_bytes())
        }
    };
    let renew_at = ca::leaf_info(&cert).map(|info| info.renew_at()).unwrap_or(now);
    let name = policy.metadata.name.clone().unwrap_or_default();
    let secret = Secret {
        metadata: managed_meta(policy, serving_secret_name(&name), [("tokenplane.io/policy", name)]),
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
    use crate::reconcile::tokenpolicy::fixtures::{DAY, DEFAULT, cas, policy, reconcile};

    fn cert(secret: &Secret) -> Vec<u8> {
        secret.data.as_ref().unwrap()[TLS_CRT].0.clone()
    }

    #[test]
    fn the_issuer_gets_a_certificate_for_its_service_names_kept_until_two_thirds() {
        let p = policy(DEFAULT);
        let d = reconcile(&p, None, &[], 1000);
        let info = ca::leaf_info(&cert(&d.serving_secret)).unwrap();
        assert_eq!(info.dns_names[0], "default-issuer.auth.svc");
        assert!(info.dns_names.contains(&"default-issuer".to_owned()));
        assert!(cas().signed_by_active(&info));
        assert_eq!(d.serving_secret.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(d.serving_secret.data.as_ref().unwrap()[BUNDLE_KEY].0, cas().bundle().as_bytes());
        assert_eq!(d.serving_renew_at, 1000 + 20 * DAY, "two thirds of 30 days");

        let serving = |secret: &Secret, now| {
            let inputs = ServingInputs { cas: cas(), existing: Some(secret), lifetime: 30 * DAY };
            serving_secret(&p, inputs, now).unwrap().0
        };
        assert_eq!(cert(&serving(&d.serving_secret, 1000 + 20 * DAY - 1)), cert(&d.serving_secret), "kept");
        assert_ne!(cert(&serving(&d.serving_secret, 1000 + 20 * DAY)), cert(&d.serving_secret), "renewed");
        let mut keyless = d.serving_secret.clone();
        keyless.data.as_mut().unwrap().remove(TLS_KEY);
        assert_ne!(cert(&serving(&keyless, 2000)), cert(&d.serving_secret), "a broken Secret is replaced");
    }
}
