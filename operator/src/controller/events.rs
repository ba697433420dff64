//! Kubernetes events on the reconciled resources.

use kube::runtime::events::{Event, EventType};

use super::Context;

/// An event on `object`, best effort: logs and conditions carry the same news.
pub(super) async fn event<K: kube::Resource<DynamicType = ()>>(
    object: &K,
    ctx: &Context,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(error = %e, "could not record an event");
    }
}
