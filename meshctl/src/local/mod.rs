//! `meshctl --local apply|delete|exec|get`: kubectl's everyday verbs against the local
//! cluster (network namespaces on this machine) recorded in `$MESH_LOCAL_DIR` (default
//! `/run/mesh-local`).
//!
//! `apply` validates every document as `meshctl validate` does and writes nothing unless
//! all are valid; resources go to `config/user/<kind>.<namespace>.<name>.yaml`, the
//! directory the control plane watches (the e2e harness uses the same layout). `exec`
//! runs a command in a pod's network namespace as the app's user, as `kubectl exec`
//! would. `get pods|services` lists what the harness created.

mod apply;
mod cluster;
mod exec;
mod get;

use std::process::ExitCode;

use anyhow::Result;

pub use apply::{ApplyArgs, DeleteArgs};
pub use exec::ExecArgs;
pub use get::GetArgs;

pub fn apply(args: &ApplyArgs) -> Result<ExitCode> {
    apply::apply(args, &cluster::Dir::from_env())
}

pub fn delete(args: &DeleteArgs) -> Result<ExitCode> {
    apply::delete(args, &cluster::Dir::from_env())
}

pub fn exec(args: &ExecArgs) -> Result<ExitCode> {
    exec::run(args, &cluster::Dir::from_env())
}

pub fn get(args: &GetArgs) -> Result<ExitCode> {
    get::run(args, &cluster::Dir::from_env())
}

/// Every local verb needs `--local` until a Kubernetes backend exists, so that the same
/// command line keeps its meaning when one does.
fn require_local(local: bool, verb: &str) -> Result<()> {
    if local {
        Ok(())
    } else {
        anyhow::bail!(
            "meshctl {verb} needs --local (the Kubernetes backend is not implemented yet; use kubectl {verb} there)"
        )
    }
}
