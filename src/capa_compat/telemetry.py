"""Spans in the legacy libraries' words (django.cache.get, kombu.publish...) around shim calls.

They are the parents of the capa spans (capa.state.get, capa.pubsub.publish) the call makes:
the legacy call is what the application wrote, and one of them may make several capa calls (an
incr is a read and a compare-and-swap write; a fanout publish goes to several topics). Without an
OpenTelemetry SDK configured, a wrapped call costs one check.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import wrapt

_RECHECK = 1.0  # seconds between looks for an SDK provider while there is none
_found: list[Any] = []  # the tracer, once an SDK provider is set (it can be set only once)
_next_check = [0.0]


def _tracer() -> Any:
    """capa_compat's tracer, or None while no SDK provider is set (spans would be dropped).

    Asking OpenTelemetry for its provider reads the environment, microseconds a call; a shim call
    must cost next to nothing without an SDK, so the answer "none" is kept for a second.
    """
    if _found:
        return _found[0]
    now = time.monotonic()
    if now < _next_check[0]:
        return None
    _next_check[0] = now + _RECHECK
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    _found.append(trace.get_tracer("capa_compat", tracer_provider=provider))
    return _found[0]


def traced(
    name: str, attributes: Mapping[str, Any] | None = None
) -> Callable[[Callable[..., Any]], Any]:
    """Decorate a shim method so each call is a span called ``name``."""
    fixed = dict(attributes or {})

    @wrapt.decorator
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        tracer = _tracer()
        if tracer is None:
            return wrapped(*args, **kwargs)
        with tracer.start_as_current_span(name, attributes=fixed):
            return wrapped(*args, **kwargs)

    return wrapper  # type: ignore[no-any-return]


def trace_methods(cls: type, prefix: str, names: tuple[str, ...], **attributes: Any) -> None:
    """Wrap each method ``names`` of ``cls`` in a span ``<prefix>.<name>``."""
    for method in names:
        setattr(cls, method, traced(f"{prefix}.{method}", attributes)(getattr(cls, method)))
