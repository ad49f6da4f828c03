"""Telemetry: spans, metrics, context propagation and log correlation at the dispatch point."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from capa_core import ETagMismatch, Runtime
from capa_core.telemetry import CapaInstrumentor


@pytest.fixture
def telemetry() -> Iterator[tuple[InMemorySpanExporter, InMemoryMetricReader]]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    instrumentor = CapaInstrumentor()
    instrumentor.instrument(
        tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[reader])
    )
    yield exporter, reader
    instrumentor.uninstrument()


def _points(reader: InMemoryMetricReader, name: str) -> list[object]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def test_state_calls_get_spans_and_metrics(memory_runtime: Runtime, telemetry) -> None:
    exporter, reader = telemetry
    store = memory_runtime.state()
    etag = store.save("k", 1)
    store.get("k")
    with pytest.raises(ETagMismatch):
        store.save("k", 2, etag=etag + "x")

    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["capa.state.save", "capa.state.get", "capa.state.save"]
    get = spans[1]
    assert get.kind is SpanKind.CLIENT
    assert get.attributes["capa.component.name"] == "default"
    assert get.attributes["capa.component.type"] == "state.memory"
    assert get.attributes["db.system"] == "memory"
    assert not spans[2].status.is_ok
    assert spans[2].events[0].name == "exception"

    durations = _points(reader, "capa.operation.duration")
    outcomes = {(p.attributes["capa.operation"], p.attributes["capa.outcome"]) for p in durations}
    assert outcomes == {("save", "ok"), ("get", "ok"), ("save", "error")}
    errors = _points(reader, "capa.operation.errors")
    assert [p.attributes["error.type"] for p in errors] == ["ETagMismatch"]
    assert errors[0].value == 1


def test_publish_and_subscribe_share_one_trace(memory_runtime: Runtime, telemetry) -> None:
    exporter, _ = telemetry
    bus = memory_runtime.pubsub()
    handled = []
    subscription = bus.subscribe("orders", lambda m: handled.append(m), group="billing")
    try:
        bus.publish("orders", {"id": 7})
        deadline = time.monotonic() + 5
        while not handled and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        subscription.close()
    assert handled and "traceparent" in handled[0].event

    spans = {s.name: s for s in exporter.get_finished_spans()}
    publish, process = spans["capa.pubsub.publish"], spans["capa.pubsub.process orders"]
    assert publish.kind is SpanKind.PRODUCER
    assert publish.attributes["messaging.destination.name"] == "orders"
    assert publish.attributes["messaging.operation.type"] == "publish"
    assert process.kind is SpanKind.CONSUMER
    assert process.context.trace_id == publish.context.trace_id
    assert process.parent.span_id == publish.context.span_id
    assert process.attributes["messaging.consumer.group.name"] == "billing"


def test_pulled_messages_continue_the_publishers_trace(memory_runtime, telemetry) -> None:
    exporter, _ = telemetry
    bus = memory_runtime.pubsub()
    bus.pull("jobs", group="g", timeout=0)  # declare the group
    bus.publish("jobs", b"raw bytes", raw=True)
    [message] = bus.pull("jobs", group="g", timeout=2)
    message.ack()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    publish = spans["capa.pubsub.publish"]
    assert spans["capa.pubsub.process jobs"].parent.span_id == publish.context.span_id
    assert spans["capa.pubsub.ack"].attributes["messaging.operation.type"] == "settle"


def test_logs_inside_a_call_carry_trace_ids(memory_runtime, telemetry, caplog) -> None:
    exporter, _ = telemetry
    bus = memory_runtime.pubsub()
    seen: list[logging.LogRecord] = []

    def handler(message: object) -> None:
        logging.getLogger("app").warning("handling")

    with caplog.at_level(logging.WARNING, logger="app"):
        subscription = bus.subscribe("t", handler)
        bus.publish("t", 1)
        deadline = time.monotonic() + 5
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.01)
        subscription.close()
        seen = [r for r in caplog.records if r.name == "app"]
    assert seen
    process = next(
        s for s in exporter.get_finished_spans() if s.name == "capa.pubsub.process t"
    )
    assert seen[0].otelTraceID == format(process.context.trace_id, "032x")
    assert seen[0].otelSpanID == format(process.context.span_id, "016x")


def test_instrument_is_idempotent_and_reversible(memory_runtime: Runtime) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = CapaInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    instrumentor.instrument(tracer_provider=provider)
    memory_runtime.state().save("a", 1)
    assert len(exporter.get_finished_spans()) == 1  # one interceptor, not two
    instrumentor.uninstrument()
    memory_runtime.state().save("a", 2)
    assert len(exporter.get_finished_spans()) == 1
    assert memory_runtime.dispatcher.interceptors == ()
    assert memory_runtime.dispatcher.tracing is None


def test_without_an_sdk_nothing_is_installed(memory_runtime: Runtime) -> None:
    instrumentor = CapaInstrumentor()
    instrumentor.instrument()  # no provider given and none configured globally
    try:
        assert memory_runtime.dispatcher.interceptors == ()
    finally:
        instrumentor.uninstrument()


def test_opentelemetry_instrument_finds_the_entry_point() -> None:
    from importlib.metadata import entry_points

    [entry] = [e for e in entry_points(group="opentelemetry_instrumentor") if e.name == "capa"]
    assert entry.load() is CapaInstrumentor


PROCESS_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from capa_core import Runtime
    from capa_core.telemetry import CapaInstrumentor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    CapaInstrumentor().instrument()
    role, out = sys.argv[1], sys.argv[2]
    rt = Runtime.from_settings()
    bus = rt.pubsub()
    if role == "subscribe":
        got = []
        sub = bus.subscribe("traced", got.append, group="workers")
        print("ready", flush=True)
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        sub.close()
    else:
        bus.pull("traced", group="workers", timeout=0)
        bus.publish("traced", {"n": 1})
    spans = [
        {"name": s.name, "trace": s.context.trace_id,
         "parent": s.parent.span_id if s.parent else None, "span": s.context.span_id}
        for s in exporter.get_finished_spans()
    ]
    open(out, "w").write(json.dumps(spans))
    """
)


@pytest.mark.slow
def test_one_trace_spans_a_publisher_and_a_subscriber_process(in_tmp: Path) -> None:
    """Two OS processes on the SQLite default: the subscriber's span is the publisher's child."""
    import json

    script = in_tmp / "traced.py"
    script.write_text(PROCESS_SCRIPT)
    subscriber = subprocess.Popen(
        [sys.executable, str(script), "subscribe", "sub.json"], stdout=subprocess.PIPE, text=True
    )
    assert subscriber.stdout is not None
    assert subscriber.stdout.readline().strip() == "ready"
    subprocess.run([sys.executable, str(script), "publish", "pub.json"], check=True, timeout=60)
    assert subscriber.wait(timeout=60) == 0

    published = json.loads((in_tmp / "pub.json").read_text())
    received = json.loads((in_tmp / "sub.json").read_text())
    publish = next(s for s in published if s["name"] == "capa.pubsub.publish")
    process = next(s for s in received if s["name"] == "capa.pubsub.process traced")
    assert process["trace"] == publish["trace"]
    assert process["parent"] == publish["span"]
