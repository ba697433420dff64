//! The operator's CA in its Secret (operator namespace): loaded before the
//! controllers start, rotated by `reconcile::ca::plan` whenever it is due,
//! and handed to the reconciles, which every change sends round again
//! (new serving certificates, new bundles).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use super::{Context, unix_now};
use crate::error::Error;
use crate::reconcile::ca::{self, Authorities, Authority, CA_SECRET};

/// The longest the CA goes unexamined, so a restored or edited Secret is
/// noticed.
const RESYNC: Duration = Duration::from_secs(3600);

/// Reads the CA Secret, rotates what is due, writes it back if that changed
/// anything, and publishes the CAs to the reconciles. Returns when to look
/// again. A CA Secret that does not parse is never overwritten.
async fn refresh(ctx: &Context) -> Result<Duration, Error> {
    let namespace = &ctx.issuers.operator_namespace;
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), namespace);
    let current = Authorities::read(secrets.get_opt(CA_SECRET).await?.as_ref()).map_err(|invalid| {
        Error::CertificateAuthority(format!("{namespace}/{CA_SECRET}: {}", invalid.message))
    })?;
    let now = unix_now();
    let planned = ca::plan(current, &ctx.ca_settings, now, Authority::generate);
    if planned.changed {
        super::apply(&ctx.kube, &planned.authorities.to_secret(namespace)).await?;
        tracing::info!(
            secret = %format!("{namespace}/{CA_SECRET}"),
            cas = planned.authorities.bundle().matches("BEGIN CERTIFICATE").count(),
            "certificate authority written"
        );
    }
    ctx.ca.send_if_modified(|held| {
        let changed = *held != planned.authorities;
        if changed {
            *held = planned.authorities;
        }
        changed
    });
    Ok(Duration::from_secs(planned.next_at.saturating_sub(now).max(1)).min(RESYNC))
}

/// Loads the CA, retrying until it can: nothing is signed without one.
pub(super) async fn load(ctx: &Context) {
    while let Err(error) = refresh(ctx).await {
        tracing::error!(%error, "cannot load the certificate authority; retrying in 10s");
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// Keeps the CA current for as long as this replica leads.
pub(super) async fn keep(ctx: Arc<Context>) {
    let mut wait = RESYNC;
    loop {
        tokio::time::sleep(wait).await;
        wait = refresh(&ctx).await.unwrap_or_else(|error| {
            tracing::error!(%error, "cannot rotate the certificate authority; retrying in 30s");
            Duration::from_secs(30)
        });
    }
}

/// Fires once per change of the CAs.
pub(super) fn changes(ctx: &Context) -> impl futures_util::Stream<Item = ()> + Send + 'static {
    futures_util::stream::unfold(ctx.ca.subscribe(), |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    })
}
