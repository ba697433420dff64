//! The webhooks as every operator replica serves them in a cluster (the
//! API server calls any of them through the Service): the three kinds
//! from the replica's own watches, and the serving certificate from the
//! Secret the leader keeps, copied to files the serving TLS follows.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokenplane_sidecar::{server, tls};

use super::catalog::Watched;
use super::configuration::SERVING_SECRET;
use super::{Admission, inject};
use crate::error::Error;
use crate::reconcile::ca::{TLS_CRT, TLS_KEY};
use crate::reconcile::redissentinelcluster;

/// How often the Secret is read for a renewed certificate.
const CERTIFICATE_POLL: Duration = Duration::from_secs(10);

/// Where a replica serves.
pub struct Place {
    pub listen: SocketAddr,
    /// The operator's namespace, where the certificate's Secret is.
    pub namespace: String,
    /// A writable folder for the certificate's files.
    pub cert_dir: PathBuf,
}

/// Serves the webhooks until a shutdown signal.
pub async fn serve(
    kube: kube::Client,
    place: Place,
    (inject, clusters): (inject::Settings, redissentinelcluster::Environment),
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<(), Error> {
    let catalog = watch(&kube).await?;
    let files = tls::PairFiles { cert: place.cert_dir.join(TLS_CRT), key: place.cert_dir.join(TLS_KEY) };
    let secrets: Api<Secret> = Api::namespaced(kube, &place.namespace);
    while !copy_certificate(&secrets, &files).await {
        tracing::info!(secret = %format!("{}/{SERVING_SECRET}", place.namespace), "waiting for the leader to write the webhooks' certificate");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let serving = Arc::new(tls::ServingTls::load(files.clone()).map_err(|e| Error::Webhooks(e.to_string()))?);
    tokio::spawn(serving.clone().follow(Duration::from_secs(2)));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(CERTIFICATE_POLL).await;
            copy_certificate(&secrets, &files).await;
        }
    });
    let tcp = tokio::net::TcpListener::bind(place.listen)
        .await
        .map_err(|e| Error::Webhooks(format!("cannot listen on --webhook-listen {}: {e}", place.listen)))?;
    tracing::info!(listen = %place.listen, "admission webhooks serving");
    let admission = Admission { catalog, inject, clusters, metrics };
    server::serve(
        server::Listener::https(tcp, &serving),
        Arc::new(admission),
        crate::controller::shutdown_signal(),
    )
    .await;
    Ok(())
}

/// The three kinds, watched; returns once each store holds a first list
/// (before, every client would look missing).
async fn watch(kube: &kube::Client) -> Result<Watched, Error> {
    let clients = store(Api::all(kube.clone()));
    let policies = store(Api::all(kube.clone()));
    let clusters = store(Api::all(kube.clone()));
    for ready in [
        clients.wait_until_ready().await.is_ok(),
        policies.wait_until_ready().await.is_ok(),
        clusters.wait_until_ready().await.is_ok(),
    ] {
        if !ready {
            return Err(Error::Webhooks(
                "a watch of the custom resources ended before its first list".into(),
            ));
        }
    }
    Ok(Watched { clients, policies, clusters })
}

fn store<K>(api: Api<K>) -> reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
    tokio::spawn(stream.for_each(|event| async move {
        if let Err(error) = event {
            tracing::warn!(%error, "admission watch error; retrying");
        }
    }));
    reader
}

/// Writes the Secret's pair to `files` when it changed (the key first, each
/// by rename, so a reader sees whole files); whether a pair is there.
async fn copy_certificate(secrets: &Api<Secret>, files: &tls::PairFiles) -> bool {
    let secret = match secrets.get_opt(SERVING_SECRET).await {
        Ok(secret) => secret,
        Err(error) => {
            tracing::warn!(%error, "cannot read the webhooks' certificate");
            return files.cert.exists();
        }
    };
    let data = secret.and_then(|s| s.data).unwrap_or_default();
    let (Some(cert), Some(key)) = (data.get(TLS_CRT), data.get(TLS_KEY)) else { return files.cert.exists() };
    for (path, value) in [(&files.key, key), (&files.cert, cert)] {
        if std::fs::read(path).ok().as_deref() != Some(value.0.as_slice()) {
            let tmp = path.with_extension("tmp");
            if let Err(error) = std::fs::write(&tmp, &value.0).and_then(|()| std::fs::rename(&tmp, path)) {
                tracing::error!(%error, file = %path.display(), "cannot write the webhooks' certificate");
                return false;
            }
        }
    }
    true
}
