//! Simulated gke hosts (built out in its own change).

use anyhow::Result;

/// Runs simulated tool `tool` of this platform; returns the exit code.
pub fn run_tool(_host: &super::SimHost, tool: &str, _args: &[String]) -> Result<i32> {
    anyhow::bail!("no simulated gke tool {tool:?}")
}
