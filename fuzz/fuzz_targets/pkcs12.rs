//! PKCS#12 bundles: every certificate bag, with and without a password.
#![no_main]

use certfleet_agent::collect::Collection;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for password in ["", "mypass"] {
        let _ = certfleet_agent::collect::files::pkcs12_certificates(data, password);
    }
    let mut out = Collection::default();
    certfleet_agent::collect::files::read_pkcs12("fuzz.p12", data, "fuzz", "mypass", &mut out);
});
