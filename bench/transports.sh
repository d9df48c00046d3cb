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
command -v gnuplot >/dev/null || need_apt+=(gnuplot-nox)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v openssl >/dev/null || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "[transports] installing ${need_apt[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
cache=bench/.cache
if [ ! -x "$cache/bin/rathole" ] || [ ! -x "$cache/bin/bore" ]; then
    echo "[transports] building the peers rathole and bore into $cache (a few minutes, once)" >&2
    cargo install --quiet --root "$cache" rathole bore-cli
fi
echo "[transports] building showoff (release)" >&2
cargo build --quiet --release -p showoff
if ! unshare -n true 2>/dev/null || [ ! -c /dev/net/tun ]; then
    echo "[transports] needs unshare -n and /dev/net/tun (the emulated link is two TUN devices)" >&2
    exit 1
fi
exec unshare -n -- bash -c 'ip link set lo up && exec python3 bench/transports.py "$@"' \
    transports.py --mode "$mode" "${args[@]}"
