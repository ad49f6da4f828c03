"""Shims trace in their library's words: django.cache.*, kombu.publish, flask.config.reload.

Run in a child process: it sets the global OpenTelemetry provider, which a process can do once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, time
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

    import django
    from django.conf import settings
    settings.configure(CACHES={"default": {
        "BACKEND": "capa_compat.django.cache.CapaCache", "LOCATION": "memory://spans"}})
    django.setup()
    from capa_compat.django.cache import cache
    cache.set("k", 1)
    cache.incr("k")

    from capa_compat.kombu import Connection
    with Connection("memory://") as conn:
        queue = conn.SimpleQueue("spans")
        queue.put({"n": 1})
        queue.get(timeout=5).ack()
        queue.close()

    from capa_compat.flask import Flask
    rt = Runtime.from_mapping({"capa": {"default_url": "memory://flask-spans"}})
    app = Flask("spans")
    app.config.from_capa(rt.configuration())
    rt.configuration().save({"LIMIT": "5"})
    deadline = time.monotonic() + 5
    while app.config.get("LIMIT") != 5 and time.monotonic() < deadline:
        time.sleep(0.01)

    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s.name for s in spans}
    print(json.dumps([[s.name, by_id.get(s.parent.span_id) if s.parent else None]
                      for s in spans]))
    """
)


def test_shim_calls_are_parents_of_their_capa_calls() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    pairs = {tuple(p) for p in json.loads(done.stdout.strip().splitlines()[-1])}
    assert ("capa.state.save", "django.cache.set") in pairs
    # An incr is a read and a compare-and-swap write, both under the one legacy span.
    assert ("capa.state.get", "django.cache.incr") in pairs
    assert ("capa.state.save", "django.cache.incr") in pairs
    assert ("capa.pubsub.publish", "kombu.publish") in pairs
    assert any(name == "flask.config.reload" for name, _ in pairs)
    assert ("django.cache.set", None) in pairs  # legacy spans are the roots here


def test_shim_methods_are_wrapped_only_while_telemetry_is_on() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from capa_compat.django.backend import CapaCache
    from capa_compat.kombu.transport import Channel
    from capa_core.telemetry import CapaInstrumentor

    plain_get, plain_publish = CapaCache.__dict__["get"], Channel.__dict__["basic_publish"]
    instrumentor = CapaInstrumentor()
    instrumentor.instrument(tracer_provider=TracerProvider())
    try:
        assert CapaCache.__dict__["get"] is not plain_get
        assert CapaCache.__dict__["get"].__wrapped__ is plain_get
        assert Channel.__dict__["basic_publish"] is not plain_publish
    finally:
        instrumentor.uninstrument()
    assert CapaCache.__dict__["get"] is plain_get  # no cost at all once telemetry is off
    assert Channel.__dict__["basic_publish"] is plain_publish
