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
mode=quick
args=()
for arg in "$@"; do
    case "$arg" in
        --full) mode=full ;;
        --quick) mode=quick ;;
        *) args+=("$arg") ;;
    esac
done

need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v gnuplot >/dev/null || need_apt+=(gnuplot-nox)
command -v ip >/dev/null || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "[bench] installing ${need_apt[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
cache=bench/.cache
if [ ! -x "$cache/bin/rathole" ] || [ ! -x "$cache/bin/bore" ]; then
    echo "[bench] building the peers rathole and bore into $cache (a few minutes, once)" >&2
    cargo install --quiet --root "$cache" rathole bore-cli
fi
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
