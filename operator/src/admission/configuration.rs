//! What the operator applies for its webhooks to be called: the serving
//! certificate Secret, signed by its CA for the webhook Service, and the
//! Mutating- and ValidatingWebhookConfiguration with that CA as their
//! `caBundle`; or, with a cert-manager issuer, a Certificate for that
//! Secret and configurations whose `caBundle` cert-manager's CA injector
//! fills in. Pure: built from the namespace, the CAs and what exists.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};

use super::inject::INJECT;
use tokenplane_api::tokenpolicy::CertManagerIssuerRef;

use crate::reconcile::Invalid;
use crate::reconcile::ca::{self, Serving, ServingInputs};

/// The Service in front of every operator replica's webhook listener.
pub const SERVICE: &str = "tokenplane-webhook";
/// The webhooks' serving certificate, in the operator's namespace.
pub const SERVING_SECRET: &str = "tokenplane-webhook-tls";
pub const MUTATING: &str = "tokenplane-inject";
pub const VALIDATING: &str = "tokenplane-validate";
/// The API server gives up on a webhook after this; the default is 10 s,
/// and a pod creation waits on it.
const TIMEOUT_SECONDS: i32 = 5;

/// The annotation that has cert-manager's CA injector set `caBundle`.
const INJECT_CA_FROM: &str = "cert-manager.io/inject-ca-from";

/// Everything to apply, and when the certificate is due for renewal
/// (never, for cert-manager's).
pub struct Webhooks {
    pub serving: Serving,
    pub renew_at: u64,
    pub mutating: MutatingWebhookConfiguration,
    pub validating: ValidatingWebhookConfiguration,
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(str::to_owned),
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/managed-by".to_owned(), crate::reconcile::MANAGED_BY.to_owned()),
            ("app.kubernetes.io/part-of".to_owned(), "tokenplane".to_owned()),
        ])),
        ..ObjectMeta::default()
    }
}

/// The names the API server may call the Service by.
pub fn dns_names(namespace: &str) -> Vec<String> {
    vec![format!("{SERVICE}.{namespace}.svc"), format!("{SERVICE}.{namespace}.svc.cluster.local")]
}

/// The webhooks of an operator in `namespace`: their certificate from
/// `cert_manager` when given, else signed by the operator's CA and kept
/// from `inputs.existing` until renewal.
pub fn webhooks(
    namespace: &str,
    (inputs, cert_manager): (ServingInputs<'_>, Option<&CertManagerIssuerRef>),
    now: u64,
) -> Result<Webhooks, Invalid> {
    let metadata = meta(SERVING_SECRET, Some(namespace));
    let (serving, renew_at, bundle) = match cert_manager {
        Some(issuer) => {
            let certificate = ca::certificate(metadata, &dns_names(namespace), issuer, inputs.lifetime);
            (Serving::Certificate(certificate), u64::MAX, None)
        }
        None => {
            let what = "the admission webhooks' certificate";
            let (secret, at) = ca::server_secret(metadata, &dns_names(namespace), inputs, now, what)?;
            (Serving::Secret(secret), at, Some(ByteString(inputs.cas.bundle().into_bytes())))
        }
    };
    let configuration = |name: &str| {
        let mut metadata = meta(name, None);
        if cert_manager.is_some() {
            let from = format!("{namespace}/{SERVING_SECRET}");
            metadata.annotations = Some(BTreeMap::from([(INJECT_CA_FROM.to_owned(), from)]));
        }
        metadata
    };
    let client = |path: &str| WebhookClientConfig {
        ca_bundle: bundle.clone(),
        service: Some(ServiceReference {
            name: SERVICE.into(),
            namespace: namespace.into(),
            path: Some(path.into()),
            port: Some(443),
        }),
        url: None,
    };
    let rule = |operations: &[&str], group: &str, version: &str, resources: &[&str]| RuleWithOperations {
        api_groups: Some(vec![group.into()]),
        api_versions: Some(vec![version.into()]),
        operations: Some(operations.iter().map(|o| (*o).to_owned()).collect()),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        scope: Some("Namespaced".into()),
    };
    let inject = MutatingWebhook {
        name: "inject.tokenplane.io".into(),
        admission_review_versions: vec!["v1".into()],
        client_config: client("/mutate-pods"),
        rules: Some(vec![rule(&["CREATE"], "", "v1", &["pods"])]),
        // Only labelled pods wait on the webhook, and never the system's
        // or the operator's own (it could not start to answer).
        object_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(INJECT.to_owned(), "true".to_owned())])),
            ..LabelSelector::default()
        }),
        namespace_selector: Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "kubernetes.io/metadata.name".into(),
                operator: "NotIn".into(),
                values: Some(vec!["kube-system".into(), namespace.into()]),
            }]),
            ..LabelSelector::default()
        }),
        // A pod that asked for the agent never starts without it.
        failure_policy: Some("Fail".into()),
        match_policy: Some("Equivalent".into()),
        reinvocation_policy: Some("IfNeeded".into()),
        side_effects: "None".into(),
        timeout_seconds: Some(TIMEOUT_SECONDS),
        ..MutatingWebhook::default()
    };
    let kinds = ["oauth2clients", "tokenpolicies", "redissentinelclusters"];
    let validate = ValidatingWebhook {
        name: "validate.tokenplane.io".into(),
        admission_review_versions: vec!["v1".into()],
        client_config: client("/validate"),
        rules: Some(vec![rule(&["CREATE", "UPDATE"], "tokenplane.io", "v1alpha1", &kinds)]),
        // The controllers check everything again and refuse with a
        // condition: an operator that is down must not block every apply.
        failure_policy: Some("Ignore".into()),
        match_policy: Some("Equivalent".into()),
        side_effects: "None".into(),
        timeout_seconds: Some(TIMEOUT_SECONDS),
        ..ValidatingWebhook::default()
    };
    Ok(Webhooks {
        serving,
        renew_at,
        mutating: MutatingWebhookConfiguration {
            metadata: configuration(MUTATING),
            webhooks: Some(vec![inject]),
        },
        validating: ValidatingWebhookConfiguration {
            metadata: configuration(VALIDATING),
            webhooks: Some(vec![validate]),
        },
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Secret;

    use super::*;
    use crate::reconcile::ca::{Authorities, Settings, TLS_CRT};

    const DAY: u64 = 86_400;

    fn secret(w: &Webhooks) -> &Secret {
        match &w.serving {
            Serving::Secret(secret) => secret,
            Serving::Certificate(_) => panic!("the operator's CA signs it"),
        }
    }

    fn at(cas: &Authorities, existing: Option<&Secret>, now: u64) -> Webhooks {
        webhooks("ns", (ServingInputs { cas, existing, lifetime: 30 * DAY }, None), now).unwrap()
    }

    #[test]
    fn the_webhooks_trust_the_operator_ca_and_only_labelled_pods_wait_on_injection() {
        let cas = ca::test_authorities();
        let inputs = ServingInputs { cas, existing: None, lifetime: 30 * DAY };
        let w = webhooks("tokenplane-system", (inputs, None), 0).unwrap();
        let leaf = ca::leaf_info(&secret(&w).data.as_ref().unwrap()[TLS_CRT].0).unwrap();
        assert!(cas.signed_by_active(&leaf));
        assert_eq!(leaf.dns_names, dns_names("tokenplane-system"));
        let inject = &w.mutating.webhooks.as_ref().unwrap()[0];
        assert_eq!(inject.client_config.ca_bundle.as_ref().unwrap().0, cas.bundle().as_bytes());
        let service = inject.client_config.service.as_ref().unwrap();
        assert_eq!((service.name.as_str(), service.path.as_deref()), (SERVICE, Some("/mutate-pods")));
        assert_eq!(inject.object_selector.as_ref().unwrap().match_labels.as_ref().unwrap()[INJECT], "true");
        let never = &inject.namespace_selector.as_ref().unwrap().match_expressions.as_ref().unwrap()[0];
        assert_eq!(
            never.values.as_deref(),
            Some(&["kube-system".to_owned(), "tokenplane-system".to_owned()][..])
        );
        assert_eq!((inject.side_effects.as_str(), inject.failure_policy.as_deref()), ("None", Some("Fail")));
        assert_eq!(inject.reinvocation_policy.as_deref(), Some("IfNeeded"));
        let validate = &w.validating.webhooks.as_ref().unwrap()[0];
        assert_eq!(validate.failure_policy.as_deref(), Some("Ignore"));
        assert!(validate.timeout_seconds.unwrap() < 10);
    }

    #[test]
    fn the_certificate_is_kept_until_renewal_and_a_new_ca_bundle_reaches_the_configurations() {
        let cas = ca::test_authorities();
        let first = at(cas, None, 0);
        let kept = at(cas, Some(secret(&first)), DAY);
        assert_eq!(secret(&kept).data, secret(&first).data);
        assert_eq!(kept.renew_at, first.renew_at);
        let renewed = at(cas, Some(secret(&first)), first.renew_at);
        assert_ne!(secret(&renewed).data, secret(&first).data);
        let other = Authorities::first(&Settings::default(), 0);
        let moved = at(&other, Some(secret(&first)), DAY);
        let bundle = &moved.validating.webhooks.as_ref().unwrap()[0].client_config.ca_bundle;
        assert_eq!(bundle.as_ref().unwrap().0, other.bundle().as_bytes());
        assert_ne!(secret(&moved).data, secret(&first).data, "signed by the CA that is now active");
    }

    #[test]
    fn with_cert_manager_a_certificate_is_ordered_and_its_ca_injector_fills_the_bundle() {
        let issuer = CertManagerIssuerRef {
            name: "corp".into(),
            kind: "ClusterIssuer".into(),
            group: "cert-manager.io".into(),
        };
        let inputs = ServingInputs { cas: ca::test_authorities(), existing: None, lifetime: 30 * DAY };
        let w = webhooks("ops", (inputs, Some(&issuer)), 0).unwrap();
        let Serving::Certificate(certificate) = &w.serving else { panic!("a Certificate") };
        assert_eq!(certificate.data["spec"]["secretName"], SERVING_SECRET, "the Secret the replicas read");
        assert_eq!(certificate.data["spec"]["dnsNames"][0], "tokenplane-webhook.ops.svc");
        assert_eq!(w.renew_at, u64::MAX, "cert-manager renews it");
        let annotations = w.mutating.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[INJECT_CA_FROM], "ops/tokenplane-webhook-tls");
        let inject = &w.mutating.webhooks.as_ref().unwrap()[0];
        assert_eq!(inject.client_config.ca_bundle, None, "left to the CA injector");
        assert!(w.validating.metadata.annotations.as_ref().unwrap().contains_key(INJECT_CA_FROM));
    }
}
