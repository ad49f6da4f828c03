"""OpenTelemetry for every standard-API call: spans, metrics, trace propagation and log ids.

``CapaInstrumentor().instrument()`` (or ``opentelemetry-instrument``, through the
``opentelemetry_instrumentor`` entry point) installs one interceptor at the dispatch point of every
Runtime. Each call gets a span ``capa.<block>.<operation>`` with the component's name and type and
the semantic-convention attributes of its backend, a duration histogram and an error counter.
Published CloudEvents carry ``traceparent``/``tracestate``; handling a message continues the
publisher's trace. Log records made inside a span carry ``otelTraceID`` and ``otelSpanID``.

With no SDK configured when ``instrument()`` runs, nothing is installed: the API costs nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import SpanKind

from . import dispatch
from .dispatch import Call
from .spi import Component

__all__ = ["CapaInstrumentor", "TelemetryInterceptor"]

INSTRUMENTATION = "capa_core"
INSTRUMENTATION_GROUP = "capa.instrumentation"  # modules with install(tracer_provider), uninstall()
_DB_SYSTEMS = {"redis": "redis", "postgres": "postgresql", "sqlite": "sqlite"}
_MESSAGING_SYSTEMS = {"rabbitmq": "rabbitmq", "nats": "nats", "redis": "redis"}
# Standard-API pub/sub operations in the messaging conventions' vocabulary.
_MESSAGING_OPERATIONS = {
    "publish": "publish",
    "bulk_publish": "publish",
    "pull": "receive",
    "ack": "settle",
    "nack": "settle",
    "extend": "settle",
}


def component_attributes(component: Component) -> dict[str, str]:
    """The attributes every span and metric of ``component`` carries."""
    attributes = {
        "capa.component.name": component.name,
        "capa.component.type": component.type_name,
    }
    if component.block == "pubsub":
        attributes["messaging.system"] = _MESSAGING_SYSTEMS.get(component.kind, component.kind)
    elif component.block != "secrets":
        attributes["db.system"] = _DB_SYSTEMS.get(component.kind, component.kind)
    return attributes


def _sdk_configured() -> bool:
    """True when a real (SDK) tracer or meter provider is set, not the API's no-op default."""
    tracing = not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )
    # The API's default meter provider is a private proxy class; an SDK's is not.
    meter_provider = metrics.get_meter_provider()
    measuring = not type(meter_provider).__module__.startswith("opentelemetry.metrics")
    return tracing or measuring


class TelemetryInterceptor:
    """Traces and measures each call passing the dispatch point, and propagates message context."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.tracer = trace.get_tracer(INSTRUMENTATION, tracer_provider=tracer_provider)
        meter = metrics.get_meter(INSTRUMENTATION, meter_provider=meter_provider)
        self.duration = meter.create_histogram(
            "capa.operation.duration", unit="s", description="Duration of standard-API calls"
        )
        self.errors = meter.create_counter(
            "capa.operation.errors", description="Standard-API calls that raised"
        )
        self._attributes: dict[int, dict[str, str]] = {}

    def _component_attributes(self, component: Component) -> dict[str, str]:
        cached = self._attributes.get(id(component))
        if cached is None:
            cached = self._attributes[id(component)] = component_attributes(component)
        return cached

    # --- the interceptor ------------------------------------------------------------------------

    def intercept(self, call: Call, proceed: Callable[[], Any]) -> Any:
        component = call.component
        base = self._component_attributes(component)
        attributes: dict[str, Any] = dict(base)
        attributes["capa.operation"] = call.operation
        topic = call.attributes.get("topic")
        kind = SpanKind.CLIENT
        if component.block == "pubsub":
            operation = _MESSAGING_OPERATIONS.get(call.operation, call.operation)
            attributes["messaging.operation.type"] = operation
            attributes["messaging.operation.name"] = call.operation
            if topic is not None:
                attributes["messaging.destination.name"] = topic
            if "group" in call.attributes:
                attributes["messaging.consumer.group.name"] = call.attributes["group"]
            kind = SpanKind.PRODUCER if operation == "publish" else SpanKind.CLIENT
        elif "db.system" in base:
            attributes["db.operation.name"] = call.operation
        metric_attributes = {
            "capa.block": component.block,
            "capa.operation": call.operation,
            "capa.component.name": component.name,
        }
        start = time.perf_counter()
        with self.tracer.start_as_current_span(
            f"capa.{component.block}.{call.operation}", kind=kind, attributes=attributes,
            record_exception=True, set_status_on_exception=True,
        ):
            try:
                result = proceed()
            except BaseException as exc:
                metric_attributes["capa.outcome"] = "error"
                metric_attributes["error.type"] = type(exc).__qualname__
                self.errors.add(1, metric_attributes)
                self.duration.record(time.perf_counter() - start, metric_attributes)
                raise
        metric_attributes["capa.outcome"] = "ok"
        self.duration.record(time.perf_counter() - start, metric_attributes)
        return result

    # --- message tracing ------------------------------------------------------------------------

    def inject(self, carrier: dict[str, Any]) -> None:
        inject(carrier)

    @contextmanager
    def process(
        self, component: Component, topic: str, group: str, carrier: Mapping[str, Any]
    ) -> Iterator[trace.Span]:
        parent = extract({k: v for k, v in carrier.items() if isinstance(v, str)})
        attributes: dict[str, Any] = dict(self._component_attributes(component))
        attributes.update({
            "messaging.operation.type": "process",
            "messaging.destination.name": topic,
            "messaging.consumer.group.name": group,
        })
        message_id = carrier.get("id")
        if isinstance(message_id, str):
            attributes["messaging.message.id"] = message_id
        with self.tracer.start_as_current_span(
            f"capa.pubsub.process {topic}", context=parent, kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            yield span


class _TraceIdsOnLogs:
    """Adds otelTraceID / otelSpanID (hex, "0" outside spans) to every log record."""

    def __init__(self) -> None:
        self.previous = logging.getLogRecordFactory()

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        span_context = trace.get_current_span(otel_context.get_current()).get_span_context()
        if span_context.is_valid:
            record.otelTraceID = format(span_context.trace_id, "032x")
            record.otelSpanID = format(span_context.span_id, "016x")
        else:
            record.otelTraceID = record.otelSpanID = "0"
        return record


class CapaInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Turns capa telemetry on for every Runtime of the process; idempotent, reversible."""

    _interceptor: TelemetryInterceptor | None = None
    _log_factory: _TraceIdsOnLogs | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("opentelemetry-api >= 1.27",)

    def _instrument(self, **kwargs: Any) -> None:
        tracer_provider = kwargs.get("tracer_provider")
        meter_provider = kwargs.get("meter_provider")
        if tracer_provider is None and meter_provider is None and not _sdk_configured():
            # No SDK: spans would be dropped anyway, so keep the dispatch point's fast path.
            return
        self._interceptor = TelemetryInterceptor(tracer_provider, meter_provider)
        dispatch.install(self._interceptor, self._interceptor)
        # Layers above capa_core (capa_compat's shims) trace their own calls from here on.
        for entry in entry_points(group=INSTRUMENTATION_GROUP):
            entry.load().install(tracer_provider)
        if kwargs.get("log_correlation", True):
            self._log_factory = _TraceIdsOnLogs()
            logging.setLogRecordFactory(self._log_factory)

    def _uninstrument(self, **kwargs: Any) -> None:
        if self._interceptor is not None:
            dispatch.uninstall(self._interceptor, self._interceptor)
            self._interceptor = None
            for entry in entry_points(group=INSTRUMENTATION_GROUP):
                entry.load().uninstall()
        if self._log_factory is not None:
            if logging.getLogRecordFactory() is self._log_factory:
                logging.setLogRecordFactory(self._log_factory.previous)
            self._log_factory = None
