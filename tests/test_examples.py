"""The example legacy apps: their own tests pass as written, and again after `capa migrate`.

Each app is copied to a temporary directory, migrated there with the codemod, and its unchanged
tests are run on the capa embedded default (SQLite in that directory) and on Redis.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.services import require

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Per app: the settings that point it at the embedded default once migrated.
EMBEDDED = {
    "flask_shop": {"SHOP_BROKER_URL": "capa://default"},
    "django_catalog": {
        "CATALOG_BROKER_URL": "capa://default",
        "CATALOG_CACHE_LOCATION": "default",
    },
}

# The Redis databases the examples use as written (shop: 5, catalog: 6). Native and migrated runs
# keep different structures under the same queue names, so each Redis run starts from empty ones.
EXAMPLE_DBS = (5, 6)

pytestmark = pytest.mark.slow


def empty_example_dbs() -> None:
    import redis

    url = require("redis")
    for db in EXAMPLE_DBS:
        client = redis.Redis.from_url(f"{url}/{db}")
        client.flushdb()
        client.close()


def run_tests(
    app_dir: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The app's own test command, in its directory, with a clean slate of app settings."""
    own = ("CAPA_", "SHOP_", "CATALOG_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(own)}
    env.update(extra_env or {})
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"],
        cwd=app_dir, env=env, capture_output=True, text=True, timeout=300,
    )


def migrate(app_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capa_compat.migrate.cli", str(app_dir)],
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def migrated(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    name = request.param
    app_dir = tmp_path / name
    shutil.copytree(EXAMPLES / name, app_dir, ignore=shutil.ignore_patterns("__pycache__"))
    done = migrate(app_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    return app_dir


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_example_passes_as_written_on_redis(name: str) -> None:
    empty_example_dbs()
    done = run_tests(EXAMPLES / name)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


@pytest.mark.parametrize("migrated", sorted(EMBEDDED), indirect=True)
def test_migrated_example_passes_on_the_embedded_default(migrated: Path) -> None:
    # The migration touched imports only: no legacy import of a shimmed name is left.
    sources = "\n".join(p.read_text() for p in migrated.rglob("*.py"))
    assert "capa_compat" in sources
    done = run_tests(migrated, EMBEDDED[migrated.name])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert (migrated / "capa.db").exists()  # it really ran on the embedded SQLite default


@pytest.mark.parametrize("migrated", sorted(EMBEDDED), indirect=True)
def test_migrated_example_passes_on_redis(migrated: Path) -> None:
    empty_example_dbs()
    done = run_tests(migrated)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert not (migrated / "capa.db").exists()  # and this time on Redis, not the default
