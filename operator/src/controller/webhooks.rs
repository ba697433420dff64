//! The leader's part of the admission webhooks, with `--webhook-listen`:
//! the serving certificate Secret (or, with `--cert-manager-issuer`, the
//! Certificate cert-manager writes it from) and the two webhook configurations,
//! applied at start, on every change of the CAs, and before the
//! certificate is due, so the `caBundle` always names a CA that signed it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use super::apply::apply_cluster_scoped;
use super::{Context, apply, apply_dynamic, unix_now};
use crate::admission::configuration::{self, SERVING_SECRET};
use crate::error::Error;
use crate::reconcile::ca::{Serving, ServingInputs, certificate_resource};

/// The longest the objects go unexamined (an edited configuration is put
/// back).
const RESYNC: Duration = Duration::from_secs(600);

/// Applies the certificate and the configurations once; when to look again.
pub async fn refresh(ctx: &Context) -> Result<Duration, Error> {
    let namespace = &ctx.issuers.operator_namespace;
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), namespace);
    let existing = secrets.get_opt(SERVING_SECRET).await?;
    let cas = ctx.ca.borrow().clone();
    let lifetime = ctx.ca_settings.leaf_lifetime;
    let inputs = ServingInputs { cas: &cas, existing: existing.as_ref(), lifetime };
    let cert_manager = ctx.issuers.cert_manager_issuer.as_ref();
    let now = unix_now();
    let webhooks = configuration::webhooks(namespace, (inputs, cert_manager), now)
        .map_err(|invalid| Error::Webhooks(invalid.message))?;
    match &webhooks.serving {
        Serving::Secret(secret) => apply(&ctx.kube, secret).await?,
        Serving::Certificate(certificate) => {
            apply_dynamic(&ctx.kube, certificate, &certificate_resource()).await?
        }
    }
    apply_cluster_scoped(&ctx.kube, &webhooks.mutating).await?;
    apply_cluster_scoped(&ctx.kube, &webhooks.validating).await?;
    Ok(Duration::from_secs(webhooks.renew_at.saturating_sub(now).max(1)).min(RESYNC))
}

/// Keeps them applied for as long as this replica leads.
pub(super) async fn keep(ctx: Arc<Context>) {
    let mut changes = ctx.ca.subscribe();
    loop {
        let wait = refresh(&ctx).await.unwrap_or_else(|error| {
            tracing::error!(%error, "cannot apply the admission webhooks' objects; retrying in 30s");
            Duration::from_secs(30)
        });
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = changes.changed() => {}
        }
    }
}
