//! Server-side apply of what the builders produce.

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};

use crate::error::Error;
use crate::reconcile::MANAGED_BY;

/// Server-side applies `object` (field manager `tokenplane`, forced: the
/// operator owns what it writes).
pub(super) async fn apply<K>(kube: &kube::Client, object: &K) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let namespace = object.meta().namespace.as_deref().ok_or(Error::NotNamespaced)?;
    patch(Api::namespaced(kube.clone(), namespace), object).await
}

/// The same for an object of a cluster-scoped kind.
pub(super) async fn apply_cluster_scoped<K>(kube: &kube::Client, object: &K) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    patch(Api::all(kube.clone()), object).await
}

async fn patch<K>(api: Api<K>, object: &K) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = ()>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let mut body = serde_json::to_value(object).expect("a Kubernetes object serializes");
    body["apiVersion"] = K::api_version(&()).into();
    body["kind"] = K::kind(&()).into();
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(MANAGED_BY).force(), &Patch::Apply(body)).await?;
    Ok(())
}

/// Server-side applies an object of a kind without Rust types (another
/// project's CRD, such as cert-manager's `Certificate`).
pub(super) async fn apply_dynamic(
    kube: &kube::Client,
    object: &DynamicObject,
    resource: &ApiResource,
) -> Result<(), Error> {
    let namespace = object.metadata.namespace.as_deref().ok_or(Error::NotNamespaced)?;
    let api: Api<DynamicObject> = Api::namespaced_with(kube.clone(), namespace, resource);
    let mut body = serde_json::to_value(object).expect("a Kubernetes object serializes");
    body["apiVersion"] = resource.api_version.clone().into();
    body["kind"] = resource.kind.clone().into();
    let name = object.metadata.name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(MANAGED_BY).force(), &Patch::Apply(body)).await?;
    Ok(())
}
