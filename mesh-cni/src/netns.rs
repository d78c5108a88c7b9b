//! Running code inside another network namespace.
//!
//! `setns(2)` changes the namespace of the calling thread only, so the work runs on a
//! dedicated thread that enters the namespace and then ends: the caller's threads (and a
//! tokio runtime, if any) never change namespace. Child processes spawned from that
//! thread (iptables-restore) inherit its namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path}: cannot open: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "network namespace {path}: setns failed: {source} (hint: is it a network namespace path such as /run/netns/NAME, and are we root?)"
    )]
    Enter { path: PathBuf, source: nix::Error },
    #[error("network namespace {path}: the worker thread panicked")]
    Panicked { path: PathBuf },
}

/// Runs `f` on a thread inside the network namespace at `path` and returns its result.
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let ns = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::Panicked {
            path: path.to_path_buf(),
        })?
    })
}
