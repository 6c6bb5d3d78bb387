//! The `ovirt_node` collector (built out in its own change).

use super::{Collection, Collector};
use crate::config::AgentConfig;

/// The `ovirt_node` collector.
pub struct OvirtNode;

impl Collector for OvirtNode {
    fn name(&self) -> &'static str {
        "ovirt_node"
    }

    fn detect(&self, _cfg: &AgentConfig) -> bool {
        false
    }

    fn collect(&self, _cfg: &AgentConfig, _out: &mut Collection) {}
}
