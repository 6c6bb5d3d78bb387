//! PEM/DER certificate files as collectors read them: block by block, broken blocks apart.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let blocks = certfleet_common::pem::blocks(data);
    if let Ok(scan) = certfleet_common::pem::scan_certificates(data) {
        // Every certificate and every bad block is one of the file's blocks.
        assert!(scan.certificates.len() + scan.bad.len() <= blocks.len().max(1));
        for (_, der) in &scan.certificates {
            let _ = certfleet_common::x509::parse_der(der);
        }
    }
    let _ = certfleet_common::pem::certificates(data);
    let _ = certfleet_common::pem::decode_all(data);
});
