//! `ldapsearch -LLL` LDIF (vmdir entries, userCertificate/STS chains).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = certfleet_agent::collect::vsphere::parse_ldif(&String::from_utf8_lossy(data));
});
