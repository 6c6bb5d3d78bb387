//! Shared pieces of certfleet with no platform knowledge: the inventory model and its wire
//! form, X.509 parsing, the fleet PKI, identities, TLS configuration and crash-safe files.

pub mod atomic;
pub mod clidoc;
pub mod heap;
pub mod identity;
pub mod limits;
pub mod model;
pub mod pem;
pub mod pki;
pub mod process;
pub mod roles;
pub mod tls;
pub mod token;
pub mod x509;

pub use certfleet_proto::v1 as proto;
