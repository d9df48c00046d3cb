"""Showoff UDP tunnel benchmark (bench/udp.sh runs it in a private network namespace).

The same load (showoff-bench udp-load) against a UDP echo (showoff-bench udp-echo) directly, through
Showoff UDP tunnels on each transport, and through a rathole UDP service: echoes per second, lost
datagrams and round-trip percentiles for one flow with 32 datagrams in flight and for 1,000
flows with one each. Then 4,000 idle flows held through a Showoff tunnel, and the server's
resident memory before and after, per flow. Writes bench/results/udp.json and udp.md, and the
"UDP tunnels" section of docs/benchmarks.md. Figures, never assertions.
"""

import argparse
import json
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BENCH_TOOL, CACHE_BIN, DOC, RESULTS, SHOWOFF, Proc, free_port, log, self_signed, wait_port  # noqa: E402

SIZE = 100
IDLE_FLOWS = 4_000  # under the client's 4,096 flows per tunnel


def raise_fd_limit():
    """Thousands of flows are thousands of sockets in the load tool and the client."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65_536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def udp_client(echo_port, control, name, extra):
    client = Proc(
        "client",
        [str(SHOWOFF), "udp", str(echo_port), "--server", f"127.0.0.1:{control}", "--name", name,
         "--json", "--log-level", "warn", *extra],
        stdout=subprocess.PIPE,
    )
    line = json.loads(client.popen.stdout.readline())
    return client, int(line["public_url"].rsplit(":", 1)[1]), line.get("max_datagram")


def start_systems(echo_port, workdir):
    """(name, entry port, processes) for direct, showoff on each transport and rathole."""
    systems = [("direct", echo_port, [])]
    control, data, http = free_port(), free_port(), free_port()
    server = Proc("server", [str(SHOWOFF), "server", "--log-level", "warn",
                             "--control-addr", f"127.0.0.1:{control}", "--data-addr",
                             f"127.0.0.1:{data}", "--http-addr", f"127.0.0.1:{http}",
                             "--udp-ports", "0-0", "--admin-addr", "off"])
    wait_port(control, "showoff server")
    procs = [server]
    for transport in ("tcp", "mux"):
        client, port, _ = udp_client(echo_port, control, f"udp-{transport}",
                                     ["--transport", transport])
        systems.append((f"showoff_udp_{transport}", port, [server, client]))
        procs.append(client)
    cert, key = self_signed(workdir)
    qcontrol, qdata, qhttp = free_port(), free_port(), free_port()
    quic_server = Proc("server", [str(SHOWOFF), "server", "--log-level", "warn",
                                  "--control-addr", f"127.0.0.1:{qcontrol}", "--data-addr",
                                  f"127.0.0.1:{qdata}", "--http-addr", f"127.0.0.1:{qhttp}",
                                  "--udp-ports", "0-0", "--admin-addr", "off",
                                  "--quic-addr", f"127.0.0.1:{qcontrol}",
                                  "--tls-cert", str(cert), "--tls-key", str(key)])
    wait_port(qcontrol, "showoff QUIC server")
    client, port, limit = udp_client(echo_port, qcontrol, "udp-quic",
                                     ["--transport", "quic", "--tls-ca", str(cert)])
    log(f"QUIC payload limit: {limit} bytes")
    systems.append(("showoff_udp_quic", port, [quic_server, client]))
    procs += [quic_server, client]
    rcontrol, rentry = free_port(), free_port()
    (workdir / "rathole-server.toml").write_text(
        f'[server]\nbind_addr = "127.0.0.1:{rcontrol}"\n[server.services.echo]\n'
        f'type = "udp"\ntoken = "bench"\nbind_addr = "127.0.0.1:{rentry}"\n')
    (workdir / "rathole-client.toml").write_text(
        f'[client]\nremote_addr = "127.0.0.1:{rcontrol}"\n[client.services.echo]\n'
        f'type = "udp"\ntoken = "bench"\nlocal_addr = "127.0.0.1:{echo_port}"\n')
    rathole = CACHE_BIN / "rathole"
    rserver = Proc("server", [str(rathole), "--server", str(workdir / "rathole-server.toml")])
    wait_port(rcontrol, "rathole server")
    rclient = Proc("client", [str(rathole), "--client", str(workdir / "rathole-client.toml")])
    wait_udp(rentry, "rathole's UDP service")
    systems.append(("rathole_udp", rentry, [rserver, rclient]))
    procs += [rserver, rclient]
    return systems, procs


def wait_udp(port, what, timeout=20.0):
    """Polls with a datagram until the echo answers through `port`."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.2)
        while time.monotonic() < deadline:
            probe.sendto(b"ping", ("127.0.0.1", port))
            try:
                probe.recvfrom(64)
                return
            except OSError:
                continue
    raise RuntimeError(f"{what} did not answer on 127.0.0.1:{port} within {timeout}s")


def load(port, flows, window, seconds):
    out = subprocess.run([str(BENCH_TOOL), "udp-load", f"127.0.0.1:{port}", str(flows),
                          str(window), str(seconds), str(SIZE)],
                         capture_output=True, text=True, timeout=seconds + 60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def idle_memory(echo_port, workdir):
    """Server RSS with no flow, with IDLE_FLOWS / 2 and with IDLE_FLOWS idle flows through one
    tunnel (dial-back): bytes per flow over all of them, and the slope over the second half,
    which leaves out what the first datagrams' burst grows once (queues, buffers)."""
    control, data, http = free_port(), free_port(), free_port()
    server = Proc("server", [str(SHOWOFF), "server", "--log-level", "warn",
                             "--control-addr", f"127.0.0.1:{control}", "--data-addr",
                             f"127.0.0.1:{data}", "--http-addr", f"127.0.0.1:{http}",
                             "--udp-ports", "0-0", "--admin-addr", "off",
                             "--udp-flows-per-tunnel", str(IDLE_FLOWS * 2)])
    wait_port(control, "showoff server")
    client, port, _ = udp_client(echo_port, control, "udp-idle", [])
    try:
        # Warm the relay's buffers with a short load so the figure is the flows', not first use.
        load(port, 10, 1, 1.0)
        time.sleep(0.5)
        rss = [server.rss_kib()]
        held = []
        holder = subprocess.Popen([str(BENCH_TOOL), "udp-idle-flows", f"127.0.0.1:{port}",
                                   str(IDLE_FLOWS), "2"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        for _ in range(2):
            held.append(json.loads(holder.stdout.readline())["flows"])
            time.sleep(0.5)
            rss.append(server.rss_kib())
            holder.stdin.write("next\n")
            holder.stdin.flush()
        holder.stdin.close()
        holder.wait(timeout=30)
        second = max(held[1] - held[0], 1)
        return {"flows": held[1], "half": held[0], "rss_before_kib": rss[0],
                "rss_half_kib": rss[1], "rss_after_kib": rss[2],
                "bytes_per_flow": round((rss[2] - rss[0]) * 1024 / max(held[1], 1)),
                "slope_bytes_per_flow": round((rss[2] - rss[1]) * 1024 / second)}
    finally:
        client.stop()
        server.stop()


def markdown(results, seconds):
    lines = [f"UDP echoes of {SIZE}-byte datagrams on loopback, {seconds:g} s per run, one run per "
             "cell (allow ±10 %).", "",
             "| system | 1 flow ×32: echoes/s | p50 | p99 | lost | 1,000 flows ×1: echoes/s | "
             "p50 | p99 | lost |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, cells in results["load"].items():
        one, many = cells["one"], cells["many"]
        lines.append(
            f"| {name} | {one['pps']:,.0f} | {one['p50_us']} µs | {one['p99_us']} µs | "
            f"{one['lost']} | {many['pps']:,.0f} | {many['p50_us']} µs | {many['p99_us']} µs | "
            f"{many['lost']} |")
    idle = results["idle"]
    lines += ["", f"Server memory with idle flows held through one tunnel: "
              f"{idle['rss_before_kib']:,} KiB with none, {idle['rss_half_kib']:,} KiB with "
              f"{idle['half']:,}, {idle['rss_after_kib']:,} KiB with {idle['flows']:,}: "
              f"**{idle['bytes_per_flow']} bytes per flow** over all of them, "
              f"{idle['slope_bytes_per_flow']} bytes per flow over the second {idle['flows'] - idle['half']:,} "
              "(target ≤ 256)."]
    return "\n".join(lines) + "\n"


def update_doc(md):
    text = DOC.read_text()
    begin, end = "<!-- udp:begin -->", "<!-- udp:end -->"
    block = f"{begin}\n{md}{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text += f"\n## UDP tunnels\n\nMeasured by `bench/udp.sh` (method in its header).\n\n{block}\n"
    DOC.write_text(text)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["quick", "full"], default="quick")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--idle-only", action="store_true",
                        help="only the memory per idle flow, printed (implies --no-write)")
    opts = parser.parse_args()
    seconds = 5.0 if opts.mode == "quick" else 15.0
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="showoff-udp-bench-"))
    echo_port = free_port()
    echo = Proc("echo", [str(BENCH_TOOL), "udp-echo", f"127.0.0.1:{echo_port}"])
    if opts.idle_only:
        try:
            print(json.dumps(idle_memory(echo_port, workdir), indent=2))
        finally:
            echo.stop()
        return
    systems, procs = start_systems(echo_port, workdir)
    results = {"load": {}, "seconds": seconds, "size": SIZE}
    try:
        for name, port, _ in systems:
            load(port, 1, 1, 1.0)  # warm-up: opens the flow, fills caches
            one = load(port, 1, 32, seconds)
            many = load(port, 1000, 1, seconds)
            results["load"][name] = {"one": one, "many": many}
            log(name, f"1 flow: {one['pps']:,.0f}/s p99 {one['p99_us']} µs lost {one['lost']}; "
                      f"1000 flows: {many['pps']:,.0f}/s p99 {many['p99_us']} µs lost {many['lost']}")
        for proc in procs:
            proc.stop()
        results["idle"] = idle_memory(echo_port, workdir)
        log("idle flows", results["idle"])
    finally:
        for proc in procs:
            proc.stop()
        echo.stop()
    md = markdown(results, seconds)
    print(md)
    if not opts.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "udp.json").write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / "udp.md").write_text(md)
        update_doc(md)


if __name__ == "__main__":
    main()
