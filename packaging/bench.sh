#!/usr/bin/env bash
# Benchmarks: release binaries, then the scan benchmark, the inventory index's memory and the
# fleet load generator (each prints a table). Pass --files N for the scan (and --no-loop to leave out the minutes-long
# openssl comparison loop and measure only the agent: speed, idle and peak RSS of the packaged
# agent binary, profile `agent`). Fleet size from the environment (the index benchmark uses the same agents and
# certificates per agent):
#   LOADGEN_AGENTS (500), LOADGEN_CERTS (10), LOADGEN_PLAN_AGENTS (100), LOADGEN_QUERIES (10)
# The issue's scale (takes a while and most of a 2-core machine):
#   LOADGEN_AGENTS=10000 LOADGEN_CERTS=10 LOADGEN_PLAN_AGENTS=1000 packaging/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source packaging/deps.sh
cargo build --release --bins --locked
# The agent as packaged (Cargo.toml's `agent` profile), measured by the scan benchmark.
cargo build --profile agent --locked -p certfleet-agent --bin certfleet-agent
cargo bench -p certfleet-integration-tests --bench scan --locked -- "$@"
cargo bench -p certfleet-integration-tests --bench index --locked -- \
    --agents "${LOADGEN_AGENTS:-500}" --certs "${LOADGEN_CERTS:-10}"
./target/release/certfleet-loadgen \
    --agents "${LOADGEN_AGENTS:-500}" \
    --certs "${LOADGEN_CERTS:-10}" \
    --plan-agents "${LOADGEN_PLAN_AGENTS:-100}" \
    --queries "${LOADGEN_QUERIES:-10}"
