//! What the operator applies for its webhooks to be called: the serving
//! certificate Secret, signed by its CA for the webhook Service, and the
//! Mutating- and ValidatingWebhookConfiguration with that CA as their
//! `caBundle`. Pure: built from the namespace, the CAs and what exists.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};

use super::inject::INJECT;
use crate::reconcile::Invalid;
use crate::reconcile::ca::{self, ServingInputs};

/// The Service in front of every operator replica's webhook listener.
pub const SERVICE: &str = "tokenplane-webhook";
/// The webhooks' serving certificate, in the operator's namespace.
pub const SERVING_SECRET: &str = "tokenplane-webhook-tls";
pub const MUTATING: &str = "tokenplane-inject";
pub const VALIDATING: &str = "tokenplane-validate";
/// The API server gives up on a webhook after this; the default is 10 s,
/// and a pod creation waits on it.
const TIMEOUT_SECONDS: i32 = 5;

/// Everything to apply, and when the certificate is due for renewal.
pub struct Webhooks {
    pub serving: Secret,
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

/// The webhooks of an operator in `namespace`, its certificate kept from
/// `inputs.existing` until renewal.
pub fn webhooks(namespace: &str, inputs: ServingInputs<'_>, now: u64) -> Result<Webhooks, Invalid> {
    let what = "the admission webhooks' certificate";
    let metadata = meta(SERVING_SECRET, Some(namespace));
    let (serving, renew_at) = ca::server_secret(metadata, &dns_names(namespace), inputs, now, what)?;
    let bundle = ByteString(inputs.cas.bundle().into_bytes());
    let client = |path: &str| WebhookClientConfig {
        ca_bundle: Some(bundle.clone()),
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
            metadata: meta(MUTATING, None),
            webhooks: Some(vec![inject]),
        },
        validating: ValidatingWebhookConfiguration {
            metadata: meta(VALIDATING, None),
            webhooks: Some(vec![validate]),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::ca::{Authorities, Settings, TLS_CRT};

    const DAY: u64 = 86_400;

    #[test]
    fn the_webhooks_trust_the_operator_ca_and_only_labelled_pods_wait_on_injection() {
        let cas = ca::test_authorities();
        let inputs = ServingInputs { cas, existing: None, lifetime: 30 * DAY };
        let w = webhooks("tokenplane-system", inputs, 0).unwrap();
        let leaf = ca::leaf_info(&w.serving.data.as_ref().unwrap()[TLS_CRT].0).unwrap();
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
        let first = webhooks("ns", ServingInputs { cas, existing: None, lifetime: 30 * DAY }, 0).unwrap();
        let kept =
            webhooks("ns", ServingInputs { cas, existing: Some(&first.serving), lifetime: 30 * DAY }, DAY)
                .unwrap();
        assert_eq!(kept.serving.data, first.serving.data);
        assert_eq!(kept.renew_at, first.renew_at);
        let renewed = webhooks(
            "ns",
            ServingInputs { cas, existing: Some(&first.serving), lifetime: 30 * DAY },
            first.renew_at,
        )
        .unwrap();
        assert_ne!(renewed.serving.data, first.serving.data);
        let other = Authorities::first(&Settings::default(), 0);
        let moved = webhooks(
            "ns",
            ServingInputs { cas: &other, existing: Some(&first.serving), lifetime: 30 * DAY },
            DAY,
        )
        .unwrap();
        let bundle = &moved.validating.webhooks.as_ref().unwrap()[0].client_config.ca_bundle;
        assert_eq!(bundle.as_ref().unwrap().0, other.bundle().as_bytes());
        assert_ne!(moved.serving.data, first.serving.data, "signed by the CA that is now active");
    }
}
