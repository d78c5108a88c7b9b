//! Config sources that feed the [`Store`](crate::store::Store): a directory of YAML files
//! now, Kubernetes watches later.

pub mod file;
