//! The `vsphere` collector (built out in its own change).

use super::{Collection, Collector};
use crate::config::AgentConfig;

/// The `vsphere` collector.
pub struct Vsphere;

impl Collector for Vsphere {
    fn name(&self) -> &'static str {
        "vsphere"
    }

    fn detect(&self, _cfg: &AgentConfig) -> bool {
        false
    }

    fn collect(&self, _cfg: &AgentConfig, _out: &mut Collection) {}
}
