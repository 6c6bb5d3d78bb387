//! Engine REST API responses as the agent reads them (HTTP/1.1 status line, JSON body).
#![no_main]

use certfleet_agent::act::ovirt::api;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(reply) = api::parse_response(data) {
        let _ = reply.json();
        let _ = reply.fault();
    }
});
