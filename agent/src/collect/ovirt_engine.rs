//! The `ovirt_engine` collector (built out in its own change).

use super::{Collection, Collector};
use crate::config::AgentConfig;

/// The `ovirt_engine` collector.
pub struct OvirtEngine;

impl Collector for OvirtEngine {
    fn name(&self) -> &'static str {
        "ovirt_engine"
    }

    fn detect(&self, _cfg: &AgentConfig) -> bool {
        false
    }

    fn collect(&self, _cfg: &AgentConfig, _out: &mut Collection) {}
}
