#!/usr/bin/env bash
# Benchmarks: release binaries, then the scan benchmark (prints a table). Pass --files N.
set -euo pipefail
cd "$(dirname "$0")/.."
source packaging/deps.sh
cargo build --release --bins --locked
cargo bench -p certfleet-integration-tests --bench scan --locked -- "$@"
