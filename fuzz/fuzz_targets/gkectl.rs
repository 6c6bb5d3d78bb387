//! `gkectl update credentials certificate-authorities status` output and admin cluster configs.
#![no_main]

use certfleet_agent::collect::gke_admin;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(status) = gke_admin::parse_status(&String::from_utf8_lossy(data)) {
        let _ = gke_admin::stage(&status);
    }
    let _ = gke_admin::parse_cluster_config(data);
});
