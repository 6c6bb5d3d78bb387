//! The `gke_admin` collector (built out in its own change).

use super::{Collection, Collector};
use crate::config::AgentConfig;

/// The `gke_admin` collector.
pub struct GkeAdmin;

impl Collector for GkeAdmin {
    fn name(&self) -> &'static str {
        "gke_admin"
    }

    fn detect(&self, _cfg: &AgentConfig) -> bool {
        false
    }

    fn collect(&self, _cfg: &AgentConfig, _out: &mut Collection) {}
}
