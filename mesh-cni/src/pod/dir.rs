//! Pods from a directory of YAML or JSON files (multi-document YAML allowed), the way
//! the local cluster publishes them. Files that are not Pods are ignored.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;

use super::{PodError, PodSource};

pub struct DirSource {
    dir: PathBuf,
}

impl DirSource {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
}

impl PodSource for DirSource {
    fn get(&self, namespace: &str, name: &str) -> Result<Pod, PodError> {
        if !self.dir.is_dir() {
            return Err(PodError::Source {
                path: self.dir.clone(),
                message:
                    "not a directory (hint: podSource.dir must name the cluster's config directory)"
                        .into(),
            });
        }
        let mut files = Vec::new();
        collect(&self.dir, &mut files).map_err(|e| PodError::Source {
            path: self.dir.clone(),
            message: e.to_string(),
        })?;
        files.sort();
        let mut broken = Vec::new();
        for file in files {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    broken.push(format!("{}: {e}", file.display()));
                    continue;
                }
            };
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value = match serde_yaml::Value::deserialize(doc) {
                    Ok(v) => v,
                    Err(e) => {
                        broken.push(format!("{}: {e}", file.display()));
                        break;
                    }
                };
                if value.get("kind").and_then(|k| k.as_str()) != Some("Pod") {
                    continue;
                }
                let meta = value.get("metadata");
                let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(|v| v.as_str());
                if field("name") != Some(name)
                    || field("namespace").unwrap_or("default") != namespace
                {
                    continue;
                }
                return serde_yaml::from_value::<Pod>(value).map_err(|e| PodError::Source {
                    path: file.clone(),
                    message: format!("pod {namespace}/{name} is not a valid Pod: {e}"),
                });
            }
        }
        Err(PodError::NotFound {
            namespace: namespace.to_string(),
            name: name.to_string(),
            source_desc: format!("directory {}", self.dir.display()),
            hint: if broken.is_empty() {
                String::new()
            } else {
                format!(" (unreadable files: {})", broken.join("; "))
            },
        })
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_pods_by_namespace_and_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join("sub/pods.yaml"),
            "kind: Service\nmetadata: {name: a}\n---\nkind: Pod\napiVersion: v1\nmetadata: {name: a, namespace: shop}\nspec: {containers: [{name: app}]}\n---\nkind: Pod\napiVersion: v1\nmetadata: {name: b}\nspec: {containers: [{name: app}]}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("junk.yaml"), ": : :\n").unwrap();
        let src = DirSource::new(dir.path().to_path_buf());
        assert_eq!(
            src.get("shop", "a").unwrap().metadata.name.as_deref(),
            Some("a")
        );
        assert_eq!(
            src.get("default", "b").unwrap().metadata.name.as_deref(),
            Some("b")
        );
        let err = src.get("default", "a").unwrap_err().to_string();
        assert!(err.contains("pod default/a not found"), "{err}");
        assert!(err.contains("junk.yaml"), "{err}");
    }
}
