//! `crds/*.yaml` must be what the Rust types generate: a changed type without
//! a regenerated CRD would ship a schema the code does not match.

use std::path::Path;

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    for (file, expected) in tokenplane_operator::crdgen::render().unwrap() {
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            committed == expected,
            "crds/{file} is stale: run `cargo run -p tokenplane-operator -- crdgen --out crds`"
        );
    }
}
