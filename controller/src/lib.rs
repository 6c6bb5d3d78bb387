//! certfleet controller: enrollment and the fleet CA, the registry of live agent streams, the
//! fleet's inventory, and the operator API, with state in sled.

pub mod cas;
pub mod cli;
pub mod engine;
pub mod enroll;
pub mod fleet;
pub mod heap;
pub mod http;
pub mod inventory;
pub mod link;
pub mod local_admin;
pub mod metrics;
pub mod operator;
pub mod pins;
pub mod plan;
pub mod policy;
pub mod remote_exec;
pub mod self_cert;
pub mod server;
pub mod store;
