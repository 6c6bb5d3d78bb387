//! `kubeadm certs check-expiration` tables.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ =
        certfleet_agent::collect::kubeadm::parse_check_expiration(&String::from_utf8_lossy(data));
});
