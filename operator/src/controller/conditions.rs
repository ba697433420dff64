//! Status conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// A status condition; its transition time moves only when its status does.
pub(super) fn condition(
    previous: &[Condition],
    generation: Option<i64>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let since = previous.iter().find(|c| c.type_ == type_ && c.status == status).map_or_else(
        || k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
        |c| c.last_transition_time.clone(),
    );
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}
