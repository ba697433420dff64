//! The issuer's serving certificate: a TLS Secret for the issuer Service's
//! DNS names, signed by the operator's CA, kept until two thirds of its
//! lifetime or until another CA takes over, with the CA bundle beside it;
//! or a cert-manager `Certificate` that has cert-manager write that Secret.

use k8s_openapi::api::core::v1::Secret;
use tokenplane_api::TokenPolicy;
use tokenplane_api::tokenpolicy::CertManagerIssuerRef;

use crate::reconcile::ca;
pub use crate::reconcile::ca::{Serving, ServingInputs, TLS_CRT, TLS_KEY, certificate_resource};
use crate::reconcile::{Invalid, managed_meta};

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

/// The cert-manager issuer of the policy's serving certificate: its own,
/// else the operator's; `None` when the operator's CA signs it.
pub fn cert_manager_issuer<'a>(
    policy: &'a TokenPolicy,
    operator_issuer: Option<&'a CertManagerIssuerRef>,
) -> Option<&'a CertManagerIssuerRef> {
    policy.spec.tls.as_ref().and_then(|t| t.cert_manager_issuer.as_ref()).or(operator_issuer)
}

/// The policy's serving certificate, from cert-manager when the policy or
/// the operator names an issuer, else from the operator's CA; and when the
/// operator must renew it (never, for cert-manager).
pub(super) fn serving(
    policy: &TokenPolicy,
    inputs: ServingInputs<'_>,
    operator_issuer: Option<&CertManagerIssuerRef>,
    now: u64,
) -> Result<(Serving, u64), Invalid> {
    match cert_manager_issuer(policy, operator_issuer) {
        Some(issuer) => {
            let name = policy.metadata.name.clone().unwrap_or_default();
            let metadata = managed_meta(policy, serving_secret_name(&name), [("tokenplane.io/policy", name)]);
            let certificate = ca::certificate(metadata, &dns_names(policy), issuer, inputs.lifetime);
            Ok((Serving::Certificate(certificate), u64::MAX))
        }
        None => serving_secret(policy, inputs, now).map(|(secret, at)| (Serving::Secret(secret), at)),
    }
}

/// The serving Secret and when its certificate is due for renewal.
fn serving_secret(
    policy: &TokenPolicy,
    inputs: ServingInputs<'_>,
    now: u64,
) -> Result<(Secret, u64), Invalid> {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let metadata = managed_meta(policy, serving_secret_name(&name), [("tokenplane.io/policy", name)]);
    ca::server_secret(metadata, &dns_names(policy), inputs, now, "the issuer's serving certificate")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::reconcile::ca::{self, BUNDLE_KEY};
    use crate::reconcile::tokenpolicy::fixtures::{DAY, DEFAULT, policy, reconcile};

    fn cert(secret: &Secret) -> Vec<u8> {
        secret.data.as_ref().unwrap()[TLS_CRT].0.clone()
    }

    #[test]
    fn a_cert_manager_issuer_of_the_policy_or_the_operator_gets_a_certificate_instead() {
        let yaml = format!("{DEFAULT}  tls: {{certManagerIssuer: {{name: internal-ca}}}}\n");
        let d = reconcile(&policy(&yaml), None, &[], 1000);
        let Serving::Certificate(c) = &d.serving else { panic!("a Certificate: {:?}", d.serving) };
        assert_eq!(d.serving_renew_at, u64::MAX, "cert-manager renews it");
        let spec = &c.data["spec"];
        assert_eq!(spec["secretName"], "default-issuer-tls", "the Secret the Deployment mounts");
        assert_eq!(
            spec["issuerRef"],
            json!({"name": "internal-ca", "kind": "Issuer", "group": "cert-manager.io"})
        );
        assert_eq!(spec["dnsNames"][0], "default-issuer.auth.svc");
        assert_eq!((spec["duration"].as_str(), spec["renewBefore"].as_str()), (Some("720h"), Some("240h")));
        assert_eq!(c.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-p");

        let cluster = CertManagerIssuerRef {
            name: "corp".into(),
            kind: "ClusterIssuer".into(),
            group: "cert-manager.io".into(),
        };
        let inputs = crate::reconcile::tokenpolicy::fixtures::serving();
        let (by_flag, _) = serving(&policy(DEFAULT), inputs, Some(&cluster), 0).unwrap();
        assert!(
            matches!(by_flag, Serving::Certificate(c) if c.data["spec"]["issuerRef"]["kind"] == "ClusterIssuer")
        );
        let (own, _) = serving(&policy(&yaml), inputs, Some(&cluster), 0).unwrap();
        assert!(
            matches!(own, Serving::Certificate(c) if c.data["spec"]["issuerRef"]["name"] == "internal-ca"),
            "the policy's own wins"
        );
    }

    #[test]
    fn the_issuer_gets_a_certificate_for_its_service_names_kept_until_two_thirds() {
        let p = policy(DEFAULT);
        let d = reconcile(&p, None, &[], 1000);
        let Serving::Secret(secret) = &d.serving else { panic!("from the operator's CA") };
        let info = ca::leaf_info(&cert(secret)).unwrap();
        assert_eq!(info.dns_names[0], "default-issuer.auth.svc");
        assert!(info.dns_names.contains(&"default-issuer".to_owned()));
        assert!(ca::test_authorities().signed_by_active(&info));
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(secret.data.as_ref().unwrap()[BUNDLE_KEY].0, ca::test_authorities().bundle().as_bytes());
        assert_eq!(d.serving_renew_at, 1000 + 20 * DAY, "two thirds of 30 days");

        let renewed = |secret: &Secret, now| {
            let inputs =
                ServingInputs { cas: ca::test_authorities(), existing: Some(secret), lifetime: 30 * DAY };
            serving_secret(&p, inputs, now).unwrap().0
        };
        assert_eq!(cert(&renewed(secret, 1000 + 20 * DAY - 1)), cert(secret), "kept");
        assert_ne!(cert(&renewed(secret, 1000 + 20 * DAY)), cert(secret), "renewed");
        let mut keyless = secret.clone();
        keyless.data.as_mut().unwrap().remove(TLS_KEY);
        assert_ne!(cert(&renewed(&keyless, 2000)), cert(secret), "a broken Secret is replaced");
    }
}
