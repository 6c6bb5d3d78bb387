//! End-to-end tests: real binaries as processes against simulated hosts. One test binary for
//! the whole crate keeps link time down.

mod fabric;
mod gke;
mod ovirt;
mod support;
mod vsphere;
mod vsphere_rotation;
