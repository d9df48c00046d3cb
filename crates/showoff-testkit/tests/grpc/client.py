"""A real gRPC client (grpcio) for Showoff's gRPC tests: calls `showoff.test.Echo` (see
server.py) through a Showoff HTTPS listener and prints one JSON object of what it saw.

Usage: client.py ADDR AUTHORITY CA_FILE SCENARIO
  ADDR       the HTTPS listener, 127.0.0.1:PORT
  AUTHORITY  the tunnel's host and port, sent as :authority and checked as the TLS name
  SCENARIO   `all` (every kind of call) or `one` (one unary call, to see a refusal)
"""

import json
import sys

import grpc

SERVICE = "/showoff.test.Echo/"


def status(error):
    return {
        "code": error.code().name,
        "details": error.details(),
        "trailing": {k: v for k, v in (error.trailing_metadata() or ())
                     if isinstance(v, str)},
    }


def main():
    addr, authority, ca_file, scenario = sys.argv[1:5]
    with open(ca_file, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    host = authority.rsplit(":", 1)[0]
    options = (
        ("grpc.ssl_target_name_override", host),
        ("grpc.default_authority", authority),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    )
    channel = grpc.secure_channel(addr, credentials, options)
    unary = channel.unary_unary(SERVICE + "Unary")
    out = {}
    if scenario == "one":
        try:
            out["unary"] = unary(b"hello", timeout=10).decode()
        except grpc.RpcError as error:
            out["error"] = status(error)
        print(json.dumps(out), flush=True)
        return
    out["unary"] = unary(b"hello", timeout=10).decode()
    out["headers"] = json.loads(unary(b"headers", timeout=10))
    try:
        unary(b"fail", timeout=10)
    except grpc.RpcError as error:
        out["error"] = status(error)
    try:
        unary(b"sleep:3", timeout=0.5)
    except grpc.RpcError as error:
        out["deadline"] = error.code().name
    stream = channel.unary_stream(SERVICE + "ServerStream")
    out["server_stream"] = [len(m) for m in stream(b"5:300000", timeout=20)]
    collect = channel.stream_unary(SERVICE + "ClientStream")
    out["client_stream"] = collect(iter([b"y" * 70000] * 40), timeout=20).decode()
    bidi = channel.stream_stream(SERVICE + "Bidi")
    out["bidi"] = [m.decode() for m in bidi(iter([b"1", b"2", b"3"]), timeout=10)]
    big = [len(m) for m in bidi(iter([b"z" * 100000] * 30), timeout=20)]
    out["bidi_bytes"] = sum(big)
    hang = channel.unary_stream(SERVICE + "Hang")
    call = hang(b"", timeout=30)
    out["hang_first"] = next(call).decode()
    call.cancel()
    out["cancelled"] = call.code().name
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
