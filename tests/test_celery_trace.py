"""A Celery task .delay()ed in one process runs in a worker process inside the caller's trace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROJECT = textwrap.dedent(
    """
    import json, os
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
    from capa_compat.celery import Celery
    from capa_core.telemetry import CapaInstrumentor

    class FileExporter(SpanExporter):
        def __init__(self, path):
            self.path = path
        def export(self, spans):
            with open(self.path, "a") as out:
                for s in spans:
                    out.write(json.dumps({
                        "name": s.name, "trace": s.context.trace_id, "span": s.context.span_id,
                        "parent": s.parent.span_id if s.parent else None}) + "\\n")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter(os.environ["TRACE_OUT"])))
    trace.set_tracer_provider(provider)
    CapaInstrumentor().instrument()

    app = Celery("traced_proj")   # no broker set: the embedded default in the working directory
    app.conf.task_default_queue = "traced"

    @app.task
    def traced_add(x, y):
        return x + y
    """
)

CLIENT = textwrap.dedent(
    """
    from opentelemetry import trace
    from traced_proj import traced_add
    with trace.get_tracer("test").start_as_current_span("client"):
        print(traced_add.delay(2, 3).get(timeout=60))
    """
)


def _spans(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_a_delayed_task_runs_in_the_callers_trace(tmp_path: Path) -> None:
    (tmp_path / "traced_proj.py").write_text(PROJECT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPA_")}
    env["PYTHONPATH"] = str(tmp_path)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "traced_proj", "worker", "--pool", "threads",
         "-c", "1", "--loglevel", "WARNING", "--without-mingle", "--without-gossip",
         "--without-heartbeat"],
        cwd=tmp_path, env={**env, "TRACE_OUT": str(tmp_path / "worker.jsonl")},
    )
    try:
        client = subprocess.run(
            [sys.executable, "-c", CLIENT], cwd=tmp_path, capture_output=True, text=True,
            env={**env, "TRACE_OUT": str(tmp_path / "client.jsonl")}, timeout=120,
        )
        assert client.returncode == 0, client.stderr
        assert client.stdout.strip() == "5"
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    client_spans = _spans(tmp_path / "client.jsonl")
    worker_spans = _spans(tmp_path / "worker.jsonl")
    root = next(s for s in client_spans if s["name"] == "client")
    publish = [s for s in client_spans if s["name"] == "capa.pubsub.publish"]
    assert publish and all(s["trace"] == root["trace"] for s in publish)
    [run] = [s for s in worker_spans if s["name"] == "run/traced_proj.traced_add"]
    assert run["trace"] == root["trace"]
    assert run["parent"] in {s["span"] for s in client_spans}
    # What the task does in the worker (here: saving its result in capa state) is in the trace.
    saved = [s for s in worker_spans if s["parent"] == run["span"]]
    assert any(s["name"].startswith("capa.state.") for s in saved)


DUPLICATES = textwrap.dedent(
    """
    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from capa_compat.celery import telemetry

    trace.set_tracer_provider(TracerProvider())
    assert telemetry._active()              # an SDK and no Celery instrumentation: capa traces
    CeleryInstrumentor().instrument()
    assert not telemetry._active()          # opentelemetry-instrumentation-celery does it
    CeleryInstrumentor().uninstrument()
    assert telemetry._active()
    print("ok")
    """
)


def test_capa_steps_aside_for_opentelemetry_instrumentation_celery() -> None:
    done = subprocess.run(
        [sys.executable, "-c", DUPLICATES], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
