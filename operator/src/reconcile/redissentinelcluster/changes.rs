//! Changes a running cluster cannot take: a StatefulSet's volume claim
//! templates are immutable, so a new size, storage class, or persistence
//! turned on or off would be refused by the API server on every reconcile.
//! They are refused here instead, with what to do, and nothing is applied.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;

use crate::reconcile::Invalid;

fn claim(set: &StatefulSet) -> Option<&PersistentVolumeClaim> {
    set.spec.as_ref()?.volume_claim_templates.as_ref()?.first()
}

fn size(claim: &PersistentVolumeClaim) -> Option<&str> {
    let requests = claim.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?;
    requests.get("storage").map(|q| q.0.as_str())
}

fn class(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim.spec.as_ref()?.storage_class_name.as_deref()
}

/// Why the data nodes' StatefulSet as it `running` cannot become `desired`.
pub fn unsafe_change(running: &StatefulSet, desired: &StatefulSet) -> Option<Invalid> {
    let refuse = |message: String| Some(Invalid { reason: "UnsafeChange", message });
    match (claim(running), claim(desired)) {
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => refuse(
            "persistence.enabled changed: the nodes' volumes cannot be added or removed in place; \
             create a new RedisSentinelCluster and move the data (backup and restore), or set it back"
                .into(),
        ),
        (Some(a), Some(b)) if size(a) != size(b) => refuse(format!(
            "persistence.size changed from {} to {}: the nodes' volume template cannot change in place \
             (grow each PersistentVolumeClaim itself where its storage class allows expansion, then set \
             the size to match); set it back to {0}",
            size(a).unwrap_or("?"),
            size(b).unwrap_or("?"),
        )),
        (Some(a), Some(b)) if class(a) != class(b) => refuse(format!(
            "persistence.storageClassName changed from {:?} to {:?}: the nodes' volumes cannot move to \
             another storage class in place; set it back",
            class(a),
            class(b),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::Passwords;
    use super::super::fixtures::{cluster, reconcile};
    use super::*;

    fn nodes(edit: impl FnOnce(&mut serde_json::Value)) -> StatefulSet {
        reconcile(&cluster(edit), &Passwords::default()).unwrap().redis
    }

    #[test]
    fn volume_changes_are_refused_and_others_pass() {
        let running = nodes(|_| {});
        assert!(unsafe_change(&running, &nodes(|c| c["spec"]["replicas"] = 5.into())).is_none());
        assert!(unsafe_change(&running, &running).is_none());
        let grown =
            unsafe_change(&running, &nodes(|c| c["spec"]["persistence"]["size"] = "2Gi".into())).unwrap();
        assert_eq!(grown.reason, "UnsafeChange");
        assert!(grown.message.contains("from 1Gi to 2Gi"), "{}", grown.message);
        let off = nodes(|c| c["spec"]["persistence"] = serde_json::json!({"enabled": false}));
        assert!(unsafe_change(&running, &off).unwrap().message.contains("persistence.enabled"));
        let moved = nodes(|c| c["spec"]["persistence"]["storageClassName"] = "fast".into());
        assert!(unsafe_change(&running, &moved).unwrap().message.contains("storageClassName"));
    }
}
