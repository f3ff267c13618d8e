#!/usr/bin/env bash
# The whole test suite: the prerequisites (installed once, first), formatting, lints,
# unit/property/integration tests (the tshark dissector, network-namespace and real-VM
# tests included), loom model checks and bounded fuzzing of every parser and handler.
# Every step runs to the end even when an earlier one failed; then one summary: the
# failed steps, every skipped test by name, and the line
# "total: N passed, N failed, N skipped". Exits non-zero when anything failed.
#
# Usage: scripts/test.sh     (FUZZ_SECONDS=N: time per fuzz target, default 30; 0 skips)
set -uo pipefail
cd "$(dirname "$0")/.."

logs=$(mktemp -d /tmp/tether-test.XXXXXX)
trap 'rm -rf "$logs"' EXIT
log=$logs/all.log
failed_steps=()
failed_logs=()
t0=$(date +%s)

# step NAME CMD...: runs CMD with its output on the terminal and in the log; records a
# failure and goes on.
step() {
    local name=$1 start rc own=$logs/step${#failed_steps[@]}-$RANDOM.log
    shift
    printf '\n==> %s\n' "$name"
    start=$(date +%s)
    "$@" 2>&1 | tee "$own"
    rc=${PIPESTATUS[0]}
    cat "$own" >>"$log"
    printf '==> %s: %s (%d s)\n' "$name" "$([ "$rc" = 0 ] && echo ok || echo "FAILED, exit $rc")" \
        "$(($(date +%s) - start))"
    if [ "$rc" != 0 ]; then
        failed_steps+=("$name")
        failed_logs+=("$own")
    fi
}

step "prerequisites (scripts/deps/all.sh)" scripts/deps/all.sh
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo fmt --check (fuzz)" cargo fmt --manifest-path fuzz/Cargo.toml --all -- --check
step "cargo clippy --all-targets -- -D warnings" \
    cargo clippy --workspace --all-targets --all-features -- -D warnings
# The fuzz crate is a workspace of its own (libFuzzer's instrumentation): lint it too.
step "cargo clippy (fuzz) -- -D warnings" \
    env CARGO_TARGET_DIR=fuzz/target cargo clippy --manifest-path fuzz/Cargo.toml --bins --lib -- -D warnings
step "cargo test" cargo test --workspace --all-features --no-fail-fast
step "loom model checks of the rings" \
    env RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p dataplane --test loom

fuzz_passed=0
secs=${FUZZ_SECONDS:-30}
if [ "$secs" != 0 ]; then
    step "fuzz targets (${secs} s each)" scripts/fuzz.sh run "$secs"
    fuzz_passed=$(grep -c '^fuzz .*no crash$' "$log" || true)
fi

passed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($i ~ /^passed;?$/) s += $(i-1) } END { print s + 0 }' "$log")
failed=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($i ~ /^failed;?$/) s += $(i-1) } END { print s + 0 }' "$log")
fuzz_failed=$(grep -c '^fuzz .*: CRASH' "$log" || true)
skips=$(grep '^\*\*\* SKIPPED' "$log" | sed 's/^\*\*\* SKIPPED \(.*\) \*\*\*$/\1/' || true)
skipped=$(printf '%s' "$skips" | grep -c . || true)

echo
echo "==> summary ($(($(date +%s) - t0)) s)"
if [ "$skipped" -gt 0 ]; then
    echo "skipped tests:"
    printf '%s\n' "$skips" | sed 's/^/  /'
fi
grep -E '^test .* \.\.\. FAILED$' "$log" | sed 's/^/failed: /' || true
for s in "${failed_steps[@]}"; do
    echo "failed step: $s"
done
# A step can fail with no failing test to show for it (a lint, a build, an installer):
# count each such step once, so the totals never say 0 failed when something did.
step_only=0
for own in "${failed_logs[@]}"; do
    if ! grep -qE '^test result: FAILED|^fuzz .*: CRASH' "$own"; then
        step_only=$((step_only + 1))
    fi
done
# A test binary that died (a signal, a failed build) prints no "test result:" line:
# each "error: test failed" beyond the binaries that reported their failures counts once.
died=$(($(grep -cE '^error: (test|doctest) failed' "$log" || true) - $(grep -c '^test result: FAILED' "$log" || true)))
[ "$died" -gt 0 ] || died=0
# A skipped test returns early, so cargo counts it as passed: count it once, as skipped.
echo "total: $((passed - skipped + fuzz_passed)) passed, $((failed + fuzz_failed + step_only + died)) failed, $skipped skipped"
[ ${#failed_steps[@]} -eq 0 ]
