//! Where admission finds the custom resources a request names: the
//! operator's watches in a cluster (every replica answers admissions, so
//! each keeps its own), or manifest files standalone.

use std::collections::HashMap;
use std::sync::Arc;

use kube::runtime::reflector::{ObjectRef, Store};
use tokenplane_api::{OAuth2Client, RedisSentinelCluster, TokenPolicy};

/// The OAuth2Clients, TokenPolicies and RedisSentinelClusters, by
/// namespace and name.
pub trait Catalog: Send + Sync + 'static {
    fn client(&self, namespace: &str, name: &str) -> Option<Arc<OAuth2Client>>;
    /// Whether `client` is in service: its controller says `Ready`.
    fn ready(&self, client: &OAuth2Client) -> bool {
        let conditions = client.status.as_ref().into_iter().flat_map(|s| &s.conditions);
        conditions.into_iter().any(|c| c.type_ == "Ready" && c.status == "True")
    }
    fn policy(&self, namespace: &str, name: &str) -> Option<Arc<TokenPolicy>>;
    fn cluster(&self, namespace: &str, name: &str) -> Option<Arc<RedisSentinelCluster>>;
}

/// The three kinds as the API server's watches last said.
#[derive(Clone)]
pub struct Watched {
    pub clients: Store<OAuth2Client>,
    pub policies: Store<TokenPolicy>,
    pub clusters: Store<RedisSentinelCluster>,
}

impl Catalog for Watched {
    fn client(&self, namespace: &str, name: &str) -> Option<Arc<OAuth2Client>> {
        self.clients.get(&ObjectRef::new(name).within(namespace))
    }

    fn policy(&self, namespace: &str, name: &str) -> Option<Arc<TokenPolicy>> {
        self.policies.get(&ObjectRef::new(name).within(namespace))
    }

    fn cluster(&self, namespace: &str, name: &str) -> Option<Arc<RedisSentinelCluster>> {
        self.clusters.get(&ObjectRef::new(name).within(namespace))
    }
}

type ByName<K> = HashMap<(String, String), Arc<K>>;

/// The three kinds read from manifest files (`webhook --manifests`).
#[derive(Default)]
pub struct Manifests {
    clients: ByName<OAuth2Client>,
    policies: ByName<TokenPolicy>,
    clusters: ByName<RedisSentinelCluster>,
}

fn by_name<K: kube::Resource>(objects: Vec<K>) -> ByName<K> {
    let key =
        |o: &K| (o.meta().namespace.clone().unwrap_or_default(), o.meta().name.clone().unwrap_or_default());
    objects.into_iter().map(|o| (key(&o), Arc::new(o))).collect()
}

impl Manifests {
    /// The resources as `render` reads them (namespace `default` where a
    /// document names none).
    pub fn new(resources: crate::render::Resources) -> Self {
        Self {
            clients: by_name(resources.clients),
            policies: by_name(resources.policies),
            clusters: by_name(resources.clusters),
        }
    }

    /// How many of each kind it holds: clients, policies, clusters.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.clients.len(), self.policies.len(), self.clusters.len())
    }
}

fn get<K>(map: &ByName<K>, namespace: &str, name: &str) -> Option<Arc<K>> {
    map.get(&(namespace.to_owned(), name.to_owned())).cloned()
}

impl Catalog for Manifests {
    fn client(&self, namespace: &str, name: &str) -> Option<Arc<OAuth2Client>> {
        get(&self.clients, namespace, name)
    }

    /// No controller runs standalone: a client in the files is as it says.
    fn ready(&self, _: &OAuth2Client) -> bool {
        true
    }

    fn policy(&self, namespace: &str, name: &str) -> Option<Arc<TokenPolicy>> {
        get(&self.policies, namespace, name)
    }

    fn cluster(&self, namespace: &str, name: &str) -> Option<Arc<RedisSentinelCluster>> {
        get(&self.clusters, namespace, name)
    }
}
