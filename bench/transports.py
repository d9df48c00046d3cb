#!/usr/bin/env python3
"""Showoff transports benchmark: bulk bytes over an emulated WAN link for every transport.

Two private network namespaces joined by a point-to-point link made of two TUN devices; this
process forwards every IP packet between them and applies the link's one-way delay, jitter,
loss and bandwidth, so the kernels' real TCP (and quinn's real QUIC) see a real bad path:
lost segments are retransmitted, windows and congestion control react as they would on a WAN.

  namespace A (this process)                          namespace B (a `sleep` holding it)
  sink, showoff server, rathole/bore servers  <-tun->  bulk source, showoff/rathole/bore clients
  10.77.0.1                                            10.77.0.2

The bulk source in B sends to whoever connects, the sink in A reads for a fixed time: through a
tunnel (visitor -> public port in A -> tunnel over the link -> client in B -> source), or raw
(sink -> 10.77.0.2 over the same link). Scenarios:

  matrix     1 and 10 streams at 0/50/200 ms RTT with 0 % and 1 % loss, every system
  hol        10 streams of which one reader never reads, against 9 streams alone
  migration  10 fixed-size streams over QUIC while the link rebinds the client's UDP port
  idle       server memory per idle session on each transport (plain loopback)

Writes bench/results/transports.json, bench/results/transports.md and PNG charts in docs/bench/.
Run it through bench/transports.sh (which enters the first namespace). Every load run is
bounded in time; results are figures, never assertions.
"""

import argparse
import ctypes
import hashlib
import json
import os
import random
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

from run import Proc, free_port, self_signed, wait_port

ROOT = Path(__file__).resolve().parent.parent
CACHE_BIN = ROOT / "bench" / ".cache" / "bin"
RESULTS = ROOT / "bench" / "results"
CHARTS = ROOT / "docs" / "bench"
SHOWOFF = ROOT / "target" / "release" / "showoff"  # --bin changes it

ADDR_A, ADDR_B = "10.77.0.1", "10.77.0.2"
TUN_A, TUN_B = "sotuna", "sotunb"
MTU = 1500
CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
RATE_MBIT = 100
TOKEN = "bench-transports"
CHUNK = 256 * 1024
STALL_FILL = 3.0
PATTERN = bytes(i % 251 for i in range(251 * 1024))

SYSTEMS = ["raw", "raw_cubic", "showoff_tcp", "showoff_mux", "showoff_quic", "rathole", "bore"]
KERNEL_CC = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
LABELS = {"raw": f"raw TCP ({KERNEL_CC})", "raw_cubic": "raw TCP (Cubic)", "showoff_tcp": "dial-back", "showoff_mux": "mux",
          "showoff_quic": "QUIC", "rathole": "rathole", "bore": "bore"}


def log(*args):
    print("[transports]", *args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The emulated link


def tun_open(name):
    import fcntl
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


class Direction:
    """One direction of the link: a FIFO of (due time, packet) behind a bandwidth cap."""

    def __init__(self, out_fd):
        self.out_fd = out_fd
        self.queue = deque()
        self.free_at = 0.0  # when the link finishes serialising what is queued
        self.last_due = 0.0
        self.passed = self.lost = self.overflow = 0


class Link(threading.Thread):
    """Forwards packets between the two TUN devices with delay, jitter, loss and a rate cap.

    Jitter never reorders (a packet is never due before the one ahead of it), and the queue
    holds at most `queue_ms` of bytes at the link rate (a tail-drop router buffer)."""

    def __init__(self, fd_a, fd_b):
        super().__init__(daemon=True)
        self.fd_a, self.fd_b = fd_a, fd_b
        self.a_to_b, self.b_to_a = Direction(fd_b), Direction(fd_a)
        self.rng = random.Random(13)
        self.set(rtt_ms=0, loss=0.0)
        self.nat_xor = 0  # XOR applied to B's UDP ports as A sees them (a NAT rebinding)
        self.running = True

    def set(self, rtt_ms, loss, jitter_ms=0.0, rate_mbit=RATE_MBIT, queue_ms=100):
        self.delay = rtt_ms / 2000.0
        self.jitter = jitter_ms / 1000.0
        self.loss = loss
        self.rate = rate_mbit * 1e6 / 8.0  # bytes per second
        self.queue_limit = max(queue_ms / 1000.0, 0.005)

    def counts(self):
        return {name: {"passed": d.passed, "lost": d.lost, "overflow": d.overflow}
                for name, d in (("a_to_b", self.a_to_b), ("b_to_a", self.b_to_a))}

    def nat(self, packet, from_b):
        """Rewrites B's UDP port (source from B, destination towards B); UDP over IPv4 may
        carry a zero checksum, and the IP header does not cover ports."""
        if not self.nat_xor or len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 17:
            return packet
        ihl = (packet[0] & 0x0F) * 4
        at = ihl if from_b else ihl + 2
        p = bytearray(packet)
        port = struct.unpack_from("!H", p, at)[0] ^ self.nat_xor
        struct.pack_into("!H", p, at, port)
        struct.pack_into("!H", p, ihl + 6, 0)
        return bytes(p)

    def enqueue(self, d, packet, now):
        if self.loss and self.rng.random() < self.loss:
            d.lost += 1
            return
        start = max(now, d.free_at)
        if start - now > self.queue_limit:
            d.overflow += 1
            return
        d.free_at = start + len(packet) / self.rate
        due = d.free_at + self.delay
        if self.jitter:
            due += self.rng.uniform(0, self.jitter)
        due = max(due, d.last_due)
        d.last_due = due
        d.queue.append((due, packet))

    def run(self):
        fds = [self.fd_a, self.fd_b]
        while self.running:
            now = time.monotonic()
            due = [d.queue[0][0] for d in (self.a_to_b, self.b_to_a) if d.queue]
            timeout = max(0.0, min(due) - now) if due else 0.05
            readable, _, _ = select.select(fds, [], [], timeout)
            now = time.monotonic()
            for fd in readable:
                from_b = fd == self.fd_b
                d = self.b_to_a if from_b else self.a_to_b
                for _ in range(64):
                    try:
                        packet = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    self.enqueue(d, self.nat(packet, from_b), now)
            for d in (self.a_to_b, self.b_to_a):
                while d.queue and d.queue[0][0] <= now:
                    try:
                        os.write(d.out_fd, d.queue.popleft()[1])
                        d.passed += 1
                    except BlockingIOError:
                        d.overflow += 1


class Netns:
    """Namespace B (held by a `sleep`), both TUN devices and the link between them."""

    def __init__(self):
        libc = ctypes.CDLL(None, use_errno=True)
        self.holder = subprocess.Popen(["unshare", "-n", "sleep", "infinity"])
        self.path = f"/proc/{self.holder.pid}/ns/net"
        deadline = time.monotonic() + 5
        own = os.readlink("/proc/self/ns/net")
        while os.readlink(self.path) == own:
            if time.monotonic() > deadline:
                raise RuntimeError("namespace B did not appear")
            time.sleep(0.01)
        fd_a = tun_open(TUN_A)
        home = os.open("/proc/self/ns/net", os.O_RDONLY)
        other = os.open(self.path, os.O_RDONLY)
        if libc.setns(other, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into namespace B")
        try:
            fd_b = tun_open(TUN_B)
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
            os.close(home)
            os.close(other)
        sh = ("ip link set lo up; ip link set {t} up mtu {m} txqueuelen 2000;"
              "ip addr add {a} peer {b} dev {t}")
        subprocess.run(["sh", "-c", sh.format(t=TUN_A, m=MTU, a=ADDR_A, b=ADDR_B)], check=True)
        subprocess.run(self.enter(["sh", "-c", sh.format(t=TUN_B, m=MTU, a=ADDR_B, b=ADDR_A)]),
                       check=True)
        self.link = Link(fd_a, fd_b)
        self.link.start()

    def enter(self, argv):
        """`argv` run inside namespace B."""
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def stop(self):
        self.link.running = False
        self.holder.kill()
        self.holder.wait()


# ---------------------------------------------------------------------------------------------
# Bulk source and sink (each its own process, so the link's thread never waits for them)


def source_main(port, cc):
    """Serves bulk bytes: each connection sends an 8-byte big-endian size (0 = until the peer
    closes), then receives PATTERN repeated up to that size. `cc` (or "default") is the TCP
    congestion control of the sending sockets."""
    import asyncio

    async def serve(reader, writer):
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if cc != "default":
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
        try:
            size = struct.unpack("!Q", await reader.readexactly(8))[0]
            sent, view = 0, memoryview(PATTERN * 2)
            while size == 0 or sent < size:
                offset = sent % len(PATTERN)
                n = min(CHUNK, len(PATTERN)) if size == 0 else min(CHUNK, len(PATTERN), size - sent)
                writer.write(view[offset:offset + n])
                await writer.drain()
                sent += n
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(serve, "0.0.0.0", port)
        print("ready", flush=True)
        await server.serve_forever()

    asyncio.run(main())


def expected_digest(size):
    h, left = hashlib.sha256(), size
    while left:
        n = min(left, len(PATTERN))
        h.update(PATTERN[:n])
        left -= n
    return h.hexdigest()


def sink_main(host, port, streams, seconds, warmup, stall, size, fill):
    """Opens `streams` connections (+ `stall` that never read) and reads; prints JSON."""
    counted = [0] * streams
    done = [None] * streams

    def connect():
        s = socket.create_connection((host, port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(struct.pack("!Q", size))
        return s

    # The stalled streams go first and get `fill` seconds to fill every buffer on their way
    # (socket buffers, the tunnel's windows); from then on they must cost the others nothing.
    stalled = [connect() for _ in range(stall)]
    if stalled:
        time.sleep(fill)
    start = time.monotonic()
    t0, t1 = start + warmup, start + seconds

    def reader(i):
        try:
            s = connect()
        except OSError as e:
            done[i] = {"error": str(e)}
            return
        h, got = hashlib.sha256(), 0
        s.settimeout(0.5)
        while True:
            now = time.monotonic()
            if size == 0 and now >= t1:
                break
            if size and now >= start + seconds:
                done[i] = {"error": f"timeout after {got} bytes"}
                break
            try:
                data = s.recv(CHUNK)
            except socket.timeout:
                continue
            except OSError as e:
                done[i] = {"error": str(e), "bytes": got}
                break
            if not data:
                if size:
                    done[i] = {"bytes": got, "ok": got == size and h.hexdigest() == want}
                else:
                    done[i] = {"error": f"closed after {got} bytes"}
                break
            now = time.monotonic()
            if size:
                h.update(data)
            got += len(data)
            if t0 <= now <= t1:
                counted[i] += len(data)
        s.close()

    want = expected_digest(size) if size else None
    threads = [threading.Thread(target=reader, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stalled:
        s.close()
    window = max(seconds - warmup, 1e-9)
    print(json.dumps({
        "streams": streams, "stall": stall,
        "mb_s": sum(counted) / window / 1e6,
        "per_stream_mb_s": [c / window / 1e6 for c in counted],
        "results": done,
    }), flush=True)


# ---------------------------------------------------------------------------------------------
# The systems


def certificate(workdir):
    return self_signed(workdir, ("127.0.0.1", ADDR_A))


def showoff_server(cert, key, host):
    """A server with TLS and QUIC on its control port; every transport on one server."""
    control, data, http = free_port(host), free_port(host), free_port()
    server = Proc("server", [
        str(SHOWOFF), "server", "--log-level", "warn", "--admin-addr", "off",
        "--token", TOKEN, "--control-addr", f"{host}:{control}", "--data-addr", f"{host}:{data}",
        "--http-addr", f"127.0.0.1:{http}", "--tcp-ports", "0-0",
        "--quic-addr", f"{host}:{control}", "--tls-cert", str(cert), "--tls-key", str(key)])
    wait_port(control, "showoff server", host=host)
    return server, control


def showoff_client(argv_prefix, host, control, transport, cert, target_port, name):
    client = Proc(name, [
        *argv_prefix, str(SHOWOFF), "tcp", str(target_port), "--server", f"{host}:{control}",
        "--token", TOKEN, "--transport", transport, "--tls-ca", str(cert), "--json",
        "--log-level", "warn"],
        stdout=subprocess.PIPE)
    ready, _, _ = select.select([client.popen.stdout], [], [], 20)
    if not ready:
        raise RuntimeError(f"{name}: no public URL within 20 s")
    line = json.loads(client.popen.stdout.readline())
    return client, int(line["public_url"].rsplit(":", 1)[1])


def start_source(ns, cc):
    port = free_port()
    source = Proc(f"source-{cc}", ns.enter([sys.executable, __file__, "source", str(port), cc]),
                  stdout=subprocess.PIPE)
    ready, _, _ = select.select([source.popen.stdout], [], [], 20)
    if not ready or source.popen.stdout.readline().strip() != b"ready":
        raise RuntimeError("the bulk source did not start")
    return source, port


def start_systems(ns, workdir, procs, peers=True):
    """Every system's entry point in namespace A: {name: (host, port)}; the processes go into
    `procs`. Everything sends with the kernel's default TCP congestion control (`KERNEL_CC`),
    except `raw_cubic`."""
    source, source_port = start_source(ns, "default")
    procs.append(source)
    cubic, cubic_port = start_source(ns, "cubic")
    procs.append(cubic)
    cert, key = certificate(workdir)
    entries = {"raw": (ADDR_B, source_port), "raw_cubic": (ADDR_B, cubic_port)}
    server, control = showoff_server(cert, key, ADDR_A)
    procs.append(server)
    for transport, system in (("tcp", "showoff_tcp"), ("mux", "showoff_mux"),
                              ("quic", "showoff_quic")):
        client, port = showoff_client(ns.enter([]), ADDR_A, control, transport, cert,
                                      source_port, system)
        procs.append(client)
        entries[system] = ("127.0.0.1", port)
    rathole = CACHE_BIN / "rathole"
    if peers and rathole.exists():
        rcontrol, rentry = free_port(ADDR_A), free_port()
        (workdir / "rs.toml").write_text(
            f'[server]\nbind_addr = "{ADDR_A}:{rcontrol}"\n[server.services.bench]\n'
            f'token = "bench"\nbind_addr = "127.0.0.1:{rentry}"\n')
        (workdir / "rc.toml").write_text(
            f'[client]\nremote_addr = "{ADDR_A}:{rcontrol}"\n[client.services.bench]\n'
            f'token = "bench"\nlocal_addr = "127.0.0.1:{source_port}"\n')
        procs.append(Proc("rathole-server", [str(rathole), "--server", str(workdir / "rs.toml")]))
        wait_port(rcontrol, "rathole server", host=ADDR_A)
        procs.append(Proc("rathole-client",
                          ns.enter([str(rathole), "--client", str(workdir / "rc.toml")])))
        wait_port(rentry, "rathole service", host="127.0.0.1")
        entries["rathole"] = ("127.0.0.1", rentry)
    bore = CACHE_BIN / "bore"
    if peers and bore.exists():
        bentry = free_port(ADDR_A)
        procs.append(Proc("bore-server", [str(bore), "server", "--bind-addr", ADDR_A,
                                          "--min-port", str(bentry), "--max-port", str(bentry)]))
        wait_port(7835, "bore server", host=ADDR_A)
        procs.append(Proc("bore-client", ns.enter([
            str(bore), "local", str(source_port), "--local-host", "127.0.0.1", "--to", ADDR_A,
            "--port", str(bentry)])))
        wait_port(bentry, "bore tunnel", host=ADDR_A)
        entries["bore"] = (ADDR_A, bentry)
    return entries


def sink(entry, streams, seconds, warmup, stall=0, size=0):
    host, port = entry
    out = subprocess.run(
        [sys.executable, __file__, "sink", host, str(port), str(streams), str(seconds),
         str(warmup), str(stall), str(size), str(STALL_FILL)],
        capture_output=True, text=True, timeout=seconds + STALL_FILL + 60)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-300:] or f"exit {out.returncode}"}
    return json.loads(out.stdout)


def settle(ns, seconds=1.0):
    """Waits until the link's queues are empty (in-flight bytes of the last run are gone)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not ns.link.a_to_b.queue and not ns.link.b_to_a.queue:
            break
        time.sleep(0.05)
    time.sleep(0.3)


# ---------------------------------------------------------------------------------------------
# Scenarios


def matrix(ns, entries, seconds, warmup, rtts, losses):
    rows = []
    # Loss last: a long-lived connection (mux, QUIC, the peers' control connections) carries
    # its congestion state from one condition to the next, and Cubic recovers slowly.
    for loss in losses:
        for rtt in rtts:
            ns.link.set(rtt_ms=rtt, loss=loss)
            for system in SYSTEMS:
                if system not in entries:
                    continue
                for streams in (1, 10):
                    settle(ns)
                    before = ns.link.counts()
                    r = sink(entries[system], streams, seconds, warmup)
                    after = ns.link.counts()
                    row = {"rtt_ms": rtt, "loss": loss, "system": system, "streams": streams,
                           "mb_s": r.get("mb_s"), "error": r.get("error"),
                           "overflow": after["b_to_a"]["overflow"] - before["b_to_a"]["overflow"]}
                    errors = [x for x in (r.get("results") or []) if x and x.get("error")]
                    if errors:
                        row["error"] = errors[0]["error"]
                    log(f"rtt {rtt} ms loss {loss:.0%} {system} x{streams}: "
                        f"{row['mb_s'] or 0:.2f} MB/s {row['error'] or ''}")
                    rows.append(row)
    return rows


def hol(ns, entries, seconds, warmup, losses):
    rows = []
    for loss in losses:
        ns.link.set(rtt_ms=50, loss=loss)
        for system in SYSTEMS:
            if system not in entries:
                continue
            settle(ns)
            alone = sink(entries[system], 9, seconds, warmup)
            settle(ns)
            stalled = sink(entries[system], 9, seconds, warmup, stall=1)
            a, s = alone.get("mb_s") or 0, stalled.get("mb_s") or 0
            row = {"loss": loss, "system": system, "alone_mb_s": a, "with_stalled_mb_s": s,
                   "kept": s / a if a else None,
                   "error": alone.get("error") or stalled.get("error")}
            log(f"hol loss {loss:.0%} {system}: 9 alone {a:.2f}, with a stalled 10th {s:.2f} MB/s")
            rows.append(row)
    return rows


def migration(ns, entries, size, streams=10, at=1.5, limit=60):
    """Ten streams of `size` bytes each over QUIC; after `at` seconds the link starts showing
    the client's UDP packets from another port (a NAT rebinding) until the end."""
    ns.link.set(rtt_ms=50, loss=0.0)
    settle(ns)
    host, port = entries["showoff_quic"]
    timer = threading.Timer(at, lambda: setattr(ns.link, "nat_xor", 0x2000))
    timer.start()
    try:
        r = sink((host, port), streams, limit, 0, size=size)
    finally:
        timer.cancel()
        ns.link.nat_xor = 0
    results = r.get("results") or []
    ok = sum(1 for x in results if x and x.get("ok"))
    row = {"streams": streams, "bytes_each": size, "rebind_after_s": at, "complete": ok,
           "lost": streams - ok, "error": r.get("error"),
           "failures": [x for x in results if not (x and x.get("ok"))]}
    log(f"migration: {ok}/{streams} streams complete and intact")
    return row


def idle(sessions, workdir):
    """Server RSS per idle session on each transport: a fresh server per transport, plain
    loopback, `sessions` real clients of one TCP tunnel each."""
    cert, key = certificate(workdir)
    rows = []
    for transport in ("tcp", "mux", "quic"):
        server, control = showoff_server(cert, key, "127.0.0.1")
        clients = []
        try:
            time.sleep(0.5)
            base = server.rss_kib()
            for i in range(sessions):
                client, _ = showoff_client([], "127.0.0.1", control, transport, cert, 9,
                                           f"idle-{transport}-{i}")
                clients.append(client)
            time.sleep(1.0)
            held = server.rss_kib()
            rows.append({"transport": transport, "sessions": sessions, "server_base_kib": base,
                         "server_held_kib": held,
                         "per_session_kib": (held - base) / sessions,
                         "client_rss_kib": clients[0].rss_kib()})
            log(f"idle {transport}: {(held - base) / sessions:.1f} KiB per session on the server")
        finally:
            for c in clients:
                c.stop()
            server.stop()
    return rows


# ---------------------------------------------------------------------------------------------
# Output


def fmt(v, digits=2):
    return "–" if v is None else f"{v:,.{digits}f}"


def markdown(res):
    out = []
    m = res.get("matrix") or []
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in m)]
    if m:
        out.append(f"Bulk MB/s over a {RATE_MBIT} Mbit/s link (1 stream / 10 streams):\n")
        out.append("| RTT, loss | " + " | ".join(LABELS[s] for s in systems) + " |")
        out.append("| --- |" + " ---: |" * len(systems))
        conds = sorted({(r["rtt_ms"], r["loss"]) for r in m})
        for rtt, loss in conds:
            cells = []
            for s in systems:
                vals = {r["streams"]: r for r in m
                        if (r["rtt_ms"], r["loss"], r["system"]) == (rtt, loss, s)}
                cell = " / ".join(fmt((vals.get(n) or {}).get("mb_s")) for n in (1, 10))
                if any((vals.get(n) or {}).get("error") for n in (1, 10)):
                    cell += " (!)"
                cells.append(cell)
            out.append(f"| {rtt} ms, {loss:.0%} | " + " | ".join(cells) + " |")
        out.append("")
    h = res.get("hol") or []
    if h:
        out.append("Head-of-line at 50 ms RTT: 9 streams alone vs. beside a 10th that never reads "
                   "(MB/s, kept):\n")
        out.append("| system | " + " | ".join(f"{loss:.0%} loss" for loss in
                                              sorted({r['loss'] for r in h})) + " |")
        out.append("| --- |" + " ---: |" * len({r['loss'] for r in h}))
        for s in [x for x in SYSTEMS if any(r["system"] == x for r in h)]:
            cells = []
            for loss in sorted({r['loss'] for r in h}):
                r = next(r for r in h if r["system"] == s and r["loss"] == loss)
                cells.append(f"{fmt(r['alone_mb_s'])} → {fmt(r['with_stalled_mb_s'])} "
                             f"({fmt((r['kept'] or 0) * 100, 0)} %)")
            out.append(f"| {LABELS[s]} | " + " | ".join(cells) + " |")
        out.append("")
    g = res.get("migration")
    if g:
        out.append(f"QUIC through a NAT rebinding: {g['complete']} of {g['streams']} streams of "
                   f"{g['bytes_each'] // (1024 * 1024)} MiB complete and intact "
                   f"(rebinding after {g['rebind_after_s']} s, 50 ms RTT).\n")
    i = res.get("idle") or []
    if i:
        out.append("| transport | server KiB per idle session | client RSS KiB |")
        out.append("| --- | ---: | ---: |")
        for r in i:
            out.append(f"| {r['transport']} | {fmt(r['per_session_kib'], 1)} | "
                       f"{r['client_rss_kib']:,} |")
        out.append("")
    return "\n".join(out)


def charts(res):
    m = res.get("matrix") or []
    if not m or not shutil.which("gnuplot"):
        return []
    CHARTS.mkdir(parents=True, exist_ok=True)
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in m)]
    made = []
    with tempfile.TemporaryDirectory() as tmp:
        for streams in (1, 10):
            dat = Path(tmp) / f"s{streams}.dat"
            rows = ["condition " + " ".join(LABELS[s].replace(" ", "_") for s in systems)]
            for rtt, loss in sorted({(r["rtt_ms"], r["loss"]) for r in m}):
                vals = []
                for s in systems:
                    r = next((r for r in m if (r["rtt_ms"], r["loss"], r["system"],
                                               r["streams"]) == (rtt, loss, s, streams)), None)
                    vals.append((r or {}).get("mb_s") or 0)
                rows.append(f"{rtt}ms,{loss:.0%} " + " ".join(f"{v:.3f}" for v in vals))
            dat.write_text("\n".join(rows) + "\n")
            name = f"transports_bulk_{streams}.png"
            script = (
                "set terminal pngcairo size 1000,520 font 'sans,10'; set style data histograms;"
                "set style histogram clustered gap 1; set style fill solid 0.85 border -1;"
                "set key outside right top autotitle columnhead; set grid ytics;"
                "set boxwidth 0.9; set termoption noenhanced; set logscale y; set yrange [0.01:*];"
                f"set output '{CHARTS}/{name}';"
                f"set title 'Bulk MB/s, {streams} stream(s), {RATE_MBIT} Mbit/s link, "
                "by RTT and loss (log scale), higher is better';"
                f"plot for [i=2:{len(systems) + 1}] '{dat}' using i:xtic(1)")
            subprocess.run(["gnuplot", "-e", script], check=True)
            made.append(name)
    return made


def smoke_failures(res):
    """What a smoke run must not show: an error, a stalled system, a lost stream."""
    failures = []
    for r in res.get("matrix") or []:
        if r.get("error") or not r.get("mb_s"):
            failures.append(f"{r['system']} x{r['streams']}: {r.get('error') or 'no bytes'}")
    for r in res.get("hol") or []:
        if r.get("error") or not r.get("with_stalled_mb_s"):
            failures.append(f"hol {r['system']}: {r.get('error') or 'no bytes'}")
    g = res.get("migration")
    if g and g["lost"]:
        failures.append(f"migration: {g['lost']} of {g['streams']} streams lost: {g['failures']}")
    for r in res.get("idle") or []:
        if r["per_session_kib"] <= 0 and r["client_rss_kib"] <= 0:
            failures.append(f"idle {r['transport']}: nothing measured")
    return failures


def main():
    global SHOWOFF, STALL_FILL
    if len(sys.argv) > 1 and sys.argv[1] == "source":
        return source_main(int(sys.argv[2]), sys.argv[3])
    if len(sys.argv) > 1 and sys.argv[1] == "sink":
        a = sys.argv[2:]
        return sink_main(a[0], int(a[1]), int(a[2]), float(a[3]), float(a[4]), int(a[5]),
                         int(a[6]), float(a[7]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["smoke", "quick", "full"], default="quick",
                        help="smoke: a short run of each scenario that fails on any error "
                        "(what .ci/run does), writes nothing")
    parser.add_argument("--bin", type=Path, default=SHOWOFF, help="the showoff binary")
    parser.add_argument("--only", default="matrix,hol,migration,idle",
                        help="scenarios, comma-separated")
    parser.add_argument("--sessions", type=int, default=100, help="idle sessions per transport")
    parser.add_argument("--no-write", action="store_true", help="print, write no files")
    args = parser.parse_args()
    SHOWOFF = args.bin.resolve()
    only = set(args.only.split(","))
    smoke = args.mode == "smoke"
    size = 8 * 1024 * 1024
    if args.mode == "full":
        seconds, warmup, rtts, losses = 12.0, 4.0, (0, 50, 200), (0.0, 0.01)
    elif args.mode == "quick":
        seconds, warmup, rtts, losses = 5.0, 2.0, (0, 50, 200), (0.0, 0.01)
    else:
        seconds, warmup, rtts, losses, size = 1.5, 0.4, (50,), (0.01,), 1024 * 1024
        STALL_FILL = 1.0
        SYSTEMS[:] = ["raw", "showoff_tcp", "showoff_mux", "showoff_quic"]
        args.sessions = min(args.sessions, 5)
        args.no_write = True
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "mode": args.mode,
           "link": {"rate_mbit": RATE_MBIT, "mtu": MTU, "queue_ms": 100,
                    "tcp_cc": KERNEL_CC,
                    "seconds": seconds, "warmup": warmup}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if only & {"matrix", "hol", "migration"}:
            ns = Netns()
            procs = []
            try:
                entries = start_systems(ns, workdir, procs, peers=not smoke)
                log("systems:", ", ".join(entries))
                if "matrix" in only:
                    res["matrix"] = matrix(ns, entries, seconds, warmup, rtts, losses)
                if "hol" in only:
                    # The smoke checks the machinery on a clean link; loss is the matrix's part.
                    res["hol"] = hol(ns, entries, seconds, warmup, (0.0,) if smoke else losses)
                if "migration" in only:
                    res["migration"] = migration(ns, entries, size)
                res["link_counts"] = ns.link.counts()
            finally:
                for p in reversed(procs):
                    p.stop()
                ns.stop()
        if "idle" in only:
            res["idle"] = idle(args.sessions, workdir)
    md = markdown(res)
    print(md)
    if smoke:
        failures = smoke_failures(res)
        for failure in failures:
            log("smoke failed:", failure)
        if failures:
            sys.exit(1)
        log("smoke passed")
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "transports.json").write_text(json.dumps(res, indent=2) + "\n")
        made = charts(res)
        images = "\n".join(f"![{n}](bench/{n})" for n in made)
        (RESULTS / "transports.md").write_text(f"Run {res['date']}, {args.mode}.\n\n{md}\n{images}\n")


if __name__ == "__main__":
    main()
