#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit/property/integration tests (including the
# tshark dissector test and the netns capture test, which need root) and bounded fuzzing
# of every parser. Ends with one line: "total: N passed, N failed, N skipped".
#
# Usage: scripts/test.sh     (FUZZ_SECONDS=N: time per fuzz target, default 30; 0 skips)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
log=$(mktemp /tmp/tether-test.XXXXXX)
trap 'rm -f "$log"' EXIT

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo test"
cargo test --workspace --all-features 2>&1 | tee "$log"

step "loom model checks of the rings"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p dataplane --test loom 2>&1 | tee -a "$log"

fuzz_passed=0
secs=${FUZZ_SECONDS:-30}
if [ "$secs" != 0 ]; then
    step "fuzz targets (${secs} s each)"
    scripts/fuzz.sh run "$secs" | tee -a "$log"
    fuzz_passed=$(grep -c '^fuzz .*no crash$' "$log" || true)
fi

passed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($i ~ /^passed;?$/) s += $(i-1) } END { print s + 0 }' "$log")
failed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($i ~ /^failed;?$/) s += $(i-1) } END { print s + 0 }' "$log")
skipped=$(grep -c '^\*\*\* SKIPPED' "$log" || true)
echo
# A skipped test returns early, so cargo counts it as passed: count it once, as skipped.
echo "total: $((passed - skipped + fuzz_passed)) passed, $failed failed, $skipped skipped"
