//! Java KeyStores (the oVirt engine's `.truststore`).
#![no_main]

use certfleet_agent::collect::ovirt_engine::jks;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = jks::certificates(data, "mypass");
    let _ = jks::certificates(data, "changeit");
});
