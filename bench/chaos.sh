#!/usr/bin/env bash
# The chaos suite at full size against the release binaries: builds `showoff` and
# `showoff-chaos`, then runs the scenarios inside a private network namespace (only `lo`)
# when the machine allows it, and prints the scorecard (Markdown rows for
# docs/reliability.md). Bounded: every scenario has its own deadlines.
#
#   bench/chaos.sh            full size
#   bench/chaos.sh --quick    a small run (what the test suite does)
#   bench/chaos.sh --seed N   repeat a run's random moments
#   bench/chaos.sh --only cluster   only the cluster scenarios: failover and drain (Redis and HAProxy)
set -euo pipefail
cd "$(dirname "$0")/.."
echo "[chaos] building showoff and showoff-chaos (release)" >&2
cargo build --quiet --release -p showoff -p showoff-testkit --bin showoff --bin showoff-chaos
bin=target/release
# 10,000 held visitor connections need 10,000+ descriptors in this process and the server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if unshare -n true 2>/dev/null; then
    echo "[chaos] running in a private network namespace" >&2
    exec unshare -n -- bash -c 'ip link set lo up && exec "$0" --bin "$1" "${@:2}"' \
        "$bin/showoff-chaos" "$bin/showoff" "$@"
fi
echo "[chaos] unshare -n unavailable: running on the host's loopback" >&2
exec "$bin/showoff-chaos" --bin "$bin/showoff" "$@"
