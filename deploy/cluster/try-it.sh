#!/usr/bin/env bash
# Tries a Showoff cluster on one machine: a Redis, three instances and HAProxy in front of
# them, every listener on loopback. Each instance binds its public listener and tunnel ports on
# a loopback address of its own (127.0.0.11, .12, .13), as it would on its own machine, so
# every instance can listen on the TCP tunnel ports the others hold; HAProxy on 127.0.0.1
# balances the control, HTTP and TCP tunnel ports over the three, taking an instance out while
# its /readyz fails. Clients behind a balancer use a stream transport (--transport mux): a
# dial-back data connection could land on another instance.
#
#   deploy/cluster/try-it.sh           start everything, print how to use it, wait for Ctrl-C
#   deploy/cluster/try-it.sh --check   start everything, send a request through a tunnel,
#                                      kill the instance holding it, send another, stop
#
# Needs redis-server and haproxy (installed from Debian when missing) and builds the binary
# (or runs SHOWOFF_BIN).
set -euo pipefail
cd "$(dirname "$0")/../.."
say() { printf '[cluster] %s\n' "$*" >&2; }
check=0
[ "${1:-}" = "--check" ] && check=1

for tool in redis-server haproxy; do
    if ! command -v "$tool" >/dev/null; then
        say "installing $tool (Debian)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
    fi
done
# SHOWOFF_BIN: a binary already built (the test script passes the one its tests built).
if [ ! -x "${SHOWOFF_BIN:-}" ]; then
    unset SHOWOFF_BIN
    cargo build --quiet -p showoff
fi
showoff="${SHOWOFF_BIN:-$(pwd)/target/debug/showoff}"
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Listener ports (the same numbers on every instance's own address) and the tunnel port range.
read -r redis control data http admin peer front_control front_http front_stats \
    < <(python3 deploy/free_ports.py 9)
tcp_first=${SHOWOFF_TRY_TCP_FIRST:-21000}
tcp_last=$((tcp_first + 9))
secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')

redis-server --port "$redis" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
    >"$work/redis.log" 2>&1 &
pids+=($!)

start_instance() {
    local n=$1 ip=127.0.0.1$1
    "$showoff" server --control-addr "$ip:$control" --data-addr "$ip:$data" \
        --http-addr "$ip:$http" --admin-addr "$ip:$admin" --public-http-port "$front_http" \
        --tcp-ports "$tcp_first-$tcp_last" --cluster-redis "redis://127.0.0.1:$redis" \
        --instance "node-$n" --peer-addr "$ip:$peer" --cluster-secret "$secret" \
        --lease-ttl 3s --log-format json >"$work/node-$n.log" 2>&1 &
    instance_pid[$n]=$!
    pids+=($!)
}
declare -A instance_pid
for n in 1 2 3; do start_instance "$n"; done

servers() { # HAProxy server lines for one port ("" keeps the visitor's port)
    for n in 1 2 3; do
        echo "    server node-$n 127.0.0.1$n${1:+:$1} check port $admin"
    done
}
cat >"$work/haproxy.cfg" <<EOF
global
    maxconn 4000
defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    option redispatch
    retries 2
    default-server inter 500ms fall 1 rise 2 on-marked-down shutdown-sessions
frontend control
    bind 127.0.0.1:$front_control
    default_backend control
backend control
    option httpchk GET /readyz
$(servers "$control")
frontend http
    bind 127.0.0.1:$front_http
    default_backend http
backend http
    option httpchk GET /readyz
$(servers "$http")
frontend tcp_tunnels
    bind 127.0.0.1:$tcp_first-$tcp_last
    default_backend tcp_tunnels
backend tcp_tunnels
    option httpchk GET /readyz
$(servers "")
frontend stats
    mode http
    bind 127.0.0.1:$front_stats
    stats enable
    stats uri /
EOF
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
pids+=($!)

ready() { curl -sf "http://$1:$admin/readyz" >/dev/null; }
for _ in $(seq 100); do
    ready 127.0.0.11 && ready 127.0.0.12 && ready 127.0.0.13 && break
    sleep 0.1
done
for n in 1 2 3; do ready "127.0.0.1$n" || { tail -5 "$work/node-$n.log" >&2; say "node-$n did not start"; exit 1; }; done

if [ "$check" = 0 ]; then
    cat <<EOF
Three instances (node-1..3 on 127.0.0.11..13), Redis on 127.0.0.1:$redis, HAProxy in front:
  control   127.0.0.1:$front_control
  HTTP      http://<name>.localhost:$front_http
  TCP       127.0.0.1:$tcp_first-$tcp_last
  HAProxy   http://127.0.0.1:$front_stats/
Try:
  $showoff http 3000 --server 127.0.0.1:$front_control --transport mux --name demo
  curl http://demo.localhost:$front_http/
Kill an instance (its PID is in 'ps'), and the client is back on another within seconds.
Logs: $work. Ctrl-C stops everything.
EOF
    wait
    exit 0
fi

# --check: one tunnel, a request through the balancer, the holder killed, another request.
target_port=$(python3 deploy/free_ports.py 1)
python3 -m http.server "$target_port" --bind 127.0.0.1 --directory "$work" >/dev/null 2>&1 &
pids+=($!)
echo "through the cluster" >"$work/hello.txt"
"$showoff" http "$target_port" --server "127.0.0.1:$front_control" --transport mux \
    --name demo --json >"$work/client.log" 2>&1 &
pids+=($!)
fetch() {
    for _ in $(seq 100); do
        if curl -sf -H "Host: demo.localhost" "http://127.0.0.1:$front_http/hello.txt" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}
fetch | grep -q "through the cluster" || { say "no answer through the cluster"; exit 1; }
holder=$(redis-cli -p "$redis" GET "showoff:lease:name:demo" | python3 -c 'import json,sys; print(json.load(sys.stdin)["i"])')
say "demo answers through HAProxy; held by $holder; killing it"
kill -9 "${instance_pid[${holder#node-}]}"
fetch | grep -q "through the cluster" || { say "no answer after the holder died"; exit 1; }
now=$(redis-cli -p "$redis" GET "showoff:lease:name:demo" | python3 -c 'import json,sys; print(json.load(sys.stdin)["i"])')
say "demo answers again, now held by $now"
[ "$now" != "$holder" ] || { say "the dead instance still holds the lease"; exit 1; }
say "check passed"
