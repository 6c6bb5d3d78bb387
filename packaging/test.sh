#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: installs what it needs, builds every binary
# (the end-to-end tests start them as processes), then runs every test and prints a total.
set -euo pipefail
cd "$(dirname "$0")/.."
source packaging/deps.sh
cargo build --workspace --bins --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# The end-to-end tests mostly wait on processes (agents, controllers, simulated hosts): four at
# a time keep two cores busy without starving them (RUST_TEST_THREADS overrides).
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary, doc tests last).
awk '/^test result: / { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
