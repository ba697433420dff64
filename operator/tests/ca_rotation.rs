//! CA rotation without a failed handshake, simulated over two years hour by
//! hour with real certificates and rustls' own verifier: the operator plans
//! its CAs and renews the issuer's serving certificate every hour; issuers
//! pick up a new certificate an hour late, agents a new bundle just under
//! the propagation time late. Every hour, the certificate an issuer serves
//! must verify against the bundle every agent holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokenplane_operator::reconcile::ca::{self, Authorities, Authority, Settings};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::ServerCertVerifier;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{Error, RootCertStore};

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;
const NAME: &str = "default-issuer.auth.svc";

/// What was current from a time on.
struct History<T>(Vec<(u64, T)>);

impl<T> History<T> {
    fn at(&self, t: u64) -> Option<&T> {
        self.0.iter().rev().find(|(from, _)| *from <= t).map(|(_, v)| v)
    }
}

#[derive(Default)]
struct Verifiers(HashMap<String, Arc<WebPkiServerVerifier>>);

impl Verifiers {
    fn verify(&mut self, bundle: &str, leaf_pem: &str, t: u64) -> Result<(), Error> {
        let verifier = self.0.entry(bundle.to_owned()).or_insert_with(|| {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
                roots.add(cert.expect("a PEM certificate")).expect("a CA certificate");
            }
            WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(aws_lc_rs::default_provider()),
            )
            .build()
            .expect("a verifier")
        });
        let leaf = CertificateDer::from_pem_slice(leaf_pem.as_bytes()).expect("a PEM leaf");
        let now = UnixTime::since_unix_epoch(Duration::from_secs(t));
        verifier.verify_server_cert(&leaf, &[], &ServerName::try_from(NAME).unwrap(), &[], now).map(|_| ())
    }
}

#[test]
fn two_years_of_ca_rotation_never_fail_a_handshake() {
    let settings = Settings { ca_lifetime: 90 * DAY, leaf_lifetime: 9 * DAY, propagation: DAY };
    let agent_lag = settings.propagation - HOUR;
    let issuer_lag = HOUR;
    let names = vec![NAME.to_owned()];
    let start = 1_800_000_000;
    let mut cas = Authorities::default();
    let mut bundles = History(Vec::new());
    let mut leaves = History(Vec::new());
    let mut verifiers = Verifiers::default();
    let (mut rotations, mut renewals) = (0, 0);
    for t in (start..start + 2 * 365 * DAY).step_by(HOUR as usize) {
        let planned = ca::plan(cas, &settings, t, Authority::generate);
        cas = planned.authorities;
        if bundles.at(t) != Some(&cas.bundle()) {
            bundles.0.push((t, cas.bundle()));
        }
        let latest = leaves.0.last().map(|(_, l): &(u64, ca::Leaf)| l.cert_pem.clone());
        if ca::needs_renewal(&cas, latest.as_ref().map(|l| l.as_bytes()), &names, t) {
            if latest.is_some_and(|pem| !cas.signed_by_active(&ca::leaf_info(pem.as_bytes()).unwrap())) {
                rotations += 1;
            }
            let signer = cas.active.as_ref().expect("an active CA");
            leaves.0.push((t, signer.sign_server(&names, t, settings.leaf_lifetime).expect("a leaf")));
            renewals += 1;
        }
        let served = leaves.at(t - issuer_lag).or(leaves.at(t)).expect("a leaf is served");
        for (who, lag) in [("a lagging agent", agent_lag), ("a current agent", 0)] {
            let bundle = bundles.at(t - lag).or(bundles.at(t)).expect("a bundle");
            verifiers
                .verify(bundle, &served.cert_pem, t)
                .unwrap_or_else(|e| panic!("{who} fails the handshake {}h in: {e}", (t - start) / HOUR));
        }
        assert!(cas.bundle().matches("BEGIN CERTIFICATE").count() <= 3, "old CAs leave the bundle");
    }
    assert!(rotations >= 7, "the CA rotated {rotations} times");
    assert!(renewals >= 100, "the serving certificate was renewed {renewals} times");
}
