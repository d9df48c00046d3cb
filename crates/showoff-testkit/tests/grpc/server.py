"""A real gRPC server (grpcio) for Showoff's gRPC tests, on 127.0.0.1 with a free port.

Service `showoff.test.Echo`, raw bytes in and out (no generated code):
- Unary: the request back; `fail` aborts FAILED_PRECONDITION with trailing metadata
  `x-detail`; `sleep:S` sleeps S seconds first; `headers` answers the request's metadata as JSON.
- ServerStream: `COUNT:SIZE` streams COUNT messages of SIZE bytes.
- ClientStream: answers `MESSAGES:BYTES` it received.
- Bidi: each message back, prefixed `re:`.
- Hang: one message `first`, then waits until the call ends; prints `cancelled` when the
  client cancelled it.

Usage: server.py [--tls CERT KEY]; prints `port N` once serving.
"""

import json
import sys
import time
from concurrent import futures

import grpc


def unary(request, context):
    if request == b"fail":
        context.set_trailing_metadata((("x-detail", "the thing is missing"),))
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no such thing")
    if request.startswith(b"sleep:"):
        time.sleep(float(request[6:]))
    if request == b"headers":
        return json.dumps(dict(context.invocation_metadata())).encode()
    return request


def server_stream(request, context):
    count, size = (int(x) for x in request.split(b":"))
    for _ in range(count):
        yield b"x" * size


def client_stream(requests, context):
    messages = total = 0
    for message in requests:
        messages += 1
        total += len(message)
    return f"{messages}:{total}".encode()


def bidi(requests, context):
    for message in requests:
        yield b"re:" + message


def hang(request, context):
    yield b"first"
    while context.is_active():
        time.sleep(0.05)
    print("cancelled", flush=True)


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Hang": grpc.unary_stream_rpc_method_handler(hang),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("showoff.test.Echo", handlers),)
    )
    if len(sys.argv) == 4 and sys.argv[1] == "--tls":
        with open(sys.argv[2], "rb") as cert, open(sys.argv[3], "rb") as key:
            credentials = grpc.ssl_server_credentials(((key.read(), cert.read()),))
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"port {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
