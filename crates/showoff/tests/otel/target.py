"""An HTTP target instrumented with the OpenTelemetry Python SDK, for Showoff's tracing test.

Each request becomes a SERVER span named "target <path>" whose parent is the request's W3C
`traceparent` (what Showoff sends towards the target), exported at once over OTLP/HTTP to the
endpoint given as the first argument. The answer echoes the traceparent it got. Prints its port
on the first line; runs until stdin closes.
"""

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

provider = TracerProvider(resource=Resource.create({"service.name": "target"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[1])))
tracer = provider.get_tracer("target")
propagator = TraceContextTextMapPropagator()


class Target(BaseHTTPRequestHandler):
    # HTTP/1.0: the connection closes after each answer, so Showoff's stream (and the
    # client's stream span) ends with the request.
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        parent = propagator.extract(dict(self.headers.items()))
        with tracer.start_as_current_span(
            f"target {self.path}", context=parent, kind=trace.SpanKind.SERVER
        ):
            body = (self.headers.get("traceparent") or "none").encode()
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Target)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
