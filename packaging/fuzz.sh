#!/usr/bin/env bash
# Bounded fuzzing of every parser of host input (fuzz/, cargo-fuzz + libFuzzer), for CI.
#
# Each target runs FUZZ_SECONDS (default 10) seconds from its seed corpus fuzz/corpus/<target>
# (read-only: new inputs go to a scratch directory, so CI never grows the repository), then the
# script prints one line per target with the executions done. A crash, panic or timeout fails
# the run; libFuzzer's reproducer is left in fuzz/artifacts/<target>/ and its path printed.
# Reproduce: cargo fuzz run -s none <target> fuzz/artifacts/<target>/<file>
#
# No nightly toolchain is needed: cargo-fuzz passes a few -Z flags, which the stable compiler
# accepts under RUSTC_BOOTSTRAP=1. The sanitizer is off (-s none): certfleet forbids unsafe
# code, and the C in ring is not instrumented either; debug assertions and overflow checks
# stay on.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-10}"
# CI builds the targets unoptimised (--dev): the build of every dependency with coverage
# instrumentation is what costs on 2 cores, not the bounded runs. Local deep fuzzing:
# FUZZ_PROFILE=--release FUZZ_SECONDS=600 ./packaging/fuzz.sh
profile="${FUZZ_PROFILE:---dev}"

# shellcheck source=packaging/deps.sh
source packaging/deps.sh
certfleet_install_fuzz_deps

export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
nice -n 5 cargo fuzz build "$profile" -s none

failed=0
summary=()
for t in $targets; do
    work=$(mktemp -d)
    log=$(mktemp)
    status=0
    cargo fuzz run "$profile" -s none "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -n 1)
    if [ "$status" -ne 0 ]; then
        failed=1
        tail -n 40 "$log" >&2
        summary+=("fuzz: $t: FAILED (exit $status) after ${execs:-?} executions; reproducer: $(ls -t "fuzz/artifacts/$t" 2>/dev/null | head -n 1)")
    else
        summary+=("fuzz: $t: ${execs:-?} executions in ${seconds}s, no crash")
    fi
    rm -rf "$work" "$log"
done
printf '%s\n' "${summary[@]}"
exit "$failed"
