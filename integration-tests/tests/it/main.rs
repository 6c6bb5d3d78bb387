//! End-to-end tests: real binaries as processes against simulated hosts. One test binary for
//! the whole crate keeps link time down.

mod cli;
mod crash;
mod fabric;
mod gke;
mod gke_rotation;
mod hostile;
mod identity;
mod inventory;
mod ovirt;
mod ovirt_api;
mod ovirt_engine_rotation;
mod ovirt_rotation;
mod rotation;
mod store_faults;
mod support;
mod validation;
mod vsphere;
mod vsphere_rotation;
