#!/usr/bin/env bash
# Showoff benchmark harness: installs what it needs, builds release binaries, then runs
# bench/run.py inside a private network namespace (only `lo`) when the machine allows it.
#
#   bench/run.sh            quick: 1 round of 3 s per scenario and system (~2 minutes)
#   bench/run.sh --full     3 rounds of 8 s (~10 minutes)
#   extra flags go to run.py: --tunnels N (idle tunnels, default 10000; 0 skips), --no-doc,
#   --only SCENARIO,... (a subset, for A/B checks)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
parse_mode "$@"
need_packages bench nginx:nginx-light wrk:wrk gnuplot:gnuplot-nox ip:iproute2
build_peers bench
echo "[bench] building showoff (release)" >&2
cargo build --quiet --release -p showoff -p showoff-bench

# 10,000 idle tunnels need 20,000+ descriptors across the server and the holder.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if unshare -n true 2>/dev/null; then
    echo "[bench] running in a private network namespace" >&2
    exec unshare -n -- bash -c 'ip link set lo up && SHOWOFF_BENCH_NETNS=1 exec python3 bench/run.py "$@"' \
        run.py --mode "$mode" "${args[@]}"
fi
echo "[bench] unshare -n unavailable: running on the host's loopback" >&2
exec python3 bench/run.py --mode "$mode" "${args[@]}"
