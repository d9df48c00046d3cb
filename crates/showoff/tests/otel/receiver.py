"""An OTLP trace receiver on loopback for Showoff's tracing test.

Takes ExportTraceServiceRequest over OTLP/HTTP (POST /v1/traces, protobuf) and over gRPC
(opentelemetry.proto.collector.trace.v1.TraceService/Export), decodes each span with the
OpenTelemetry protocol definitions, and prints one JSON object per span on stdout. The first
line names the two ports: {"http": P, "grpc": Q}. Runs until stdin closes.
"""

import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

LOCK = threading.Lock()


def attribute(value):
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def publish(request, via):
    for resource_spans in request.resource_spans:
        resource = {a.key: attribute(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                record = {
                    "via": via,
                    "service": resource.get("service.name"),
                    "resource": resource,
                    "name": span.name,
                    "kind": span.kind,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "attributes": {a.key: attribute(a.value) for a in span.attributes},
                    "links": [
                        {"trace_id": l.trace_id.hex(), "span_id": l.span_id.hex()}
                        for l in span.links
                    ],
                    "events": [e.name for e in span.events],
                    "status": span.status.code,
                    "start": span.start_time_unix_nano,
                    "end": span.end_time_unix_nano,
                }
                with LOCK:
                    print(json.dumps(record), flush=True)


class Http(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path != "/v1/traces" or "protobuf" not in self.headers.get("content-type", ""):
            self.send_response(404)
            self.end_headers()
            return
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        publish(request, "http")
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        publish(request, "grpc")
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    http = ThreadingHTTPServer(("127.0.0.1", 0), Http)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with LOCK:
        print(json.dumps({"http": http.server_address[1], "grpc": grpc_port}), flush=True)
    sys.stdin.read()
    server.stop(0)
    http.shutdown()


if __name__ == "__main__":
    main()
