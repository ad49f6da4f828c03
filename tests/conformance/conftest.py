"""Fixtures of the conformance suite: one Runtime per test on each target of the module's block.

A conformance module names its building block in ``BLOCK``; every test asking for ``target``
runs once per Target of that block (tests/conformance/targets.py). Tests reach the component
only through the public API of a Runtime built from a settings mapping, so a new backend joins
by adding one Target line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conformance.support import COMPONENT, RuntimeFactory
from tests.conformance.targets import Target, targets_for

from capa_core import Runtime


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "target" in metafunc.fixturenames:
        block = getattr(metafunc.module, "BLOCK", None)
        if block is None:
            raise pytest.UsageError(f"{metafunc.module.__name__} must set BLOCK")
        targets = targets_for(block)
        metafunc.parametrize("target", targets, ids=[t.name for t in targets])


@pytest.fixture
def table(target: Target, unique: str, tmp_path: Path) -> dict[str, Any]:
    """The settings table of the component under test, the same for every Runtime of a test."""
    return target.table(unique, tmp_path)


@pytest.fixture
def make_runtime(
    request: pytest.FixtureRequest, unique: str, table: dict[str, Any]
) -> Iterator[RuntimeFactory]:
    """Builds Runtimes on the target (all on the same backing store), closed after the test."""
    block: str = request.module.BLOCK
    made: list[Runtime] = []

    def make(app_id: str | None = None, **overrides: Any) -> Runtime:
        rt = Runtime.from_mapping(
            {
                "capa": {"app_id": app_id or f"app-{unique}", "default_url": f"memory://{unique}"},
                block: {COMPONENT: {**table, **overrides}},
            }
        )
        made.append(rt)
        return rt

    yield make
    for rt in reversed(made):
        rt.close()


@pytest.fixture
def runtime(make_runtime: RuntimeFactory) -> Runtime:
    return make_runtime()
