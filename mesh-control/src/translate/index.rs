//! Per-snapshot routing indexes shared by every proxy's translation.

use crate::registry::Registry;
use crate::store::ConfigIssue;
use crate::store::config::ConfigSet;
use mesh_api::mesh_config::MeshConfig;

/// Indexes computed once per snapshot.
#[derive(Debug, Default)]
pub struct MeshIndex {}

impl MeshIndex {
    pub fn build(
        _config: &ConfigSet,
        _registry: &Registry,
        _mesh: &MeshConfig,
        _domain_suffix: &str,
    ) -> (MeshIndex, Vec<ConfigIssue>) {
        (MeshIndex {}, Vec::new())
    }
}
