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
    event_of_action(object, ctx, (type_, reason, "Reconcile"), note).await;
}

/// An event of one `action`. Events of one type, reason and action on an
/// object count as one series, whose note is the first one's: news that
/// differs (which role, which new master) needs an action of its own.
pub(super) async fn event_of_action<K: kube::Resource<DynamicType = ()>>(
    object: &K,
    ctx: &Context,
    (type_, reason, action): (EventType, &str, &str),
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(error = %e, "could not record an event");
    }
}
