"""Spans in the legacy libraries' words (django.cache.get, kombu.publish...) around shim calls.

They are the parents of the capa spans (capa.state.get, capa.pubsub.publish) the call makes:
the legacy call is what the application wrote, and one of them may make several capa calls (an
incr is a read and a compare-and-swap write; a fanout publish goes to several topics). Without an
OpenTelemetry SDK configured, a wrapped call costs one check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import wrapt


def _tracer() -> Any:
    """capa_compat's tracer, or None when no SDK provider is set (spans would be dropped)."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return trace.get_tracer("capa_compat", tracer_provider=provider)


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
