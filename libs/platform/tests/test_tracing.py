"""Trace context crosses gRPC into the handler and out again into NATS headers."""

from __future__ import annotations

import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from onefold.platform.auth import CredentialStore
from onefold.platform.config import GrpcSettings, TelemetrySettings
from onefold.platform.grpc_server import GrpcServer, ServiceRegistration
from onefold.platform.telemetry import extract_context, inject_headers, tracer_provider

SERVICE = "onefold.test.v1.TraceService"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def _provider() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_traceparent_flows_from_grpc_metadata_to_nats_headers(
    credential_store: CredentialStore,
) -> None:
    exporter = _provider()

    async def outgoing_headers(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return inject_headers()["traceparent"].encode()

    registration = ServiceRegistration(
        full_name=SERVICE,
        register=lambda server: server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    SERVICE, {"Headers": grpc.unary_unary_rpc_method_handler(outgoing_headers)}
                )
            ]
        ),
        scopes={"Headers": ""},
    )
    server = GrpcServer("test", GrpcSettings(grace_seconds=0), credential_store, [registration])
    await server.start()
    token = credential_store.issue("acme", ["profiles:read"]).token
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = channel.unary_unary(f"/{SERVICE}/Headers")
            traceparent = (
                await call(b"", metadata=[("authorization", f"Bearer {token}"), ("traceparent", PARENT)])
            ).decode()
    finally:
        await server.stop()
    # The handler's outgoing NATS headers continue the caller's trace, under the server span.
    assert traceparent.split("-")[1] == TRACE_ID
    assert traceparent.split("-")[2] != "00f067aa0ba902b7"
    spans = [s for s in exporter.get_finished_spans() if s.name == f"/{SERVICE}/Headers"]
    assert len(spans) == 1 and format(spans[0].context.trace_id, "032x") == TRACE_ID
    # And a consumer extracting those headers continues the same trace.
    extracted = trace.get_current_span(extract_context({"traceparent": traceparent})).get_span_context()
    assert format(extracted.trace_id, "032x") == TRACE_ID


def test_without_an_exporter_spans_are_not_recorded_yet_the_trace_id_travels_on() -> None:
    quiet = tracer_provider("test", "0", TelemetrySettings())
    parent = extract_context({"traceparent": PARENT})
    with quiet.get_tracer("test").start_as_current_span("call", context=parent) as span:
        assert not span.is_recording()
        outgoing = inject_headers()["traceparent"]
    assert outgoing.split("-")[1] == TRACE_ID and outgoing.split("-")[2] != "00f067aa0ba902b7"
    exporting = tracer_provider("test", "0", TelemetrySettings(console_traces=True))
    try:
        with exporting.get_tracer("test").start_as_current_span("call", context=parent) as span:
            assert span.is_recording()
    finally:
        exporting.shutdown()
