#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: installs what it needs, builds every binary
# (the end-to-end tests start them as processes), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
source packaging/deps.sh
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
