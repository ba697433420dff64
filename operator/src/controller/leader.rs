//! Leader election: only the replica holding the Lease reconciles.

use std::sync::Arc;

use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};

use super::Context;

/// The Lease the replicas compete for.
pub const LEASE: &str = "tokenplane-operator";

/// Runs the controllers while this replica holds the Lease in `namespace`;
/// the others wait to take over. Only the leader writes anything, status
/// included. Returns on SIGTERM or ctrl-c, releasing the Lease.
pub async fn lead(ctx: Arc<Context>, namespace: &str, identity: String) -> Result<(), LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(ctx.kube.clone(), LEASE)
        .with_namespace(namespace)
        .with_identity(identity.clone())
        .with_duration(15)
        .with_grace(5)
        .build()
        .await?;
    let (mut leading, lease) = manager.watch().await;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        while !*leading.borrow_and_update() {
            ctx.metrics.set_leader(false);
            tracing::info!(%identity, "waiting for the lease {namespace}/{LEASE}");
            tokio::select! {
                changed = leading.changed() => if changed.is_err() { return Ok(()) },
                () = &mut stop => return release(leading, lease).await,
            }
        }
        tracing::info!(%identity, "holding the lease: reconciling");
        ctx.metrics.set_leader(true);
        tokio::select! {
            () = super::run(ctx.clone()) => return release(leading, lease).await,
            () = lost(&mut leading) => tracing::warn!(%identity, "lost the lease: stopped reconciling"),
        }
    }
}

/// Resolves when `leading` turns false (or its manager is gone).
async fn lost(leading: &mut tokio::sync::watch::Receiver<bool>) {
    while *leading.borrow_and_update() {
        if leading.changed().await.is_err() {
            return;
        }
    }
}

/// Gives the Lease up, so another replica takes over at once.
async fn release(
    leading: tokio::sync::watch::Receiver<bool>,
    lease: tokio::task::JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
) -> Result<(), LeaseManagerError> {
    drop(leading);
    match lease.await {
        Ok(result) => result.map(drop),
        Err(e) => {
            tracing::warn!(error = %e, "the lease task ended abnormally");
            Ok(())
        }
    }
}

/// SIGTERM (the kubelet) or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
