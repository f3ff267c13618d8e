#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit/property/integration tests (including the
# tshark dissector test and the netns capture test when run as root) and bounded fuzzing.
# Usage: scripts/test.sh            (FUZZ_SECONDS=N sets the time per fuzz target, 0 skips)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo test"
cargo test --workspace --all-features

if [ -x scripts/fuzz.sh ]; then
    step "fuzz targets (${FUZZ_SECONDS:-30} s each)"
    scripts/fuzz.sh run "${FUZZ_SECONDS:-30}"
fi
