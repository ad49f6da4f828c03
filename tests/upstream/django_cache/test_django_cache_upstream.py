"""Django's cache test suite passes against CapaCache on the memory, SQLite and Redis components.

Each backend runs in its own process (Django settings are per process), all three at once: the
suite is mostly sleeps waiting for expiry. Nothing may be skipped: LocMemCache skips nothing of
BaseCacheTests, so neither may CapaCache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.services import require
from tests.upstream.sdist import source_tree

pytest.importorskip("django")

ROOT = Path(__file__).resolve().parents[3]
BACKENDS = ("memory", "sqlite", "redis")
# BaseCacheTests (59 with Django 5.2) + the {% cache %} tag tests; the memory run adds the cache
# framework classes (middleware, cache_page, utils, handler).
MINIMUM_RUN = {"memory": 120, "sqlite": 70, "redis": 70}
TIMEOUT = 300


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, Any]]:
    """Start the three runs together; each test waits for its own."""
    source_tree("django")  # download and extract once, before the processes race for it
    scratch = Path(tempfile.mkdtemp(prefix="capa-django-upstream-"))
    started: dict[str, Any] = {}
    for backend in BACKENDS:
        if backend == "redis":
            try:
                require("redis")
            except pytest.skip.Exception as exc:
                started[backend] = exc
                continue
        out = scratch / f"{backend}.json"
        command = [sys.executable, "-m", "tests.upstream.django_cache.run", backend,
                   "--json", str(out)]
        if backend == "memory":
            command.append("--framework")
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        started[backend] = (process, out)
    yield started
    for entry in started.values():
        if isinstance(entry, tuple) and entry[0].poll() is None:
            entry[0].kill()
            entry[0].wait()


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT + 30)
@pytest.mark.parametrize("backend", BACKENDS)
def test_django_cache_suite_passes(runs: dict[str, Any], backend: str) -> None:
    entry = runs[backend]
    if isinstance(entry, BaseException):
        raise entry
    process, out = entry
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"the {backend} run did not finish in {TIMEOUT}s:\n{output[-5000:]}")
    assert out.is_file(), f"the {backend} run wrote no outcome:\n{output[-5000:]}"
    outcome = json.loads(out.read_text())
    assert outcome["failures"] == [] and outcome["errors"] == [], output[-8000:]
    assert outcome["skipped"] == [], outcome["skipped"]
    assert outcome["unexpected_successes"] == []
    assert outcome["run"] >= MINIMUM_RUN[backend], outcome
    assert process.returncode == 0, output[-5000:]
