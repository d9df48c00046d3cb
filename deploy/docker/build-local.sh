#!/usr/bin/env bash
# Builds a static showoff binary on the host and the scratch image showoff:local from it.
set -euo pipefail
cd "$(dirname "$0")/../.."
# SHOWOFF_PROFILE picks the Cargo profile (deploy/check.sh builds with package-check).
profile=${SHOWOFF_PROFILE:-release}
RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --profile "$profile" -p showoff \
    --target x86_64-unknown-linux-gnu
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "target/x86_64-unknown-linux-gnu/$profile/showoff" "$context/showoff"
cp deploy/docker/Dockerfile.local "$context/Dockerfile"
docker build --quiet -t showoff:local "$context"
