//! kubeconfig YAML and its base64-of-PEM `*-data` fields.
#![no_main]

use certfleet_agent::collect::kubeconfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kubeconfig::parse(data);
    let _ = kubeconfig::decode_certificates(
        "certificate-authority-data",
        &String::from_utf8_lossy(data),
    );
});
