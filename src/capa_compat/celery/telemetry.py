"""Celery tasks inside their caller's trace: context in task headers, a span around each run.

Active only while capa telemetry is on (CapaInstrumentor with an SDK) and
opentelemetry-instrumentation-celery is not: that instrumentation does the same, and two would
give every task two spans. The capa spans of the task's messages (kombu transport -> capa
pub/sub) are children of the caller's span on the way out, and the run span is the parent of
whatever the task does in the worker.
"""

from __future__ import annotations

from typing import Any

from celery import signals

from ..telemetry import _tracer

_SPANS: dict[str, Any] = {}  # task id -> (span, context token), from prerun to postrun


def _active() -> bool:
    if _tracer() is None:
        return False
    instrumentor = _celery_instrumentor()
    return instrumentor is None or not instrumentor.is_instrumented_by_opentelemetry


_instrumentor: list[Any] = []


def _celery_instrumentor() -> Any:
    """opentelemetry-instrumentation-celery's instrumentor, or None when not installed."""
    if not _instrumentor:
        try:
            from opentelemetry.instrumentation.celery import CeleryInstrumentor
        except ImportError:
            _instrumentor.append(None)
        else:
            _instrumentor.append(CeleryInstrumentor())
    return _instrumentor[0]


class _RequestGetter:
    """Reads trace headers from a Celery task request (headers become request attributes)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = getattr(carrier, key, None)
        if value is None and isinstance(getattr(carrier, "headers", None), dict):
            value = carrier.headers.get(key)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Any) -> list[str]:
        return []


def _before_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None and _active():
        from opentelemetry.propagate import inject

        inject(headers)


def _prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task is None or task_id is None or not _active():
        return
    from opentelemetry import context, trace
    from opentelemetry.propagate import extract

    parent = extract(task.request, getter=_RequestGetter())
    span = trace.get_tracer("capa_compat.celery").start_span(
        f"run/{task.name}", context=parent, kind=trace.SpanKind.CONSUMER,
        attributes={"celery.task_name": task.name, "messaging.message.id": task_id,
                    "messaging.system": "capa"},
    )
    token = context.attach(trace.set_span_in_context(span))
    _SPANS[task_id] = (span, token)


def _postrun(task_id: str | None = None, state: str | None = None, **_: Any) -> None:
    entry = _SPANS.pop(task_id or "", None)
    if entry is None:
        return
    from opentelemetry import context

    span, token = entry
    if state is not None:
        span.set_attribute("celery.state", state)
    span.end()
    context.detach(token)


def connect() -> None:
    """Connect the handlers (idempotent: Celery signals keep one receiver per function)."""
    signals.before_task_publish.connect(_before_publish, weak=False)
    signals.task_prerun.connect(_prerun, weak=False)
    signals.task_postrun.connect(_postrun, weak=False)
