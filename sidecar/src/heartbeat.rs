//! Verifier heartbeats: every issuer and agent replica reports, every
//! `storage::HEARTBEAT_INTERVAL_SECS`, which signing keys it holds, so the
//! operator promotes a new key only once every live verifier can check it.

use std::time::Duration;

use tokenplane_api::storage::{HEARTBEAT_INTERVAL_SECS, VerifierHeartbeat};

pub const INTERVAL: Duration = Duration::from_secs(HEARTBEAT_INTERVAL_SECS);

/// This replica's name: the pod name in a cluster (`HOSTNAME`), else the
/// process id.
pub fn instance() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("pid-{}", std::process::id()))
}

/// What a verifier of `issuer` holding `kids` (and signing with `signing`,
/// for an issuer) reports.
pub fn report<'a>(
    issuer: &str,
    kids: impl Iterator<Item = &'a str>,
    signing: Option<&str>,
) -> VerifierHeartbeat {
    let mut kids: Vec<String> = kids.map(str::to_owned).collect();
    kids.sort();
    VerifierHeartbeat { issuer: issuer.to_owned(), kids, signing: signing.map(str::to_owned) }
}
