#!/usr/bin/env bash
# Runs the fuzz targets with libFuzzer (cargo fuzz), each for SECONDS, and prints one line per
# target: executions, coverage, corpus size, crashes. Installs cargo-fuzz when missing; builds
# on the stable toolchain with RUSTC_BOOTSTRAP=1. Instrumentation is coverage only
# (`--sanitizer none`): Showoff forbids `unsafe`, so AddressSanitizer would only halve the speed.
#
#   fuzz/run.sh SECONDS [TARGET...]     every target (or those named), SECONDS each
#   fuzz/run.sh --dev 3                 the smoke run .ci/run does: the dev profile, which
#                                       builds in about 3.5 minutes on 2 cores where the
#                                       optimised build takes 5.7 (campaigns use the latter)
#
# Seeds (committed) are in fuzz/seeds/TARGET; what a run finds goes to fuzz/corpus/TARGET and
# crashes to fuzz/artifacts/TARGET (both git-ignored). A crash fails the run: reproduce it with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none TARGET fuzz/artifacts/TARGET/crash-...`
# and keep it as a regression test.
set -euo pipefail
cd "$(dirname "$0")"
profile=()
if [ "${1:-}" = --dev ]; then
    profile=(--dev)
    shift
fi
seconds=${1:?usage: fuzz/run.sh [--dev] SECONDS [TARGET...]}
shift
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "[fuzz] installing cargo-fuzz (crates.io)" >&2
    cargo install --quiet --locked cargo-fuzz
fi
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

dict_of() {
    case "$1" in
        frame_codec | control_session) echo dicts/protocol.dict ;;
        proxy_header | client_hello) echo dicts/tls.dict ;;
        config_file | client_file) echo dicts/config.dict ;;
        *) echo dicts/http.dict ;;
    esac
}

echo "[fuzz] building ${#targets[@]} targets" >&2
if [ $# -gt 0 ]; then
    for target in "${targets[@]}"; do cargo fuzz build "${profile[@]}" --sanitizer none "$target"; done
else
    cargo fuzz build "${profile[@]}" --sanitizer none
fi
mkdir -p logs
failed=0
total=0
printf '%-20s %12s %8s %8s %8s\n' target executions cov corpus crashes
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "seeds/$target" "artifacts/$target"
    log="logs/$target.log"
    # -rss_limit_mb: a target that grows past it is a leak and counts as a crash.
    if cargo fuzz run "${profile[@]}" --sanitizer none "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -dict="$(dict_of "$target")" -rss_limit_mb=2048 \
        -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        crashes=0
    else
        crashes=1
        failed=1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    corpus=$(find "corpus/$target" -type f | wc -l)
    total=$((total + ${execs:-0}))
    printf '%-20s %12s %8s %8s %8s\n' "$target" "${execs:-?}" "${cov:-?}" "$corpus" "$crashes"
    if [ "$crashes" != 0 ]; then
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -5 >&2
    fi
done
printf '%-20s %12s\n' total "$total"
exit "$failed"
