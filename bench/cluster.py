#!/usr/bin/env python3
"""The cluster's forwarding hop, measured: what one hop between instances costs.

Two Showoff instances on one redis-server (each with its peer listener), one HTTP client on
instance A in front of nginx. The same load goes to nginx directly, to the tunnel through A
(the instance holding it) and to the tunnel through B (which forwards every request one hop to
A over a pooled peer connection), interleaved over the rounds of one run. The hop's latency is
p50 through B minus p50 through A on one keep-alive connection (wrk --latency, c1); throughput
is requests per second (small, keep-alive, c50) and bytes per second (1 MiB bodies, c10).

Everything listens on 127.0.0.1 (bench/cluster.sh runs this in a private network namespace when
it can); every load run is bounded by wrk's -d. Prints a Markdown table; figures, never
assertions.
"""

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import run
from run import SHOWOFF, Proc, System, free_port, log, start_client, start_nginx, wait_http, \
    wait_port

# The hop's latency on one keep-alive connection, then run.py's throughput scenarios.
SCENARIOS = [("latency_keepalive_c1", "/small", 1, 1, [], True)] + [
    s for s in run.SCENARIOS if s[0] in ("small_keepalive_c50", "1mib_keepalive_c10")
]
SECRET = "the benchmark cluster's shared secret"


def start_redis():
    port = free_port()
    proc = Proc("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no"])
    wait_port(port, "redis-server")
    return proc, port


def start_instance(name, redis_port):
    control, data, http, peer = free_port(), free_port(), free_port(), free_port()
    proc = Proc(name, [
        str(SHOWOFF), "server", "--log-level", "warn", "--admin-addr", "off",
        "--control-addr", f"127.0.0.1:{control}", "--data-addr", f"127.0.0.1:{data}",
        "--http-addr", f"127.0.0.1:{http}", "--tcp-ports", "0-0",
        "--cluster-redis", f"redis://127.0.0.1:{redis_port}", "--instance", name,
        "--peer-addr", f"127.0.0.1:{peer}", "--cluster-secret", SECRET,
        "--access-log", "false",
    ])
    wait_port(control, name)
    return proc, control, http


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--only", help="run only the scenarios whose name contains this")
    opts = parser.parse_args()
    scenarios = [s for s in SCENARIOS if not opts.only or opts.only in s[0]]
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)  # nginx's worker runs unprivileged and must read the files
        try:
            nginx, nginx_port = start_nginx(workdir)
            redis, redis_port = start_redis()
            a, a_control, a_http = start_instance("node-a", redis_port)
            b, _, b_http = start_instance("node-b", redis_port)
            procs += [nginx, redis, a, b]
            client, _ = start_client("http", nginx_port, a_control, "hop")
            procs.append(client)
            systems = [
                System("direct", nginx_port),
                System("holder (A)", a_http, f"hop.localhost:{a_http}", [a, client]),
                System("one hop (B → A)", b_http, f"hop.localhost:{b_http}", [a, b, client]),
            ]
            for system in systems:
                wait_http(system.port, system.host)
            results = {}
            for r in range(opts.rounds):
                for scenario in scenarios:
                    for system in run.rotated(systems, r):
                        got = run.run_wrk(system, scenario, opts.seconds)
                        results.setdefault((scenario[0], system.name), []).append(got)
                        log(scenario[0], system.name, got)
            print(markdown(results, systems, opts))
        finally:
            for proc in reversed(procs):
                proc.stop()


def median(results, key, metric):
    values = [r[metric] for r in results.get(key, []) if metric in r]
    return statistics.median(values) if values else None


def markdown(results, systems, opts):
    names = [s.name for s in systems]
    lines = [
        f"Cluster hop, {opts.rounds} rounds of {opts.seconds} s, medians "
        f"({time.strftime('%Y-%m-%d')}):",
        "",
        "| figure | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
    ]
    rows = [
        ("p50 latency, keep-alive c1 (µs)", "latency_keepalive_c1", "p50_us", 1, 0),
        ("p99 latency, keep-alive c1 (µs)", "latency_keepalive_c1", "p99_us", 1, 0),
        ("small keep-alive c50 (req/s)", "small_keepalive_c50", "req_per_s", 1, 0),
        ("1 MiB keep-alive c10 (MB/s)", "1mib_keepalive_c10", "bytes_per_s", 1e6, 1),
        ("tunnel CPU per small request (µs)", "small_keepalive_c50", "cpu_us_per_req", 1, 1),
    ]
    for label, scenario, metric, scale, digits in rows:
        cells = []
        for name in names:
            value = median(results, (scenario, name), metric)
            cells.append(run.fmt(None if value is None else value / scale, digits))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    holder = median(results, ("latency_keepalive_c1", names[1]), "p50_us")
    hop = median(results, ("latency_keepalive_c1", names[2]), "p50_us")
    if holder is not None and hop is not None:
        lines += ["", f"The hop adds {hop - holder:.0f} µs at p50 (target ≤ 200 µs)."]
    errors = sum(r.get("errors", 0) for rs in results.values() for r in rs)
    lines.append(f"Errors across the run: {errors}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
