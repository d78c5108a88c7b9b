//! Connections opened inside a pod's network namespace.
//!
//! A socket belongs to the network namespace of the thread that created it, for its whole
//! life. So the connection is opened on a short-lived thread that first `setns`'d into
//! `/var/run/netns/<name>`; the connected socket is then handed back and used from any
//! thread (the async client included) while the rest of `meshctl` never leaves the host's
//! namespace.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};

/// Where `ip netns add` puts the namespaces the local cluster creates.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Errors entering a namespace (connection errors are the caller's).
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "network namespace {path} does not exist (hint: the local cluster is gone or half torn down; `cargo xtask demo down` then `cargo xtask demo up`)"
    )]
    Missing { path: PathBuf },
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "entering network namespace {path} needs root (CAP_SYS_ADMIN): {reason} (hint: run meshctl with sudo)"
    )]
    Permission { path: PathBuf, reason: String },
    #[error("cannot enter network namespace {path}: {errno}")]
    Enter { path: PathBuf, errno: Errno },
    #[error("the thread entering network namespace {path} panicked")]
    Panicked { path: PathBuf },
}

/// The path of a named network namespace.
pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Connects to `addr` from inside the network namespace at `netns`. The outer error is
/// about the namespace, the inner one about the connection.
pub fn connect_in(
    netns: &Path,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<std::io::Result<TcpStream>, NetnsError> {
    let ns = File::open(netns).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => NetnsError::Missing {
            path: netns.to_path_buf(),
        },
        std::io::ErrorKind::PermissionDenied => NetnsError::Permission {
            path: netns.to_path_buf(),
            reason: source.to_string(),
        },
        _ => NetnsError::Open {
            path: netns.to_path_buf(),
            source,
        },
    })?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // This thread ends right after connecting, so its namespace never leaks into
            // the rest of the process.
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|errno| match errno {
                Errno::EPERM => NetnsError::Permission {
                    path: netns.to_path_buf(),
                    reason: errno.to_string(),
                },
                _ => NetnsError::Enter {
                    path: netns.to_path_buf(),
                    errno,
                },
            })?;
            Ok(TcpStream::connect_timeout(&addr, timeout))
        })
        .join()
        .map_err(|_| NetnsError::Panicked {
            path: netns.to_path_buf(),
        })?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_is_named_with_a_hint() {
        let err = connect_in(
            &path_of("meshctl-no-such-namespace"),
            "127.0.0.1:1".parse().unwrap(),
            Duration::from_millis(100),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/var/run/netns/meshctl-no-such-namespace"),
            "{msg}"
        );
        assert!(msg.contains("demo up"), "{msg}");
    }
}
