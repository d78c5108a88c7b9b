//! The file source: every `*.yaml`, `*.yml` and `*.json` under a directory (recursively),
//! multi-document, kept in sync with the store.
//!
//! Rather than interpreting each filesystem event (editors save through temp files and
//! renames, `kubectl`-style tools replace whole trees), any event schedules a rescan of the
//! directory a short moment later: changed files are re-applied, vanished ones removed. A
//! slow periodic rescan covers events the OS dropped. A file whose content did not change
//! is not re-parsed.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// How long to wait after an event before rescanning (collapses bursts of events).
const SETTLE: Duration = Duration::from_millis(50);
/// The safety-net rescan period.
const RESYNC: Duration = Duration::from_secs(30);

/// Errors of the file source itself (not of the documents: those are config issues).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("config dir {path}: {source} (hint: --config-dir must name a readable directory)")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("watching config dir {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

/// Reads a directory into the store and keeps it in sync.
#[derive(Debug)]
pub struct FileSource {
    dir: PathBuf,
    store: Arc<Store>,
    /// Content hash of every file last applied, by origin.
    applied: Mutex<BTreeMap<String, u64>>,
}

impl FileSource {
    pub fn new(dir: impl AsRef<Path>, store: Arc<Store>) -> FileSource {
        FileSource {
            dir: dir.as_ref().to_path_buf(),
            store,
            applied: Mutex::new(BTreeMap::new()),
        }
    }

    /// Loads every file once, synchronously: call before serving so the first push is complete.
    pub fn load_all(&self) -> Result<(), SourceError> {
        self.sync()
    }

    /// Watches the directory until `shutdown` fires, applying every change to the store.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SourceError> {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(e) if e.kind.is_access() => {}
                Ok(_) => {
                    let _ = tx.send(());
                }
                Err(error) => {
                    tracing::warn!(component = "config", %error, "file watch error; rescanning")
                }
            })
            .map_err(|source| SourceError::Watch {
                path: self.dir.clone(),
                source,
            })?;
        watcher
            .watch(&self.dir, RecursiveMode::Recursive)
            .map_err(|source| SourceError::Watch {
                path: self.dir.clone(),
                source,
            })?;
        tracing::info!(component = "config", dir = %self.dir.display(), "watching config dir");
        let this = Arc::new(self);
        // Parsing and rebuilding the snapshot is CPU work: keep it off the async workers.
        let sync = |this: &Arc<FileSource>| {
            let this = this.clone();
            async move {
                let _ = tokio::task::spawn_blocking(move || this.sync_logged()).await;
            }
        };
        // Catch changes made between load_all() and the watch starting.
        sync(&this).await;
        let mut resync = tokio::time::interval(RESYNC);
        resync.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                got = rx.recv() => {
                    if got.is_none() {
                        break;
                    }
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                    sync(&this).await;
                }
                _ = resync.tick() => sync(&this).await,
            }
        }
        drop(watcher);
        Ok(())
    }

    fn sync_logged(&self) {
        if let Err(error) = self.sync() {
            // The directory is gone or unreadable: keep the last good config.
            tracing::warn!(component = "config", %error, "config dir rescan failed; keeping the current config");
        }
    }

    /// Rescans the directory: applies new and changed files, removes vanished ones.
    fn sync(&self) -> Result<(), SourceError> {
        let mut files = Vec::new();
        collect(&self.dir, &mut files).map_err(|source| SourceError::Dir {
            path: self.dir.clone(),
            source,
        })?;
        files.sort();
        let mut applied = self.applied.lock();
        let mut seen = BTreeMap::new();
        let mut changed = Vec::new();
        for path in files {
            let origin = path.display().to_string();
            let text = match std::fs::read(&path) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                // Vanished between listing and reading: the next event handles it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => {
                    tracing::warn!(component = "config", file = %origin, %error, "cannot read config file; keeping what it defined");
                    if let Some(h) = applied.get(&origin) {
                        seen.insert(origin, *h);
                    }
                    continue;
                }
            };
            let mut hasher = DefaultHasher::new();
            text.hash(&mut hasher);
            let hash = hasher.finish();
            if applied.get(&origin) != Some(&hash) {
                changed.push((origin.clone(), text));
            }
            seen.insert(origin, hash);
        }
        // Files this source applied, and any other origin under the directory (an earlier
        // source on the same store), that are gone now.
        let prefix = format!("{}/", self.dir.display().to_string().trim_end_matches('/'));
        let mut gone: Vec<String> = applied
            .keys()
            .filter(|o| !seen.contains_key(*o))
            .cloned()
            .collect();
        gone.extend(self.store.origins().into_iter().filter(|o| {
            o.starts_with(&prefix) && !seen.contains_key(o) && !applied.contains_key(o)
        }));
        for origin in &gone {
            tracing::info!(component = "config", file = %origin, "config file removed");
        }
        // One snapshot for the whole rescan: a reader never sees half of a change that was
        // written as several files.
        let issues = self.store.apply_batch(&changed, &gone);
        if !changed.is_empty() {
            tracing::debug!(
                component = "config",
                files = changed.len(),
                issues = issues.len(),
                "applied config files"
            );
        }
        *applied = seen;
        Ok(())
    }
}

fn is_config_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    !hidden && matches!(ext, "yaml" | "yml" | "json")
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(_) => continue,
        };
        // Follow symlinks the way Kubernetes ConfigMap volumes lay files out (..data links).
        let is_dir = file_type.is_dir() || (file_type.is_symlink() && path.is_dir());
        let name_hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if is_dir {
            if !name_hidden {
                collect(&path, out)?;
            }
        } else if is_config_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: NAME, namespace: default}
spec:
  hosts: [NAME]
  http:
  - route:
    - destination: {host: NAME}
"#;

    fn vs(name: &str) -> String {
        VS.replace("NAME", name)
    }

    fn names(store: &Store) -> Vec<String> {
        store
            .snapshot()
            .config()
            .virtual_services
            .iter()
            .map(|v| v.meta.name.clone())
            .collect()
    }

    /// Waits (bounded) until the store's VirtualServices are `want`.
    async fn eventually(store: &Store, want: &[&str]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut got = names(store);
            got.sort();
            if got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "store has {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn add_change_delete_rename_take_effect_without_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.yaml"), vs("alpha")).expect("write");
        std::fs::create_dir(dir.path().join("nested")).expect("mkdir");
        std::fs::write(dir.path().join("nested/b.yml"), vs("beta")).expect("write");
        std::fs::write(dir.path().join("notes.txt"), vs("ignored")).expect("write");
        std::fs::write(dir.path().join(".hidden.yaml"), vs("hidden")).expect("write");
        let store = Arc::new(Store::new());
        let source = FileSource::new(dir.path(), store.clone());
        source.load_all().expect("load");
        assert_eq!(names(&store).len(), 2);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(source.run(shutdown.clone()));

        // add
        std::fs::write(
            dir.path().join("c.json"),
            serde_json::to_string(
                &serde_yaml::from_str::<serde_json::Value>(&vs("gamma")).expect("yaml"),
            )
            .expect("json"),
        )
        .expect("write");
        eventually(&store, &["alpha", "beta", "gamma"]).await;
        // change
        std::fs::write(dir.path().join("a.yaml"), vs("alpha2")).expect("write");
        eventually(&store, &["alpha2", "beta", "gamma"]).await;
        // rename out of the config extensions, then back
        std::fs::rename(
            dir.path().join("nested/b.yml"),
            dir.path().join("nested/b.bak"),
        )
        .expect("rename");
        eventually(&store, &["alpha2", "gamma"]).await;
        std::fs::rename(dir.path().join("nested/b.bak"), dir.path().join("b.yaml"))
            .expect("rename");
        eventually(&store, &["alpha2", "beta", "gamma"]).await;
        // a broken file keeps what it defined; the rest of the directory is untouched
        std::fs::write(dir.path().join("c.json"), "{\"apiVersion\": ").expect("write");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !store
            .snapshot()
            .issues()
            .iter()
            .any(|i| i.origin.contains("c.json"))
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no issue for the broken c.json"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eventually(&store, &["alpha2", "beta", "gamma"]).await;
        // delete
        std::fs::remove_file(dir.path().join("c.json")).expect("rm");
        eventually(&store, &["alpha2", "beta"]).await;
        assert!(
            store.snapshot().issues().is_empty(),
            "{:#?}",
            store.snapshot().issues()
        );

        shutdown.cancel();
        task.await.expect("join").expect("run");
    }

    #[test]
    fn missing_dir_is_a_clear_error() {
        let store = Arc::new(Store::new());
        let err = FileSource::new("/nonexistent/mesh-config", store)
            .load_all()
            .expect_err("missing dir");
        assert!(err.to_string().contains("--config-dir"), "{err}");
    }
}
