#!/usr/bin/env bash
# Showoff UDP tunnel benchmark: echoes per second and round-trip p50/p99 for one flow (a window
# of 32 in flight) and for 1,000 flows (one in flight each), direct, through Showoff on each
# transport (tcp, mux, quic) and through rathole's UDP service, in one run; then server memory
# per idle flow (4,000 flows held). Builds the release binaries and the peers once, then runs
# bench/udp.py inside a private network namespace (loopback only).
#
#   bench/udp.sh            quick: 5 s per run (~2 minutes)
#   bench/udp.sh --full     15 s per run
#   extra flags go to udp.py: --no-write, --idle-only (memory per idle flow only, printed)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
parse_mode "$@"
need_packages udp openssl:openssl
build_peers udp
echo "[udp] building showoff and showoff-bench (release)" >&2
cargo build --quiet --release -p showoff -p showoff-bench
if unshare -n true 2>/dev/null; then
    exec unshare -n -- bash -c 'ip link set lo up && exec python3 bench/udp.py "$@"' \
        udp.py --mode "$mode" "${args[@]}"
fi
echo "[udp] unshare -n is not available: running on the host's loopback" >&2
exec python3 bench/udp.py --mode "$mode" "${args[@]}"
