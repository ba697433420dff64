//! Renders the CRDs of `tokenplane-api` as the YAML files kept in `crds/`.

use std::path::Path;

const HEADER: &str = "# Generated from the types in crds/src by `tokenplane-operator crdgen`; do not edit.\n";

/// Every CRD as (file name, YAML text).
pub fn render() -> Result<Vec<(&'static str, String)>, serde_norway::Error> {
    tokenplane_api::crds()
        .into_iter()
        .map(|(file, crd)| Ok((file, format!("{HEADER}{}", serde_norway::to_string(&crd)?))))
        .collect()
}

/// Writes every CRD into `dir`.
pub fn write(dir: &Path) -> anyhow::Result<()> {
    for (file, yaml) in render()? {
        let path = dir.join(file);
        std::fs::write(&path, yaml).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}
