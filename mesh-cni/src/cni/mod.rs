//! The chained CNI plugin (spec 1.0.0): ADD applies the capture rules in the pod's
//! network namespace when the pod has a sidecar, DEL removes them, CHECK verifies them,
//! VERSION reports the versions it can pass results through for. The previous plugin's
//! result is returned unchanged: this plugin adds no interface and no address.

pub mod env;
pub mod error;
pub mod log;
pub mod netconf;
mod plugin;

pub use env::{CniEnv, Command, PodRef};
pub use error::{CniError, Code};
pub use netconf::NetConf;
pub use plugin::{Outcome, run};
