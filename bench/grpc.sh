#!/usr/bin/env bash
# gRPC through a Showoff tunnel against direct (bench/grpc_bench.py): builds the release binary and
# runs inside a private network namespace (only `lo`) when the machine allows it.
#
#   bench/grpc.sh           quick: 1 round, 3 s of unary calls, 256 MiB streamed
#   bench/grpc.sh --full    3 rounds, 8 s, 1 GiB
set -euo pipefail
cd "$(dirname "$0")/.."
mode=quick
[ "${1:-}" = "--full" ] && mode=full
python3 -c "import grpc" 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore grpcio
echo "[bench] building showoff (release)" >&2
cargo build --quiet --release -p showoff
if unshare -n true 2>/dev/null; then
    exec unshare -n -- bash -c 'ip link set lo up && exec python3 bench/grpc_bench.py --mode "$0"' "$mode"
fi
exec python3 bench/grpc_bench.py --mode "$mode"
