//! Helpers for starting the real certfleet binaries.

use std::path::PathBuf;

/// `target/debug` (or wherever cargo put this test binary's siblings).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}
