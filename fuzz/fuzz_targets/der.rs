//! One DER certificate into the inventory model (names, keys, serial, extensions).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(rec) = certfleet_common::x509::parse_der(data) {
        assert_eq!(rec.der, data);
    }
    let serial = certfleet_common::x509::serial_hex(data);
    assert!(!serial.is_empty() && serial != "-");
});
