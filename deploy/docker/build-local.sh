#!/usr/bin/env bash
# Builds the FROM-scratch image showoff:local from a binary built on the host (no base image
# to pull).
#
#   deploy/docker/build-local.sh                 a static release binary (crt-static), alone
#   SHOWOFF_BINARY=target/release/showoff deploy/docker/build-local.sh
#                                                that binary, with the shared libraries it
#                                                links (ldd) at their paths beside it
#
# deploy/check.sh uses the second form with the release binary the README's commands built,
# so the container check costs no second compile of the tree.
set -euo pipefail
cd "$(dirname "$0")/../.."
binary=${SHOWOFF_BINARY:-}
if [ -z "$binary" ]; then
    RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --release -p showoff \
        --target x86_64-unknown-linux-gnu
    binary=target/x86_64-unknown-linux-gnu/release/showoff
fi
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/rootfs/usr/local/bin"
cp "$binary" "$context/rootfs/usr/local/bin/showoff"
# A dynamic binary brings its loader and libraries (a static one lists none).
ldd "$binary" 2>/dev/null | grep -oE '/[^ ]+' | sort -u | while read -r library; do
    mkdir -p "$context/rootfs$(dirname "$library")"
    cp -L "$library" "$context/rootfs$library"
done
cp deploy/docker/Dockerfile.local "$context/Dockerfile"
docker build --quiet -t showoff:local "$context"
