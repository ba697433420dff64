//! The AdmissionReview wire format (admission.k8s.io/v1): a request read
//! and checked, a response written. What cannot be read is answered with a
//! 400 and says what was wrong; it never reaches a handler.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde_json::Value;

/// The largest body read. An object may be 1.5 MiB in etcd by default,
/// and a review of an update carries it twice, in JSON.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// A request as the API server sent it, with the objects' JSON as sent
/// (a patch must apply to exactly that); they are taken out of `request`,
/// which so decodes only the request's own fields.
pub struct Review {
    pub request: AdmissionRequest<DynamicObject>,
    pub object: Option<Value>,
    pub old_object: Option<Value>,
}

/// Reads `body`: an `admission.k8s.io/v1` AdmissionReview with a request
/// that has a `uid`.
pub fn read(body: &[u8]) -> Result<Review, String> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
    let (api_version, kind) = (text(&value, "apiVersion"), text(&value, "kind"));
    if api_version != "admission.k8s.io/v1" || kind != "AdmissionReview" {
        return Err(format!(
            "send an admission.k8s.io/v1 AdmissionReview, not apiVersion {api_version:?} kind {kind:?}"
        ));
    }
    let request =
        value.get_mut("request").filter(|r| r.is_object()).ok_or("the AdmissionReview has no request")?;
    if text(request, "uid").is_empty() {
        return Err("the AdmissionReview's request has no uid".into());
    }
    let mut take = |key: &str| request.get_mut(key).map(Value::take).filter(|o| !o.is_null());
    let (object, old_object) = (take("object"), take("oldObject"));
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(value).map_err(|e| format!("the AdmissionReview cannot be read: {e}"))?;
    let request = review.try_into().map_err(|_| "the AdmissionReview has no request".to_owned())?;
    Ok(Review { request, object, old_object })
}

/// The response as the API server reads it, the patch base64-encoded as
/// the Kubernetes docs show it (kube-core writes an array of numbers).
pub fn write(response: AdmissionResponse) -> Vec<u8> {
    use base64::Engine;
    let patch = response.patch.as_ref().map(|p| base64::engine::general_purpose::STANDARD.encode(p));
    let mut review = serde_json::to_value(response.into_review()).expect("an AdmissionReview serializes");
    if let Some(patch) = patch {
        review["response"]["patch"] = patch.into();
    }
    serde_json::to_vec(&review).expect("JSON serializes")
}
