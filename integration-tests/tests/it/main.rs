//! End-to-end tests: real binaries as processes against simulated hosts. One test binary for
//! the whole crate keeps link time down.

mod backup;
mod cas;
mod cli;
mod crash;
mod crash_more;
mod crash_vsphere;
mod esxi;
mod exec;
mod fabric;
mod gke;
mod gke_rotation;
mod hostile;
mod identity;
mod inventory;
mod monitoring;
mod ovirt;
mod ovirt_api;
mod ovirt_engine_rotation;
mod ovirt_rotation;
mod pins;
mod recover;
mod recover_fleet;
mod recover_gke;
mod recover_local;
mod recover_ovirt;
mod recover_vsphere;
mod renewers;
mod rotation;
mod scale_store;
mod store_faults;
mod support;
mod validation;
mod vsphere;
mod vsphere_rotation;
