//! TLS of a cluster (`spec.tls.enabled`): every node and Sentinel serves
//! TLS only, and replicates and talks to its peers over TLS, with one
//! certificate for all the cluster's stable names. It is signed by the
//! operator's CA into the Secret `<cluster>-redis-tls` (renewed at two
//! thirds of its life), or it is the `kubernetes.io/tls` Secret
//! `spec.tls.secretName` (cert-manager's, say). Redis reads its certificate
//! and its CA bundle only when it starts, so the pod templates carry their
//! fingerprint: a new certificate or bundle (a next CA published ahead of
//! its first certificate) rolls the pods, each through its hand-over. Clients verify the servers against the Secret's `ca.crt`;
//! passwords still authenticate them (`tls-auth-clients no`).

use k8s_openapi::api::core::v1::Secret;
use tokenplane_api::RedisSentinelCluster;

use super::{Names, labels, meta};
use crate::reconcile::Invalid;
use crate::reconcile::ca::{self, BUNDLE_KEY, ServingInputs, TLS_CRT, TLS_KEY};

/// Where every container of the cluster's pods finds the certificate.
pub const TLS_MOUNT: &str = "/etc/redis/tls";
/// The pod template annotation that rolls the pods on a new certificate.
pub const FINGERPRINT: &str = "tokenplane.io/tls-fingerprint";

/// The certificate the pods serve with, as the pod templates and the
/// clients need it.
#[derive(Clone, Debug)]
pub struct Tls {
    /// The Secret the pods mount.
    pub secret_name: String,
    /// The operator's own Secret to apply; `None` for `spec.tls.secretName`.
    pub owned: Option<Secret>,
    /// SHA-256 of the certificate and the CA bundle, hex.
    pub fingerprint: String,
    /// The CAs clients verify the servers against (PEM).
    pub ca_bundle: Vec<u8>,
    /// When the operator's certificate is due for renewal (unix seconds).
    pub renew_at: u64,
}

/// The Secret the pods of `rsc` mount, with TLS on.
pub fn secret_name(rsc: &RedisSentinelCluster, names: &Names) -> Option<String> {
    let tls = &rsc.spec.tls;
    tls.enabled.then(|| tls.secret_name.clone().unwrap_or_else(|| format!("{}-redis-tls", names.cluster)))
}

/// Every name a client reaches a member by: each pod's stable name, the
/// Sentinel Service, and `localhost` for what runs beside Redis in its pod
/// (the exporter, the probes).
pub fn dns_names(rsc: &RedisSentinelCluster, names: &Names) -> Vec<String> {
    let host = |addr: String| addr.rsplit_once(':').map_or(addr.clone(), |(h, _)| h.to_owned());
    let mut all: Vec<String> = names.node_addrs(rsc.spec.replicas).into_iter().map(host).collect();
    all.extend(names.sentinel_addrs(rsc.spec.sentinels).into_iter().map(host));
    all.push(names.service_host(&names.sentinel()));
    all.push(format!("{}.{}.svc", names.sentinel(), names.namespace));
    all.push("localhost".to_owned());
    all
}

/// The cluster's certificate: its own Secret, kept or signed afresh by the
/// operator's CA; or the user's (`inputs.existing`), which must be complete.
pub(super) fn tls(
    rsc: &RedisSentinelCluster,
    names: &Names,
    inputs: ServingInputs<'_>,
    now: u64,
) -> Result<Option<Tls>, Invalid> {
    let Some(secret_name) = secret_name(rsc, names) else { return Ok(None) };
    let (owned, renew_at) = match rsc.spec.tls.secret_name {
        Some(_) => (None, u64::MAX),
        None => {
            let metadata = meta(rsc, secret_name.clone(), &labels(&names.cluster, "tls"));
            let what = "the cluster's TLS certificate";
            let (secret, at) = ca::server_secret(metadata, &dns_names(rsc, names), inputs, now, what)?;
            (Some(secret), at)
        }
    };
    let served = owned.as_ref().or(inputs.existing).ok_or_else(|| missing(&secret_name, "does not exist"))?;
    let entry = |key: &str| {
        let value = served.data.as_ref().and_then(|d| d.get(key)).map(|v| v.0.clone());
        value.filter(|v| !v.is_empty()).ok_or_else(|| missing(&secret_name, &format!("has no {key}")))
    };
    let (cert, _key, ca_bundle) = (entry(TLS_CRT)?, entry(TLS_KEY)?, entry(BUNDLE_KEY)?);
    let fingerprint = tokenplane_api::acl::sha256_hex(&[cert.as_slice(), &ca_bundle].concat());
    Ok(Some(Tls { secret_name, owned, fingerprint, ca_bundle, renew_at }))
}

fn missing(secret: &str, what: &str) -> Invalid {
    Invalid {
        reason: "TlsSecretInvalid",
        message: format!(
            "the TLS Secret {secret} {what}: spec.tls.secretName must name a kubernetes.io/tls Secret with \
             tls.crt, tls.key and ca.crt for every pod's stable name, the Sentinel Service and localhost"
        ),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::super::Passwords;
    use super::super::config::{REDIS_CONF, SENTINEL_CONF};
    use super::super::fixtures::{cluster, reconcile, reconcile_tls};
    use super::*;

    fn on(secret_name: Option<&str>) -> RedisSentinelCluster {
        cluster(|v| v["spec"]["tls"] = serde_json::json!({"enabled": true, "secretName": secret_name}))
    }

    fn args(set: &k8s_openapi::api::apps::v1::StatefulSet) -> String {
        serde_json::to_string(&set.spec.as_ref().unwrap().template).unwrap()
    }

    #[test]
    fn without_tls_nothing_of_it_is_built() {
        let d = reconcile(&cluster(|_| {}), &Passwords::default()).unwrap();
        assert!(d.tls.is_none());
        assert!(!args(&d.redis).contains(TLS_MOUNT) && !args(&d.sentinel).contains("--redis-ca-file"));
        assert!(!d.config.data.unwrap()[REDIS_CONF].contains("tls-"));
    }

    #[test]
    fn the_operator_signs_one_certificate_for_every_member_and_keeps_it_until_renewal() {
        let rsc = on(None);
        let d = reconcile(&rsc, &Passwords::default()).unwrap();
        let tls = d.tls.as_ref().unwrap();
        let secret = tls.owned.as_ref().expect("the operator's own Secret");
        assert_eq!(secret.metadata.name.as_deref(), Some("tokenplane-redis-tls"));
        let data = secret.data.as_ref().unwrap();
        let leaf = ca::leaf_info(&data[TLS_CRT].0).unwrap();
        assert!(ca::test_authorities().signed_by_active(&leaf));
        for name in [
            "tokenplane-redis-2.tokenplane-redis.prod.svc.cluster.local",
            "tokenplane-sentinel-peers-0.tokenplane-sentinel-peers.prod.svc.cluster.local",
            "tokenplane-sentinel.prod.svc.cluster.local",
            "tokenplane-sentinel.prod.svc",
            "localhost",
        ] {
            assert!(leaf.dns_names.iter().any(|n| n == name), "{name} in {:?}", leaf.dns_names);
        }
        assert_eq!(tls.ca_bundle, ca::test_authorities().bundle().as_bytes());
        let again = reconcile_tls(&rsc, &Passwords::default(), Some(secret)).unwrap().tls.unwrap();
        assert_eq!(again.owned.unwrap().data.unwrap()[TLS_CRT], data[TLS_CRT], "kept");
        assert_eq!(again.fingerprint, tls.fingerprint, "no roll");

        // A member more: a certificate that names it, and the pods roll.
        let grown = cluster(|v| {
            v["spec"]["tls"] = serde_json::json!({"enabled": true});
            v["spec"]["replicas"] = 5.into();
        });
        let renewed = reconcile_tls(&grown, &Passwords::default(), Some(secret)).unwrap().tls.unwrap();
        assert_ne!(renewed.fingerprint, tls.fingerprint);

        // A next CA in the bundle, the certificate kept: the pods roll to
        // trust it before it signs.
        let mut published = secret.clone();
        published.data.as_mut().unwrap().insert(BUNDLE_KEY.into(), ByteString(b"two CAs".to_vec()));
        let rsc = on(Some("published"));
        let trusted = reconcile_tls(&rsc, &Passwords::default(), Some(&published)).unwrap().tls.unwrap();
        assert_ne!(trusted.fingerprint, tls.fingerprint);
    }

    #[test]
    fn every_member_serves_tls_only_and_every_client_in_the_pods_verifies_it() {
        let d = reconcile(&on(None), &Passwords::default()).unwrap();
        let data = d.config.data.as_ref().unwrap();
        for conf in [REDIS_CONF, SENTINEL_CONF] {
            let lines: Vec<&str> = data[conf].lines().collect();
            for wanted in ["port 0", "tls-replication yes", "tls-auth-clients no"] {
                assert!(lines.contains(&wanted), "{conf}: {wanted}");
            }
            assert!(lines.iter().any(|l| l.starts_with("tls-port ")), "{conf}");
            assert!(lines.contains(&"tls-ca-cert-file /etc/redis/tls/ca.crt"), "{conf}");
        }
        let fingerprint = &d.tls.as_ref().unwrap().fingerprint[..16];
        for set in [&d.redis, &d.sentinel] {
            let template = &set.spec.as_ref().unwrap().template;
            assert_eq!(
                template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[FINGERPRINT],
                fingerprint
            );
            let spec = template.spec.as_ref().unwrap();
            for c in spec.init_containers.iter().flatten().chain(&spec.containers) {
                let mounts = c.volume_mounts.as_ref().unwrap();
                assert!(mounts.iter().any(|m| m.mount_path == TLS_MOUNT), "{}", c.name);
            }
            // Sentinels by name: their certificate holds names, not IPs.
            let start = &spec.init_containers.as_ref().unwrap()[0];
            let args = start.args.as_ref().unwrap().join(" ");
            assert!(args.contains("--redis-ca-file /etc/redis/tls/ca.crt"), "{args}");
            assert!(
                args.contains(
                    "tokenplane-sentinel-peers-0.tokenplane-sentinel-peers.prod.svc.cluster.local:26379,"
                ),
                "{args}"
            );
        }
        let redis = args(&d.redis);
        assert!(
            redis.contains("rediss://localhost:6379") && redis.contains("REDIS_EXPORTER_TLS_CA_CERT_FILE")
        );
        assert!(redis.contains("redis-cli --tls --cacert /etc/redis/tls/ca.crt"), "the probe speaks TLS");
        let cleanup = serde_json::to_string(&d.cleanup).unwrap();
        assert!(
            cleanup.contains("\"--redis-tls\",\"--redis-ca-file\",\"/etc/redis/tls/ca.crt\""),
            "{cleanup}"
        );
    }

    #[test]
    fn a_secret_of_the_users_is_mounted_as_it_is_once_complete() {
        let rsc = on(Some("corp-redis-tls"));
        let refused = reconcile(&rsc, &Passwords::default()).err().unwrap();
        assert_eq!(refused.reason, "TlsSecretInvalid");
        assert!(refused.message.contains("corp-redis-tls does not exist"), "{}", refused.message);

        let signed = reconcile(&on(None), &Passwords::default()).unwrap().tls.unwrap().owned.unwrap();
        let mut theirs = signed.clone();
        theirs.data.as_mut().unwrap().remove(BUNDLE_KEY);
        let refused = reconcile_tls(&rsc, &Passwords::default(), Some(&theirs)).err().unwrap();
        assert!(refused.message.contains("has no ca.crt"), "{}", refused.message);

        theirs.data.as_mut().unwrap().insert(BUNDLE_KEY.into(), ByteString(b"their CA".to_vec()));
        let d = reconcile_tls(&rsc, &Passwords::default(), Some(&theirs)).unwrap();
        let tls = d.tls.as_ref().unwrap();
        assert!(tls.owned.is_none(), "the operator writes nothing of theirs");
        assert_eq!(
            (tls.secret_name.as_str(), tls.ca_bundle.as_slice()),
            ("corp-redis-tls", &b"their CA"[..])
        );
        assert!(args(&d.redis).contains("\"secretName\":\"corp-redis-tls\""));
    }
}
