//! Generated protobuf messages and gRPC stubs for the certfleet wire contract.
//!
//! The code is generated at build time into `OUT_DIR` (see `build.rs`); nothing generated is
//! checked in. `certfleet/v1/certfleet.proto` is the only wire contract between agents,
//! controller and operator CLI.

/// `certfleet.v1`: agent ⇄ controller and operator ⇄ controller protocol.
#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("certfleet.v1");
    pub use crate::wire::InventoryList;
}

pub mod codec;
pub mod wire;
