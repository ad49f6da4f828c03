"""Shared fixtures: a Runtime on the memory components and a working directory per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from capa_core import Runtime


@pytest.fixture
def unique() -> str:
    """A token to keep names (topics, app ids, keys) of one test apart from every other."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def memory_runtime(unique: str) -> Iterator[Runtime]:
    rt = Runtime.from_mapping(
        {"capa": {"default_url": f"memory://{unique}", "app_id": f"app-{unique}"}}
    )
    yield rt
    rt.close()


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test in an empty working directory with no CAPA_* variables."""
    monkeypatch.chdir(tmp_path)
    import os

    for var in [v for v in os.environ if v.startswith("CAPA_")]:
        monkeypatch.delenv(var)
    return tmp_path
