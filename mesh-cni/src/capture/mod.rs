//! Traffic capture: which connections of a pod go through its sidecar, as iptables `nat`
//! rules. [`config`] reads what the pod asks for, [`rules`] turns it into
//! iptables-restore input, [`iptables`] applies, checks and removes it atomically.

pub mod config;
pub mod iptables;
pub mod rules;

pub use config::{CaptureConfig, ConfigError, InterceptionMode, IpRanges, PortSet};
pub use iptables::{Backend, BackendChoice, Iptables, IptablesError};
pub use rules::RuleSet;
