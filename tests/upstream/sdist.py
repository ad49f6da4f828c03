"""Upstream source distributions for the fidelity suites: downloaded once, extracted on demand.

The sdists are never committed. They are fetched with pip (`pip download --no-binary :all:
--no-deps NAME==VERSION`, the version installed in this environment) into a cache directory
outside the repository ($CAPA_UPSTREAM_CACHE, default ~/.cache/capa-upstream) and extracted next
to it; a missing or damaged copy is fetched again.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType


def cache_dir() -> Path:
    path = Path(os.environ.get("CAPA_UPSTREAM_CACHE") or Path.home() / ".cache" / "capa-upstream")
    path.mkdir(parents=True, exist_ok=True)
    return path


def installed_version(distribution: str) -> str:
    return importlib.metadata.version(distribution)


def archive(distribution: str, version: str) -> Path:
    """The sdist archive of ``distribution==version``, downloaded if missing."""
    cache = cache_dir()
    stem = f"{distribution.lower().replace('-', '_')}-{version}"
    for candidate in (cache / f"{stem}.tar.gz", cache / f"{distribution.lower()}-{version}.tar.gz"):
        if candidate.is_file() and tarfile.is_tarfile(candidate):
            return candidate
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:",
             "--no-deps", f"{distribution}=={version}", "-d", tmp],
            check=True, timeout=600,
        )
        downloaded = next(Path(tmp).glob("*.tar.gz"))
        target = cache / downloaded.name
        os.replace(downloaded, target)
    return target


def source_tree(distribution: str, version: str | None = None) -> Path:
    """The extracted sdist of ``distribution`` (the installed version unless given)."""
    version = version or installed_version(distribution)
    tarball = archive(distribution, version)
    root = cache_dir() / "src"
    root.mkdir(exist_ok=True)
    name = tarball.name.removesuffix(".tar.gz")
    target = root / name
    if (target / ".complete").is_file():
        return target
    # Extract into a private directory and rename it into place, so concurrent runs never see
    # half a tree.
    scratch = Path(tempfile.mkdtemp(dir=root))
    try:
        with tarfile.open(tarball) as tar:
            tar.extractall(scratch, filter="data")
        (extracted,) = [p for p in scratch.iterdir() if p.is_dir()]
        (extracted / ".complete").touch()
        try:
            os.replace(extracted, target)
        except OSError:
            if not (target / ".complete").is_file():  # a damaged earlier copy: replace it
                shutil.rmtree(target, ignore_errors=True)
                os.replace(extracted, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def upstream_module(distribution: str, path: str, name: str) -> ModuleType:
    """The module at ``path`` in ``distribution``'s sdist (a test file, say), loaded as ``name``."""
    file = source_tree(distribution) / path
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
