// Stamps the git commit into `--version` (shared with the other binary crate).
include!("../packaging/build/version.rs");
