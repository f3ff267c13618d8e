#!/usr/bin/env bash
# Coverage-guided fuzzing with libFuzzer (libfuzzer-sys) on stable Rust: the
# instrumentation comes from rustc's stable -C passes/llvm-args flags, no nightly
# sanitizer. Debug assertions and overflow checks stay on, so arithmetic overflow is
# a crash too.
#
#   scripts/fuzz.sh build              build every target
#   scripts/fuzz.sh run [SECONDS]      run each target for SECONDS (default 30) on a
#                                      scratch copy of fuzz/corpus/<target>
#   scripts/fuzz.sh seed               rewrite the seed files in fuzz/corpus
#   scripts/fuzz.sh merge TARGET       fold new finds from the last run into the corpus
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(tlp frame payload reassembly proxy vfio_user fabric_node efe_session virtio_queue virtio_net host_bridge vfio_user_server proxy_server enumerate qmp switch_route)
FUZZ_RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps RUSTFLAGS (and so the instrumentation) off build scripts.
HOST=$(rustc -vV | sed -n 's/^host: //p')
BIN=fuzz/target/$HOST/release
WORK=${FUZZ_WORK:-/tmp/tether-fuzz}

build() {
    RUSTFLAGS="$FUZZ_RUSTFLAGS" CARGO_TARGET_DIR=fuzz/target cargo build --quiet --release --target "$HOST" --manifest-path fuzz/Cargo.toml --bins
}

case "${1:-run}" in
build)
    build
    ;;
seed)
    cargo run --quiet -p wire --example fuzz_seeds -- fuzz/corpus
    ;;
run)
    secs=${2:-30}
    if [ "$secs" = 0 ]; then
        echo "fuzz: skipped (0 seconds)"
        exit 0
    fi
    build
    failed=0
    for t in "${TARGETS[@]}"; do
        rm -rf "${WORK:?}/$t" && mkdir -p "$WORK/$t" "$WORK/artifacts/$t"
        log="$WORK/$t.log"
        if "$BIN/$t" -max_total_time="$secs" -print_final_stats=1 \
            -artifact_prefix="$WORK/artifacts/$t/" "$WORK/$t" "fuzz/corpus/$t" >"$log" 2>&1; then
            runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
            cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)
            echo "fuzz $t: ${secs}s, $runs runs, $cov, no crash"
        else
            echo "fuzz $t: CRASH (artifacts in $WORK/artifacts/$t)"
            tail -n 40 "$log"
            failed=1
        fi
    done
    exit $failed
    ;;
merge)
    t=${2:?target}
    build
    "$BIN/$t" -merge=1 "fuzz/corpus/$t" "$WORK/$t"
    ;;
*)
    echo "usage: scripts/fuzz.sh build|run [SECONDS]|seed|merge TARGET" >&2
    exit 2
    ;;
esac
