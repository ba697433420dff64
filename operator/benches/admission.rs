//! What one pod admission costs the webhook: the review read, the agent's
//! patch made, the response written, for the pod of the test fixture (a
//! ReplicaSet's pod as kube-apiserver sends it), and a pod that does not
//! ask for the agent (what every other pod creation pays). Over HTTPS under
//! a rate of pods: hack/bench-admission.sh.
//!
//! `cargo bench -p tokenplane-operator --bench admission`

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use tokenplane_operator::admission::inject::Settings;
use tokenplane_operator::admission::{Admission, Manifests, review};
use tokenplane_operator::reconcile::tokenpolicy;

const POD_REVIEW: &str = include_str!("../tests/fixtures/pod-review.json");

fn admission() -> Admission<Manifests> {
    let mut resources = tokenplane_operator::render::Resources::default();
    let samples = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/samples");
    for entry in std::fs::read_dir(samples).unwrap() {
        let path: PathBuf = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        resources.add(path, &text).unwrap();
    }
    let env = tokenpolicy::Environment {
        image: "ghcr.io/tokenplane/tokenplane-sidecar:bench".into(),
        sentinels: vec!["redis-sentinel.tokenplane-system.svc:26379".into()],
        master_name: "tokenplane".into(),
        sentinel_login: None,
        operator_namespace: "tokenplane-system".into(),
        redis_tls: None,
        cert_manager_issuer: None,
    };
    Admission {
        catalog: Manifests::new(resources),
        inject: Settings { env, native_sidecar: true, admit_without_client: false },
        clusters: Default::default(),
        metrics: Default::default(),
    }
}

fn pod_admission(c: &mut Criterion) {
    let admission = admission();
    let injected = POD_REVIEW.as_bytes().to_vec();
    let plain = POD_REVIEW
        .replace("\"tokenplane.io/inject\": \"true\"", "\"tokenplane.io/inject\": \"false\"")
        .into_bytes();
    let answer = |body: &[u8]| review::write(admission.mutate(&review::read(body).unwrap()));
    assert!(String::from_utf8(answer(&injected)).unwrap().contains("\"patch\""));
    assert!(!String::from_utf8(answer(&plain)).unwrap().contains("\"patch\""));
    c.bench_function("mutate: inject the agent", |b| b.iter(|| answer(black_box(&injected))));
    c.bench_function("mutate: a pod that does not ask", |b| b.iter(|| answer(black_box(&plain))));
}

criterion_group!(benches, pod_admission);
criterion_main!(benches);
