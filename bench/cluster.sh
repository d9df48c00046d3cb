#!/usr/bin/env bash
# Showoff cluster hop benchmark: two instances on one redis-server, a client on the first,
# the same load to nginx directly, through the holder and through the other instance (one
# hop), interleaved in one run. Builds the release binary, then runs bench/cluster.py inside a
# private network namespace when the machine allows it.
#
#   bench/cluster.sh              3 rounds of 5 s per scenario and system (~2 minutes)
#   bench/cluster.sh --full       5 rounds of 10 s
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
parse_mode "$@"
need_packages cluster nginx:nginx-light wrk:wrk redis-server:redis-server ip:iproute2
echo "[cluster] building showoff (release)" >&2
cargo build --quiet --release -p showoff
sizes=(--rounds 3 --seconds 5)
if [ "$mode" = full ]; then sizes=(--rounds 5 --seconds 10); fi
cd bench
if unshare -n true 2>/dev/null; then
    exec unshare -n -- bash -c 'ip link set lo up && exec python3 cluster.py "$@"' \
        cluster.py "${sizes[@]}" "${args[@]}"
fi
echo "[cluster] unshare -n unavailable: running on the host's loopback" >&2
exec python3 cluster.py "${sizes[@]}" "${args[@]}"
