//! The in-memory API server of the tests behaves as kube expects of an
//! API server where the controller relies on it: errors, selectors,
//! generations, finalizers, the status subresource, and watches resuming
//! from a resourceVersion.

mod support;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Error, ResourceExt};
use serde_json::json;

use support::api::ApiServer;

fn config_map(name: &str, team: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"team": team}}, "data": {"size": "1"}
    }))
    .unwrap()
}

fn reason(result: Result<impl std::fmt::Debug, Error>) -> (u16, String) {
    match result {
        Err(Error::Api(status)) => (status.code, status.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn objects_are_created_patched_and_deleted_as_by_an_api_server() {
    let api = Api::<ConfigMap>::namespaced(ApiServer::default().client(), "shop");
    let post = PostParams::default();
    let created = api.create(&post, &config_map("orders", "a")).await.unwrap();
    assert_eq!((created.metadata.generation, created.namespace().as_deref()), (Some(1), Some("shop")));
    assert!(created.uid().is_some() && created.creation_timestamp().is_some());
    assert_eq!(reason(api.create(&post, &config_map("orders", "a")).await), (409, "AlreadyExists".into()));
    assert_eq!(reason(api.get("nothing").await), (404, "NotFound".into()));
    api.create(&post, &config_map("billing", "b")).await.unwrap();
    let team_a = api.list(&ListParams::default().labels("team=a")).await.unwrap();
    assert_eq!(team_a.items.iter().map(|c| c.name_any()).collect::<Vec<_>>(), ["orders"]);

    let merge = |v| Patch::Merge(json!(v));
    let labelled = api
        .patch("orders", &PatchParams::default(), &merge(json!({"metadata": {"labels": {"x": "y"}}})))
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(1), "metadata is not counted");
    let resized =
        api.patch("orders", &PatchParams::default(), &merge(json!({"data": {"size": "2"}}))).await.unwrap();
    assert_eq!(resized.metadata.generation, Some(2));
    assert_ne!(resized.resource_version(), labelled.resource_version());
    let again =
        api.patch("orders", &PatchParams::default(), &merge(json!({"data": {"size": "2"}}))).await.unwrap();
    assert_eq!(again.resource_version(), resized.resource_version(), "no change, no write");
    let status = api
        .patch_status("orders", &PatchParams::default(), &merge(json!({"data": {"size": "3"}})))
        .await
        .unwrap();
    assert_eq!(status.data.unwrap()["size"], "2", "the status subresource changes only the status");

    let held = json!({"metadata": {"finalizers": ["example.com/hold"]}});
    api.patch("orders", &PatchParams::default(), &merge(held)).await.unwrap();
    api.delete("orders", &DeleteParams::default()).await.unwrap();
    let deleting = api.get("orders").await.unwrap();
    assert!(deleting.metadata.deletion_timestamp.is_some(), "a finalizer holds it");
    let wrong = json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "other"},
                      {"op": "remove", "path": "/metadata/finalizers/0"}]);
    let json_patch = |v| Patch::<()>::Json(serde_json::from_value(v).unwrap());
    assert_eq!(reason(api.patch("orders", &PatchParams::default(), &json_patch(wrong)).await).0, 422);
    let right = json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "example.com/hold"},
                      {"op": "remove", "path": "/metadata/finalizers/0"}]);
    api.patch("orders", &PatchParams::default(), &json_patch(right)).await.unwrap();
    assert_eq!(reason(api.get("orders").await).0, 404, "gone with its last finalizer");
}

#[tokio::test]
async fn a_watch_resumes_from_its_resource_version_or_is_told_to_relist() {
    let api = Api::<ConfigMap>::namespaced(ApiServer::default().client(), "shop");
    let start = api.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    api.create(&PostParams::default(), &config_map("orders", "a")).await.unwrap();
    api.create(&PostParams::default(), &config_map("billing", "b")).await.unwrap();
    api.delete("orders", &DeleteParams::default()).await.unwrap();
    let mut events = Box::pin(api.watch(&WatchParams::default().labels("team=a"), &start).await.unwrap());
    assert!(matches!(events.next().await, Some(Ok(WatchEvent::Added(c))) if c.name_any() == "orders"));
    assert!(matches!(events.next().await, Some(Ok(WatchEvent::Deleted(c))) if c.name_any() == "orders"));
    api.create(&PostParams::default(), &config_map("orders", "a")).await.unwrap();
    assert!(matches!(events.next().await, Some(Ok(WatchEvent::Added(_)))), "live changes follow");

    for size in 0..2_000 {
        let patch = Patch::Merge(json!({"data": {"size": size.to_string()}}));
        api.patch("billing", &PatchParams::default(), &patch).await.unwrap();
    }
    let mut stale = Box::pin(api.watch(&WatchParams::default(), &start).await.unwrap());
    assert!(matches!(stale.next().await, Some(Ok(WatchEvent::Error(e))) if e.code == 410), "too old: relist");
}
