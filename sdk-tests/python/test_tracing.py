"""Tracing with the Python SDK: the spans the SDK emits (it does when OpenTelemetry is
installed) and the spans outrigger exports share one trace.

Outrigger exports over OTLP/HTTP to a small receiver in this process; the SDK's spans go to
an in-memory exporter. Uses its own outrigger process, worker and client.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from durabletask import task
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from database import new_database
from harness import new_client, new_worker, start_sidecar
from helpers import COMPLETION_TIMEOUT, assert_completed, new_id, wait_done


class Receiver:
    """An OTLP/HTTP trace receiver: keeps every span posted to /v1/traces."""

    def __init__(self):
        self.spans = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                with receiver._changed:
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            receiver.spans.extend(scope.spans)
                    receiver._changed.notify_all()
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def wait_for(self, accept, timeout: float = COMPLETION_TIMEOUT):
        with self._changed:
            if not self._changed.wait_for(lambda: accept(self.spans), timeout):
                raise AssertionError(f"spans never arrived; got {[s.name for s in self.spans]}")
            return list(self.spans)

    def close(self):
        self._server.shutdown()


def traced_step(ctx: task.ActivityContext, n: int) -> int:
    return n * 2


def traced_flow(ctx: task.OrchestrationContext, n: int):
    doubled = yield ctx.call_activity(traced_step, input=n)
    yield ctx.create_timer(timedelta(milliseconds=100))
    return doubled


@pytest.fixture(scope="module")
def sdk_spans():
    # The SDK traces through the global provider; set once for the whole session.
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


def by_name(spans, name):
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"expected one span {name!r}, got {[s.name for s in spans]}"
    return found[0]


def test_sdk_spans_join_the_orchestration_trace(tmp_path, sdk_spans):
    receiver = Receiver()
    cleanup = [receiver.close]
    try:
        sidecar = start_sidecar("outrigger-tracing", new_database("tracing", tmp_path), env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        })
        cleanup.append(sidecar.stop)
        worker = new_worker(sidecar.address, "tracing-worker")
        worker.add_orchestrator(traced_flow)
        worker.add_activity(traced_step)
        worker.start()
        cleanup.append(worker.stop)
        client = new_client(sidecar.address, "tracing-client")
        cleanup.append(client.close)

        iid = new_id("traced")
        client.schedule_new_orchestration(traced_flow, input=21, instance_id=iid)
        state = assert_completed(wait_done(client, iid))
        assert state.get_output() == 42

        ours = receiver.wait_for(lambda spans: any(s.name == "orchestration:traced_flow" for s in spans))
        theirs = sdk_spans.get_finished_spans()
        theirs = [s for s in theirs if s.attributes.get("durabletask.task.instance_id") == iid]

        # The client's span starts the trace; every span, ours and the SDK's, is in it.
        client_span = by_name(theirs, "create_orchestration:traced_flow")
        trace_id = client_span.context.trace_id
        for s in ours:
            if not s.name.startswith("TaskHubSidecarService/"):
                assert int.from_bytes(s.trace_id, "big") == trace_id, f"outrigger span {s.name} in another trace"
        sdk_kinds = {s.name for s in theirs}
        assert {"orchestration:traced_flow", "activity:traced_step"} <= sdk_kinds, sdk_kinds
        for s in theirs:
            assert s.context.trace_id == trace_id, f"SDK span {s.name} in another trace"

        # Parentage across the two: sidecar create span under the client's span, the SDK's
        # orchestration span under the sidecar's create span, and the SDK's activity execution
        # under the sidecar's activity span.
        create = by_name(ours, "create_orchestration:traced_flow")
        assert int.from_bytes(create.parent_span_id, "big") == client_span.context.span_id
        sdk_orchestration = next(s for s in theirs if s.name == "orchestration:traced_flow")
        assert sdk_orchestration.parent.span_id == int.from_bytes(create.span_id, "big")
        sidecar_activity = by_name(ours, "activity:traced_step")
        sdk_activity = next(s for s in theirs if s.name == "activity:traced_step" and s.kind == trace.SpanKind.SERVER)
        assert sdk_activity.parent.span_id == int.from_bytes(sidecar_activity.span_id, "big")
        assert any(s.name == "orchestration:traced_flow:timer" for s in ours)
    finally:
        for step in reversed(cleanup):
            step()
