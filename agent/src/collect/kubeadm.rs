//! The `kubeadm` collector (built out in its own change).

use super::{Collection, Collector};
use crate::config::AgentConfig;

/// The `kubeadm` collector.
pub struct Kubeadm;

impl Collector for Kubeadm {
    fn name(&self) -> &'static str {
        "kubeadm"
    }

    fn detect(&self, _cfg: &AgentConfig) -> bool {
        false
    }

    fn collect(&self, _cfg: &AgentConfig, _out: &mut Collection) {}
}
