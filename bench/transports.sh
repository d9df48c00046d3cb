#!/usr/bin/env bash
# Showoff transports benchmark: bulk over an emulated WAN link (delay, jitter, loss, bandwidth
# applied to every packet between two private network namespaces), head-of-line with a stalled
# reader, QUIC through a NAT rebinding, and server memory per idle session on each transport.
# Builds the release binary and the peers (rathole, bore) once, then runs bench/transports.py
# inside a private network namespace.
#
#   bench/transports.sh            quick: 5 s per run (~10 minutes)
#   bench/transports.sh --full     12 s per run (~25 minutes)
#   extra flags go to transports.py: --only matrix,hol,migration,idle  --sessions N  --no-write
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
parse_mode "$@"
need_packages transports gnuplot:gnuplot-nox ip:iproute2 openssl:openssl
build_peers transports
echo "[transports] building showoff (release)" >&2
cargo build --quiet --release -p showoff
if ! unshare -n true 2>/dev/null || [ ! -c /dev/net/tun ]; then
    echo "[transports] needs unshare -n and /dev/net/tun (the emulated link is two TUN devices)" >&2
    exit 1
fi
exec unshare -n -- bash -c 'ip link set lo up && exec python3 bench/transports.py "$@"' \
    transports.py --mode "$mode" "${args[@]}"
