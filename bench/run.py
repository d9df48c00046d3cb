#!/usr/bin/env python3
"""Showoff benchmark harness.

Runs the same load against direct nginx (the physical limit), a Showoff HTTP tunnel, a Showoff
TCP tunnel, a rathole TCP tunnel and a bore TCP tunnel, interleaved over several rounds in one
run, and measures throughput (wrk), latency percentiles, CPU time per request of the tunnel
processes and their resident memory (both from /proc), plus the memory and registration time of
10,000 idle Showoff tunnels. Writes bench/results/latest.json, bench/results/latest.md, PNG charts
in docs/bench/, and the results section of docs/benchmarks.md.

Everything listens on 127.0.0.1; bench/run.sh starts this script inside a private network
namespace (unshare -n) when the machine allows it. Every load run is bounded by wrk's -d.
Results are figures, never assertions.
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE_BIN = ROOT / "bench" / ".cache" / "bin"
RESULTS = ROOT / "bench" / "results"
CHARTS = ROOT / "docs" / "bench"
DOC = ROOT / "docs" / "benchmarks.md"
SHOWOFF = ROOT / "target" / "release" / "showoff"
BENCH_TOOL = ROOT / "target" / "release" / "showoff-bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
SMALL_BODY = "hello from nginx\n"

SCENARIOS = [
    # name, path, connections, threads, extra headers, latency percentiles wanted
    ("small_keepalive_c50", "/small", 50, 2, [], False),
    ("small_close_c50", "/small", 50, 2, ["Connection: close"], False),
    ("1mib_keepalive_c10", "/1m", 10, 2, [], False),
    ("1mib_c1", "/1m", 1, 1, [], False),
    ("latency_close_c1", "/small", 1, 1, ["Connection: close"], True),
]
SYSTEMS = ["direct", "showoff_http", "showoff_http_noinspect", "showoff_http_trace1",
           "showoff_http_trace100", "showoff_tcp", "showoff_tcp_mux", "showoff_tcp_quic", "rathole", "bore"]


def log(*args):
    print("[bench]", *args, file=sys.stderr, flush=True)


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(port, what, timeout=20.0, host="127.0.0.1"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout}s")


class Proc:
    """A process we started, with its CPU ticks and resident memory from /proc."""

    def __init__(self, name, argv, stdout=subprocess.DEVNULL, stdin=None, cwd=None):
        self.name = name
        self.popen = subprocess.Popen(
            argv, stdout=stdout, stderr=subprocess.DEVNULL, stdin=stdin, cwd=cwd
        )

    def cpu_ticks(self):
        with open(f"/proc/{self.popen.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    def rss_kib(self):
        with open(f"/proc/{self.popen.pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KIB

    def stop(self):
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class System:
    """One way of reaching nginx: its entry port, Host header and tunnel processes."""

    def __init__(self, name, port, host=None, procs=()):
        self.name = name
        self.port = port
        self.host = host
        self.procs = list(procs)

    def cpu_ticks(self):
        return sum(p.cpu_ticks() for p in self.procs)

    def rss(self):
        return {p.name: p.rss_kib() for p in self.procs}


def start_nginx(workdir):
    port = free_port()
    (workdir / "www").mkdir()
    (workdir / "www" / "1m").write_bytes(os.urandom(1 << 20))
    for path in (workdir / "www", workdir / "www" / "1m"):
        path.chmod(0o755)
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {workdir}/www;
        location = /small {{ default_type text/plain; return 200 "{SMALL_BODY.strip()}\\n"; }}
    }}
}}
"""
    )
    proc = Proc("nginx", ["nginx", "-c", str(conf), "-p", str(workdir)])
    wait_port(port, "nginx")
    return proc, port


def start_client(kind, nginx_port, control, name, extra=()):
    """A showoff client for `kind` (`http` or `tcp`); returns it and its public port."""
    client = Proc(
        "client",
        [str(SHOWOFF), kind, str(nginx_port), "--server", f"127.0.0.1:{control}",
         "--name", name, "--json", "--log-level", "warn", *extra],
        stdout=subprocess.PIPE,
    )
    line = json.loads(client.popen.stdout.readline())
    return client, int(line["public_url"].rsplit(":", 1)[1])


def self_signed(workdir, ips=("127.0.0.1",), dns=("localhost",)):
    """A certificate for `ips` and the `dns` names (the QUIC transport needs TLS)."""
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    names = ",".join([f"IP:{ip}" for ip in ips] + [f"DNS:{name}" for name in dns])
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost", "-addext",
         f"subjectAltName={names}", "-addext",
         "basicConstraints=critical,CA:FALSE", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def start_server(what, extra=(), control=None, bin=None):
    """A `showoff server` (`bin`, else the release build) on free loopback ports (TCP tunnels
    on any port), with `extra` flags; waits for its control listener. Returns it and its
    control port."""
    control = control or free_port()
    server = Proc(
        "server",
        [str(bin or SHOWOFF), "server", "--log-level", "warn",
         "--control-addr", f"127.0.0.1:{control}", "--data-addr", f"127.0.0.1:{free_port()}",
         "--http-addr", f"127.0.0.1:{free_port()}", "--tcp-ports", "0-0", *extra],
    )
    wait_port(control, what)
    return server, control


def start_showoff(nginx_port, workdir):
    """Dial-back HTTP and TCP tunnels and a mux TCP tunnel on a plain server; a QUIC TCP
    tunnel on a second server with a certificate and the QUIC listener."""
    server, control = start_server("showoff server")
    systems, clients = [], []
    # `showoff http` captures every exchange for its inspector by default; the same tunnel
    # with --no-inspect shows what the capture costs. Both --quiet: no request lines.
    inspected = ["--quiet", "--inspect-addr", f"127.0.0.1:{free_port()}"]
    for kind, transport, name, extra in (
            ("http", "tcp", "showoff_http", inspected),
            ("http", "tcp", "showoff_http_noinspect", ["--quiet", "--no-inspect"]),
            ("tcp", "tcp", "showoff_tcp", []), ("tcp", "mux", "showoff_tcp_mux", [])):
        tunnel = "bench-" + name.replace("_", "-")
        client, port = start_client(kind, nginx_port, control, tunnel,
                                    ["--transport", transport, *extra])
        host = f"{tunnel}.localhost:{port}" if kind == "http" else None
        systems.append(System(name, port, host, [server, client]))
        clients.append(client)
    traced, traced_procs = start_traced(nginx_port)
    systems += traced
    cert, key = self_signed(workdir)
    qcontrol = free_port()
    quic_server, _ = start_server(
        "showoff QUIC server",
        ["--admin-addr", "off", "--quic-addr", f"127.0.0.1:{qcontrol}",
         "--tls-cert", str(cert), "--tls-key", str(key)],
        control=qcontrol,
    )
    client, port = start_client("tcp", nginx_port, qcontrol, "bench-quic",
                                ["--transport", "quic", "--tls-ca", str(cert)])
    systems.append(System("showoff_tcp_quic", port, None, [quic_server, client]))
    return systems, [server, quic_server] + clients + [client] + traced_procs


def start_traced(nginx_port):
    """Tracing on, at 1 % and at 100 % sampling: a server and an `http` client (no inspector)
    each, exporting over OTLP/HTTP to a sink that answers without decoding; compared with
    showoff_http_noinspect (tracing off)."""
    sink_port = free_port()
    sink = Proc("sink", [sys.executable, str(ROOT / "bench" / "otlp_sink.py"), "--port", str(sink_port)])
    wait_port(sink_port, "OTLP sink")
    systems, procs = [], [sink]
    for name, ratio in (("showoff_http_trace1", "0.01"), ("showoff_http_trace100", "1")):
        export = ["--otlp-endpoint", f"http://127.0.0.1:{sink_port}", "--trace-sample", ratio]
        server, control = start_server("traced showoff server", ["--admin-addr", "off", *export])
        tunnel = "bench-" + name.replace("_", "-")
        client, port = start_client("http", nginx_port, control, tunnel,
                                    ["--quiet", "--no-inspect", *export])
        systems.append(System(name, port, f"{tunnel}.localhost:{port}", [server, client]))
        procs += [server, client]
    return systems, procs


def start_rathole(nginx_port, workdir):
    control, entry = free_port(), free_port()
    (workdir / "rathole-server.toml").write_text(
        f"""[server]
bind_addr = "127.0.0.1:{control}"
[server.services.bench]
token = "bench"
bind_addr = "127.0.0.1:{entry}"
"""
    )
    (workdir / "rathole-client.toml").write_text(
        f"""[client]
remote_addr = "127.0.0.1:{control}"
[client.services.bench]
token = "bench"
local_addr = "127.0.0.1:{nginx_port}"
"""
    )
    rathole = CACHE_BIN / "rathole"
    server = Proc("server", [str(rathole), "--server", str(workdir / "rathole-server.toml")])
    wait_port(control, "rathole server")
    client = Proc("client", [str(rathole), "--client", str(workdir / "rathole-client.toml")])
    wait_port(entry, "rathole service")
    wait_http(entry, None)
    return System("rathole", entry, None, [server, client])


def start_bore(nginx_port):
    bore = CACHE_BIN / "bore"
    entry = free_port()
    server = Proc("server", [str(bore), "server", "--bind-addr", "127.0.0.1",
                             "--min-port", str(entry), "--max-port", str(entry)])
    wait_port(7835, "bore server")
    client = Proc("client", [str(bore), "local", str(nginx_port), "--local-host", "127.0.0.1", "--to", "127.0.0.1",
                             "--port", str(entry)])
    wait_port(entry, "bore tunnel")
    wait_http(entry, None)
    return System("bore", entry, None, [server, client])


def wait_http(port, host, timeout=20.0):
    """Waits until a GET /small through `port` answers with nginx's body."""
    deadline = time.monotonic() + timeout
    request = (f"GET /small HTTP/1.1\r\nHost: {host or 'localhost'}\r\n"
               "Connection: close\r\n\r\n").encode()
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(request)
                reply = b""
                while chunk := s.recv(65536):
                    reply += chunk
            if SMALL_BODY.encode() in reply:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no answer through port {port}")


UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def parse_wrk(text):
    out = {}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        out["req_per_s"] = float(m.group(1))
    if m := re.search(r"(\d+) requests in ([\d.]+)(\w+)", text):
        out["requests"] = int(m.group(1))
    if m := re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", text):
        scale = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[m.group(2)]
        out["bytes_per_s"] = float(m.group(1)) * scale
    for pct in ("50", "99"):
        if m := re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
            out[f"p{pct}_us"] = float(m.group(1)) * UNITS[m.group(2)]
    errors = 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        errors += sum(int(g) for g in m.groups())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        errors += int(m.group(1))
    out["errors"] = errors
    return out


class RssSampler(threading.Thread):
    """Samples the resident memory of every tunnel process while load runs; keeps the peak."""

    def __init__(self, systems):
        super().__init__(daemon=True)
        self.systems = systems
        self.peak = {}
        self.running = True

    def run(self):
        while self.running:
            for system in self.systems:
                for name, kib in system.rss().items():
                    key = f"{system.name}.{name}"
                    self.peak[key] = max(self.peak.get(key, 0), kib)
            time.sleep(0.1)


def rotated(systems, r):
    """Round `r`'s order of `systems`: each goes first in turn, so none always runs warm."""
    return systems[r % len(systems):] + systems[: r % len(systems)]


def run_wrk(system, scenario, seconds):
    name, path, conns, threads, headers, latency = scenario
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s"]
    if latency:
        argv.append("--latency")
    if system.host:
        argv += ["-H", f"Host: {system.host}"]
    for header in headers:
        argv += ["-H", header]
    argv.append(f"http://127.0.0.1:{system.port}{path}")
    before = system.cpu_ticks()
    text = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    ticks = system.cpu_ticks() - before
    result = parse_wrk(text)
    if system.procs and result.get("requests"):
        result["cpu_us_per_req"] = ticks * 1_000_000 / CLK_TCK / result["requests"]
    return result


def idle_tunnels(count):
    control, data, http = free_port(), free_port(), free_port()
    server = Proc(
        "server",
        [str(SHOWOFF), "server", "--log-level", "warn", "--control-addr", f"127.0.0.1:{control}",
         "--data-addr", f"127.0.0.1:{data}", "--http-addr", f"127.0.0.1:{http}"],
    )
    try:
        wait_port(control, "showoff server")
        time.sleep(0.2)
        before = server.rss_kib()
        holder = Proc("holder", [str(BENCH_TOOL), "idle-tunnels", f"127.0.0.1:{control}",
                                 str(count)], stdout=subprocess.PIPE, stdin=subprocess.PIPE)
        report = json.loads(holder.popen.stdout.readline())
        time.sleep(0.5)
        after = server.rss_kib()
        holder.popen.stdin.close()
        holder.stop()
        return {
            "tunnels": count,
            "register_seconds": report["seconds"],
            "server_rss_before_kib": before,
            "server_rss_after_kib": after,
            "kib_per_tunnel": (after - before) / count,
        }
    finally:
        server.stop()


def median_ratio(rounds, scenario, system, base, metric):
    ratios = []
    for r in rounds:
        a = r.get(scenario, {}).get(system, {}).get(metric)
        b = r.get(scenario, {}).get(base, {}).get(metric)
        if a and b:
            ratios.append(a / b)
    return statistics.median(ratios) if ratios else None


def summarise(rounds):
    summary = {}
    for scenario in [s[0] for s in SCENARIOS]:
        summary[scenario] = {}
        for system in SYSTEMS:
            values = [r[scenario][system] for r in rounds if system in r.get(scenario, {})]
            if not values:
                continue
            entry = {}
            for metric in ("req_per_s", "bytes_per_s", "p50_us", "p99_us", "cpu_us_per_req",
                           "errors"):
                xs = [v[metric] for v in values if metric in v]
                if xs:
                    entry[metric] = statistics.median(xs)
            entry["vs_direct"] = median_ratio(rounds, scenario, system, "direct", "req_per_s")
            entry["vs_rathole"] = median_ratio(rounds, scenario, system, "rathole", "req_per_s")
            summary[scenario][system] = entry
    return summary


def fmt(value, digits=0):
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def markdown(results):
    s = results["summary"]
    lines = [
        f"Run: {results['started']}, mode `{results['mode']}`, {results['rounds']} round(s) of "
        f"{results['seconds']} s per scenario and system, interleaved; medians over rounds; "
        f"ratios are medians of same-round ratios. Network namespace: "
        f"{'yes' if results['netns'] else 'no'}. Machine: {results['machine']}.",
        "",
        "| scenario | system | req/s | MB/s | vs direct | vs rathole | p50 µs | p99 µs | tunnel CPU µs/req | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for scenario in [x[0] for x in SCENARIOS]:
        for system, e in s.get(scenario, {}).items():
            mbps = e.get("bytes_per_s", 0) / (1 << 20) if "bytes_per_s" in e else None
            lines.append(
                f"| {scenario} | {system} | {fmt(e.get('req_per_s'))} | {fmt(mbps, 1)} | "
                f"{fmt(e.get('vs_direct'), 2)} | {fmt(e.get('vs_rathole'), 2)} | "
                f"{fmt(e.get('p50_us'))} | {fmt(e.get('p99_us'))} | "
                f"{fmt(e.get('cpu_us_per_req'), 1)} | {fmt(e.get('errors'))} |"
            )
    lines += ["", "The inspector's cost: `showoff http` as users run it (every exchange captured for "
              "the inspector) against the same tunnel with `--no-inspect`, median of same-round "
              "ratios of req/s.", "", "| scenario | with / without inspector | tunnel CPU µs/req with | without |",
              "| --- | ---: | ---: | ---: |"]
    for scenario in [x[0] for x in SCENARIOS]:
        ratio = median_ratio(results["raw_rounds"], scenario, "showoff_http",
                             "showoff_http_noinspect", "req_per_s")
        with_, without = (s.get(scenario, {}).get(name, {}) for name in
                          ("showoff_http", "showoff_http_noinspect"))
        if ratio is not None:
            lines.append(f"| {scenario} | {fmt(ratio, 3)} | {fmt(with_.get('cpu_us_per_req'), 1)} | "
                         f"{fmt(without.get('cpu_us_per_req'), 1)} |")
    lines += ["", "Tracing's cost: `showoff http --no-inspect` with spans exported over OTLP/HTTP "
              "at 1 % and at 100 % sampling, against the same tunnel with tracing off, median of "
              "same-round ratios of req/s.", "",
              "| scenario | 1 % / off | 100 % / off | tunnel CPU µs/req off | 1 % | 100 % |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for scenario in [x[0] for x in SCENARIOS]:
        one, all_ = (median_ratio(results["raw_rounds"], scenario, name, "showoff_http_noinspect",
                                  "req_per_s")
                     for name in ("showoff_http_trace1", "showoff_http_trace100"))
        off, at1, at100 = (s.get(scenario, {}).get(name, {}) for name in
                           ("showoff_http_noinspect", "showoff_http_trace1", "showoff_http_trace100"))
        if one is not None and all_ is not None:
            lines.append(f"| {scenario} | {fmt(one, 3)} | {fmt(all_, 3)} | "
                         f"{fmt(off.get('cpu_us_per_req'), 1)} | {fmt(at1.get('cpu_us_per_req'), 1)} | "
                         f"{fmt(at100.get('cpu_us_per_req'), 1)} |")
    lines += ["", "Resident memory (KiB): idle after start, peak under load, after load.", "",
              "| process | idle | peak | after |", "| --- | ---: | ---: | ---: |"]
    for key in sorted(results["rss"]["idle"]):
        lines.append(
            f"| {key} | {fmt(results['rss']['idle'][key])} | "
            f"{fmt(results['rss']['peak'].get(key))} | {fmt(results['rss']['after'].get(key))} |"
        )
    idle = results.get("idle_tunnels")
    if idle:
        lines += [
            "",
            f"Idle tunnels: {idle['tunnels']:,} sessions of one tunnel each registered in "
            f"{idle['register_seconds']:.2f} s; server RSS {fmt(idle['server_rss_before_kib'])} KiB "
            f"→ {fmt(idle['server_rss_after_kib'])} KiB, **{idle['kib_per_tunnel']:.1f} KiB per "
            f"tunnel**.",
        ]
    return "\n".join(lines) + "\n"


def charts(results):
    """Bar charts of throughput relative to direct, latency, and memory, via gnuplot."""
    if not shutil.which("gnuplot"):
        log("gnuplot not found: no charts")
        return []
    CHARTS.mkdir(parents=True, exist_ok=True)
    s = results["summary"]
    tunnels = [x for x in SYSTEMS if x != "direct"]
    made = []
    with tempfile.TemporaryDirectory() as tmp:
        ratio_dat = Path(tmp) / "ratio.dat"
        rows = ["scenario " + " ".join(tunnels)]
        for scenario in [x[0] for x in SCENARIOS if not x[5]]:
            vals = [s.get(scenario, {}).get(t, {}).get("vs_direct") or 0 for t in tunnels]
            rows.append(scenario + " " + " ".join(f"{v:.3f}" for v in vals))
        ratio_dat.write_text("\n".join(rows) + "\n")
        lat_dat = Path(tmp) / "latency.dat"
        lat_rows = ["system p50 p99"]
        for system in SYSTEMS:
            e = s.get("latency_close_c1", {}).get(system, {})
            lat_rows.append(f"{system} {e.get('p50_us', 0):.1f} {e.get('p99_us', 0):.1f}")
        lat_dat.write_text("\n".join(lat_rows) + "\n")
        rss_dat = Path(tmp) / "rss.dat"
        rss_rows = ["process idle peak"]
        for key in sorted(results["rss"]["idle"]):
            rss_rows.append(f"{key} {results['rss']['idle'][key] / 1024:.2f} "
                            f"{results['rss']['peak'].get(key, 0) / 1024:.2f}")
        rss_dat.write_text("\n".join(rss_rows) + "\n")
        common = ("set terminal pngcairo size 1000,520 font 'sans,10'; set style data histograms;"
                  "set style histogram clustered gap 1; set style fill solid 0.85 border -1;"
                  "set key outside right top autotitle columnhead; set grid ytics;"
                  "set xtics rotate by -20 noenhanced; set boxwidth 0.9; set termoption noenhanced;")
        plots = {
            "throughput_vs_direct.png": (
                f"set output '{CHARTS}/throughput_vs_direct.png';"
                "set title 'Requests/s relative to direct nginx (1.0 = no tunnel), higher is better';"
                "set yrange [0:*];"
                f"plot for [i=2:{len(tunnels) + 1}] '{ratio_dat}' using i:xtic(1)"),
            "latency_c1_close.png": (
                f"set output '{CHARTS}/latency_c1_close.png';"
                "set title 'One connection per request, c1: latency (µs), lower is better';"
                f"plot '{lat_dat}' using 2:xtic(1), '' using 3"),
            "memory_rss.png": (
                f"set output '{CHARTS}/memory_rss.png';"
                "set title 'Resident memory of tunnel processes (MiB), idle and peak under load';"
                f"plot '{rss_dat}' using 2:xtic(1), '' using 3"),
        }
        for name, script in plots.items():
            subprocess.run(["gnuplot", "-e", common + script], check=True)
            made.append(name)
    return made


def update_doc(md, made):
    text = DOC.read_text() if DOC.exists() else ""
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    images = "\n".join(f"![{n}](bench/{n})" for n in made)
    block = f"{begin}\n{md}\n{images}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text += "\n## Latest results\n\n" + block + "\n"
    DOC.write_text(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["quick", "full"], default="quick")
    parser.add_argument("--tunnels", type=int, default=10_000, help="idle tunnels to hold")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--only", default="", help="comma-separated scenarios to run (A/B checks; "
                        "prints only, leaving bench/results and the charts of the last full run)")
    parser.add_argument("--systems", default="", help="comma-separated systems to measure "
                        "besides direct (A/B checks; prints only, like --only)")
    args = parser.parse_args()
    if args.systems:
        unknown = set(args.systems.split(",")) - set(SYSTEMS)
        if unknown:
            parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    if args.only:
        global SCENARIOS
        wanted = args.only.split(",")
        unknown = set(wanted) - {s[0] for s in SCENARIOS}
        if unknown:
            parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
        SCENARIOS = [s for s in SCENARIOS if s[0] in wanted]
    rounds_n, seconds = (1, 3) if args.mode == "quick" else (3, 8)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    machine = f"{os.cpu_count()} cores, {os.uname().release}"
    workdir = Path(tempfile.mkdtemp(prefix="showoff-bench-"))
    workdir.chmod(0o755)  # nginx's worker runs unprivileged and must read the files
    procs = []
    try:
        nginx, nginx_port = start_nginx(workdir)
        procs.append(nginx)
        showoff_systems, showoff_procs = start_showoff(nginx_port, workdir)
        procs += showoff_procs
        rathole = start_rathole(nginx_port, workdir)
        bore = start_bore(nginx_port)
        procs += rathole.procs + bore.procs
        systems = [System("direct", nginx_port)] + showoff_systems + [rathole, bore]
        if args.systems:
            wanted = ["direct"] + args.systems.split(",")
            systems = [x for x in systems if x.name in wanted]
        for system in systems:
            wait_http(system.port, system.host)
        tunnels = [x for x in systems if x.procs]
        time.sleep(0.5)
        rss = {"idle": {}, "peak": {}, "after": {}}
        for system in tunnels:
            for name, kib in system.rss().items():
                rss["idle"][f"{system.name}.{name}"] = kib
        sampler = RssSampler(tunnels)
        sampler.start()
        rounds = []
        for r in range(rounds_n):
            result = {}
            for scenario in SCENARIOS:
                result[scenario[0]] = {}
                for system in rotated(systems, r):
                    log(f"round {r + 1}/{rounds_n} {scenario[0]} {system.name}")
                    result[scenario[0]][system.name] = run_wrk(system, scenario, seconds)
            rounds.append(result)
        sampler.running = False
        sampler.join()
        rss["peak"] = sampler.peak
        time.sleep(1.0)
        for system in tunnels:
            for name, kib in system.rss().items():
                rss["after"][f"{system.name}.{name}"] = kib
    finally:
        for proc in reversed(procs):
            proc.stop()
    idle = idle_tunnels(args.tunnels) if args.tunnels else None
    results = {
        "started": started, "mode": args.mode, "rounds": rounds_n, "seconds": seconds,
        "netns": os.environ.get("SHOWOFF_BENCH_NETNS") == "1", "machine": machine,
        "summary": summarise(rounds), "raw_rounds": rounds, "rss": rss, "idle_tunnels": idle,
    }
    md = markdown(results)
    if args.only or args.systems:
        # A subset is a side check: it prints, and leaves the full run's results and charts.
        print(md)
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(md)
    made = charts(results)
    if not args.no_doc:
        update_doc(md, made)
    print(md)


if __name__ == "__main__":
    main()
