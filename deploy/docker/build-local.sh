#!/usr/bin/env bash
# Builds a static showoff binary on the host and the scratch image showoff:local from it.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --release -p showoff \
    --target x86_64-unknown-linux-gnu
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp target/x86_64-unknown-linux-gnu/release/showoff "$context/showoff"
cp deploy/docker/Dockerfile.local "$context/Dockerfile"
docker build --quiet -t showoff:local "$context"
