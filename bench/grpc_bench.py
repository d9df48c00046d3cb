#!/usr/bin/env python3
"""gRPC through a Showoff HTTP tunnel against direct, in one run (issue 18).

A real gRPC server (grpcio, crates/showoff-testkit/tests/grpc/server.py) is called by real
gRPC clients (grpcio, several processes) directly, and through a Showoff tunnel opened with
`--upstream h2c` (the visitor side is TLS on the HTTPS listener, as gRPC clients reach a public
endpoint). Measured per round, interleaved: unary calls per second (small messages, several
client processes each with one channel and a few calls in flight) and server-streaming
megabytes per second (one call streaming 1 MiB messages). Figures, never assertions.

Everything listens on 127.0.0.1; bench/grpc.sh runs this inside a private network namespace
when the machine allows it.
"""

import argparse
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import SHOWOFF, Proc, free_port, log, self_signed, start_server, wait_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SERVER_PY = ROOT / "crates" / "showoff-testkit" / "tests" / "grpc" / "server.py"
UNARY = "/showoff.test.Echo/Unary"
STREAM = "/showoff.test.Echo/ServerStream"


def channel(target):
    import grpc
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    if target["tls"]:
        with open(target["ca"], "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        options += [("grpc.ssl_target_name_override", "grpc.localhost"),
                    ("grpc.default_authority", target["authority"])]
        return grpc.secure_channel(target["addr"], creds, options)
    return grpc.insecure_channel(target["addr"], options)


def unary_worker(target, seconds, inflight, out):
    """One process: `inflight` calls at a time on one channel for `seconds`."""
    ch = channel(target)
    call = ch.unary_unary(UNARY)
    call(b"warm", timeout=10)
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        futures = [call.future(b"ping", timeout=10) for _ in range(inflight)]
        for future in futures:
            future.result()
        done += inflight
    out.put(done)


def unary_rate(target, seconds, procs=4, inflight=8):
    queue = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=unary_worker, args=(target, seconds, inflight, queue))
               for _ in range(procs)]
    for w in workers:
        w.start()
    total = sum(queue.get(timeout=seconds + 60) for _ in workers)
    for w in workers:
        w.join(timeout=10)
    return total / seconds


def stream_rate(target, mib):
    ch = channel(target)
    call = ch.unary_stream(STREAM)
    list(call(b"2:1048576", timeout=30))
    started = time.monotonic()
    received = sum(len(m) for m in call(f"{mib}:1048576".encode(), timeout=120))
    return received / (1024 * 1024) / (time.monotonic() - started)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["smoke", "quick", "full"], default="quick")
    parser.add_argument("--bin", default=str(SHOWOFF), help="the showoff binary")
    args = parser.parse_args()
    rounds, seconds, mib = {"smoke": (1, 1, 16), "quick": (1, 3, 256), "full": (3, 8, 1024)}[
        args.mode]
    showoff = args.bin
    work = Path(tempfile.mkdtemp(prefix="showoff-grpc-bench-"))
    procs = []
    try:
        grpc_server = Proc("grpc", [sys.executable, str(SERVER_PY)], stdout=subprocess.PIPE)
        procs.append(grpc_server)
        port = int(grpc_server.popen.stdout.readline().split()[1])
        cert, key = self_signed(work, dns=("localhost", "grpc.localhost"))
        https = free_port()
        server, control = start_server(
            "showoff server",
            extra=["--https-addr", f"127.0.0.1:{https}", "--tls-cert", str(cert),
                   "--tls-key", str(key), "--domain", "localhost"],
            bin=showoff,
        )
        procs.append(server)
        client = Proc(
            "client",
            [showoff, "http", str(port), "--upstream", "h2c", "--name", "grpc", "--quiet",
             "--no-inspect", "--json", "--server", f"127.0.0.1:{control}", "--tls",
             "--tls-ca", str(cert), "--tls-server-name", "localhost"],
            stdout=subprocess.PIPE,
        )
        procs.append(client)
        json.loads(client.popen.stdout.readline())
        wait_port(https, "https listener")
        targets = {
            "direct": {"addr": f"127.0.0.1:{port}", "tls": False},
            "showoff_h2c": {"addr": f"127.0.0.1:{https}", "tls": True, "ca": str(cert),
                            "authority": f"grpc.localhost:{https}"},
        }
        results = {name: {"unary": [], "stream": [], "cpu": []} for name in targets}
        tunnel = [server, client]
        for r in range(rounds):
            for name, target in (list(targets.items())[::1 if r % 2 == 0 else -1]):
                before = sum(p.cpu_ticks() for p in tunnel)
                calls = unary_rate(target, seconds)
                after = sum(p.cpu_ticks() for p in tunnel)
                mbs = stream_rate(target, mib)
                results[name]["unary"].append(calls)
                results[name]["stream"].append(mbs)
                cpu_us = (after - before) / 100 * 1e6 / max(calls * seconds, 1)
                results[name]["cpu"].append(cpu_us)
                log(f"round {r + 1} {name}: {calls:.0f} unary calls/s, {mbs:.0f} MiB/s streamed")
        med = {n: {k: statistics.median(v) for k, v in m.items()} for n, m in results.items()}
        direct, tunnelled = med["direct"], med["showoff_h2c"]
        print(f"| measure | direct | Showoff (`--upstream h2c`, TLS visitor) | ratio |")
        print(f"| --- | --- | --- | --- |")
        print(f"| unary calls/s (4 processes × 8 in flight) | {direct['unary']:.0f} | "
              f"{tunnelled['unary']:.0f} | {tunnelled['unary'] / direct['unary']:.2f} |")
        print(f"| server-streaming MiB/s (1 MiB messages) | {direct['stream']:.0f} | "
              f"{tunnelled['stream']:.0f} | {tunnelled['stream'] / direct['stream']:.2f} |")
        print(f"| tunnel CPU per unary call (server + client) | — | "
              f"{tunnelled['cpu']:.0f} µs | |")
        rss = {p.name: p.rss_kib() for p in tunnel}
        print(f"\nRSS after the run: server {rss['server'] / 1024:.1f} MB, "
              f"client {rss['client'] / 1024:.1f} MB; {rounds} round(s), {seconds} s of unary "
              f"calls and {mib} MiB streamed per system and round.")
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    main()
