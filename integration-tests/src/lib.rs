//! Test support for certfleet's end-to-end tests: platform simulators whose tools behave like
//! the real ones (`shared/reference/`), and helpers to run the real binaries as processes.

pub mod loadgen;
pub mod sim;
