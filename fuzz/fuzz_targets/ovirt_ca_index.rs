//! The engine CA's `database.txt` (openssl ca index).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (entries, bad) = certfleet_agent::collect::ovirt_engine::index::parse(&text);
    assert!(entries.len() + bad.len() <= text.lines().count());
});
