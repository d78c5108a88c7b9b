//! `cargo xtask crds [--check]`: writes `manifests/crds/<group>.yaml` from mesh-api's types
//! (one file per API group, every served version), or with `--check` fails when the
//! files on disk differ from what the types generate.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Generates (or checks) the CRD manifests under `root/manifests/crds`.
pub fn run(root: &Path, check: bool) -> Result<()> {
    let dir = root.join("manifests/crds");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut stale = Vec::new();
    let mut expected_files = Vec::new();
    for (group, crds) in mesh_api::crds::by_group() {
        let file = dir.join(format!("{group}.yaml"));
        expected_files.push(file.clone());
        let text =
            mesh_api::crds::to_yaml(&crds).with_context(|| format!("rendering CRDs of {group}"))?;
        let current = std::fs::read_to_string(&file).unwrap_or_default();
        if current == text {
            continue;
        }
        if check {
            stale.push(file.display().to_string());
        } else {
            std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
            eprintln!("wrote {}", file.display());
        }
    }
    // A CRD file no group generates any more is stale too.
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let generated =
            path.extension().is_some_and(|e| e == "yaml") && !expected_files.contains(&path);
        if generated {
            if check {
                stale.push(format!("{} (no longer generated)", path.display()));
            } else {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    if !stale.is_empty() {
        bail!(
            "CRDs are out of date with mesh-api's types: {} (hint: run `cargo xtask crds` and commit the result)",
            stale.join(", ")
        );
    }
    if check {
        eprintln!("CRDs in {} are up to date", dir.display());
    }
    Ok(())
}
