//! certfleet-agent: reads the certificate stores of the host it runs on, reports them to the
//! controller over one outbound mTLS stream, and performs the actions the controller asks for.
//! Works offline too (`scan`), for when everything else is down.

pub mod act;
pub mod collect;
pub mod config;
pub mod doctor;
pub mod exec;
pub mod link;
pub mod pins;
pub mod recover;
pub mod remote_exec;
pub mod report;
pub mod state;
pub mod vim;
pub mod webhook;
