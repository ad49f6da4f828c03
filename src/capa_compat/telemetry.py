"""Spans in the legacy libraries' words (django.cache.get, kombu.publish...) around shim calls.

They are the parents of the capa spans (capa.state.get, capa.pubsub.publish) the call makes:
the legacy call is what the application wrote, and one of them may make several capa calls (an
incr is a read and a compare-and-swap write; a fanout publish goes to several topics).

capa_core's CapaInstrumentor calls ``install`` (entry-point group ``capa.instrumentation``) when
it turns telemetry on, and ``uninstall`` when it turns it off: without telemetry the shims' methods
are not wrapped at all.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import wrapt

# (module, class, method prefix, methods, span attributes) of every traced shim method.
TRACED: list[tuple[str, str, str, tuple[str, ...], Mapping[str, str]]] = [
    (
        "capa_compat.django.backend", "CapaCache", "django.cache",
        ("add", "get", "set", "touch", "delete", "has_key", "get_many", "set_many",
         "delete_many", "incr", "incr_version", "clear"),
        {"db.system": "capa", "django.cache.backend": "capa_compat.django.cache.CapaCache"},
    ),
    ("capa_compat.kombu.transport", "Channel", "kombu", ("basic_publish",),
     {"messaging.system": "capa"}),
    ("capa_compat.flask.config", "Config", "flask.config", ("_apply",), {}),
]
SPAN_NAMES = {"basic_publish": "publish", "_apply": "reload"}

_installed: list[tuple[Any, str, Any]] = []  # (class, method, original) to put back


def install(tracer_provider: Any = None) -> None:
    """Wrap every traced shim method in a span; idempotent."""
    if _installed:
        return
    import importlib

    from opentelemetry import trace

    tracer = trace.get_tracer("capa_compat", tracer_provider=tracer_provider)
    for module_name, class_name, prefix, methods, attributes in TRACED:
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except ImportError:  # that shim's library is not installed
            continue
        for method in methods:
            original = cls.__dict__[method]
            name = f"{prefix}.{SPAN_NAMES.get(method, method)}"
            setattr(cls, method, _span(tracer, name, dict(attributes))(original))
            _installed.append((cls, method, original))


def uninstall() -> None:
    while _installed:
        cls, method, original = _installed.pop()
        setattr(cls, method, original)


def _span(tracer: Any, name: str, attributes: dict[str, str]) -> Any:
    @wrapt.decorator
    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        with tracer.start_as_current_span(name, attributes=attributes):
            return wrapped(*args, **kwargs)

    return wrapper


_RECHECK = 1.0  # seconds between looks for an SDK provider while there is none
_found: list[Any] = []  # the tracer, once an SDK provider is set (it can be set only once)
_next_check = [0.0]


def _tracer() -> Any:
    """capa_compat's tracer, or None while no SDK provider is set (spans would be dropped).

    Asking OpenTelemetry for its provider reads the environment, microseconds a call; a Celery
    publish must cost next to nothing without an SDK, so the answer "none" is kept for a second.
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
