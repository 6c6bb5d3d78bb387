//! `vecs-cli entry list` output and the other vSphere tool outputs (lwregshell,
//! vdcrepadmin showpartnerstatus).
#![no_main]

use certfleet_agent::collect::vsphere;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let listing = vsphere::parse_entry_list(&text);
    for e in &listing.entries {
        let _ = vsphere::vecs_role("MACHINE_SSL_CERT", &e.alias);
    }
    let _ = vsphere::parse_lwreg(&text);
    let _ = vsphere::parse_partner_status(&text);
});
